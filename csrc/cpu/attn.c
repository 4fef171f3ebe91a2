/*
 * attn.c - block-sparse (flash-attention style) attention on the CPU. See pixelfly_attn.h.
 *
 * Design
 *   Phase 0 packs every operand once, per (problem, block): q and k as row tiles (scaled by
 *   `scale`) and as transposed tiles [d][b] (unscaled), v and dout likewise, plus the
 *   per-row statistics of the backward (lse with -inf turned into +inf so that fully masked
 *   rows give P = 0, and D = rowsum(dout * out) - dlse). Packing converts bf16 to fp32 once,
 *   so every product below is one shape of small GEMM, C[m][n] (+)= A[m][k] B[k][n] with B
 *   row-major (vectorised over n): S = Qs Kt, O += P V, dP = dO Vt, dQ += dS Ks,
 *   S^T = Ks Qt, dP^T = V dOt, dV += P^T dO, dK += dS^T Qs.
 *   Phase 1 runs the work items: FWD one per (problem, query block-row) with an online
 *   softmax; BWD one per (problem, query block-row) for dq over the CSR index and one per
 *   (problem, key block-column) for dk, dv over the CSC index (scores recomputed from lse).
 *   Items are dealt to tasks cyclically (causal rows have unequal cost); each task owns a
 *   scratch area (score tiles and accumulators) in the workspace.
 *
 *   Kernels: AVX-512 (fp32, via __attribute__((target)), chosen at run time) and portable C
 *   (fp32 and fp64). The accumulator type is float for FLOAT32/BFLOAT16 and double for
 *   FLOAT64; everything below dispatches on its size `es` through a small table of tile ops.
 */
#include "pixelfly_attn.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define PF_ATTN_X86 1
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------ helpers */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static size_t dtype_size(pf_dtype t) { return t == PF_FLOAT64 ? 8 : t == PF_FLOAT32 ? 4 : 2; }

#define ALIGN64(x) (((x) + 63) & ~(int64_t)63)

/* ------------------------------------------------------------ tile op table */

typedef struct {
    size_t es; /* accumulator element size: 4 (float) or 8 (double) */
    /* C[m][n] = (acc ? C : 0) + A[m][k] B[k][n] */
    void (*gemm)(int64_t m, int64_t n, int64_t k, const void *A, int64_t lda, const void *B,
                 int64_t ldb, void *C, int64_t ldc, int acc);
    /* max of s[0..n), NaN entries ignored (-inf if none is a number) */
    double (*rowmax)(const void *s, int64_t n);
    /* s = exp(s - c), returns the sum (NaN if an entry is NaN); c finite */
    double (*exp_sub_sum)(void *s, int64_t n, double c);
    /* s[j] = exp(s[j] - c[j * cs]); c may be +inf (gives 0) */
    void (*exp_sub)(void *s, int64_t n, const void *c, int64_t cs);
    /* p[j] = p[j] * (dp[j] - D[j * ds]) */
    void (*dsoft)(void *p, const void *dp, int64_t n, const void *D, int64_t ds);
    void (*scale)(void *x, int64_t n, double a);
    /* Backward on a rows x n tile: P = exp(S - c), dP = P * (dP - D), with c and D one value
     * per row (per_row = 1, c[r], D[r]) or one per column (per_row = 0, c[j], D[j]). */
    void (*p_ds)(void *S, void *dP, int64_t rows, int64_t n, const void *c, const void *D, int per_row);
} tile_ops;

/* ---- portable, generic over float and double */
#define PORTABLE_OPS(T, SFX, EXP)                                                              \
    static void gemm_##SFX(int64_t m, int64_t n, int64_t k, const void *A_, int64_t lda,      \
                           const void *B_, int64_t ldb, void *C_, int64_t ldc, int acc) {      \
        const T *A = (const T *)A_, *B = (const T *)B_;                                        \
        T *C = (T *)C_;                                                                        \
        for (int64_t i = 0; i < m; ++i) {                                                      \
            T *c = C + i * ldc;                                                                \
            if (!acc)                                                                          \
                for (int64_t j = 0; j < n; ++j) c[j] = 0;                                      \
            for (int64_t p = 0; p < k; ++p) {                                                  \
                const T a = A[i * lda + p];                                                    \
                const T *b = B + p * ldb;                                                      \
                for (int64_t j = 0; j < n; ++j) c[j] += a * b[j];                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
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
    static void exp_sub_##SFX(void *s_, int64_t n, const void *c_, int64_t cs) {              \
        T *s = (T *)s_;                                                                        \
        const T *c = (const T *)c_;                                                            \
        for (int64_t j = 0; j < n; ++j) s[j] = EXP(s[j] - c[j * cs]);                          \
    }                                                                                          \
    static void dsoft_##SFX(void *p_, const void *dp_, int64_t n, const void *D_, int64_t ds) { \
        T *p = (T *)p_;                                                                        \
        const T *dp = (const T *)dp_, *D = (const T *)D_;                                      \
        for (int64_t j = 0; j < n; ++j) p[j] = p[j] * (dp[j] - D[j * ds]);                     \
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
    }                                                                                          \
    static const tile_ops ops_##SFX = {sizeof(T),         gemm_##SFX,       rowmax_##SFX,      \
                                       exp_sub_sum_##SFX, exp_sub_##SFX,    dsoft_##SFX,       \
                                       scale_##SFX,       p_ds_##SFX};

PORTABLE_OPS(float, f32, expf)
PORTABLE_OPS(double, f64, exp)

/* ---- AVX-512 fp32 */
#ifdef PF_ATTN_X86
#define AVX512 __attribute__((target("avx512f")))

static inline __mmask16 tail_mask(int64_t rem) {
    return rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1u);
}

