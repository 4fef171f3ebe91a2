/*
 * peak.c - the machine's arithmetic peak, measured rather than looked up: one thread's
 * fp32 FMA loop in the ISA asked for (the loops are in kernels_simd.h, compiled per ISA)
 * and, where the CPU has AVX512_BF16, the bf16 pair-product loop (vdpbf16ps, also there);
 * and the tile probe, the fp32 tile kernel's register tile on operands in L1 (what the FMA
 * peak leaves to a GEMM kernel once it loads its operands). The benchmarks run one loop per
 * thread at once and divide the FLOPs by the wall time.
 */
#include "kernels.h"

double pf_peak_fma_avx2(int64_t iters);
double pf_peak_fma_avx512(int64_t iters);
double pf_peak_dp_avx512bf16(int64_t iters);
double pf_peak_tile_avx2(int64_t iters, const float *a, const float *b);
double pf_peak_tile_avx512(int64_t iters, const float *a, const float *b);
int pf_peak_tile_rows_avx2(void);
int pf_peak_tile_rows_avx512(void);

/* The portable loop: PF_PEAK_CHAINS scalar FMA chains (whatever the compiler makes
 * of fmaf without an ISA target: the portable kernels' own speed limit). */
static double peak_fma_portable(int64_t iters) {
    float acc[PF_PEAK_CHAINS];
    for (int j = 0; j < PF_PEAK_CHAINS; ++j) acc[j] = (float)j;
    for (int64_t it = 0; it < iters; ++it)
        for (int j = 0; j < PF_PEAK_CHAINS; ++j) acc[j] = acc[j] * 0.999999f + 1e-6f;
    double s = 0;
    for (int j = 0; j < PF_PEAK_CHAINS; ++j) s += acc[j];
    return s;
}

int64_t pf_peak_fma(int isa, int64_t iters, double *sink) {
    if (pf_isa_check(isa) || iters < 0) return -1;
    const pf_kernels *k = pf_kernels_pick(isa);
    double s;
    int64_t lanes;
    switch (k->isa) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    case PF_ISA_AVX512BF16: /* the fp32 FMA of AVX-512 */
    case PF_ISA_AVX512: s = pf_peak_fma_avx512(iters); lanes = 16; break;
    case PF_ISA_AVX2: s = pf_peak_fma_avx2(iters); lanes = 8; break;
#endif
    default: s = peak_fma_portable(iters); lanes = 1; break;
    }
    if (sink) *sink = s;
    return iters * PF_PEAK_CHAINS * lanes * 2;
}

int64_t pf_peak_dpbf16(int64_t iters, double *sink) {
    if (!pf_cpu_has_avx512_bf16() || iters < 0) return -1;
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    const double s = pf_peak_dp_avx512bf16(iters);
    if (sink) *sink = s;
    return iters * PF_PEAK_CHAINS * 32 * 2; /* chains x 32 bf16 products (a multiply and an add each) */
#else
    (void)sink;
    return -1;
#endif
}

/* The tile probe's operands (12 KiB on the stack of each thread): a [rows][K], b [K][cols]
 * (the largest ISA's sizes), all 2^-10 (every partial sum stays finite and normal). */
#define TILE_ROWS_MAX 16
#define TILE_COLS_MAX 32
#define PORTABLE_ROWS 8
#define PORTABLE_COLS 16

int64_t pf_peak_tile(int isa, int64_t iters, double *sink) {
    if (pf_isa_check(isa) || iters < 0) return -1;
    const pf_kernels *k = pf_kernels_pick(isa);
    _Alignas(64) float a[TILE_ROWS_MAX * PF_PEAK_TILE_K], b[PF_PEAK_TILE_K * TILE_COLS_MAX];
    float c[PORTABLE_ROWS * PORTABLE_COLS];
    for (int i = 0; i < TILE_ROWS_MAX * PF_PEAK_TILE_K; ++i) a[i] = 0x1p-10f;
    for (int i = 0; i < PF_PEAK_TILE_K * TILE_COLS_MAX; ++i) b[i] = 0x1p-10f;
    double s = 0;
    int64_t per_iter; /* multiply-adds a round */
    switch (k->isa) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    case PF_ISA_AVX512BF16: /* the fp32 tile of AVX-512 */
    case PF_ISA_AVX512:
        s = pf_peak_tile_avx512(iters, a, b);
        per_iter = (int64_t)pf_peak_tile_rows_avx512() * 32 * PF_PEAK_TILE_K;
        break;
    case PF_ISA_AVX2:
        s = pf_peak_tile_avx2(iters, a, b);
        per_iter = (int64_t)pf_peak_tile_rows_avx2() * 16 * PF_PEAK_TILE_K;
        break;
#endif
    default: /* the portable tile kernel on an 8 x 16 tile, accumulated in place */
        memset(c, 0, sizeof c);
        for (int64_t it = 0; it < iters; ++it)
            pf_tile_gemm(pf_tile_portable, PORTABLE_ROWS, PORTABLE_COLS, PF_PEAK_TILE_K, a,
                         PF_PEAK_TILE_K, b, PORTABLE_COLS, c, PORTABLE_COLS, 1);
        for (int i = 0; i < PORTABLE_ROWS * PORTABLE_COLS; ++i) s += c[i];
        per_iter = (int64_t)PORTABLE_ROWS * PORTABLE_COLS * PF_PEAK_TILE_K;
        break;
    }
    if (sink) *sink = s;
    return iters * per_iter * 2;
}
