/*
 * test_bsmm.c - block-sparse matmul (csrc/cpu/bsmm*.c) against a naive double-precision
 * reference: random layouts (empty block-rows / block-columns, nnz = 0, empty grids),
 * T in {0, 1, 7, 33, 100} (and a few up to 600), square and rectangular blocks, row strides > width, fp32 and
 * bf16, every ISA this CPU has compared bitwise with the portable kernel, tasks run in
 * shuffled order and in random sub-ranges, and pf_bsmm_check's rejections.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pixelfly.h"
#include "../cpu/kernels.h"

#include "check.h"
#include "test_rng.h"

/* ------------------------------------------------------------------ rng */
static int64_t rndi(int64_t n) { return n > 0 ? (int64_t)(rnd() % (uint64_t)n) : 0; }
static float rndf(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

/* ------------------------------------------------------------------ index */
typedef struct {
    pf_bsr_index ix;
    int64_t *row_ptr, *col_idx, *col_ptr, *row_idx, *csc_blk;
} index_t;

static void make_index(index_t *I, const uint8_t *layout, int64_t R, int64_t C, int64_t b1, int64_t b2) {
    int64_t nnz = 0;
    for (int64_t i = 0; i < R * C; ++i) nnz += layout[i] != 0;
    I->row_ptr = calloc((size_t)R + 1, 8);
    I->col_ptr = calloc((size_t)C + 1, 8);
    I->col_idx = malloc((size_t)(nnz ? nnz : 1) * 8);
    I->row_idx = malloc((size_t)(nnz ? nnz : 1) * 8);
    I->csc_blk = malloc((size_t)(nnz ? nnz : 1) * 8);
    int64_t k = 0;
    for (int64_t r = 0; r < R; ++r) {
        for (int64_t c = 0; c < C; ++c)
            if (layout[r * C + c]) I->col_idx[k++] = c;
        I->row_ptr[r + 1] = k;
    }
    k = 0;
    for (int64_t c = 0; c < C; ++c) {
        for (int64_t r = 0; r < R; ++r)
            if (layout[r * C + c]) {
                int64_t j = I->row_ptr[r];
                while (I->col_idx[j] != c) ++j;
                I->row_idx[k] = r;
                I->csc_blk[k] = j;
                ++k;
            }
        I->col_ptr[c + 1] = k;
    }
    pf_bsr_index ix = {R, C, b1, b2, nnz, I->row_ptr, I->col_idx, I->col_ptr, I->row_idx, I->csc_blk};
    I->ix = ix;
}

static void free_index(index_t *I) {
    free(I->row_ptr); free(I->col_idx); free(I->col_ptr); free(I->row_idx); free(I->csc_blk);
}

/* ------------------------------------------------------------------ operands */
static double get(const void *p, int bf, int64_t i) {
    return bf ? (double)pf_bf16_to_f32(((const uint16_t *)p)[i]) : (double)((const float *)p)[i];
}

/* random values, exactly representable; bf16 ones spread over 2^-8 .. 2^8 so that sums
 * of their (exact) products round, and a change of summation order shows */
static void *alloc_fill(int64_t n, int bf) {
    const size_t es = bf ? 2 : 4;
    void *p = malloc((size_t)(n > 0 ? n : 1) * es);
    for (int64_t i = 0; i < n; ++i) {
        const float f = bf ? ldexpf(rndf(), (int)rndi(17) - 8) : rndf();
        if (bf) ((uint16_t *)p)[i] = pf_f32_to_bf16(f);
        else ((float *)p)[i] = f;
    }
    return p;
}

/* The FWD / BWD_X epilogue of a test (pf_bsmm_args rank, lr_a, lr_b, bias): lr_a [T, ld],
 * lr_b [width, rank], bias [width] (NULL without) */
typedef struct { int64_t rank, ld; void *lra, *lrb, *bias; int bf; } epi_t;

static void epi_make(epi_t *e, int64_t T, int64_t width, int64_t rank, int bias, int bf) {
    e->rank = rank;
    e->ld = rank + rndi(3);
    e->bf = bf;
    e->lra = rank ? alloc_fill(T * e->ld, bf) : NULL;
    e->lrb = rank ? alloc_fill(width * rank, bf) : NULL;
    e->bias = bias ? alloc_fill(width, bf) : NULL;
}

static void epi_set(const epi_t *e, pf_bsmm_args *a) {
    a->rank = e->rank;
    a->lr_a = e->lra;
    a->ld_lr_a = e->ld;
    a->lr_b = e->lrb;
    a->bias = e->bias;
}

/* bias[o] + sum_s lr_a[t, s] lr_b[o, s] in double; *mag += the magnitudes */
static double epi_ref(const epi_t *e, int64_t t, int64_t o, double *mag) {
    double v = e->bias ? get(e->bias, e->bf, o) : 0.0;
    *mag += fabs(v);
    for (int64_t s = 0; s < e->rank; ++s) {
        const double p = get(e->lra, e->bf, t * e->ld + s) * get(e->lrb, e->bf, o * e->rank + s);
        v += p;
        *mag += fabs(p);
    }
    return v;
}

static void epi_free(epi_t *e) {
    free(e->lra);
    free(e->lrb);
    free(e->bias);
}

/* Runs op with `isa`, phases in shuffled task order (mode 0) or random contiguous
 * sub-ranges in shuffled order (mode 1); workspace is garbage-filled. */
static void run_op(int op, pf_bsmm_args *a, int mode) {
    const int64_t ws = pf_bsmm_workspace(op, a);
    void *work = ws > 0 ? malloc((size_t)ws) : NULL;
    if (work) memset(work, 0xCD, (size_t)ws);
    a->work = work;
    for (int phase = 0; phase < PF_BSMM_PHASES; ++phase) {
        const int64_t n = pf_bsmm_num_tasks(op, phase, a);
        if (n <= 0) continue;
        int64_t *cuts = malloc((size_t)(n + 1) * 8), nc = 0;
        cuts[nc++] = 0;
        for (int64_t t = 1; t < n; ++t)
            if (mode == 0 || rndi(3) == 0) cuts[nc++] = t;
        cuts[nc++] = n;
        const int64_t pieces = nc - 1;
        int64_t *perm = malloc((size_t)pieces * 8);
        for (int64_t i = 0; i < pieces; ++i) perm[i] = i;
        for (int64_t i = pieces - 1; i > 0; --i) {
            const int64_t j = rndi(i + 1), tmp = perm[i];
            perm[i] = perm[j];
            perm[j] = tmp;
        }
        for (int64_t i = 0; i < pieces; ++i) pf_bsmm_run(op, phase, a, cuts[perm[i]], cuts[perm[i] + 1]);
        free(perm);
        free(cuts);
    }
    free(work);
    a->work = NULL;
}

#define SENT32 0x7fbadbadu
#define SENT16 0x7fbbu

static void fill_sentinel(void *p, int64_t n, int bf) {
    for (int64_t i = 0; i < n; ++i) {
        if (bf) ((uint16_t *)p)[i] = SENT16;
        else ((uint32_t *)p)[i] = SENT32;
    }
}

static int is_sentinel(const void *p, int64_t i, int bf) {
    return bf ? ((const uint16_t *)p)[i] == SENT16 : ((const uint32_t *)p)[i] == SENT32;
}

/* One configuration: all three ops, every ISA, checked against the reference. */
static void test_case(int64_t R, int64_t C, int64_t b1, int64_t b2, int64_t T, double density,
                      int bf, int pad) {
    uint8_t *layout = malloc((size_t)(R * C > 0 ? R * C : 1));
    for (int64_t i = 0; i < R * C; ++i) layout[i] = (double)rndi(1000) < density * 1000.0;
    if (R > 2 && C > 0) memset(layout + C, 0, (size_t)C);              /* an empty block-row */
    if (C > 2) for (int64_t r = 0; r < R; ++r) layout[r * C + C - 1] = 0; /* an empty block-col */
    index_t I;
    make_index(&I, layout, R, C, b1, b2);
    const int64_t nnz = I.ix.nnz, in = C * b2, out = R * b1, es = bf ? 2 : 4;
    const int64_t ldx = in + pad, ldy = out + pad * 2 + (pad ? 1 : 0), ldo_y = out + pad, ldo_x = in + pad * 3;
    void *x = alloc_fill(T * ldx, bf), *dy = alloc_fill(T * ldy, bf), *w = alloc_fill(nnz * b1 * b2, bf);
    int64_t *blk_row = malloc((size_t)(nnz ? nnz : 1) * 8);
    for (int64_t r = 0; r < R; ++r)
        for (int64_t j = I.row_ptr[r]; j < I.row_ptr[r + 1]; ++j) blk_row[j] = r;

    /* runs: every ISA with bf16 widened (bf16_pairs -1), then with bf16 the pair layout:
     * emulated pair kernels (bf16_pairs 1) and, where the CPU has it, vdpbf16ps */
    enum { NR = 8 };
    const int isas[NR] = {PF_ISA_PORTABLE, PF_ISA_AVX2, PF_ISA_AVX512, PF_ISA_PORTABLE,
                          PF_ISA_AVX2, PF_ISA_AVX512, PF_ISA_AVX512BF16, PF_ISA_AVX512BF16};
    const int pairs[NR] = {-1, -1, -1, 1, 1, 1, 0, -1};
    const int have[NR] = {1, pf_cpu_has_avx2_fma(), pf_cpu_has_avx512(), bf, bf && pf_cpu_has_avx2_fma(),
                          bf && pf_cpu_has_avx512(), bf && pf_cpu_has_avx512_bf16(), pf_cpu_has_avx512_bf16()};
    char what[160];
    for (int op = 0; op < 3; ++op) {
        const int64_t rows = op == 2 ? 1 : T;
        const int64_t width = op == 0 ? out : (op == 1 ? in : nnz * b1 * b2);
        const int64_t ld = op == 0 ? ldo_y : (op == 1 ? ldo_x : width);
        const int64_t total = rows * ld;
        void *res[NR] = {NULL};
        static const int64_t ranks[8] = {0, 0, 0, 1, 3, 8, 17, 40};
        epi_t epi; /* FWD / BWD_X: a random low-rank term and bias, or none */
        epi_make(&epi, T, op == 2 ? 0 : width, op == 2 ? 0 : ranks[rndi(8)], op != 2 && rndi(2), bf);
        snprintf(what, sizeof what, "op %d R=%lld C=%lld b=%lldx%lld T=%lld nnz=%lld %s pad=%d rank=%lld bias=%d", op,
                 (long long)R, (long long)C, (long long)b1, (long long)b2, (long long)T,
                 (long long)nnz, bf ? "bf16" : "fp32", pad, (long long)epi.rank, epi.bias != NULL);
        for (int k = 0; k < NR; ++k) {
            if (!have[k]) continue;
            res[k] = malloc((size_t)(total > 0 ? total : 1) * (size_t)es);
            fill_sentinel(res[k], total, bf);
            pf_bsmm_args a;
            memset(&a, 0, sizeof a);
            a.dtype = bf ? PF_BFLOAT16 : PF_FLOAT32;
            a.T = T;
            a.ix = &I.ix;
            a.isa = isas[k];
            a.bf16_pairs = pairs[k];
            if (op != 1) { a.x = x; a.ldx = ldx; }
            if (op != 0) { a.dy = dy; a.ldy = ldy; }
            if (op != 2) a.w = w;
            a.out = res[k];
            a.ldo = ld;
            a.max_tasks = rndi(5); /* 0..4: the BWD_W split (results must not depend on it) */
            epi_set(&epi, &a);
            pf_err e = pf_bsmm_check(op, &a);
            CHECK(e == NULL, "%s: check failed: %s", what, e ? e : "");
            if (e) continue;
            run_op(op, &a, (int)rndi(2));
        }
        /* reference (double) on the portable result */
        int bad = 0;
        for (int64_t t = 0; t < rows && !bad; ++t)
            for (int64_t o = 0; o < ld && !bad; ++o) {
                const int64_t pos = t * ld + o;
                if (o >= width) {
                    if (!is_sentinel(res[0], pos, bf)) { bad = 1; printf("  %s: padding (%lld,%lld) overwritten\n", what, (long long)t, (long long)o); }
                    continue;
                }
                double mag = 0.0;
                double ref = op == 2 ? 0.0 : epi_ref(&epi, t, o, &mag);
                if (op == 0) {
                    const int64_t r = o / b1, i = o % b1;
                    for (int64_t j = I.row_ptr[r]; j < I.row_ptr[r + 1]; ++j)
                        for (int64_t kk = 0; kk < b2; ++kk) {
                            const double p = get(x, bf, t * ldx + I.col_idx[j] * b2 + kk) * get(w, bf, (j * b1 + i) * b2 + kk);
                            ref += p; mag += fabs(p);
                        }
                } else if (op == 1) {
                    const int64_t c = o / b2, kk = o % b2;
                    for (int64_t q = I.col_ptr[c]; q < I.col_ptr[c + 1]; ++q) {
                        const int64_t r = I.row_idx[q], j = I.csc_blk[q];
                        for (int64_t i = 0; i < b1; ++i) {
                            const double p = get(dy, bf, t * ldy + r * b1 + i) * get(w, bf, (j * b1 + i) * b2 + kk);
                            ref += p; mag += fabs(p);
                        }
                    }
                } else {
                    const int64_t j = o / (b1 * b2), i = (o / b2) % b1, kk = o % b2;
                    const int64_t r = blk_row[j], c = I.col_idx[j];
                    for (int64_t tt = 0; tt < T; ++tt) {
                        const double p = get(dy, bf, tt * ldy + r * b1 + i) * get(x, bf, tt * ldx + c * b2 + kk);
                        ref += p; mag += fabs(p);
                    }
                }
                const double got = get(res[0], bf, pos);
                const double tol = (bf ? 0.0079 * fabs(ref) : 0.0) + 2e-6 * mag + 1e-30;
                if (!(fabs(got - ref) <= tol)) {
                    bad = 1;
                    printf("  %s: (%lld,%lld) got %.9g want %.9g\n", what, (long long)t, (long long)o, got, ref);
                }
            }
        CHECK(!bad, "%s: portable vs double reference", what);
        /* every run bitwise equal to the portable one (no subnormals in these operands,
         * so vdpbf16ps's flushing does not show) */
        for (int k = 1; k < NR; ++k) {
            if (!res[k]) continue;
            CHECK(memcmp(res[0], res[k], (size_t)(total * es)) == 0,
                  "%s: isa %d bf16_pairs %d not bitwise equal to portable", what, isas[k], pairs[k]);
        }
        for (int k = 0; k < NR; ++k) free(res[k]);
        epi_free(&epi);
    }
    free(blk_row); free(x); free(dy); free(w); free(layout);
    free_index(&I);
}

/* ------------------------------------------------------------------ checks */
static void expect_err(int op, const pf_bsmm_args *a, const char *needle, const char *what) {
    pf_err e = pf_bsmm_check(op, a);
    CHECK(e != NULL && strstr(e, needle) != NULL, "check(%s): expected error with '%s', got '%s'", what, needle, e ? e : "NULL");
}

static void test_checks(void) {
    uint8_t layout[6] = {1, 0, 1, 0, 1, 1};
    index_t I;
    make_index(&I, layout, 2, 3, 4, 8); /* out = 8, in = 24 */
    float x[2 * 24] = {0}, dy[2 * 8] = {0}, w[4 * 32] = {0}, out[2 * 24];
    pf_bsmm_args a;
    memset(&a, 0, sizeof a);
    a.dtype = PF_FLOAT32; a.T = 2; a.ix = &I.ix;
    a.x = x; a.ldx = 24; a.dy = dy; a.ldy = 8; a.w = w; a.out = out; a.ldo = 8;
    CHECK(pf_bsmm_check(PF_OP_FWD, &a) == NULL, "valid FWD rejected: %s", pf_bsmm_check(PF_OP_FWD, &a));
    CHECK(pf_bsmm_check(PF_OP_BWD_W, &a) == NULL, "valid BWD_W rejected");
    a.ldo = 24;
    CHECK(pf_bsmm_check(PF_OP_BWD_X, &a) == NULL, "valid BWD_X rejected");
    a.ldo = 8;
    CHECK(pf_bsmm_check(PF_OP_FWD, NULL) != NULL, "NULL args accepted");
    expect_err(7, &a, "op", "bad op");
    pf_bsmm_args b = a; b.dtype = PF_FLOAT16; expect_err(PF_OP_FWD, &b, "dtype", "fp16");
    b = a; b.T = -1; expect_err(PF_OP_FWD, &b, "T", "T<0");
    b = a; b.isa = 9; expect_err(PF_OP_FWD, &b, "isa", "bad isa");
    b = a; b.ix = NULL; expect_err(PF_OP_FWD, &b, "ix", "NULL ix");
    b = a; b.x = NULL; expect_err(PF_OP_FWD, &b, "x is NULL", "NULL x");
    b = a; b.w = NULL; expect_err(PF_OP_BWD_X, &b, "w", "NULL w");
    b = a; b.dy = NULL; expect_err(PF_OP_BWD_W, &b, "dy is NULL", "NULL dy");
    b = a; b.out = NULL; expect_err(PF_OP_FWD, &b, "out", "NULL out");
    b = a; b.ldx = 23; expect_err(PF_OP_FWD, &b, "ldx", "ldx small");
    b = a; b.ldy = 7; expect_err(PF_OP_BWD_W, &b, "ldy", "ldy small");
    b = a; b.ldo = 7; expect_err(PF_OP_FWD, &b, "ldo", "ldo small (fwd)");
    b = a; b.ldo = 23; expect_err(PF_OP_BWD_X, &b, "ldo", "ldo small (bwd_x)");
    b = a; b.x = (const char *)x + 1; expect_err(PF_OP_FWD, &b, "aligned", "misaligned x");
    pf_bsr_index bad = I.ix; b = a; b.ix = &bad;
    bad.b1 = 0; expect_err(PF_OP_FWD, &b, "block", "b1=0");
    bad = I.ix; bad.row_ptr = NULL; expect_err(PF_OP_FWD, &b, "row_ptr", "NULL row_ptr");
    bad = I.ix; bad.nnz = 3; expect_err(PF_OP_FWD, &b, "nnz", "row_ptr[R] != nnz");
    bad = I.ix; bad.nnz = 7; expect_err(PF_OP_FWD, &b, "nnz", "nnz > R*C");
    int64_t ci[4]; memcpy(ci, I.col_idx, sizeof ci);
    bad = I.ix; bad.col_idx = ci;
    ci[1] = 3; expect_err(PF_OP_FWD, &b, "col_idx", "col_idx out of range");
    ci[1] = 0; expect_err(PF_OP_FWD, &b, "col_idx", "col_idx not increasing");
    int64_t rp[3] = {0, 3, 4}; /* row 0 claims 3 blocks, columns 0, 2, 1: not increasing */
    bad = I.ix; bad.row_ptr = rp; expect_err(PF_OP_FWD, &b, "col_idx", "row_ptr shifted");
    int64_t rp2[3] = {0, 3, 2}; bad = I.ix; bad.row_ptr = rp2; expect_err(PF_OP_FWD, &b, "row_ptr", "row_ptr decreasing");
    int64_t cb[4]; memcpy(cb, I.csc_blk, sizeof cb);
    bad = I.ix; bad.csc_blk = cb; { int64_t tmp = cb[0]; cb[0] = cb[1]; cb[1] = tmp; }
    expect_err(PF_OP_BWD_X, &b, "csc_blk", "csc_blk inconsistent");
    int64_t ri[4]; memcpy(ri, I.row_idx, sizeof ri);
    bad = I.ix; bad.row_idx = ri; ri[0] = 5; expect_err(PF_OP_BWD_X, &b, "row_idx", "row_idx out of range");
    bad = I.ix; bad.col_ptr = NULL; expect_err(PF_OP_FWD, &b, "col_ptr", "NULL col_ptr");
    /* the epilogue (low-rank term, bias): FWD / BWD_X only, consistent operands */
    float lra[2 * 3] = {0}, lrb[24 * 3] = {0}, bias[24] = {0};
    b = a; b.rank = 3; b.lr_a = lra; b.ld_lr_a = 3; b.lr_b = lrb; b.bias = bias;
    CHECK(pf_bsmm_check(PF_OP_FWD, &b) == NULL, "valid FWD epilogue rejected: %s", pf_bsmm_check(PF_OP_FWD, &b));
    pf_bsmm_args c = b; c.rank = -1; expect_err(PF_OP_FWD, &c, "rank", "rank < 0");
    c = b; c.ld_lr_a = 2; expect_err(PF_OP_FWD, &c, "ld_lr_a", "ld_lr_a < rank");
    c = b; c.lr_a = NULL; expect_err(PF_OP_FWD, &c, "lr_a is NULL", "NULL lr_a");
    c = b; c.lr_b = NULL; c.ldo = 24; expect_err(PF_OP_BWD_X, &c, "lr_b is NULL", "NULL lr_b");
    c = b; c.bias = (const char *)bias + 2; expect_err(PF_OP_FWD, &c, "bias", "misaligned bias");
    c = b; c.lr_b = (const char *)lrb + 1; expect_err(PF_OP_FWD, &c, "lr_b", "misaligned lr_b");
    c = b; c.rank = 0; c.lr_a = c.lr_b = NULL; expect_err(PF_OP_BWD_W, &c, "FWD / BWD_X only", "bias with BWD_W");
    c = b; c.rank = 0; c.lr_a = c.lr_b = NULL;
    CHECK(pf_bsmm_check(PF_OP_FWD, &c) == NULL, "bias alone rejected");
    /* serial needs the workspace it announces */
    CHECK(pf_bsmm_workspace(PF_OP_FWD, &a) > 0, "FWD needs a packing workspace");
    pf_err e = pf_bsmm_serial(PF_OP_FWD, &a);
    CHECK(e != NULL && strstr(e, "work"), "serial without workspace: %s", e ? e : "NULL");
    /* requesting an ISA the CPU lacks is an error, not a crash */
    if (!pf_cpu_has_avx512()) { b = a; b.isa = PF_ISA_AVX512; expect_err(PF_OP_FWD, &b, "AVX-512", "no avx512"); }
    free_index(&I);
}

/* serial path and T=0 / nnz=0 semantics: outputs fully overwritten (dw = 0 when T = 0) */
static void test_serial_edges(void) {
    uint8_t layout[4] = {1, 1, 0, 1};
    index_t I;
    make_index(&I, layout, 2, 2, 16, 16);
    float dw[3 * 256];
    for (int i = 0; i < 3 * 256; ++i) dw[i] = 1.0f;
    pf_bsmm_args a;
    memset(&a, 0, sizeof a);
    a.dtype = PF_FLOAT32; a.T = 0; a.ix = &I.ix; a.ldx = 32; a.ldy = 32; a.out = dw;
    CHECK(pf_bsmm_serial(PF_OP_BWD_W, &a) == NULL, "serial bwd_w T=0");
    int zero = 1;
    for (int i = 0; i < 3 * 256; ++i) zero &= dw[i] == 0.0f;
    CHECK(zero, "BWD_W with T = 0 must write dw = 0");
    CHECK(pf_bsmm_num_tasks(PF_OP_FWD, 1, &a) == 0, "FWD with T = 0 has no tasks");
    /* a large T run through serial with the workspace, fp32, vs a simple check */
    const int64_t T = 300;
    float *x = malloc(T * 32 * 4), *y = malloc(T * 32 * 4), w[3 * 256];
    for (int64_t i = 0; i < T * 32; ++i) x[i] = (float)(i % 7) - 3.0f;
    for (int i = 0; i < 3 * 256; ++i) w[i] = (float)(i % 5) - 2.0f;
    a.T = T; a.x = x; a.w = w; a.out = y; a.ldo = 32;
    const int64_t ws = pf_bsmm_workspace(PF_OP_FWD, &a);
    a.work = malloc((size_t)ws);
    CHECK(pf_bsmm_serial(PF_OP_FWD, &a) == NULL, "serial fwd");
    int ok = 1; /* small integers: exact */
    for (int64_t t = 0; t < T; ++t)
        for (int64_t o = 0; o < 32; ++o) {
            const int64_t r = o / 16, i = o % 16;
            double ref = 0;
            for (int64_t j = I.row_ptr[r]; j < I.row_ptr[r + 1]; ++j)
                for (int64_t k = 0; k < 16; ++k) ref += (double)x[t * 32 + I.col_idx[j] * 16 + k] * w[(j * 16 + i) * 16 + k];
            ok &= (double)y[t * 32 + o] == ref;
        }
    CHECK(ok, "serial FWD exact on small integers");
    free(a.work); free(x); free(y);
    free_index(&I);
}

static void test_bf16_rounding(void) {
    const struct { uint32_t in; uint16_t out; } cases[] = {
        {0x3f800000u, 0x3f80u}, {0x3f808000u, 0x3f80u} /* tie -> even */, {0x3f818000u, 0x3f82u} /* tie -> even (up) */,
        {0x3f808001u, 0x3f81u}, {0x7f7fffffu, 0x7f80u} /* overflow to inf */, {0xff800000u, 0xff80u},
        {0x7fc00000u, 0x7fc0u}, {0x7f800001u, 0x7fc0u} /* sNaN -> qNaN */, {0x00000001u, 0x0000u}, {0x80008000u, 0x8000u},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        float f;
        memcpy(&f, &cases[i].in, 4);
        CHECK(pf_f32_to_bf16(f) == cases[i].out, "bf16(0x%08x) = 0x%04x, want 0x%04x", cases[i].in, pf_f32_to_bf16(f), cases[i].out);
    }
}

/* FWD / BWD_X with few rows (the transposed path, blocks read in place; below 8 rows the
 * few-row tile) give bitwise the rows that the packed path gives for the same rows inside
 * a larger T. */
static void test_small_t_matches_packed(int64_t b1, int64_t b2, int bf) {
    const int64_t R = 5, C = 4, Tbig = 40;
    uint8_t layout[20];
    for (int i = 0; i < 20; ++i) layout[i] = rndi(3) != 0;
    memset(layout + 2 * C, 0, (size_t)C); /* an empty block-row */
    index_t I;
    make_index(&I, layout, R, C, b1, b2);
    const int64_t in = C * b2, out = R * b1, es = bf ? 2 : 4;
    void *x = alloc_fill(Tbig * in, bf), *dy = alloc_fill(Tbig * out, bf), *w = alloc_fill(I.ix.nnz * b1 * b2, bf);
    /* 1..7: every width of the few-row tile (tile_narrow.c), 8 and 16: the general one */
    const int64_t smalls[9] = {1, 2, 3, 4, 5, 6, 7, 8, 16};
    const int isas[3] = {PF_ISA_PORTABLE, PF_ISA_AVX2, PF_ISA_AVX512};
    const int have[3] = {1, pf_cpu_has_avx2_fma(), pf_cpu_has_avx512()};
    for (int op = 0; op < 4; ++op) { /* FWD, BWD_X, then both with a low-rank term and bias */
        const int64_t width = op % 2 == 0 ? out : in;
        void *big = malloc((size_t)(Tbig * width * es)), *sm = malloc((size_t)(Tbig * width * es));
        epi_t epi;
        epi_make(&epi, Tbig, width, op < 2 ? 0 : 13, op >= 2, bf);
        for (int k = 0; k < 3; ++k) {
            if (!have[k]) continue;
            pf_bsmm_args a;
            memset(&a, 0, sizeof a);
            epi_set(&epi, &a);
            a.dtype = bf ? PF_BFLOAT16 : PF_FLOAT32;
            a.ix = &I.ix;
            a.isa = isas[k];
            a.x = x; a.ldx = in; a.dy = dy; a.ldy = out; a.w = w;
            a.ldo = width;
            a.T = Tbig;
            a.out = big;
            run_op(op % 2, &a, 0);
            for (int si = 0; si < 9; ++si) {
                a.T = smalls[si];
                a.out = sm;
                run_op(op % 2, &a, 1);
                CHECK(memcmp(big, sm, (size_t)(smalls[si] * width * es)) == 0,
                      "op %d b=%lldx%lld %s isa %d rank %lld: T=%lld rows differ from the packed path's", op % 2,
                      (long long)b1, (long long)b2, bf ? "bf16" : "fp32", isas[k], (long long)epi.rank,
                      (long long)smalls[si]);
            }
        }
        free(big); free(sm);
        epi_free(&epi);
    }
    free(x); free(dy); free(w);
    free_index(&I);
}

/* FWD / BWD_X results do not depend on how the rows and output units are split into
 * tasks (max_tasks: one task over several row chunks, a task per chunk, chunks split
 * into groups of output units), nor on the ISA or the bf16 pair choice: bitwise equal to
 * the portable single-task run. Nor BWD_W's (ranges of blocks in CSR order, or in CSC
 * order with several tasks when x is wider than dy: 16 x 48 blocks here). */
static void test_task_splits(int64_t b1, int64_t b2, int64_t T, int bf, int sparse) {
    const int64_t R = 9, C = 7;
    uint8_t layout[63];
    /* sparse: ~1 block per activation column (bf16 pairs read x / dy in place), else ~4
     * (panels copied into the task's slot) */
    for (int i = 0; i < 63; ++i) layout[i] = sparse ? rndi(8) == 0 : rndi(2) == 0;
    memset(layout + 3 * C, 0, (size_t)C); /* an empty block-row */
    index_t I;
    make_index(&I, layout, R, C, b1, b2);
    const int64_t in = C * b2, out = R * b1, es = bf ? 2 : 4;
    void *x = alloc_fill(T * in, bf), *dy = alloc_fill(T * out, bf), *w = alloc_fill(I.ix.nnz * b1 * b2, bf);
    const int isas[4] = {PF_ISA_PORTABLE, PF_ISA_AVX2, PF_ISA_AVX512, PF_ISA_AVX512BF16};
    const int have[4] = {1, pf_cpu_has_avx2_fma(), pf_cpu_has_avx512(), pf_cpu_has_avx512_bf16()};
    const int64_t caps[6] = {1, 2, 3, 5, 16, 64};
    for (int op = 0; op < 3; ++op) {
        const int64_t width = op == 0 ? out : in;
        const int64_t n_out = op == PF_OP_BWD_W ? I.ix.nnz * b1 * b2 : T * width;
        void *ref = malloc((size_t)(n_out * es) + 1), *got = malloc((size_t)(n_out * es) + 1);
        epi_t epi; /* FWD / BWD_X with a low-rank term and bias half the time */
        const int with = op != PF_OP_BWD_W && rndi(2);
        epi_make(&epi, T, width, with ? 9 : 0, with, bf);
        pf_bsmm_args a;
        memset(&a, 0, sizeof a);
        epi_set(&epi, &a);
        a.dtype = bf ? PF_BFLOAT16 : PF_FLOAT32;
        a.ix = &I.ix;
        a.x = x; a.ldx = in; a.dy = dy; a.ldy = out; a.w = w;
        a.ldo = width;
        a.T = T;
        a.isa = PF_ISA_PORTABLE;
        a.max_tasks = 1;
        a.bf16_pairs = -1;
        a.out = ref;
        run_op(op, &a, 0);
        for (int k = 0; k < 4; ++k)
            for (int ci = 0; ci < 6; ++ci)
                for (int pairs = -1; pairs <= (bf ? 1 : -1); ++pairs) {
                    if (!have[k]) continue;
                    a.isa = isas[k];
                    a.max_tasks = caps[ci];
                    a.bf16_pairs = pairs;
                    a.out = got;
                    fill_sentinel(got, n_out, bf);
                    run_op(op, &a, (int)rndi(2));
                    CHECK(memcmp(ref, got, (size_t)(n_out * es)) == 0,
                          "op %d b=%lldx%lld T=%lld %s isa %d max_tasks %lld pairs %d: differs from one portable task",
                          op, (long long)b1, (long long)b2, (long long)T, bf ? "bf16" : "fp32", isas[k],
                          (long long)caps[ci], pairs);
                }
        free(ref); free(got);
        epi_free(&epi);
    }
    free(x); free(dy); free(w);
    free_index(&I);
}

int main(void) {
    printf("ISAs: avx2+fma %d, avx512 %d\n", pf_cpu_has_avx2_fma(), pf_cpu_has_avx512());
    test_bf16_rounding();
    test_checks();
    test_serial_edges();
    for (int bf = 0; bf < 2; ++bf) {
        test_small_t_matches_packed(32, 32, bf);
        test_small_t_matches_packed(16, 48, bf);
        test_small_t_matches_packed(7, 5, bf);
        test_small_t_matches_packed(20, 13, bf); /* 8-row / 8-step groups and remainders */
        for (int sparse = 0; sparse < 2; ++sparse) {
            test_task_splits(32, 32, 300, bf, sparse);
            test_task_splits(16, 48, 530, bf, sparse);
            test_task_splits(7, 5, 77, bf, sparse);
        }
    }
    const int64_t Ts[7] = {0, 1, 7, 16, 17, 33, 100}; /* <= 16 rows: the transposed path */
    const int64_t blocks[][2] = {{16, 16}, {32, 32}, {64, 64}, {16, 32}, {32, 16}, {8, 24}, {3, 5}, {1, 1}, {48, 40}};
    const int nb = (int)(sizeof blocks / sizeof blocks[0]);
    for (int bi = 0; bi < nb; ++bi) {
        const int64_t b1 = blocks[bi][0], b2 = blocks[bi][1];
        const int64_t maxg = b1 * b2 >= 2048 ? 3 : 5;
        for (int ti = 0; ti < 7; ++ti)
            for (int bf = 0; bf < 2; ++bf) {
                const int64_t R = 1 + rndi(maxg), C = 1 + rndi(maxg);
                const double dens = (ti + bf) % 4 == 3 ? 0.0 : 0.3 + 0.6 * (double)rndi(100) / 100.0;
                test_case(R, C, b1, b2, Ts[ti], dens, bf, (int)rndi(2) * (1 + (int)rndi(9)));
            }
    }
    /* grids with a zero side, and one large-T case that spans several T chunks */
    test_case(0, 3, 16, 16, 7, 0.5, 0, 0);
    test_case(3, 0, 16, 16, 7, 0.5, 1, 1);
    test_case(2, 3, 32, 16, 600, 0.7, 0, 3);
    test_case(3, 2, 16, 32, 530, 0.7, 1, 0);
    /* BWD_W with blocks of 64 and more, T over several 128-row chunks */
    test_case(2, 2, 64, 64, 300, 0.8, 0, 2);
    test_case(2, 3, 64, 48, 257, 0.8, 1, 0);
    test_case(2, 2, 80, 72, 300, 0.8, 0, 1);
    test_case(2, 2, 72, 16, 129, 0.8, 1, 0);
    /* outputs of >= 4 MiB take the streaming-store path (fp32 and bf16, padded rows) */
    test_case(16, 16, 32, 32, 2100, 0.2, 0, 0);
    test_case(16, 16, 32, 32, 2100, 0.2, 0, 5);
    test_case(32, 32, 32, 32, 2100, 0.1, 1, 0);
    printf("test_bsmm: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
