/*
 * peak.c - the machine's arithmetic peak, measured rather than looked up: one thread's
 * fp32 FMA loop in the ISA asked for (the loops are in kernels_simd.h, compiled per ISA)
 * and, where the CPU has AVX512_BF16, the bf16 pair-product loop (vdpbf16ps, also there).
 * The benchmarks run one loop per thread at once and divide the FLOPs by the wall time.
 */
#include "kernels.h"

double pf_peak_fma_avx2(int64_t iters);
double pf_peak_fma_avx512(int64_t iters);
double pf_peak_dp_avx512bf16(int64_t iters);

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
