/*
 * kernels_portable.c - the portable C kernels: pf_tile_portable (the reference order of
 * the tile contract in kernels.h, which the SIMD kernels reproduce bitwise), and
 * attention's portable ops, fp32 (pf_attn_ops_portable, GEMM through pf_tile_portable)
 * and float64 (pf_attn_ops_f64, double accumulation: the exact path used by gradcheck).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* ------------------------------------------------------------------ tile */

/* acc[0..nc) += the steps of one segment for row m: fp32 operands, steps in the contract's
 * order (pairs: 1, 0, 3, 2, ..., K - 1 alone if K is odd) */
static void seg_fp32(const pf_tile *t, const float *a, const float *b, float *acc, int64_t nc) {
    for (int64_t i = 0; i < t->K; ++i) {
        const int64_t s = t->pairs && (i ^ 1) < t->K ? i ^ 1 : i;
        const float av = a[s * t->ass];
        const float *bs = b + s * t->bss;
        for (int64_t n = 0; n < nc; ++n) acc[n] = fmaf(av, bs[n], acc[n]);
    }
}

/* the same for bf16 pairs (pair tiles): per pair the step-2p+1 product, then the step-2p one */
static void seg_pairs(const pf_tile *t, const uint16_t *a, const uint16_t *b, float *acc, int64_t nc) {
    for (int64_t p = 0; p < t->K; ++p) {
        const uint16_t *ap = a + p * t->ass, *bp = b + p * t->bss;
        const float a1 = pf_bf16_to_f32(ap[1]), a0 = pf_bf16_to_f32(ap[0]);
        for (int64_t n = 0; n < nc; ++n) {
            acc[n] = fmaf(a1, pf_bf16_to_f32(bp[2 * n + 1]), acc[n]);
            acc[n] = fmaf(a0, pf_bf16_to_f32(bp[2 * n]), acc[n]);
        }
    }
}

static void tile(const pf_tile *t, int bf16_pairs) {
    enum { NC = 64 };
    float acc[NC];
    const int64_t ew = bf16_pairs ? 2 : 1; /* B elements per column */
    for (int64_t n0 = 0; n0 < t->N; n0 += NC) {
        const int64_t nc = t->N - n0 < NC ? t->N - n0 : NC;
        for (int64_t m = 0; m < t->M; ++m) {
            if (t->Cin)
                memcpy(acc, t->Cin + m * t->ldcin + n0, (size_t)nc * sizeof(float));
            else
                for (int64_t n = 0; n < nc; ++n) acc[n] = 0.0f;
            for (int64_t seg = 0; seg < t->nseg; ++seg) {
                const int64_t ao = m * t->ams + (t->aidx ? t->aidx[seg] * t->ascale : seg * t->aseg);
                const int64_t bo = (t->bidx ? t->bidx[seg] * t->bscale : seg * t->bseg) + n0 * ew;
                if (bf16_pairs)
                    seg_pairs(t, (const uint16_t *)(const void *)t->A + ao,
                              (const uint16_t *)(const void *)t->B + bo, acc, nc);
                else
                    seg_fp32(t, t->A + ao, t->B + bo, acc, nc);
            }
            for (int64_t n = 0; t->Cadd && n < nc; ++n)
                acc[n] += t->c_trans ? t->Cadd[(n0 + n) * t->ldcadd + m] : t->Cadd[m * t->ldcadd + n0 + n];
            if (t->c_trans) {
                for (int64_t n = 0; n < nc; ++n) {
                    const int64_t at = (n0 + n) * t->ldc + m;
                    if (t->c_bf16) ((uint16_t *)t->C)[at] = pf_f32_to_bf16(acc[n]);
                    else ((float *)t->C)[at] = acc[n];
                }
            } else if (t->c_bf16) {
                uint16_t *c = (uint16_t *)t->C + m * t->ldc + n0;
                for (int64_t n = 0; n < nc; ++n) c[n] = pf_f32_to_bf16(acc[n]);
            } else {
                memcpy((float *)t->C + m * t->ldc + n0, acc, (size_t)nc * sizeof(float));
            }
        }
    }
}

void pf_tile_portable(const pf_tile *t) { tile(t, 0); }
void pf_tile_pairs_portable(const pf_tile *t) { tile(t, 1); }

/* ------------------------------------------------------------------ attention */

static void gemm_f32(int64_t m, int64_t n, int64_t k, const void *A, int64_t lda, const void *B,
                     int64_t ldb, void *C, int64_t ldc, int acc) {
    pf_tile_gemm(pf_tile_portable, m, n, k, (const float *)A, lda, (const float *)B, ldb,
                 (float *)C, ldc, acc);
}

