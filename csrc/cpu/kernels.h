/*
 * kernels.h - private interface between the CPU drivers (bsmm.c, attn*.c) and the compute
 * kernels, one set per ISA: the portable C kernels (kernels_portable.c) and the SIMD ones,
 * written once in kernels_simd.h over a thin vector layer (vec_avx2.h, vec_avx512.h) and
 * compiled once per ISA (kernels_avx2.c, kernels_avx512.c).
 *
 * Tiles. Every matmul is reduced to "tiles": C[M x N] = (Cin or 0) + sum_seg sum_{s<K}
 * A(m, s) B(s, n) with fp32 operands and accumulation, where for segment `seg`
 *   A(m, s) = A[aoff(seg) + m*ams + s*ass],   aoff(seg) = aidx ? aidx[seg] * ascale : seg * aseg
 *   B(s, n) = B[boff(seg) + s*bss + n],        boff(seg) = bidx ? bidx[seg] * bscale : seg * bseg
 * plus, when Cadd is set, Cadd(m, n) (fp32, one addition after the sum: at Cadd[m*ldcadd + n],
 * or at Cadd[n*ldcadd + m] with c_trans; ldcadd 0: one row for every m, resp. one value per m),
 * and the result goes to C (fp32, or bf16 rounded to nearest even): element (m, n) at
 * C[m*ldc + n], or at C[n*ldc + m] with c_trans (then Cin must be NULL).
 * Exactly one of ams/ass is 1 (a_rows: ass == 1, A rows are x/dy rows; otherwise ams == 1).
 * C may be Cin (in place): each element is read before it is written.
 *
 * Summation order (the contract that makes every ISA bitwise identical): each output
 * element is acc = Cin or +0.0f, then acc = fmaf(A(m,s), B(s,n), acc) for seg ascending and
 * s ascending; with `pairs` the steps of a segment go in pairs, the odd one first:
 * s = 1, 0, 3, 2, ..., then K - 1 alone if K is odd (the order of vdpbf16ps, used for bf16
 * operands so the widened kernels equal the pair tiles below). The SIMD kernels vectorise
 * over n (and register-tile m) only.
 *
 * Pair tiles (pf_tile_pairs_fn): bf16 operands, two steps per load. The same pf_tile, with
 * A and B pointing to bf16 (uint16_t) data and K counting pairs of steps: the pair p of
 * A(m, .) is the two bf16 at A + aoff(seg) + m*ams + p*ass (step 2p at the lower address),
 * the pair p of B(., n) the two at B + boff(seg) + p*bss + 2n (b_padded: readable up to
 * n = round_up(N, 16)). Each pair adds its step-2p+1 product, then its step-2p one: the
 * `pairs` order of the fp32 tiles over 2K steps. A product of two bf16 is exact in fp32, so
 * vdpbf16ps (which rounds after each addition) is bitwise equal to that order, except that
 * it flushes subnormal inputs and results to zero. The other ISAs emulate it with two
 * FMAs (pf_tile_pairs_<isa>; used when forced, for tests). Cin and C as for fp32 tiles.
 *
 * Attention ops. Attention's small GEMMs are tiles too (pf_tile_gemm); its softmax row
 * operations are in pf_attn_ops, one table per ISA (fp32) plus the float64 one.
 */
#ifndef PF_KERNELS_H
#define PF_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pixelfly.h"

typedef struct {
    const float *A;
    int64_t ams, ass;       /* strides of A over m and over s (one of them is 1) */
    const int64_t *aidx;    /* per-segment block index, NULL: uniform segments aseg apart */
    int64_t ascale, aseg;   /* elements per unit of aidx; per-segment stride without it */
    const float *B;
    int64_t bss, bseg;      /* B row stride (over s) and per-segment stride (no bidx) */
    const int64_t *bidx;    /* per-segment block index of B, NULL: segments bseg apart */
    int64_t bscale;         /* elements per unit of bidx */
    int b_padded;           /* B rows may be read up to round_up(N, 16) floats */
    int64_t nseg, K;        /* segments, steps per segment (K may be 0: C = Cin or 0) */
    int64_t M, N;           /* tile size */
    const float *Cin;       /* NULL: start from 0; else fp32 [M x N] with stride ldcin */
    int64_t ldcin;
    const float *Cadd;      /* NULL, or fp32 added to the sum before the store (see above) */
    int64_t ldcadd;
    void *C;                /* output, fp32 or bf16 (uint16_t) */
    int64_t ldc;
    int c_bf16;
    int c_trans;            /* C(m, n) at C[n * ldc + m] (the transposed output; no Cin) */
    int c_stream;           /* C is large and written once: aligned full vectors may use
                             * non-temporal stores (pf_bsmm_run fences after phase 1) */
    int pairs;              /* fp32 tiles: steps in the pair order (see above) */
} pf_tile;

typedef void (*pf_tile_fn)(const pf_tile *t);

void pf_tile_portable(const pf_tile *t);
void pf_tile_avx2(const pf_tile *t);
void pf_tile_avx512(const pf_tile *t);
void pf_tile_avx512bf16(const pf_tile *t); /* = pf_tile_avx512, built with the bf16 target */
void pf_tile_pairs_portable(const pf_tile *t);
void pf_tile_pairs_avx2(const pf_tile *t);
void pf_tile_pairs_avx512(const pf_tile *t);
void pf_tile_pairs_avx512bf16(const pf_tile *t);

/* The few-row tile (tile_narrow.c, AVX2 + FMA; the AVX-512 ISAs use it too): a transposed
 * tile (c_trans, no Cin) with N < PF_NARROW_N vectorised over m instead of n; any other
 * tile goes to pf_tile_avx2. Bitwise equal to pf_tile_portable. */
