/* test_attn.c - block-sparse attention (csrc/cpu/attn.c) against a naive double reference.
 * Random layouts (incl. empty block-rows), flat butterfly, causal, batch*heads > 1 with
 * interleaved strides, block sizes 8..64 (odd tails too), fp32 / bf16 / fp64, every ISA this CPU has,
 * task caps, a gradient of lse, the low-rank part and the key mask (csrc/cpu/attn_lowrank.c), and
 * every argument error. Prints "N passed, M failed". */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pixelfly_attn.h"

#include "attn_fixture.h"
#include "check.h"

static void run_case(const char *name, int64_t B, int64_t H, int64_t L, int64_t d, int64_t b,
                     int lay, double density, int causal, pf_dtype dt, int isa, int64_t max_tasks,
                     int use_dlse, int64_t rank, int masked) {
    problem p = {B, H, L, d, b, L / b, 0, NULL, NULL, NULL, NULL, NULL};
    make_layout(&p, lay, density);
    const int64_t N = B * H, NL = N * L, NLd = NL * d;
    const size_t es = dt == PF_FLOAT64 ? 8 : dt == PF_FLOAT32 ? 4 : 2;
    const size_t ls = dt == PF_FLOAT64 ? 8 : 4;
    operand q, k, v, dout;
    fill_operand(&p, &q, dt, 1.0);
    fill_operand(&p, &k, dt, 1.0);
    fill_operand(&p, &v, dt, 1.0);
    fill_operand(&p, &dout, dt, 1.0);
    double *dlse = NULL;
    void *dlse_buf = NULL;
    if (use_dlse) {
        dlse = malloc((size_t)NL * 8);
        dlse_buf = malloc((size_t)NL * ls);
        for (int64_t i = 0; i < NL; ++i) {
            const float x = (float)nrand();
            dlse[i] = x;
            if (ls == 8) ((double *)dlse_buf)[i] = x; else ((float *)dlse_buf)[i] = x;
        }
    }
    const double scale = 1.0 / sqrt((double)d);
    /* the low-rank projection (as the kernel sees it: float32 unless FLOAT64) and a key mask:
     * a quarter of the keys out, and the first b + 3 keys of batch entry 0 (so that causal
     * rows 0..b+2 of it have no key at all) */
    double *W = malloc((size_t)(rank * d + 1) * 8);
    void *Wbuf = malloc((size_t)(rank * d + 1) * 8);
    for (int64_t i = 0; i < rank * d; ++i) {
        const double x = nrand();
        W[i] = dt == PF_FLOAT64 ? x : (double)(float)x;
        if (dt == PF_FLOAT64) ((double *)Wbuf)[i] = x; else ((float *)Wbuf)[i] = (float)x;
    }
    uint8_t *kmask = masked ? malloc((size_t)(B * L)) : NULL;
    for (int64_t i = 0; masked && i < B * L; ++i) kmask[i] = urand() < 0.75 && !(i < b + 3);
    double *ro = malloc((size_t)NLd * 8), *rl = malloc((size_t)NL * 8);
    double *rdq = malloc((size_t)NLd * 8), *rdk = malloc((size_t)NLd * 8), *rdv = malloc((size_t)NLd * 8);
    reference(&p, causal, scale, q.ref, k.ref, v.ref, dout.ref, dlse, W, rank, kmask, ro, rl, rdq, rdk, rdv);

    void *out = malloc((size_t)NLd * es), *lse = malloc((size_t)NL * ls);
    void *dq = malloc((size_t)NLd * es), *dk = malloc((size_t)NLd * es), *dv = malloc((size_t)NLd * es);
    pf_attn_args a;
    memset(&a, 0, sizeof a);
    a.dtype = dt; a.batch = B; a.heads = H; a.L = L; a.d = d; a.block = b; a.nnz = p.nnz;
    a.row_ptr = p.row_ptr; a.col_idx = p.col_idx; a.col_ptr = p.col_ptr; a.row_idx = p.row_idx;
    a.scale = scale; a.causal = causal;
    a.q = view_blhd(&p, q.buf); a.k = view_blhd(&p, k.buf); a.v = view_blhd(&p, v.buf);
    a.out = view_bhld(&p, out); a.lse = lse;
    a.max_tasks = max_tasks; a.isa = isa;
    a.rank = rank; a.features = rank ? Wbuf : NULL; a.key_mask = kmask;
    int64_t ws;
    for (int mode = 1; mode >= 0; --mode) { /* both schedules; mode 0's out/lse feed the backward */
        a.per_problem = mode;
        ws = pf_attn_workspace(PF_ATTN_FWD, &a);
        a.work = malloc((size_t)(ws > 0 ? ws : 1));
        pf_err e = pf_attn_serial(PF_ATTN_FWD, &a);
        CHECK(e == NULL, "%s fwd mode %d: error %s", name, mode, e ? e : "");
        /* tolerance: bf16 output rounding (2^-8) dominates; fp32 accumulation otherwise */
        const double tol = dt == PF_BFLOAT16 ? 1.6e-2 : dt == PF_FLOAT32 ? (rank ? 1e-4 : 2e-5) : 1e-12;
        const double eo = err_bhld(&p, out, dt, ro);
        double el = 0;
        for (int64_t i = 0; i < NL; ++i) {
            const double x = ls == 8 ? ((double *)lse)[i] : ((float *)lse)[i];
            const double r = rl[i];
            const double diff = (isinf(r) && x == r) ? 0 : fabs(x - r);
            if (!(diff <= el)) el = diff;
        }
        CHECK(eo <= tol, "%s fwd mode %d: out error %.3e > %.1e", name, mode, eo, tol);
        CHECK(el <= (dt == PF_FLOAT64 ? 1e-12 : 1e-4), "%s fwd mode %d: lse error %.3e", name, mode, el);
        free(a.work);
    }

    a.dout = view_blhd(&p, dout.buf);
    a.dlse = dlse_buf;
    a.dq = view_bhld(&p, dq); a.dk = view_bhld(&p, dk); a.dv = view_bhld(&p, dv);
    for (int mode = 0; mode < 2; ++mode) { /* both schedules */
        a.per_problem = mode;
        memset(dq, 0xff, (size_t)NLd * es); /* NaN: every element must be written */
        memset(dk, 0xff, (size_t)NLd * es);
        memset(dv, 0xff, (size_t)NLd * es);
        ws = pf_attn_workspace(PF_ATTN_BWD, &a);
        a.work = malloc((size_t)(ws > 0 ? ws : 1));
        pf_err e = pf_attn_serial(PF_ATTN_BWD, &a);
        CHECK(e == NULL, "%s: bwd error %s", name, e ? e : "");
        /* the backward uses the kernel's own (rounded) out and lse, like autograd does */
        const double gtol = dt == PF_BFLOAT16 ? 4e-2 : dt == PF_FLOAT32 ? (rank ? 5e-4 : 1e-4) : 1e-11;
        const double eq = err_bhld(&p, dq, dt, rdq), ek = err_bhld(&p, dk, dt, rdk), ev = err_bhld(&p, dv, dt, rdv);
        CHECK(eq <= gtol && ek <= gtol && ev <= gtol, "%s bwd mode %d: grad errors dq %.3e dk %.3e dv %.3e > %.1e",
               name, mode, eq, ek, ev, gtol);
        free(a.work);
    }

    free(q.ref); free(q.buf); free(k.ref); free(k.buf); free(v.ref); free(v.buf);
    free(dout.ref); free(dout.buf); free(dlse); free(dlse_buf);
    free(ro); free(rl); free(rdq); free(rdk); free(rdv);
    free(out); free(lse); free(dq); free(dk); free(dv);
    free(W); free(Wbuf); free(kmask);
    free_problem(&p);
}