/* exp(x) for x <= 88.7; x < -87.3 (incl. -inf) gives exactly 0, NaN gives NaN. Cephes expf
 * polynomial. */
static inline AVX512 __m512 exp512(__m512 x) {
    const __m512 x0 = x;
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3365f), _CMP_LT_OQ);
    x = _mm512_min_ps(x, _mm512_set1_ps(88.72283f));
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3365f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    f = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), f);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(f, f), _mm512_add_ps(f, _mm512_set1_ps(1.0f)));
    return _mm512_mask_mov_ps(_mm512_maskz_mov_ps((__mmask16)~tiny, _mm512_scalef_ps(p, n)), nan, x0);
}

/* Micro-kernel: ROWS rows of C, NV 16-wide column vectors (the last one masked). */
static inline __attribute__((always_inline)) AVX512 void
mk512(const int ROWS, const int NV, int64_t k, const float *A, int64_t lda, const float *B,
      int64_t ldb, float *C, int64_t ldc, __mmask16 tail, int acc) {
    __m512 c[8][4];
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            c[r][v] = acc ? _mm512_maskz_loadu_ps(v == NV - 1 ? tail : 0xffff, C + r * ldc + 16 * v)
                          : _mm512_setzero_ps();
    for (int64_t p = 0; p < k; ++p) {
        __m512 b[4];
        const float *bp = B + p * ldb;
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            b[v] = _mm512_maskz_loadu_ps(v == NV - 1 ? tail : 0xffff, bp + 16 * v);
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; ++r) {
            const __m512 a = _mm512_set1_ps(A[r * lda + p]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) c[r][v] = _mm512_fmadd_ps(a, b[v], c[r][v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            _mm512_mask_storeu_ps(C + r * ldc + 16 * v, v == NV - 1 ? tail : 0xffff, c[r][v]);
}

#define MK_ROWS(NV, RB)                                                                        \
    do {                                                                                       \
        int64_t i = 0;                                                                         \
        for (; i + RB <= m; i += RB)                                                           \
            mk512(RB, NV, k, A + i * lda, lda, B + j0, ldb, C + i * ldc + j0, ldc, tail, acc); \
        for (; i < m; ++i)                                                                     \
            mk512(1, NV, k, A + i * lda, lda, B + j0, ldb, C + i * ldc + j0, ldc, tail, acc);  \
    } while (0)

static AVX512 void gemm_avx512(int64_t m, int64_t n, int64_t k, const void *A_, int64_t lda,
                               const void *B_, int64_t ldb, void *C_, int64_t ldc, int acc) {
    const float *A = (const float *)A_, *B = (const float *)B_;
    float *C = (float *)C_;
    for (int64_t j0 = 0; j0 < n; j0 += 64) {
        const int64_t w = n - j0 < 64 ? n - j0 : 64;
        const int nv = (int)((w + 15) / 16);
        const __mmask16 tail = tail_mask(w - 16 * (nv - 1));
        switch (nv) {
        case 1: MK_ROWS(1, 8); break;
        case 2: MK_ROWS(2, 8); break;
        case 3: MK_ROWS(3, 4); break;
        default: MK_ROWS(4, 4); break;
        }
    }
}

static AVX512 double rowmax_avx512(const void *s_, int64_t n) {
    const float *s = (const float *)s_;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; j += 16)
        mx = _mm512_max_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(n - j), s + j), mx);
    return (double)_mm512_reduce_max_ps(mx);
}

static AVX512 double exp_sub_sum_avx512(void *s_, int64_t n, double c) {
    float *s = (float *)s_;
    const __m512 cc = _mm512_set1_ps((float)c);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 mk = tail_mask(n - j);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + j), cc));
        _mm512_mask_storeu_ps(s + j, mk, e);
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mk, e));
    }
    return (double)_mm512_reduce_add_ps(sum);
}

static AVX512 void exp_sub_avx512(void *s_, int64_t n, const void *c_, int64_t cs) {
    float *s = (float *)s_;
    const float *c = (const float *)c_;
    const __m512 c0 = _mm512_set1_ps(c[0]);
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 mk = tail_mask(n - j);
        const __m512 cv = cs ? _mm512_maskz_loadu_ps(mk, c + j) : c0;
        _mm512_mask_storeu_ps(s + j, mk, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + j), cv)));
    }
}

static AVX512 void dsoft_avx512(void *p_, const void *dp_, int64_t n, const void *D_, int64_t ds) {
    float *p = (float *)p_;
    const float *dp = (const float *)dp_, *D = (const float *)D_;
    const __m512 d0 = _mm512_set1_ps(D[0]);
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 mk = tail_mask(n - j);
        const __m512 dv = ds ? _mm512_maskz_loadu_ps(mk, D + j) : d0;
        const __m512 r = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, p + j),
                                       _mm512_sub_ps(_mm512_maskz_loadu_ps(mk, dp + j), dv));
        _mm512_mask_storeu_ps(p + j, mk, r);
    }
}

static AVX512 void scale_avx512(void *x_, int64_t n, double a) {
    float *x = (float *)x_;
    const __m512 av = _mm512_set1_ps((float)a);
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 mk = tail_mask(n - j);
        _mm512_mask_storeu_ps(x + j, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x + j), av));
    }
}

