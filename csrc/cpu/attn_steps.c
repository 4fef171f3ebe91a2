/*
 * attn_steps.c - the work items of block-sparse attention (see attn.c for the design):
 * phase 0 packs one block of every operand (pf_attn_pack_block); phase 1 runs the
 * forward of one query block-row with an online softmax (pf_attn_fwd_row), or a piece of
 * the backward: dq of a query block-row (pf_attn_bwd_dq), dk and dv of a key block-column
 * (pf_attn_bwd_dkdv), or all of one problem (pf_attn_bwd_problem). NaN and inf follow the
 * dense masked softmax (softmax_tile, gemm_lower).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attn_internal.h"
#include "kernels.h"

/* -------------------------------------------------------- loads and stores */

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
            for (int64_t j = 0; j < n; ++j) o[j] = pf_f32_to_bf16(s[j] * f);
        }
    }
}

static void zero_store_row(void *dst, pf_dtype dt, int64_t n) { memset(dst, 0, (size_t)n * pf_attn_dtype_size(dt)); }

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
        for (int64_t j = 0; j < n; ++j) f += a[j] * pf_bf16_to_f32(b[j]);
        s = f;
    }
    return s;
}

/* Causal mask of a diagonal tile: above = 1 masks columns > row (S), 0 masks columns < row
 * (S^T, rows are keys). */
static void mask_diag(void *S, int64_t b, int above, size_t es) {
    for (int64_t r = 0; r < b; ++r) {
        const int64_t lo = above ? r + 1 : 0, hi = above ? b : r;
        for (int64_t c = lo; c < hi; ++c) pf_attn_set(S, r * b + c, -INFINITY, es);
    }
}

/* Online-softmax step on a rows x n score tile (row stride n), rows ascending. Per row, with
 * m' = max(m, rowmax) (NaN ignored): alpha = exp(m - m'), S = exp(S - m'),
 * l = l * alpha + rowsum(S), m = m'. NaN and inf follow the dense formula: a NaN score makes
 * l NaN (for good); while every score seen is -inf or NaN the weights are 0 (NaN stays NaN);
 * a +inf score makes the row's softmax NaN (m = +inf, alpha = NaN, S = NaN; l keeps only the
 * NaN flag), so that the caller gives out = NaN and lse = +inf (NaN if a score was NaN). */