#define PF_NARROW_N 8
void pf_tile_narrow_avx2(const pf_tile *t);

/* C[m x n] = (acc ? C : 0) + A B, fp32, A(i, p) = A[i * ams + p * ass] (one stride is 1), B
 * and C row-major with row strides ldb, ldc, computed by `tile` (so with its summation order). */
static inline void pf_tile_gemm_strided(pf_tile_fn tile, int64_t m, int64_t n, int64_t k,
                                        const float *A, int64_t ams, int64_t ass, const float *B,
                                        int64_t ldb, float *C, int64_t ldc, int acc) {
    pf_tile t;
    memset(&t, 0, sizeof t);
    t.A = A;
    t.ams = ams;
    t.ass = ass;
    t.B = B;
    t.bss = ldb;
    t.nseg = 1;
    t.K = k;
    t.M = m;
    t.N = n;
    t.Cin = acc ? C : NULL;
    t.ldcin = ldc;
    t.C = C;
    t.ldc = ldc;
    tile(&t);
}

/* C = (acc ? C : 0) + A B with A row-major [m x k] (row stride lda) */
static inline void pf_tile_gemm(pf_tile_fn tile, int64_t m, int64_t n, int64_t k, const float *A,
                                int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
                                int acc) {
    pf_tile_gemm_strided(tile, m, n, k, A, lda, 1, B, ldb, C, ldc, acc);
}

/* C = (acc ? C : 0) + A^T B with A stored [k x m] (row stride lda) */
static inline void pf_tile_gemm_tn(pf_tile_fn tile, int64_t m, int64_t n, int64_t k, const float *A,
                                   int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
                                   int acc) {
    pf_tile_gemm_strided(tile, m, n, k, A, 1, lda, B, ldb, C, ldc, acc);
}

/* Attention's tile operations on accumulator-typed (`es` bytes: float or double) row-major
 * tiles. Every fp32 table computes the GEMM with its ISA's tile kernel. */
typedef struct {
    size_t es;
    /* C[m][n] = (acc ? C : 0) + A[m][k] B[k][n] */
    void (*gemm)(int64_t m, int64_t n, int64_t k, const void *A, int64_t lda, const void *B,
                 int64_t ldb, void *C, int64_t ldc, int acc);
    /* C[m][n] = (acc ? C : 0) + sum_s A[s][m] B[s][n]  (A stored [k][m], row stride lda) */
    void (*gemm_tn)(int64_t m, int64_t n, int64_t k, const void *A, int64_t lda, const void *B,
                    int64_t ldb, void *C, int64_t ldc, int acc);
    /* max of s[0..n), NaN entries ignored (-inf if none is a number) */
    double (*rowmax)(const void *s, int64_t n);
    /* s = exp(s - c), returns the sum (NaN if an entry is NaN); c finite */
    double (*exp_sub_sum)(void *s, int64_t n, double c);
    void (*scale)(void *x, int64_t n, double a);
    /* Backward on a rows x n tile: P = exp(S - c), dP = P * (dP - D), with c and D one value
     * per row (per_row = 1, c[r], D[r]) or one per column (per_row = 0, c[j], D[j]). */
    void (*p_ds)(void *S, void *dP, int64_t rows, int64_t n, const void *c, const void *D,
                 int per_row);
} pf_attn_ops;

extern const pf_attn_ops pf_attn_ops_f64, pf_attn_ops_portable, pf_attn_ops_avx2,
    pf_attn_ops_avx512, pf_attn_ops_avx512bf16;

/* The kernels of one ISA. */
typedef struct {
    int isa;                  /* PF_ISA_PORTABLE, _AVX2, _AVX512 or _AVX512BF16 */
    pf_tile_fn tile;
    const pf_attn_ops *attn;  /* fp32 attention ops */
    pf_tile_fn tile_pairs;    /* bf16 pair tiles (emulated unless pairs_native) */
    int pairs_native;         /* 1: tile_pairs is vdpbf16ps, faster than widening bf16 */
    pf_tile_fn tile_narrow;   /* transposed tiles with N < PF_NARROW_N (bsmm.c's few rows) */
} pf_kernels;

/* The kernels for a PF_ISA_* request (isa.c): AUTO is the best this CPU has; an ISA the
 * CPU lacks falls back to the best it has below it (the checks reject such requests first). */
const pf_kernels *pf_kernels_pick(int isa);

/* NULL if `isa` is a PF_ISA_* value this CPU can run, else a message naming "isa". */
pf_err pf_isa_check(int isa);

/* Independent accumulator chains of every peak-probe loop (peak.c, kernels_simd.h,
 * kernels_avx512bf16.c): enough to hide the FMA latency on every CPU seen (4 cycles x 2
 * pipes needs 8; 12 leaves margin). */
#define PF_PEAK_CHAINS 12
/* Steps per round of the tile probe (peak.c, kernels_simd.h): its operands, PF_MR2 x K and
 * K x 2 vectors of fp32 (10 KiB on AVX-512), stay in L1. */
#define PF_PEAK_TILE_K 64

/* ------------------------------------------------------------------ bf16 */

/* fp32 -> bf16, round to nearest even; NaN stays a (quiet) NaN with its sign. */
static inline uint16_t pf_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float pf_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* dst[0..n) = src widened to fp32 */
static inline void pf_bf16_to_f32_n(float *dst, const uint16_t *src, int64_t n) {
    for (int64_t k = 0; k < n; ++k) dst[k] = pf_bf16_to_f32(src[k]);
}

#endif /* PF_KERNELS_H */