static AVX512 void p_ds_avx512(void *S_, void *dP_, int64_t rows, int64_t n, const void *c_,
                               const void *D_, int per_row) {
    const float *c = (const float *)c_, *D = (const float *)D_;
    for (int64_t r = 0; r < rows; ++r) {
        float *Sr = (float *)S_ + r * n, *dPr = (float *)dP_ + r * n;
        const __m512 cr = _mm512_set1_ps(per_row ? c[r] : 0.f), Dr = _mm512_set1_ps(per_row ? D[r] : 0.f);
        for (int64_t j = 0; j < n; j += 16) {
            const __mmask16 mk = tail_mask(n - j);
            const __m512 cv = per_row ? cr : _mm512_maskz_loadu_ps(mk, c + j);
            const __m512 Dv = per_row ? Dr : _mm512_maskz_loadu_ps(mk, D + j);
            const __m512 p = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, Sr + j), cv));
            _mm512_mask_storeu_ps(Sr + j, mk, p);
            _mm512_mask_storeu_ps(dPr + j, mk, _mm512_mul_ps(p, _mm512_sub_ps(_mm512_maskz_loadu_ps(mk, dPr + j), Dv)));
        }
    }
}

static const tile_ops ops_avx512 = {4, gemm_avx512, rowmax_avx512, exp_sub_sum_avx512,
                                    exp_sub_avx512, dsoft_avx512, scale_avx512, p_ds_avx512};
#endif /* PF_ATTN_X86 */

int pf_attn_has_avx512(void) {
#if defined(PF_ATTN_X86) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
    return 0;
#endif
}

static const tile_ops *pick_ops(const pf_attn_args *a) {
    if (a->dtype == PF_FLOAT64) return &ops_f64;
#ifdef PF_ATTN_X86
    if ((a->isa == PF_ISA_AUTO || a->isa == PF_ISA_AVX512) && pf_attn_has_avx512()) return &ops_avx512;
#endif
    return &ops_f32;
}

/* ------------------------------------------------------------------ checks */

static pf_err check_tensor(const pf_attn_tensor *t, const char *null_msg, const char *stride_msg) {
    if (!t->p) return null_msg;
    if (t->sb < 0 || t->sh < 0 || t->sl < 0) return stride_msg;
    return NULL;
}

/* Validates a compressed index: ptr[0] = 0, non-decreasing, ptr[n] = nnz, idx in [0, n)
 * strictly ascending inside each segment. */
static int valid_compressed(int64_t n, int64_t nnz, const int64_t *ptr, const int64_t *idx) {
    if (ptr[0] != 0 || ptr[n] != nnz) return 0;
    for (int64_t r = 0; r < n; ++r) {
        if (ptr[r + 1] < ptr[r] || ptr[r + 1] > nnz) return 0;
        for (int64_t p = ptr[r]; p < ptr[r + 1]; ++p) {
            if (idx[p] < 0 || idx[p] >= n) return 0;
            if (p > ptr[r] && idx[p] <= idx[p - 1]) return 0;
        }
    }
    return 1;
}

static int csr_has(const int64_t *row_ptr, const int64_t *col_idx, int64_t i, int64_t j) {
    int64_t lo = row_ptr[i], hi = row_ptr[i + 1];
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (col_idx[mid] == j) return 1;
        if (col_idx[mid] < j) lo = mid + 1; else hi = mid;
    }
    return 0;
}

pf_err pf_attn_check(int op, const pf_attn_args *a) {
    if (!a) return "args must not be NULL";
    if (op != PF_ATTN_FWD && op != PF_ATTN_BWD) return "op must be PF_ATTN_FWD or PF_ATTN_BWD";
    if (a->dtype != PF_FLOAT32 && a->dtype != PF_BFLOAT16 && a->dtype != PF_FLOAT64)
        return "dtype must be PF_FLOAT32, PF_BFLOAT16 or PF_FLOAT64";
    if (a->batch < 0 || a->heads < 0) return "batch and heads must be >= 0";
    if (a->block < 1 || a->block > 4096) return "block must be in [1, 4096]";
    if (a->L < a->block) return "L must be >= block (at least one block)";
    if (a->L % a->block != 0) return "L must be a multiple of block";
    if (a->L / a->block > PF_MAX_GRID) return "L / block exceeds PF_MAX_GRID";
    if (a->d < 1 || a->d > 65536) return "d (head dim) must be in [1, 65536]";
    if (!(a->scale == a->scale) || isinf(a->scale)) return "scale must be finite";
    if (a->max_tasks < 0) return "max_tasks must be >= 0";
    if (a->isa < PF_ISA_AUTO || a->isa > PF_ISA_AVX512) return "isa must be a PF_ISA_* value";
    if (a->isa == PF_ISA_AVX512 && !pf_attn_has_avx512()) return "isa AVX512 is not supported by this CPU";
    const int64_t N = a->batch * a->heads;
    if (a->batch > 0 && N / a->batch != a->heads) return "batch * heads overflows";
    /* bound the workspace arithmetic: 10 packed copies of N*L*d doubles must fit int64 */
    if (N > 0 && ((double)N * (double)a->L * (double)(a->d + 2) * 10.0 * 8.0 > 9.0e18))
        return "batch * heads * L * d is too large";
    const int64_t R = a->L / a->block;
    if (a->nnz < 0 || a->nnz > R * R) return "nnz must be in [0, (L/block)^2]";
    if (!a->row_ptr) return "row_ptr must not be NULL";
    if (a->nnz > 0 && !a->col_idx) return "col_idx must not be NULL";
    if (!valid_compressed(R, a->nnz, a->row_ptr, a->col_idx))
        return "row_ptr/col_idx are not a valid block-CSR of the (L/block)^2 layout (row_ptr[0] = 0, "
               "non-decreasing, row_ptr[R] = nnz, col_idx in range and ascending per row)";
    if (op == PF_ATTN_BWD) {
        if (!a->col_ptr) return "col_ptr must not be NULL for the backward";
        if (a->nnz > 0 && !a->row_idx) return "row_idx must not be NULL for the backward";
        if (!valid_compressed(R, a->nnz, a->col_ptr, a->row_idx))
            return "col_ptr/row_idx are not a valid block-CSC of the layout";
        for (int64_t j = 0; j < R; ++j)
            for (int64_t p = a->col_ptr[j]; p < a->col_ptr[j + 1]; ++p)
                if (!csr_has(a->row_ptr, a->col_idx, a->row_idx[p], j))
                    return "col_ptr/row_idx is not the transpose of row_ptr/col_idx";
    }
    if (N == 0) return NULL;
    pf_err e;
    if ((e = check_tensor(&a->q, "q must not be NULL", "q strides must be >= 0"))) return e;
    if ((e = check_tensor(&a->k, "k must not be NULL", "k strides must be >= 0"))) return e;
    if ((e = check_tensor(&a->v, "v must not be NULL", "v strides must be >= 0"))) return e;
    if ((e = check_tensor(&a->out, "out must not be NULL", "out strides must be >= 0"))) return e;
    if (!a->lse) return "lse must not be NULL";
    if (op == PF_ATTN_BWD) {
        if ((e = check_tensor(&a->dout, "dout must not be NULL", "dout strides must be >= 0"))) return e;
        if ((e = check_tensor(&a->dq, "dq must not be NULL", "dq strides must be >= 0"))) return e;
        if ((e = check_tensor(&a->dk, "dk must not be NULL", "dk strides must be >= 0"))) return e;
        if ((e = check_tensor(&a->dv, "dv must not be NULL", "dv strides must be >= 0"))) return e;
        if (a->dq.sl < a->d || a->dk.sl < a->d || a->dv.sl < a->d)
            return "dq, dk and dv row strides must be >= d (outputs must not overlap)";
    } else if (a->out.sl < a->d) {
        return "out row stride must be >= d (outputs must not overlap)";
    }
    return NULL;
}