static void test_errors(void) {
    problem p = {1, 2, 64, 16, 16, 4, 0, NULL, NULL, NULL, NULL, NULL};
    make_layout(&p, LAY_BUTTERFLY, 0);
    float buf[2 * 64 * 16], lse[2 * 64];
    pf_attn_args a;
    memset(&a, 0, sizeof a);
    a.dtype = PF_FLOAT32; a.batch = 1; a.heads = 2; a.L = 64; a.d = 16; a.block = 16; a.nnz = p.nnz;
    a.row_ptr = p.row_ptr; a.col_idx = p.col_idx; a.col_ptr = p.col_ptr; a.row_idx = p.row_idx;
    a.scale = 0.25;
    pf_attn_tensor t = {buf, 2 * 64 * 16, 64 * 16, 16};
    a.q = a.k = a.v = a.out = a.dout = a.dq = a.dk = a.dv = t;
    a.lse = lse;
    CHECK(pf_attn_check(PF_ATTN_FWD, &a) == NULL, "valid fwd rejected");
    CHECK(pf_attn_check(PF_ATTN_BWD, &a) == NULL, "valid bwd rejected");
    CHECK(pf_attn_check(PF_ATTN_FWD, NULL) != NULL, "NULL args accepted");
    CHECK(pf_attn_check(7, &a) != NULL, "bad op accepted");
    CHECK(pf_attn_workspace(PF_ATTN_FWD, NULL) == -1, "workspace of NULL args");
    CHECK(pf_attn_num_tasks(PF_ATTN_FWD, 5, &a) == 0, "tasks of a bad phase");
    pf_attn_run(PF_ATTN_FWD, 0, NULL, 0, 1); /* must not crash */
#define BAD(field, val, word)                                                                  \
    do {                                                                                       \
        pf_attn_args b_ = a;                                                                   \
        b_.field = val;                                                                        \
        pf_err e_ = pf_attn_check(PF_ATTN_BWD, &b_);                                           \
        CHECK(e_ && strstr(e_, word), "bad " #field ": got %s", e_ ? e_ : "NULL");            \
    } while (0)
    BAD(dtype, PF_FLOAT16, "dtype");
    BAD(L, 60, "L");
    BAD(L, 8, "L");
    BAD(block, 0, "block");
    BAD(d, 0, "d");
    BAD(batch, -1, "batch");
    BAD(scale, NAN, "scale");
    BAD(scale, INFINITY, "scale");
    BAD(nnz, p.nnz + 1, "");
    BAD(row_ptr, NULL, "row_ptr");
    BAD(col_ptr, NULL, "col_ptr");
    BAD(q.p, NULL, "q");
    BAD(k.sl, -1, "k");
    BAD(dout.p, NULL, "dout");
    BAD(dv.sl, 3, "dv");
    BAD(lse, NULL, "lse");
    BAD(max_tasks, -2, "max_tasks");
    BAD(isa, 9, "isa");
    int64_t bad_rp[5], bad_ci[64], bad_ri[64];
    memcpy(bad_rp, p.row_ptr, sizeof bad_rp);
    memcpy(bad_ci, p.col_idx, (size_t)p.nnz * 8);
    memcpy(bad_ri, p.row_idx, (size_t)p.nnz * 8);
    bad_ci[0] = 4; /* out of range */
    BAD(col_idx, bad_ci, "row_ptr/col_idx");
    bad_ci[0] = p.col_idx[1]; /* duplicate */
    BAD(col_idx, bad_ci, "row_ptr/col_idx");
    {   /* running with a bad index is a no-op (never reads out of bounds) */
        pf_attn_args b2 = a;
        b2.col_idx = bad_ci;
        bad_ci[1] = 1000;
        char work[64];
        b2.work = work;
        for (int ph = 0; ph < PF_ATTN_PHASES; ++ph) pf_attn_run(PF_ATTN_BWD, ph, &b2, 0, 100);
        CHECK(1, "unreachable");
        bad_ci[1] = p.col_idx[1];
    }
    bad_rp[1] = p.nnz + 5;
    BAD(row_ptr, bad_rp, "row_ptr/col_idx");
    /* a CSC that is valid on its own but is not the transpose */
    bad_ri[0] = (p.row_idx[0] + 3) % 4;
    {
        int ok = 1; /* keep it ascending in its column to reach the transpose test */
        for (int64_t q2 = p.col_ptr[0] + 1; q2 < p.col_ptr[1]; ++q2) ok &= bad_ri[q2] > bad_ri[0];
        if (ok) BAD(row_idx, bad_ri, "transpose");
        else BAD(row_idx, bad_ri, "col_ptr/row_idx");
    }
    /* batch*heads == 0 is a valid no-op */
    pf_attn_args z = a;
    z.batch = 0;
    z.q.p = NULL;
    CHECK(pf_attn_check(PF_ATTN_FWD, &z) == NULL, "empty batch rejected");
    CHECK(pf_attn_num_tasks(PF_ATTN_FWD, 1, &z) == 0, "empty batch has tasks");
    free_problem(&p);
}

/* NaN/inf as the dense masked softmax: a NaN key makes the rows that see it NaN (not 0 with
 * lse = -inf), a +inf score gives out = NaN and lse = +inf, and in a causal diagonal block a
 * later token's NaN/inf value never reaches earlier rows (masked weights are selected away,
 * not multiplied by 0). */
static void test_nonfinite(int isa) {
    enum { L = 64, D = 8, BLK = 16 };
    problem p = {1, 1, L, D, BLK, L / BLK, 0, NULL, NULL, NULL, NULL, NULL};
    make_layout(&p, LAY_RANDOM, 1.0); /* dense */
    static float q[L * D], k[L * D], v[L * D], out[L * D], lse[L];
    for (int causal = 0; causal < 2; ++causal) {
        for (int i = 0; i < L * D; ++i) { q[i] = (float)nrand(); k[i] = (float)nrand(); v[i] = (float)nrand(); }
        v[15 * D + 3] = NAN;         /* last token of the first diagonal block */
        k[40 * D + 1] = NAN;         /* a key in the third block */
        pf_attn_args a;
        memset(&a, 0, sizeof a);
        a.dtype = PF_FLOAT32; a.batch = 1; a.heads = 1; a.L = L; a.d = D; a.block = BLK;
        a.nnz = p.nnz; a.row_ptr = p.row_ptr; a.col_idx = p.col_idx; a.col_ptr = p.col_ptr;
        a.row_idx = p.row_idx; a.scale = 0.35; a.causal = causal; a.isa = isa;
        a.q = (pf_attn_tensor){q, L * D, 0, D};
        a.k = (pf_attn_tensor){k, L * D, 0, D};
        a.v = (pf_attn_tensor){v, L * D, 0, D};
        a.out = (pf_attn_tensor){out, L * D, 0, D};
        a.lse = lse;
        const int64_t ws = pf_attn_workspace(PF_ATTN_FWD, &a);
        a.work = malloc((size_t)ws);
        pf_err e = pf_attn_serial(PF_ATTN_FWD, &a);
        CHECK(e == NULL, "nonfinite run: %s", e ? e : "");
        int bad = 0;
        for (int i = 0; i < L; ++i) {
            const int sees_v = !causal || i >= 15, sees_k = !causal || i >= 40;
            for (int c = 0; c < D; ++c) {
                const float o = out[i * D + c];
                const int want_nan = sees_k || (sees_v && c == 3);
                bad += want_nan ? !isnan(o) : !isfinite(o);
            }
            bad += sees_k ? !isnan(lse[i]) : !isfinite(lse[i]);
        }
        CHECK(bad == 0, "isa %d causal %d: %d outputs with the wrong NaN/inf pattern", isa, causal, bad);
        /* every score of row 0 (non-causal: key 5 component 0 = +inf, q[0][0] > 0) is +inf */
        k[40 * D + 1] = 0.5f; v[15 * D + 3] = 0.5f;
        q[0] = 1.0f; k[5 * D] = INFINITY;
        pf_attn_serial(PF_ATTN_FWD, &a);
        CHECK(causal || (isnan(out[0]) && isinf(lse[0]) && lse[0] > 0),
               "isa %d: a +inf score gave out %g lse %g", isa, out[0], lse[0]);
        free(a.work);
    }
    free_problem(&p);
}

int main(void) {
    const int isas[3] = {PF_ISA_PORTABLE, PF_ISA_AVX2, PF_ISA_AVX512};
    const int have[3] = {1, pf_cpu_has_avx2_fma(), pf_cpu_has_avx512()};
    printf("test_attn: ISAs tested: portable%s%s\n", have[1] ? ", avx2" : " (no avx2+fma on this CPU)",
           have[2] ? ", avx512" : " (no avx512 f/bw/vl on this CPU)");
    test_errors();
    for (int ii = 0; ii < 3; ++ii)
        if (have[ii]) test_nonfinite(isas[ii]);
    for (int ii = 0; ii < 3; ++ii) {
        if (!have[ii]) continue;
        const int isa = isas[ii];
        char name[160];
#define CASE_LR(B, H, L, d, b, lay, dens, causal, dt, mt, dl, r, km)                            \
        do {                                                                                   \
            snprintf(name, sizeof name, "isa%d B%d H%d L%d d%d b%d lay%d causal%d dt%d tasks%d dlse%d rank%d mask%d", \
                     isa, (int)(B), (int)(H), (int)(L), (int)(d), (int)(b), lay, causal, (int)(dt), \
                     (int)(mt), dl, (int)(r), km);                                              \
            run_case(name, B, H, L, d, b, lay, dens, causal, dt, isa, mt, dl, r, km);          \
        } while (0)
#define CASE(B, H, L, d, b, lay, dens, causal, dt, mt, dl) CASE_LR(B, H, L, d, b, lay, dens, causal, dt, mt, dl, 0, 0)
        for (int causal = 0; causal < 2; ++causal) {
            CASE(2, 3, 64, 64, 16, LAY_BUTTERFLY, 0, causal, PF_FLOAT32, 0, 0);
            CASE(1, 2, 128, 64, 32, LAY_RANDOM, 0.4, causal, PF_FLOAT32, 3, 1);
            CASE(1, 1, 128, 32, 64, LAY_RANDOM, 0.7, causal, PF_FLOAT32, 0, 0);
            CASE(2, 1, 96, 40, 24, LAY_EMPTY_ROWS, 0.5, causal, PF_FLOAT32, 2, 1); /* tails */
            CASE(1, 3, 64, 20, 8, LAY_RANDOM, 0.3, causal, PF_FLOAT32, 0, 0);
            CASE(1, 2, 128, 64, 32, LAY_BUTTERFLY, 0, causal, PF_BFLOAT16, 0, 1);
            CASE(2, 2, 64, 16, 16, LAY_EMPTY_ROWS, 0.5, causal, PF_BFLOAT16, 5, 0);
            CASE(1, 2, 64, 24, 16, LAY_RANDOM, 0.5, causal, PF_FLOAT64, 0, 1);
            CASE(1, 1, 80, 8, 16, LAY_EMPTY_ROWS, 0.6, causal, PF_FLOAT64, 1, 0);
            /* the low-rank part and the key mask (empty rows: causal diagonal blocks missing) */
            CASE_LR(2, 2, 64, 16, 16, LAY_BUTTERFLY, 0, causal, PF_FLOAT32, 0, 0, 8, 0);
            CASE_LR(1, 2, 96, 24, 16, LAY_EMPTY_ROWS, 0.4, causal, PF_FLOAT32, 3, 1, 12, 0);
            CASE_LR(2, 1, 64, 20, 8, LAY_RANDOM, 0.3, causal, PF_FLOAT32, 0, 0, 5, 1);
            CASE_LR(2, 2, 64, 16, 16, LAY_EMPTY_ROWS, 0.5, causal, PF_FLOAT32, 1, 1, 0, 1);
            CASE_LR(1, 2, 64, 32, 16, LAY_BUTTERFLY, 0, causal, PF_BFLOAT16, 0, 1, 16, 1);
            CASE_LR(1, 2, 64, 12, 16, LAY_EMPTY_ROWS, 0.5, causal, PF_FLOAT64, 0, 1, 7, 0);
            CASE_LR(2, 1, 48, 8, 8, LAY_RANDOM, 0.4, causal, PF_FLOAT64, 2, 0, 6, 1);
        }
    }
    printf("test_attn: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail != 0;
}