static void gemm_tn_f32(int64_t m, int64_t n, int64_t k, const void *A, int64_t lda,
                        const void *B, int64_t ldb, void *C, int64_t ldc, int acc) {
    pf_tile_gemm_tn(pf_tile_portable, m, n, k, (const float *)A, lda, (const float *)B, ldb,
                    (float *)C, ldc, acc);
}

/* C[i][j] (+)= sum_p A(i, p) B[p][j] in double, A(i, p) = A[i * ams + p * ass] */
static void gemm_strided_f64(int64_t m, int64_t n, int64_t k, const double *A, int64_t ams,
                             int64_t ass, const double *B, int64_t ldb, double *C, int64_t ldc,
                             int acc) {
    for (int64_t i = 0; i < m; ++i) {
        double *c = C + i * ldc;
        if (!acc)
            for (int64_t j = 0; j < n; ++j) c[j] = 0;
        for (int64_t p = 0; p < k; ++p) {
            const double a = A[i * ams + p * ass];
            const double *b = B + p * ldb;
            for (int64_t j = 0; j < n; ++j) c[j] += a * b[j];
        }
    }
}

static void gemm_f64(int64_t m, int64_t n, int64_t k, const void *A, int64_t lda, const void *B,
                     int64_t ldb, void *C, int64_t ldc, int acc) {
    gemm_strided_f64(m, n, k, (const double *)A, lda, 1, (const double *)B, ldb, (double *)C, ldc, acc);
}

static void gemm_tn_f64(int64_t m, int64_t n, int64_t k, const void *A, int64_t lda,
                        const void *B, int64_t ldb, void *C, int64_t ldc, int acc) {
    gemm_strided_f64(m, n, k, (const double *)A, 1, lda, (const double *)B, ldb, (double *)C, ldc, acc);
}

/* The row ops of pf_attn_ops, generic over the accumulator type T. */
#define ROW_OPS(T, SFX, EXP)                                                                   \
    static double rowmax_##SFX(const void *s_, int64_t n) {                                   \
        const T *s = (const T *)s_;                                                            \
        T mx = -INFINITY;                                                                      \
        for (int64_t j = 0; j < n; ++j) mx = s[j] > mx ? s[j] : mx;                            \
        return (double)mx;                                                                     \
    }                                                                                          \
    static double exp_sub_sum_##SFX(void *s_, int64_t n, double c) {                          \
        T *s = (T *)s_;                                                                        \
        const T cc = (T)c;                                                                     \
        double sum = 0;                                                                        \
        for (int64_t j = 0; j < n; ++j) {                                                      \
            s[j] = EXP(s[j] - cc);                                                             \
            sum += s[j];                                                                       \
        }                                                                                      \
        return sum;                                                                            \
    }                                                                                          \
    static void scale_##SFX(void *x_, int64_t n, double a) {                                  \
        T *x = (T *)x_;                                                                        \
        const T aa = (T)a;                                                                     \
        for (int64_t j = 0; j < n; ++j) x[j] *= aa;                                            \
    }                                                                                          \
    static void p_ds_##SFX(void *S_, void *dP_, int64_t rows, int64_t n, const void *c_,       \
                           const void *D_, int per_row) {                                      \
        const T *c = (const T *)c_, *D = (const T *)D_;                                        \
        for (int64_t r = 0; r < rows; ++r) {                                                   \
            T *Sr = (T *)S_ + r * n, *dPr = (T *)dP_ + r * n;                                  \
            const int64_t cs = per_row ? 0 : 1;                                                \
            const T *cr = per_row ? c + r : c, *Dr = per_row ? D + r : D;                      \
            for (int64_t j = 0; j < n; ++j) {                                                  \
                const T p = EXP(Sr[j] - cr[j * cs]);                                           \
                Sr[j] = p;                                                                     \
                dPr[j] = p * (dPr[j] - Dr[j * cs]);                                            \
            }                                                                                  \
        }                                                                                      \
    }

ROW_OPS(float, f32, expf)
ROW_OPS(double, f64, exp)

const pf_attn_ops pf_attn_ops_portable = {4, gemm_f32, gemm_tn_f32, rowmax_f32, exp_sub_sum_f32, scale_f32, p_ds_f32};
const pf_attn_ops pf_attn_ops_f64 = {8, gemm_f64, gemm_tn_f64, rowmax_f64, exp_sub_sum_f64, scale_f64, p_ds_f64};