/* ---------------------------------------------------------- workspace plan */

typedef struct {
    int64_t N, R, b, d, L;
    int fused;          /* BWD: one pass per (problem), 5 GEMMs per block instead of 7 */
    size_t es;
    int64_t items0, items1, tasks0, tasks1;
    int64_t off[11];    /* packed operands (bytes) */
    int64_t scratch;    /* start of per-task scratch */
    int64_t per_task;   /* bytes of scratch per task */
    int64_t total;
} plan_t;

enum { P_QS, P_QT, P_KS, P_KT, P_V, P_VT, P_DO, P_DOT, P_D, P_LSE, P_DQ };

static int64_t ntasks(int64_t items, int64_t cap) { return cap > 0 && cap < items ? cap : items; }

static void make_plan(int op, const pf_attn_args *a, plan_t *P) {
    P->N = a->batch * a->heads;
    P->b = a->block;
    P->d = a->d;
    P->L = a->L;
    P->R = a->L / a->block;
    P->es = a->dtype == PF_FLOAT64 ? 8 : 4;
    const int64_t es = (int64_t)P->es, NLd = P->N * P->L * P->d, NL = P->N * P->L;
    P->fused = op == PF_ATTN_BWD && a->bwd_per_problem;
    P->items0 = P->N * P->R;
    P->items1 = op == PF_ATTN_FWD ? P->N * P->R : P->fused ? P->N : 2 * P->N * P->R;
    P->tasks0 = ntasks(P->items0, a->max_tasks);
    P->tasks1 = ntasks(P->items1, a->max_tasks);
    int64_t o = 0;
    for (int i = 0; i < 11; ++i) P->off[i] = -1;
    static const int fwd_parts[] = {P_QS, P_KT, P_V};
    static const int bwd_parts[] = {P_QS, P_QT, P_KS, P_KT, P_V, P_VT, P_DO, P_DOT, P_D, P_LSE};
    static const int fused_parts[] = {P_QS, P_QT, P_KS, P_V, P_DO, P_DOT, P_D, P_LSE, P_DQ};
    const int *parts = op == PF_ATTN_FWD ? fwd_parts : P->fused ? fused_parts : bwd_parts;
    const int np = op == PF_ATTN_FWD ? 3 : P->fused ? 9 : 10;
    for (int i = 0; i < np; ++i) {
        P->off[parts[i]] = o;
        o += ALIGN64((parts[i] == P_D || parts[i] == P_LSE ? NL : NLd) * es);
    }
    P->scratch = o;
    const int64_t b = P->b, d = P->d;
    if (op == PF_ATTN_FWD)  /* S tile, acc, m, l (double) */
        P->per_task = ALIGN64(b * b * es) + ALIGN64(b * d * es) + ALIGN64(3 * b * 8);
    else                    /* S, dP (+ dS^T when fused) tiles, two accumulators */
        P->per_task = (P->fused ? 3 : 2) * ALIGN64(b * b * es) + 2 * ALIGN64(b * d * es);
    P->total = o + P->tasks1 * P->per_task;
}

int64_t pf_attn_workspace(int op, const pf_attn_args *a) {
    if (pf_attn_check(op, a)) return -1;
    plan_t P;
    make_plan(op, a, &P);
    return P.total;
}

int64_t pf_attn_num_tasks(int op, int phase, const pf_attn_args *a) {
    if (!a || (op != PF_ATTN_FWD && op != PF_ATTN_BWD) || phase < 0 || phase >= PF_ATTN_PHASES)
        return 0;
    if (a->batch <= 0 || a->heads <= 0 || a->block < 1 || a->L < a->block) return 0;
    plan_t P;
    make_plan(op, a, &P);
    return phase == 0 ? P.tasks0 : P.tasks1;
}

/* -------------------------------------------------------- loads and stores */

static inline const char *elem(const pf_attn_tensor *t, pf_dtype dt, int64_t n0, int64_t h, int64_t i) {
    return (const char *)t->p + (size_t)(n0 * t->sb + h * t->sh + i * t->sl) * dtype_size(dt);
}