static void softmax_tile(const pf_attn_ops *ops, void *S, int64_t rows, int64_t n, double *m, double *l,
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
                const double x = pf_attn_get(Sr, j, es);
                any_nan |= x != x;
                pf_attn_set(Sr, j, mn == INFINITY || x != x ? NAN : 0.0, es);
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

/* acc[b][d] += P V on a causal diagonal tile: row i uses keys 0..i only, so a NaN or inf
 * value of a later key is never multiplied by the zero weight of a masked position. */
static void gemm_lower(const pf_attn_ops *ops, int64_t b, int64_t d, const void *P, const void *V, void *acc) {
    const size_t es = ops->es;
    for (int64_t i = 0; i < b; ++i)
        ops->gemm(1, d, i + 1, (const char *)P + (size_t)(i * b) * es, b, V, d,
                  (char *)acc + (size_t)(i * d) * es, d, 1);
}

/* ------------------------------------------------------------------ phases */

void pf_attn_pack_block(int op, const pf_attn_args *a, const plan_t *P, int64_t item) {
    const int64_t n = item / P->R, I = item % P->R, b = P->b, d = P->d, es = (int64_t)P->es;
    const int64_t n0 = n / a->heads, h = n % a->heads;
    const pf_dtype dt = a->dtype;
    char *w = (char *)a->work;
    const int64_t sn = pf_attn_slot(P, n);
    const int64_t tile = (sn * P->R + I) * b * d * es; /* byte offset of block (n, I) in NLd arrays */
    for (int64_t i = 0; i < b; ++i) {
        const int64_t row = I * b + i;
        const int64_t roff = tile + i * d * es;
        const int kept = pf_attn_key_kept(a, n0, row); /* an excluded key is packed as zeros */
        /* q: scaled rows (+ unscaled transposed tile for BWD) */
        void *qs = PTR(w, P->off[P_QS] + roff);
        pf_attn_load_row(qs, pf_attn_elem(&a->q, dt, n0, h, row), dt, d);
        if (op == PF_ATTN_BWD) scatter_col(PTR(w, P->off[P_QT] + tile), qs, d, b, i, P->es);
        scale_row(qs, d, a->scale, P->es);
        /* k: transposed tile (unscaled) (+ scaled rows for BWD) */
        void *ks = op == PF_ATTN_BWD ? PTR(w, P->off[P_KS] + roff) : NULL;
        if (ks) {
            if (kept) pf_attn_load_row(ks, pf_attn_elem(&a->k, dt, n0, h, row), dt, d);
            else memset(ks, 0, (size_t)(d * es));
            if (P->off[P_KT] >= 0) scatter_col(PTR(w, P->off[P_KT] + tile), ks, d, b, i, P->es);
            scale_row(ks, d, a->scale, P->es);
        } else {
            /* FWD has no row copy of k: stage it in the V slot's row, overwritten below */
            void *tmp = PTR(w, P->off[P_V] + roff);
            if (kept) pf_attn_load_row(tmp, pf_attn_elem(&a->k, dt, n0, h, row), dt, d);
            else memset(tmp, 0, (size_t)(d * es));
            scatter_col(PTR(w, P->off[P_KT] + tile), tmp, d, b, i, P->es);
        }
        void *vr = PTR(w, P->off[P_V] + roff);
        if (kept) pf_attn_load_row(vr, pf_attn_elem(&a->v, dt, n0, h, row), dt, d);
        else memset(vr, 0, (size_t)(d * es));
        if (op == PF_ATTN_BWD) {
            if (P->off[P_VT] >= 0) scatter_col(PTR(w, P->off[P_VT] + tile), vr, d, b, i, P->es);
            void *dor = PTR(w, P->off[P_DO] + roff);
            pf_attn_load_row(dor, pf_attn_elem(&a->dout, dt, n0, h, row), dt, d);
            scatter_col(PTR(w, P->off[P_DOT] + tile), dor, d, b, i, P->es);
            const int64_t r = n * P->L + row, rs = sn * P->L + row; /* [batch, heads, L] index, slot's */
            double D = dot_row(dor, pf_attn_elem(&a->out, dt, n0, h, row), dt, d);
            if (a->dlse) D -= pf_attn_get(a->dlse, r, P->es);
            pf_attn_set(PTR(w, P->off[P_D]), rs, D, P->es);
            const double lse = pf_attn_get(a->lse, r, P->es);
            pf_attn_set(PTR(w, P->off[P_LSE]), rs, lse == -INFINITY ? INFINITY : lse, P->es);
        }
    }
}

/* Excluded keys (key mask) of key block J get score -inf: in S (keys are columns) or, with
 * keys_are_rows, in S^T. */
static void mask_keys(const pf_attn_args *a, const plan_t *P, int64_t n, int64_t J, void *S, int keys_are_rows) {
    if (!a->key_mask) return;
    const int64_t b = P->b;
    const uint8_t *km = a->key_mask + (n / a->heads) * a->L + J * b;
    for (int64_t j = 0; j < b; ++j) {
        if (km[j]) continue;
        if (keys_are_rows)
            for (int64_t c = 0; c < b; ++c) pf_attn_set(S, j * b + c, -INFINITY, P->es);
        else
            for (int64_t r = 0; r < b; ++r) pf_attn_set(S, r * b + j, -INFINITY, P->es);
    }
}

/* Offset of the first key of block J that takes part (b if none). */
static int64_t first_kept(const pf_attn_args *a, const plan_t *P, int64_t n, int64_t J) {
    if (!a->key_mask) return 0;
    const uint8_t *km = a->key_mask + (n / a->heads) * a->L + J * P->b;
    int64_t j = 0;
    while (j < P->b && !km[j]) ++j;
    return j;
}

/* Row `row` of the output from the sparse statistics (m, l, acc row; seen: the row met at
 * least one key) and, with a low-rank part, the row's low-rank numerator and denominator
 * nd[d + 1] with offset off: y = (sum of both numerators) / Z, lse = log Z. */
static void store_fwd_row(const pf_attn_args *a, const plan_t *P, int64_t n, int64_t row, double m, double l,
                          int seen, const void *acc, const void *nd, double off) {
    const int64_t d = P->d, n0 = n / a->heads, h = n % a->heads;
    const size_t es = P->es;
    void *dst = (void *)pf_attn_elem(&a->out, a->dtype, n0, h, row);
    /* sparse part: l = 0 (every score -inf) gives 0/0 = NaN, as the dense softmax */
    const double lse_s = !seen ? -INFINITY : m == INFINITY ? (l != l ? NAN : INFINITY) : m + log(l);
    if (!nd) {
        if (seen) store_row(dst, a->dtype, acc, d, 1.0 / l);
        else zero_store_row(dst, a->dtype, d);
        pf_attn_set(a->lse, n * P->L + row, lse_s, es);
        return;
    }
    const double den = pf_attn_get(nd, d, es);
    const double M = lse_s != lse_s ? NAN : lse_s > off ? lse_s : off;
    if (M == -INFINITY) { /* no key at all */
        zero_store_row(dst, a->dtype, d);
        pf_attn_set(a->lse, n * P->L + row, -INFINITY, es);
        return;
    }
    const double ws = lse_s == -INFINITY ? 0.0 : exp(lse_s - M), wl = off == -INFINITY ? 0.0 : exp(off - M);
    const double z = ws + wl * den;
    if (z == 0) {
        zero_store_row(dst, a->dtype, d);
        pf_attn_set(a->lse, n * P->L + row, -INFINITY, es);
        return;
    }
    /* y = (ws * acc / l + wl * num) / z, the sparse term 0 when the row met no sparse key */
    const double fs = lse_s == -INFINITY ? 0.0 : ws / (l * z), fl = wl / z;
    if (es == 8) {
        double *y = (double *)PTR(nd, 0); /* nd's numerators are overwritten with y */
        const double *ac = (const double *)acc;
        for (int64_t c = 0; c < d; ++c) y[c] = (lse_s == -INFINITY ? 0.0 : ac[c] * fs) + y[c] * fl;
    } else {
        float *y = (float *)PTR(nd, 0);
        const float *ac = (const float *)acc;
        const float fsf = (float)fs, flf = (float)fl;
        for (int64_t c = 0; c < d; ++c) y[c] = (lse_s == -INFINITY ? 0.0f : ac[c] * fsf) + y[c] * flf;
    }
    store_row(dst, a->dtype, nd, d, 1.0);
    pf_attn_set(a->lse, n * P->L + row, M + log(z), es);
}

void pf_attn_fwd_row(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t item, void *scr) {
    const int64_t n = item / P->R, I = item % P->R, b = P->b, d = P->d, R = P->R;
    const int64_t es = (int64_t)P->es;
    char *w = (char *)a->work;
    void *S = scr;
    void *acc = PTR(scr, ALIGN64(b * b * es));
    double *m = (double *)PTR(acc, ALIGN64(b * d * es));
    double *l = m + b, *alpha = l + b, *seen = alpha + b;
    memset(acc, 0, (size_t)(b * d * es));
    for (int64_t i = 0; i < b; ++i) { m[i] = -INFINITY; l[i] = 0; seen[i] = 0; }
    const int64_t sn = pf_attn_slot(P, n);
    const void *Qs = PTR(w, P->off[P_QS] + (sn * P->L + I * b) * d * es);
    for (int64_t p = a->row_ptr[I]; p < a->row_ptr[I + 1]; ++p) {
        const int64_t J = a->col_idx[p];
        if (a->causal && J > I) break; /* ascending columns */
        const void *Kt = PTR(w, P->off[P_KT] + (sn * R + J) * b * d * es);
        const void *V = PTR(w, P->off[P_V] + (sn * P->L + J * b) * d * es);
        const int diag = a->causal && J == I;
        const int64_t f = first_kept(a, P, n, J); /* row i meets a key iff f < b (f <= i: diag) */
        for (int64_t i = 0; i < b; ++i) seen[i] = seen[i] || (diag ? f <= i : f < b);
        ops->gemm(b, b, d, Qs, d, Kt, b, S, b, 0);
        if (diag) mask_diag(S, b, 1, P->es);
        mask_keys(a, P, n, J, S, 0);
        softmax_tile(ops, S, b, b, m, l, alpha);
        for (int64_t i = 0; i < b; ++i)
            if (alpha[i] != 1.0) ops->scale(PTR(acc, i * d * es), d, alpha[i]);
        if (diag && !pf_attn_all_finite(V, b * d, P->es)) gemm_lower(ops, b, d, S, V, acc);
        else ops->gemm(b, d, b, S, b, V, d, acc, d, 1);
    }
    void *nd = P->r > 0 ? pf_attn_lr_row(a, P, ops, n, I, PTR(scr, P->lr_scratch)) : NULL;
    const double offk = nd ? pf_attn_get(PTR(w, P->off[P_OFFK]), pf_attn_slot(P, n), P->es) : 0;
    for (int64_t i = 0; i < b; ++i) {
        const int64_t row = I * b + i;
        const double off = nd ? pf_attn_get(nd, b * P->d1 + i, P->es) + offk : 0; /* offq after nd */
        store_fwd_row(a, P, n, row, m[i], l[i], seen[i] != 0, PTR(acc, i * d * es),
                      nd ? PTR(nd, i * P->d1 * es) : NULL, off);
    }
}

/* Pack problem n's blocks and run its low-rank phases 1-3 (local mode: a task's own buffers) */
static void prepare_problem(int op, const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n,
                            void *scr) {
    for (int64_t I = 0; I < P->R; ++I) pf_attn_pack_block(op, a, P, n * P->R + I);
    if (P->r > 0) pf_attn_lr_prepare(op, a, P, ops, n, scr);
}

void pf_attn_fwd_problem(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, void *scr) {
    prepare_problem(PF_ATTN_FWD, a, P, ops, n, scr);
    for (int64_t I = 0; I < P->R; ++I) pf_attn_fwd_row(a, P, ops, n * P->R + I, scr);
}

void pf_attn_bwd_dq(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t item, void *scr) {
    const int64_t n = item / P->R, I = item % P->R, b = P->b, d = P->d, R = P->R;
    const int64_t es = (int64_t)P->es;
    const int64_t n0 = n / a->heads, h = n % a->heads;
    char *w = (char *)a->work;
    void *S = scr, *dP = PTR(scr, ALIGN64(b * b * es));
    void *acc = PTR(dP, ALIGN64(b * b * es));
    memset(acc, 0, (size_t)(b * d * es));
    const int64_t sn = pf_attn_slot(P, n), rows = (sn * P->L + I * b);
    const void *Qs = PTR(w, P->off[P_QS] + rows * d * es);
    const void *dO = PTR(w, P->off[P_DO] + rows * d * es);
    const char *lse = (const char *)PTR(w, P->off[P_LSE] + rows * es);
    const char *D = (const char *)PTR(w, P->off[P_D] + rows * es);
    for (int64_t p = a->row_ptr[I]; p < a->row_ptr[I + 1]; ++p) {
        const int64_t J = a->col_idx[p];
        if (a->causal && J > I) break;
        const void *Kt = PTR(w, P->off[P_KT] + (sn * R + J) * b * d * es);
        const void *Vt = PTR(w, P->off[P_VT] + (sn * R + J) * b * d * es);
        const void *Ks = PTR(w, P->off[P_KS] + (sn * P->L + J * b) * d * es);
        ops->gemm(b, b, d, Qs, d, Kt, b, S, b, 0);
        if (a->causal && J == I) mask_diag(S, b, 1, P->es);
        mask_keys(a, P, n, J, S, 0);
        ops->gemm(b, b, d, dO, d, Vt, b, dP, b, 0);
        ops->p_ds(S, dP, b, b, lse, D, 1);
        ops->gemm(b, d, b, dP, b, Ks, d, acc, d, 1);
    }
    if (P->r > 0) pf_attn_lr_dq(a, P, ops, n, I, PTR(scr, P->lr_scratch), acc);
    for (int64_t i = 0; i < b; ++i)
        store_row((void *)pf_attn_elem(&a->dq, a->dtype, n0, h, I * b + i), a->dtype, PTR(acc, i * d * es), d, 1.0);
}

/* Key block J against query block I of problem n: scores S^T = Ks Qt (recomputed, masked on
 * the causal diagonal), P^T and dS^T = P^T * (dP^T - D) into St and dPt, then
 * accV += P^T dO and accK += dS^T Qs. */
static void dkdv_block(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n,
                       int64_t I, int64_t J, const void *Ks, const void *V, void *St, void *dPt,
                       void *accK, void *accV) {
    const int64_t b = P->b, d = P->d, R = P->R, es = (int64_t)P->es;
    const char *w = (const char *)a->work;
    const int64_t sn = pf_attn_slot(P, n), qrows = sn * P->L + I * b;
    const void *Qt = PTR(w, P->off[P_QT] + (sn * R + I) * b * d * es);
    const void *dOt = PTR(w, P->off[P_DOT] + (sn * R + I) * b * d * es);
    const void *Qs = PTR(w, P->off[P_QS] + qrows * d * es);
    const void *dO = PTR(w, P->off[P_DO] + qrows * d * es);
    const void *lse = PTR(w, P->off[P_LSE] + qrows * es);
    const void *D = PTR(w, P->off[P_D] + qrows * es);
    ops->gemm(b, b, d, Ks, d, Qt, b, St, b, 0);
    if (a->causal && J == I) mask_diag(St, b, 0, P->es);
    mask_keys(a, P, n, J, St, 1);
    ops->gemm(b, b, d, V, d, dOt, b, dPt, b, 0);
    ops->p_ds(St, dPt, b, b, lse, D, 0);
    ops->gemm(b, d, b, St, b, dO, d, accV, d, 1);
    ops->gemm(b, d, b, dPt, b, Qs, d, accK, d, 1);
}

/* dk, dv rows of key block J of problem n from the accumulators */
static void store_dkdv(const pf_attn_args *a, const plan_t *P, int64_t n, int64_t J,
                       const void *accK, const void *accV) {
    const int64_t b = P->b, d = P->d, es = (int64_t)P->es;
    const int64_t n0 = n / a->heads, h = n % a->heads;
    for (int64_t j = 0; j < b; ++j) {
        const int64_t row = J * b + j;
        store_row((void *)pf_attn_elem(&a->dk, a->dtype, n0, h, row), a->dtype, PTR(accK, j * d * es), d, 1.0);
        store_row((void *)pf_attn_elem(&a->dv, a->dtype, n0, h, row), a->dtype, PTR(accV, j * d * es), d, 1.0);
    }
}

/* dk, dv of key block-column J of problem n over its query blocks (CSC order); with dQ (the
 * per-problem schedule) also dQ[rows of I] += dS Ks for each query block I. Scratch: the
 * St, dPt tiles, the accK, accV accumulators, and (with dQ) the dS tile. */
static void key_column(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n,
                       int64_t J, void *scr, void *dQ) {
    const int64_t b = P->b, d = P->d, es = (int64_t)P->es;
    const char *w = (const char *)a->work;
    void *St = scr, *dPt = PTR(scr, ALIGN64(b * b * es));
    void *accK = PTR(dPt, ALIGN64(b * b * es));
    void *accV = PTR(accK, ALIGN64(b * d * es));
    void *dS = PTR(accV, ALIGN64(b * d * es));
    memset(accK, 0, (size_t)(b * d * es));
    memset(accV, 0, (size_t)(b * d * es));
    const int64_t krows = pf_attn_slot(P, n) * P->L + J * b;
    const void *Ks = PTR(w, P->off[P_KS] + krows * d * es);
    const void *V = PTR(w, P->off[P_V] + krows * d * es);
    for (int64_t p = a->col_ptr[J]; p < a->col_ptr[J + 1]; ++p) {
        const int64_t I = a->row_idx[p];
        if (a->causal && I < J) continue;
        dkdv_block(a, P, ops, n, I, J, Ks, V, St, dPt, accK, accV);
        if (dQ) {
            pf_attn_transpose(dS, dPt, b, b, b, P->es);
            ops->gemm(b, d, b, dS, b, Ks, d, PTR(dQ, I * b * d * es), d, 1);
        }
    }
    if (P->r > 0) pf_attn_lr_dkdv(a, P, ops, n, J, PTR(scr, P->lr_scratch), accK, accV);
    store_dkdv(a, P, n, J, accK, accV);
}

void pf_attn_bwd_dkdv(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t item, void *scr) {
    key_column(a, P, ops, item / P->R, item % P->R, scr, NULL);
}

/* Fused backward of one problem n: key block-columns in order, each visiting its query
 * blocks (CSC); dk, dv accumulate per column, dq in the problem's own fp32/fp64 buffer
 * (owned by this task alone). */
void pf_attn_bwd_problem(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, void *scr) {
    const int64_t d = P->d, es = (int64_t)P->es;
    const int64_t n0 = n / a->heads, h = n % a->heads;
    void *dQ = PTR(a->work, P->off[P_DQ] + pf_attn_slot(P, n) * P->L * d * es);
    prepare_problem(PF_ATTN_BWD, a, P, ops, n, scr); /* local: this task does every step of n */
    memset(dQ, 0, (size_t)(P->L * d * es));
    for (int64_t J = 0; J < P->R; ++J) key_column(a, P, ops, n, J, scr, dQ);
    if (P->r > 0)
        for (int64_t I = 0; I < P->R; ++I)
            pf_attn_lr_dq(a, P, ops, n, I, PTR(scr, P->lr_scratch), PTR(dQ, I * P->b * d * es));
    for (int64_t i = 0; i < P->L; ++i)
        store_row((void *)pf_attn_elem(&a->dq, a->dtype, n0, h, i), a->dtype, PTR(dQ, i * d * es), d, 1.0);
}