/* dst (accumulator type) = src (storage dtype), n elements */
static void load_row(void *dst, const void *src, pf_dtype dt, int64_t n) {
    if (dt == PF_FLOAT64) {
        memcpy(dst, src, (size_t)n * 8);
    } else if (dt == PF_FLOAT32) {
        memcpy(dst, src, (size_t)n * 4);
    } else {
        float *o = (float *)dst;
        const uint16_t *s = (const uint16_t *)src;
        for (int64_t j = 0; j < n; ++j) o[j] = bf16_to_f32(s[j]);
    }
}

/* dst (storage dtype) = factor * src (accumulator type) */
static void store_row(void *dst, pf_dtype dt, const void *src, int64_t n, double factor) {
    if (dt == PF_FLOAT64) {
        double *o = (double *)dst;
        const double *s = (const double *)src;
        for (int64_t j = 0; j < n; ++j) o[j] = s[j] * factor;
    } else {
        const float *s = (const float *)src;
        const float f = (float)factor;
        if (dt == PF_FLOAT32) {
            float *o = (float *)dst;
            for (int64_t j = 0; j < n; ++j) o[j] = s[j] * f;
        } else {
            uint16_t *o = (uint16_t *)dst;
            for (int64_t j = 0; j < n; ++j) o[j] = f32_to_bf16(s[j] * f);
        }
    }
}

static void zero_store_row(void *dst, pf_dtype dt, int64_t n) { memset(dst, 0, (size_t)n * dtype_size(dt)); }

/* transposed tile: T[c * b + i] = row[c] */
static void scatter_col(void *tile, const void *row, int64_t d, int64_t b, int64_t i, size_t es) {
    if (es == 8) {
        double *t = (double *)tile;
        const double *r = (const double *)row;
        for (int64_t c = 0; c < d; ++c) t[c * b + i] = r[c];
    } else {
        float *t = (float *)tile;
        const float *r = (const float *)row;
        for (int64_t c = 0; c < d; ++c) t[c * b + i] = r[c];
    }
}

static void scale_row(void *row, int64_t n, double s, size_t es) {
    if (es == 8) {
        double *r = (double *)row;
        for (int64_t j = 0; j < n; ++j) r[j] *= s;
    } else {
        float *r = (float *)row;
        const float f = (float)s;
        for (int64_t j = 0; j < n; ++j) r[j] *= f;
    }
}

static double dot_row(const void *acc_row, const void *src, pf_dtype dt, int64_t n) {
    double s = 0;
    if (dt == PF_FLOAT64) {
        const double *a = (const double *)acc_row, *b = (const double *)src;
        for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
    } else if (dt == PF_FLOAT32) {
        const float *a = (const float *)acc_row, *b = (const float *)src;
        float f = 0;
        for (int64_t j = 0; j < n; ++j) f += a[j] * b[j];
        s = f;
    } else {
        const float *a = (const float *)acc_row;
        const uint16_t *b = (const uint16_t *)src;
        float f = 0;
        for (int64_t j = 0; j < n; ++j) f += a[j] * bf16_to_f32(b[j]);
        s = f;
    }
    return s;
}

static inline void set_val(void *p, int64_t i, double v, size_t es) {
    if (es == 8) ((double *)p)[i] = v; else ((float *)p)[i] = (float)v;
}
static inline double get_val(const void *p, int64_t i, size_t es) {
    return es == 8 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

/* Causal mask of a diagonal tile: above = 1 masks columns > row (S), 0 masks columns < row
 * (S^T, rows are keys). */
static void mask_diag(void *S, int64_t b, int above, size_t es) {
    for (int64_t r = 0; r < b; ++r) {
        const int64_t lo = above ? r + 1 : 0, hi = above ? b : r;
        for (int64_t c = lo; c < hi; ++c) set_val(S, r * b + c, -INFINITY, es);
    }
}

/* Online-softmax step on a rows x n score tile (row stride n), rows ascending. Per row, with
 * m' = max(m, rowmax) (NaN ignored): alpha = exp(m - m'), S = exp(S - m'),
 * l = l * alpha + rowsum(S), m = m'. NaN and inf follow the dense formula: a NaN score makes
 * l NaN (for good); while every score seen is -inf or NaN the weights are 0 (NaN stays NaN);
 * a +inf score makes the row's softmax NaN (m = +inf, alpha = NaN, S = NaN; l keeps only the
 * NaN flag), so that the caller gives out = NaN and lse = +inf (NaN if a score was NaN). */
static void softmax_tile(const tile_ops *ops, void *S, int64_t rows, int64_t n, double *m, double *l,
                         double *alpha) {
    const size_t es = ops->es;
    for (int64_t r = 0; r < rows; ++r) {
        void *Sr = (char *)S + (size_t)(r * n) * es;
        const double mx = ops->rowmax(Sr, n);
        const double mn = mx > m[r] ? mx : m[r];
        alpha[r] = 1.0;
        if (mn == -INFINITY || mn == INFINITY) {
            int any_nan = 0;
            for (int64_t j = 0; j < n; ++j) {
                const double x = get_val(Sr, j, es);
                any_nan |= x != x;
                set_val(Sr, j, mn == INFINITY || x != x ? NAN : 0.0, es);
            }
            if (any_nan) l[r] = NAN;
            if (mn == INFINITY && m[r] != INFINITY) alpha[r] = NAN;
            m[r] = mn;
            continue;
        }
        alpha[r] = exp(m[r] - mn);
        l[r] = l[r] * alpha[r] + ops->exp_sub_sum(Sr, n, mn);
        m[r] = mn;
    }
}

/* 1 if every one of the n values is finite */
static int all_finite(const void *x, int64_t n, size_t es) {
    if (es == 8) {
        const double *d = (const double *)x;
        double acc = 0;
        for (int64_t j = 0; j < n; ++j) acc += d[j] * 0.0; /* NaN iff some entry is NaN or inf */
        return acc == 0;
    }
    const float *f = (const float *)x;
    float acc = 0;
    for (int64_t j = 0; j < n; ++j) acc += f[j] * 0.0f;
    return acc == 0;
}

/* acc[b][d] += P V on a causal diagonal tile: row i uses keys 0..i only, so a NaN or inf
 * value of a later key is never multiplied by the zero weight of a masked position. */
static void gemm_lower(const tile_ops *ops, int64_t b, int64_t d, const void *P, const void *V, void *acc) {
    const size_t es = ops->es;
    for (int64_t i = 0; i < b; ++i)
        ops->gemm(1, d, i + 1, (const char *)P + (size_t)(i * b) * es, b, V, d,
                  (char *)acc + (size_t)(i * d) * es, d, 1);
}

#define PTR(base, off_bytes) ((void *)((char *)(base) + (off_bytes)))

/* ------------------------------------------------------------------ phases */

static void pack_block(int op, const pf_attn_args *a, const plan_t *P, int64_t item) {
    const int64_t n = item / P->R, I = item % P->R, b = P->b, d = P->d, es = (int64_t)P->es;
    const int64_t n0 = n / a->heads, h = n % a->heads;
    const pf_dtype dt = a->dtype;
    char *w = (char *)a->work;
    const int64_t tile = (n * P->R + I) * b * d * es; /* byte offset of block (n, I) in NLd arrays */
    for (int64_t i = 0; i < b; ++i) {
        const int64_t row = I * b + i;
        const int64_t roff = tile + i * d * es;
        /* q: scaled rows (+ unscaled transposed tile for BWD) */
        void *qs = PTR(w, P->off[P_QS] + roff);
        load_row(qs, elem(&a->q, dt, n0, h, row), dt, d);
        if (op == PF_ATTN_BWD) scatter_col(PTR(w, P->off[P_QT] + tile), qs, d, b, i, P->es);
        scale_row(qs, d, a->scale, P->es);
        /* k: transposed tile (unscaled) (+ scaled rows for BWD) */
        void *ks = op == PF_ATTN_BWD ? PTR(w, P->off[P_KS] + roff) : NULL;
        if (ks) {
            load_row(ks, elem(&a->k, dt, n0, h, row), dt, d);
            if (P->off[P_KT] >= 0) scatter_col(PTR(w, P->off[P_KT] + tile), ks, d, b, i, P->es);
            scale_row(ks, d, a->scale, P->es);
        } else {
            /* FWD has no row copy of k: stage it in the V slot's row, overwritten below */
            void *tmp = PTR(w, P->off[P_V] + roff);
            load_row(tmp, elem(&a->k, dt, n0, h, row), dt, d);
            scatter_col(PTR(w, P->off[P_KT] + tile), tmp, d, b, i, P->es);
        }
        void *vr = PTR(w, P->off[P_V] + roff);
        load_row(vr, elem(&a->v, dt, n0, h, row), dt, d);
        if (op == PF_ATTN_BWD) {
            if (P->off[P_VT] >= 0) scatter_col(PTR(w, P->off[P_VT] + tile), vr, d, b, i, P->es);
            void *dor = PTR(w, P->off[P_DO] + roff);
            load_row(dor, elem(&a->dout, dt, n0, h, row), dt, d);
            scatter_col(PTR(w, P->off[P_DOT] + tile), dor, d, b, i, P->es);
            const int64_t r = n * P->L + row; /* [batch, heads, L] index */
            double D = dot_row(dor, elem(&a->out, dt, n0, h, row), dt, d);
            if (a->dlse) D -= get_val(a->dlse, r, P->es);
            set_val(PTR(w, P->off[P_D]), r, D, P->es);
            const double lse = get_val(a->lse, r, P->es);
            set_val(PTR(w, P->off[P_LSE]), r, lse == -INFINITY ? INFINITY : lse, P->es);
        }
    }
}

static void fwd_row(const pf_attn_args *a, const plan_t *P, const tile_ops *ops, int64_t item, void *scr) {
    const int64_t n = item / P->R, I = item % P->R, b = P->b, d = P->d, R = P->R;
    const int64_t es = (int64_t)P->es;
    const int64_t n0 = n / a->heads, h = n % a->heads;
    char *w = (char *)a->work;
    void *S = scr;
    void *acc = PTR(scr, ALIGN64(b * b * es));
    double *m = (double *)PTR(acc, ALIGN64(b * d * es));
    double *l = m + b, *alpha = l + b;
    memset(acc, 0, (size_t)(b * d * es));
    for (int64_t i = 0; i < b; ++i) { m[i] = -INFINITY; l[i] = 0; }
    const void *Qs = PTR(w, P->off[P_QS] + (n * P->L + I * b) * d * es);
    int has_keys = 0; /* every row of a visited block-row has at least one allowed key */
    for (int64_t p = a->row_ptr[I]; p < a->row_ptr[I + 1]; ++p) {
        const int64_t J = a->col_idx[p];
        if (a->causal && J > I) break; /* ascending columns */
        const void *Kt = PTR(w, P->off[P_KT] + (n * R + J) * b * d * es);
        const void *V = PTR(w, P->off[P_V] + (n * P->L + J * b) * d * es);
        has_keys = 1;
        ops->gemm(b, b, d, Qs, d, Kt, b, S, b, 0);
        const int diag = a->causal && J == I;
        if (diag) mask_diag(S, b, 1, P->es);
        softmax_tile(ops, S, b, b, m, l, alpha);
        for (int64_t i = 0; i < b; ++i)
            if (alpha[i] != 1.0) ops->scale(PTR(acc, i * d * es), d, alpha[i]);
        if (diag && !all_finite(V, b * d, P->es)) gemm_lower(ops, b, d, S, V, acc);
        else ops->gemm(b, d, b, S, b, V, d, acc, d, 1);
    }
    for (int64_t i = 0; i < b; ++i) {
        const int64_t row = I * b + i;
        void *dst = (void *)elem(&a->out, a->dtype, n0, h, row);
        if (has_keys) { /* l = 0 (all scores -inf) gives 0/0 = NaN, as the dense softmax */
            store_row(dst, a->dtype, PTR(acc, i * d * es), d, 1.0 / l[i]);
            const double lse = m[i] == INFINITY ? (l[i] != l[i] ? NAN : INFINITY) : m[i] + log(l[i]);
            set_val(a->lse, n * P->L + row, lse, P->es);
        } else {
            zero_store_row(dst, a->dtype, d);
            set_val(a->lse, n * P->L + row, -INFINITY, P->es);
        }
    }
}

static void bwd_dq(const pf_attn_args *a, const plan_t *P, const tile_ops *ops, int64_t item, void *scr) {
    const int64_t n = item / P->R, I = item % P->R, b = P->b, d = P->d, R = P->R;
    const int64_t es = (int64_t)P->es;
    const int64_t n0 = n / a->heads, h = n % a->heads;
    char *w = (char *)a->work;
    void *S = scr, *dP = PTR(scr, ALIGN64(b * b * es));
    void *acc = PTR(dP, ALIGN64(b * b * es));
    memset(acc, 0, (size_t)(b * d * es));
    const int64_t rows = (n * P->L + I * b);
    const void *Qs = PTR(w, P->off[P_QS] + rows * d * es);
    const void *dO = PTR(w, P->off[P_DO] + rows * d * es);
    const char *lse = (const char *)PTR(w, P->off[P_LSE] + rows * es);
    const char *D = (const char *)PTR(w, P->off[P_D] + rows * es);
    for (int64_t p = a->row_ptr[I]; p < a->row_ptr[I + 1]; ++p) {
        const int64_t J = a->col_idx[p];
        if (a->causal && J > I) break;
        const void *Kt = PTR(w, P->off[P_KT] + (n * R + J) * b * d * es);
        const void *Vt = PTR(w, P->off[P_VT] + (n * R + J) * b * d * es);
        const void *Ks = PTR(w, P->off[P_KS] + (n * P->L + J * b) * d * es);
        ops->gemm(b, b, d, Qs, d, Kt, b, S, b, 0);
        if (a->causal && J == I) mask_diag(S, b, 1, P->es);
        ops->gemm(b, b, d, dO, d, Vt, b, dP, b, 0);
        ops->p_ds(S, dP, b, b, lse, D, 1);
        ops->gemm(b, d, b, dP, b, Ks, d, acc, d, 1);
    }
    for (int64_t i = 0; i < b; ++i)
        store_row((void *)elem(&a->dq, a->dtype, n0, h, I * b + i), a->dtype, PTR(acc, i * d * es), d, 1.0);
}

static void bwd_dkdv(const pf_attn_args *a, const plan_t *P, const tile_ops *ops, int64_t item, void *scr) {
    const int64_t n = item / P->R, J = item % P->R, b = P->b, d = P->d, R = P->R;
    const int64_t es = (int64_t)P->es;
    const int64_t n0 = n / a->heads, h = n % a->heads;
    char *w = (char *)a->work;
    void *St = scr, *dPt = PTR(scr, ALIGN64(b * b * es));
    void *accK = PTR(dPt, ALIGN64(b * b * es));
    void *accV = PTR(accK, ALIGN64(b * d * es));
    memset(accK, 0, (size_t)(b * d * es));
    memset(accV, 0, (size_t)(b * d * es));
    const int64_t krows = n * P->L + J * b;
    const void *Ks = PTR(w, P->off[P_KS] + krows * d * es);
    const void *V = PTR(w, P->off[P_V] + krows * d * es);
    for (int64_t p = a->col_ptr[J]; p < a->col_ptr[J + 1]; ++p) {
        const int64_t I = a->row_idx[p];
        if (a->causal && I < J) continue;
        const int64_t qrows = n * P->L + I * b;
        const void *Qt = PTR(w, P->off[P_QT] + (n * R + I) * b * d * es);
        const void *dOt = PTR(w, P->off[P_DOT] + (n * R + I) * b * d * es);
        const void *Qs = PTR(w, P->off[P_QS] + qrows * d * es);
        const void *dO = PTR(w, P->off[P_DO] + qrows * d * es);
        const void *lse = PTR(w, P->off[P_LSE] + qrows * es);
        const void *D = PTR(w, P->off[P_D] + qrows * es);
        ops->gemm(b, b, d, Ks, d, Qt, b, St, b, 0);
        if (a->causal && J == I) mask_diag(St, b, 0, P->es);
        ops->gemm(b, b, d, V, d, dOt, b, dPt, b, 0);
        ops->p_ds(St, dPt, b, b, lse, D, 0);
        ops->gemm(b, d, b, St, b, dO, d, accV, d, 1);
        ops->gemm(b, d, b, dPt, b, Qs, d, accK, d, 1);
    }
    for (int64_t j = 0; j < b; ++j) {
        const int64_t row = J * b + j;
        store_row((void *)elem(&a->dk, a->dtype, n0, h, row), a->dtype, PTR(accK, j * d * es), d, 1.0);
        store_row((void *)elem(&a->dv, a->dtype, n0, h, row), a->dtype, PTR(accV, j * d * es), d, 1.0);
    }
}

/* transpose a b x b tile: dst[i][j] = src[j][i] */
static void transpose_tile(void *dst, const void *src, int64_t b, size_t es) {
    if (es == 8) {
        double *o = (double *)dst;
        const double *s = (const double *)src;
        for (int64_t i = 0; i < b; ++i)
            for (int64_t j = 0; j < b; ++j) o[i * b + j] = s[j * b + i];
    } else {
        float *o = (float *)dst;
        const float *s = (const float *)src;
        for (int64_t i = 0; i < b; ++i)
            for (int64_t j = 0; j < b; ++j) o[i * b + j] = s[j * b + i];
    }
}

/* Fused backward of one problem n: key block-columns in order, each visiting its query
 * blocks (CSC); dk, dv accumulate per column, dq in the problem's own fp32/fp64 buffer
 * (owned by this task alone). */
static void bwd_problem(const pf_attn_args *a, const plan_t *P, const tile_ops *ops, int64_t n, void *scr) {
    const int64_t b = P->b, d = P->d, R = P->R, es = (int64_t)P->es;
    const int64_t n0 = n / a->heads, h = n % a->heads;
    char *w = (char *)a->work;
    void *St = scr, *dPt = PTR(scr, ALIGN64(b * b * es)), *dS = PTR(dPt, ALIGN64(b * b * es));
    void *accK = PTR(dS, ALIGN64(b * b * es));
    void *accV = PTR(accK, ALIGN64(b * d * es));
    void *dQ = PTR(w, P->off[P_DQ] + n * P->L * d * es);
    memset(dQ, 0, (size_t)(P->L * d * es));
    for (int64_t J = 0; J < R; ++J) {
        memset(accK, 0, (size_t)(b * d * es));
        memset(accV, 0, (size_t)(b * d * es));
        const int64_t krows = n * P->L + J * b;
        const void *Ks = PTR(w, P->off[P_KS] + krows * d * es);
        const void *V = PTR(w, P->off[P_V] + krows * d * es);
        for (int64_t p = a->col_ptr[J]; p < a->col_ptr[J + 1]; ++p) {
            const int64_t I = a->row_idx[p];
            if (a->causal && I < J) continue;
            const int64_t qrows = n * P->L + I * b;
            const void *Qt = PTR(w, P->off[P_QT] + (n * R + I) * b * d * es);
            const void *dOt = PTR(w, P->off[P_DOT] + (n * R + I) * b * d * es);
            const void *Qs = PTR(w, P->off[P_QS] + qrows * d * es);
            const void *dO = PTR(w, P->off[P_DO] + qrows * d * es);
            const void *lse = PTR(w, P->off[P_LSE] + qrows * es);
            const void *D = PTR(w, P->off[P_D] + qrows * es);
            ops->gemm(b, b, d, Ks, d, Qt, b, St, b, 0);
            if (a->causal && J == I) mask_diag(St, b, 0, P->es);
            ops->gemm(b, b, d, V, d, dOt, b, dPt, b, 0);
            ops->p_ds(St, dPt, b, b, lse, D, 0);
            ops->gemm(b, d, b, St, b, dO, d, accV, d, 1);
            ops->gemm(b, d, b, dPt, b, Qs, d, accK, d, 1);
            transpose_tile(dS, dPt, b, P->es);
            ops->gemm(b, d, b, dS, b, Ks, d, PTR(dQ, I * b * d * es), d, 1);
        }
        for (int64_t j = 0; j < b; ++j) {
            const int64_t row = J * b + j;
            store_row((void *)elem(&a->dk, a->dtype, n0, h, row), a->dtype, PTR(accK, j * d * es), d, 1.0);
            store_row((void *)elem(&a->dv, a->dtype, n0, h, row), a->dtype, PTR(accV, j * d * es), d, 1.0);
        }
    }
    for (int64_t i = 0; i < P->L; ++i)
        store_row((void *)elem(&a->dq, a->dtype, n0, h, i), a->dtype, PTR(dQ, i * d * es), d, 1.0);
}

void pf_attn_run(int op, int phase, const pf_attn_args *a, int64_t begin, int64_t end) {
    /* re-validated here too (O(nnz log nnz)), so a bad call is a no-op, never a crash */
    if (!a || !a->work || pf_attn_check(op, a)) return;
    plan_t P;
    make_plan(op, a, &P);
    const tile_ops *ops = pick_ops(a);
    if (begin < 0) begin = 0;
    if (phase == 0) {
        if (end > P.tasks0) end = P.tasks0;
        for (int64_t t = begin; t < end; ++t)
            for (int64_t it = t; it < P.items0; it += P.tasks0) pack_block(op, a, &P, it);
    } else if (phase == 1) {
        if (end > P.tasks1) end = P.tasks1;
        const int64_t NR = P.N * P.R;
        for (int64_t t = begin; t < end; ++t) {
            void *scr = PTR(a->work, P.scratch + t * P.per_task);
            for (int64_t it = t; it < P.items1; it += P.tasks1) {
                if (op == PF_ATTN_FWD) fwd_row(a, &P, ops, it, scr);
                else if (P.fused) bwd_problem(a, &P, ops, it, scr);
                else if (it < NR) bwd_dq(a, &P, ops, it, scr);
                else bwd_dkdv(a, &P, ops, it - NR, scr);
            }
        }
    }
}

pf_err pf_attn_serial(int op, const pf_attn_args *a) {
    pf_err e = pf_attn_check(op, a);
    if (e) return e;
    if (pf_attn_workspace(op, a) > 0 && !a->work) return "work must not be NULL (see pf_attn_workspace)";
    for (int ph = 0; ph < PF_ATTN_PHASES; ++ph) pf_attn_run(op, ph, a, 0, pf_attn_num_tasks(op, ph, a));
    return NULL;
}
