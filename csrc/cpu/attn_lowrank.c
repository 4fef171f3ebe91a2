/*
 * attn_lowrank.c - the low-rank part of attention (SPEC section 4; see pixelfly_attn.h):
 * positive random features over every allowed key the layout does not keep, one
 * normaliser shared with the sparse part, in memory linear in L.
 *
 * For one problem, with phi_q / phi_k the feature rows (rank wide), [v, 1] a value row
 * with a 1 appended, and per key block m the summary KV_m = sum_{j in m} phi_k_j [v_j, 1]
 * (rank x (d + 1)), query block I's low-rank numerators and denominators are
 *
 *     nd_i = phi_q_i . (A_I - sum_{J kept in row I} KV_J)
 *
 * with A_I the total of every KV_m (causal: the exclusive prefix sum, blocks m < I, and the
 * kept diagonal block excluded from the subtraction; a causal diagonal block that is not
 * kept pairs query i with keys j <= i of that block element by element, a b x b product).
 * The backward reuses the same "rest" for dq (with g = c [dout, -D] in place of phi_q's
 * partner) and forms the transposed sums for dk, dv: per query block QG_n = sum phi_q_i
 * g_i, per key block the total (causal: suffix sum over n > m) minus its kept query blocks.
 * The features' gradient is d a / d x = W - x (per row), scaled by sqrt(scale).
 *
 * Phases: 1 features (pf_attn_lr_features), 2 summaries (pf_attn_lr_summaries), 3 sums
 * (pf_attn_lr_sums); phase 4's work items call pf_attn_lr_row / _dq / _dkdv.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attn_internal.h"
#include "kernels.h"

/* Run the body once with T = double (es == 8) or T = float, so loops over accumulator-typed
 * arrays are plain typed loops the compiler vectorises. */
#define TYPED(es, ...)         \
    do {                       \
        if ((es) == 8) {       \
            typedef double T;  \
            __VA_ARGS__        \
        } else {               \
            typedef float T;   \
            __VA_ARGS__        \
        }                      \
    } while (0)

/* ------------------------------------------------------------------ scratch */

typedef struct {
    void *rest, *restT, *g, *nd, *dph, *phq, *pt, *x, *y, *e, *ain, *vt, *sq;
} lr_scratch;

/* The low-rank scratch of one task from `base` (NULL: S untouched, only the size). Returns
 * its bytes.
 * nd holds b x (d + 1) numerators/denominators, then the b query offsets. */
static int64_t scratch_layout(const plan_t *P, void *base, lr_scratch *S) {
    const int64_t b = P->b, d = P->d, r = P->r, d1 = P->d1, es = (int64_t)P->es;
    const int64_t sizes[13] = {r * d1, d1 * r, b * d1, b * d1 + b, b * r, b * r, r * b, b * d, b * d, b * b, b * b, d * b, b};
    void **slots[13] = {&S->rest, &S->restT, &S->g, &S->nd, &S->dph, &S->phq, &S->pt, &S->x, &S->y, &S->e, &S->ain, &S->vt, &S->sq};
    int64_t o = 0;
    for (int i = 0; i < 13; ++i) {
        if (base) *slots[i] = PTR(base, o);
        o += ALIGN64(sizes[i] * es);
    }
    return o;
}

int64_t pf_attn_lr_scratch_bytes(const plan_t *P) {
    lr_scratch unused;
    return scratch_layout(P, NULL, &unused);
}

/* --------------------------------------------------------------- addresses */

/* element `elems` of buffer `part` */
static void *buf(const pf_attn_args *a, const plan_t *P, int part, int64_t elems) {
    return PTR(a->work, P->off[part] + elems * (int64_t)P->es);
}
/* per-row value (offsets, c_i) of row `row` of problem n */
static void *row_val(const pf_attn_args *a, const plan_t *P, int part, int64_t n, int64_t row) {
    return buf(a, P, part, pf_attn_slot(P, n) * P->L + row);
}
/* feature rows of block I of problem n in P_PHQ / P_PHK */
static void *phi_rows(const pf_attn_args *a, const plan_t *P, int part, int64_t n, int64_t I) {
    return buf(a, P, part, (pf_attn_slot(P, n) * P->L + I * P->b) * P->r);
}
/* summary m of problem n in a block array (P_KV, P_QG; P_PRE, P_SUF when causal) */
static void *summary(const pf_attn_args *a, const plan_t *P, int part, int64_t n, int64_t m) {
    return buf(a, P, part, (pf_attn_slot(P, n) * P->R + m) * P->r * P->d1);
}
/* the total (non-causal P_PRE, P_SUF) of problem n */
static void *total(const pf_attn_args *a, const plan_t *P, int part, int64_t n) {
    return buf(a, P, part, pf_attn_slot(P, n) * P->r * P->d1);
}
/* the packed value rows of block J (finite or not) */
static const void *value_rows(const pf_attn_args *a, const plan_t *P, int64_t n, int64_t J) {
    return buf(a, P, P_V, (pf_attn_slot(P, n) * P->L + J * P->b) * P->d);
}
/* W^T [d][rank] of problem n (one copy, or one per slot when local) */
static void *wt(const pf_attn_args *a, const plan_t *P, int64_t n) {
    return buf(a, P, P_WT, (P->local ? pf_attn_slot(P, n) : 0) * P->d * P->r);
}

void pf_attn_lr_pack_w(const pf_attn_args *a, const plan_t *P, int64_t n) {
    pf_attn_transpose(wt(a, P, n), a->features, P->r, P->d, P->d, P->es);
}

/* ------------------------------------------------------------- row helpers */

/* x (b x d) = sqrt(scale) * rows of block I of operand t (NaN/inf taken as 0), sq[i] = |x_i|^2 */
static void input_rows(const pf_attn_args *a, const plan_t *P, const pf_attn_tensor *t, int64_t n, int64_t I,
                       void *x, void *sq) {
    const int64_t b = P->b, d = P->d, n0 = n / a->heads, h = n % a->heads;
    const double rs = sqrt(a->scale);
    for (int64_t i = 0; i < b; ++i) {
        pf_attn_load_row(PTR(x, i * d * (int64_t)P->es), pf_attn_elem(t, a->dtype, n0, h, I * b + i), a->dtype, d);
        TYPED(P->es, {
            T *xr = (T *)x + i * d, s = 0;
            const T rt = (T)rs;
            for (int64_t c = 0; c < d; ++c) {
                const T v = isfinite(xr[c]) ? xr[c] * rt : (T)0;
                xr[c] = v;
                s += v * v;
            }
            ((T *)sq)[i] = s;
        });
    }
}

/* out (b x r) = a(x) = x W^T - |x|^2 / 2 for the rows of block I of operand t */
static void raw_features(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, const pf_attn_tensor *t,
                         int64_t n, int64_t I, const lr_scratch *S, void *out) {
    const int64_t b = P->b, r = P->r;
    input_rows(a, P, t, n, I, S->x, S->sq);
    ops->gemm(b, r, P->d, S->x, P->d, wt(a, P, n), r, out, r, 0);
    TYPED(P->es, {
        T *o = (T *)out;
        for (int64_t i = 0; i < b; ++i) {
            const T h = (T)0.5 * ((const T *)S->sq)[i];
            for (int64_t c = 0; c < r; ++c) o[i * r + c] -= h;
        }
    });
}

static void fill(void *row, int64_t n, double v, size_t es) {
    TYPED(es, {
        T *o = (T *)row;
        for (int64_t c = 0; c < n; ++c) o[c] = (T)v;
    });
}

/* row = exp(max(row - off, -40)) / sqrt(rank) (float32: no feature below e^-40 of the max,
 * whose products would be slow denormals; float64 exact) */
static void finish_features(const plan_t *P, const pf_attn_ops *ops, void *row, double off) {
    const int64_t r = P->r;
    if (P->es == 4) {
        float *f = (float *)row;
        const float lo = (float)(off - 40.0);
        for (int64_t c = 0; c < r; ++c) f[c] = f[c] < lo ? lo : f[c];
    }
    ops->exp_sub_sum(row, r, off);
    ops->scale(row, r, 1.0 / sqrt((double)r));
}

/* phi(q) rows of block I into out (b x r) and their offsets into off[b] */
static void query_features(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, int64_t I,
                           const lr_scratch *S, void *out, void *off) {
    const int64_t r = P->r;
    const size_t es = P->es;
    raw_features(a, P, ops, &a->q, n, I, S, out);
    for (int64_t i = 0; i < P->b; ++i) {
        void *row = PTR(out, i * r * (int64_t)es);
        double o = -INFINITY;
        if (pf_attn_all_finite(row, r, es)) {
            o = ops->rowmax(row, r);
            finish_features(P, ops, row, o);
        } else { /* |x| overflowed: this row takes no low-rank part */
            fill(row, r, 0.0, es);
        }
        pf_attn_set(off, i, o, es);
    }
}

/* a(k) rows of block J into out (b x r); excluded keys and overflowed rows become -inf rows.
 * Returns the block's max (-inf if none). */
static double key_raw(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, int64_t J,
                      const lr_scratch *S, void *out) {
    const int64_t r = P->r;
    const size_t es = P->es;
    raw_features(a, P, ops, &a->k, n, J, S, out);
    double mx = -INFINITY;
    for (int64_t i = 0; i < P->b; ++i) {
        void *row = PTR(out, i * r * (int64_t)es);
        if (!pf_attn_key_kept(a, n / a->heads, J * P->b + i) || !pf_attn_all_finite(row, r, es)) {
            fill(row, r, -INFINITY, es);
            continue;
        }
        const double m = ops->rowmax(row, r);
        mx = m > mx ? m : mx;
    }
    return mx;
}

/* V rows of block J with NaN/inf taken as 0 (a copy in tmp only when needed) */
static const void *finite_values(const pf_attn_args *a, const plan_t *P, int64_t n, int64_t J, void *tmp) {
    const void *V = value_rows(a, P, n, J);
    const int64_t cnt = P->b * P->d;
    if (pf_attn_all_finite(V, cnt, P->es)) return V;
    TYPED(P->es, {
        const T *v = (const T *)V;
        T *o = (T *)tmp;
        for (int64_t i = 0; i < cnt; ++i) o[i] = isfinite(v[i]) ? v[i] : (T)0;
    });
    return tmp;
}

/* g (b x (d + 1)) = [c_i dout_i, -c_i D_i] for the rows of query block I */
static void build_g(const pf_attn_args *a, const plan_t *P, int64_t n, int64_t I, void *g) {
    const int64_t b = P->b, d = P->d, d1 = P->d1, row0 = pf_attn_slot(P, n) * P->L + I * b;
    const void *dO = buf(a, P, P_DO, row0 * d), *D = buf(a, P, P_D, row0), *c = buf(a, P, P_CLR, row0);
    TYPED(P->es, {
        for (int64_t i = 0; i < b; ++i) {
            const T ci = ((const T *)c)[i];
            const T *src = (const T *)dO + i * d;
            T *gr = (T *)g + i * d1;
            for (int64_t e = 0; e < d; ++e) gr[e] = ci * src[e];
            gr[d] = -ci * ((const T *)D)[i];
        }
    });
}

/* dst -= src, n values (and add_to: dst = x + y) */
static void sub_into(void *dst, const void *src, int64_t n, size_t es) {
    TYPED(es, {
        T *o = (T *)dst;
        const T *s = (const T *)src;
        for (int64_t i = 0; i < n; ++i) o[i] -= s[i];
    });
}
static void add_to(void *dst, const void *x, const void *y, int64_t n, size_t es) {
    TYPED(es, {
        T *o = (T *)dst;
        const T *p = (const T *)x, *q = (const T *)y;
        for (int64_t i = 0; i < n; ++i) o[i] = p[i] + q[i];
    });
}

/* Keep the lower triangle (j <= i) of a b x b tile, adding add[i * ld_add + col] (if add) to
 * the kept entries. */
static void lower(void *t, int64_t b, const void *add, int64_t ld_add, int64_t col, size_t es) {
    TYPED(es, {
        T *o = (T *)t;
        for (int64_t i = 0; i < b; ++i) {
            const T s = add ? ((const T *)add)[i * ld_add + col] : (T)0;
            for (int64_t j = 0; j < b; ++j) o[i * b + j] = j <= i ? o[i * b + j] + s : (T)0;
        }
    });
}

/* ------------------------------------------------------------------ phases */

void pf_attn_lr_features(int op, const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t item,
                         void *scr) {
    lr_scratch S;
    scratch_layout(P, PTR(scr, P->lr_scratch), &S);
    const int64_t n = item / P->R, I = item % P->R;
    /* keys: a(k) (kept for phase 2 where P_PHK exists) and its block max (the offset is one
     * per problem: phase 2) */
    const double mx = key_raw(a, P, ops, n, I, &S, P->off[P_PHK] >= 0 ? phi_rows(a, P, P_PHK, n, I) : S.dph);
    pf_attn_set(buf(a, P, P_BMAX, 0), pf_attn_slot(P, n) * P->R + I, mx, P->es);
    if (op == PF_ATTN_BWD) /* queries: final features, one offset per row */
        query_features(a, P, ops, n, I, &S, phi_rows(a, P, P_PHQ, n, I), row_val(a, P, P_OFFQ, n, I * P->b));
}

void pf_attn_lr_summaries(int op, const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t item,
                          void *scr) {
    lr_scratch S;
    scratch_layout(P, PTR(scr, P->lr_scratch), &S);
    const int64_t n = item / P->R, J = item % P->R, b = P->b, d = P->d, r = P->r, d1 = P->d1;
    const int64_t sn = pf_attn_slot(P, n);
    const size_t es = P->es;
    double offk = -INFINITY;
    for (int64_t m = 0; m < P->R; ++m) {
        const double v = pf_attn_get(buf(a, P, P_BMAX, 0), sn * P->R + m, es);
        offk = v > offk ? v : offk;
    }
    if (J == 0) pf_attn_set(buf(a, P, P_OFFK, 0), sn, offk, es);
    /* key features (kept when a later step needs them) and the block's summary
     * [sum phi_k v, sum phi_k] */
    void *phk = S.dph;
    if (P->off[P_PHK] >= 0) phk = phi_rows(a, P, P_PHK, n, J); /* a(k) from phase 1 */
    else key_raw(a, P, ops, n, J, &S, phk);                    /* recomputed: cheaper than storing */
    for (int64_t i = 0; i < b; ++i) {
        void *row = PTR(phk, i * r * (int64_t)es);
        if (offk == -INFINITY || pf_attn_get(row, 0, es) == -INFINITY) fill(row, r, 0.0, es);
        else finish_features(P, ops, row, offk);
    }
    void *kv = summary(a, P, P_KV, n, J);
    ops->gemm_tn(r, d, b, phk, r, finite_values(a, P, n, J, S.y), d, kv, d1, 0);
    TYPED(es, {
        const T *f = (const T *)phk;
        T *o = (T *)kv;
        for (int64_t c = 0; c < r; ++c) o[c * d1 + d] = 0;
        for (int64_t i = 0; i < b; ++i)
            for (int64_t c = 0; c < r; ++c) o[c * d1 + d] += f[i * r + c];
    });
    if (op != PF_ATTN_BWD) return;
    /* block J as a query block: c_i = exp(off_i + off_k - lse_i) and QG_J = phi_q^T g */
    for (int64_t i = 0; i < b; ++i) {
        const double oq = pf_attn_get(row_val(a, P, P_OFFQ, n, J * b + i), 0, es);
        const double lse = pf_attn_get(row_val(a, P, P_LSE, n, J * b + i), 0, es); /* -inf stored as +inf */
        const double c = oq == -INFINITY || offk == -INFINITY ? 0.0 : exp(oq + offk - lse);
        pf_attn_set(row_val(a, P, P_CLR, n, J * b + i), 0, c, es);
    }
    build_g(a, P, n, J, S.g);
    ops->gemm_tn(r, d1, b, phi_rows(a, P, P_PHQ, n, J), r, S.g, d1, summary(a, P, P_QG, n, J), d1, 0);
}

void pf_attn_lr_sums(int op, const pf_attn_args *a, const plan_t *P, int64_t n) {
    const int64_t R = P->R, blk = P->r * P->d1;
    const size_t es = P->es;
    const int causal = a->causal != 0;
    for (int pass = 0; pass < (op == PF_ATTN_BWD ? 2 : 1); ++pass) {
        const int src = pass ? P_QG : P_KV, dst = pass ? P_SUF : P_PRE;
        if (!causal) { /* the total */
            void *t = total(a, P, dst, n);
            memset(t, 0, (size_t)(blk * (int64_t)es));
            for (int64_t m = 0; m < R; ++m) add_to(t, t, summary(a, P, src, n, m), blk, es);
        } else if (!pass) { /* PRE_I = sum_{m < I} KV_m */
            memset(summary(a, P, dst, n, 0), 0, (size_t)(blk * (int64_t)es));
            for (int64_t I = 1; I < R; ++I)
                add_to(summary(a, P, dst, n, I), summary(a, P, dst, n, I - 1), summary(a, P, src, n, I - 1), blk, es);
        } else { /* SUF_m = sum_{I > m} QG_I */
            memset(summary(a, P, dst, n, R - 1), 0, (size_t)(blk * (int64_t)es));
            for (int64_t m = R - 2; m >= 0; --m)
                add_to(summary(a, P, dst, n, m), summary(a, P, dst, n, m + 1), summary(a, P, src, n, m + 1), blk, es);
        }
    }
}

void pf_attn_lr_prepare(int op, const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n,
                        void *scr) {
    pf_attn_lr_pack_w(a, P, n);
    for (int64_t I = 0; I < P->R; ++I) pf_attn_lr_features(op, a, P, ops, n * P->R + I, scr);
    for (int64_t J = 0; J < P->R; ++J) pf_attn_lr_summaries(op, a, P, ops, n * P->R + J, scr);
    pf_attn_lr_sums(op, a, P, n);
}

/* ------------------------------------------------------------- row items */

/* rest = the low-rank summary sum of query block I (rows: P_PRE - kept P_KV) or of key block
 * J (cols: P_SUF - kept P_QG). Returns 1 when the diagonal block is kept. */
static int rest_sum(const pf_attn_args *a, const plan_t *P, int cols, int64_t n, int64_t I, void *rest) {
    const int64_t blk = P->r * P->d1;
    const int causal = a->causal != 0;
    const int pre = cols ? P_SUF : P_PRE, part = cols ? P_QG : P_KV;
    memcpy(rest, causal ? summary(a, P, pre, n, I) : total(a, P, pre, n), (size_t)(blk * (int64_t)P->es));
    const int64_t *ptr = cols ? a->col_ptr : a->row_ptr, *idx = cols ? a->row_idx : a->col_idx;
    int diag = 0;
    for (int64_t p = ptr[I]; p < ptr[I + 1]; ++p) {
        const int64_t J = idx[p];
        if (J == I) diag = 1;
        /* causal: the diagonal block is element-wise, the other side of it is not allowed */
        if (causal && (cols ? J <= I : J >= I)) continue;
        sub_into(rest, summary(a, P, part, n, J), blk, P->es);
    }
    return diag;
}

/* The causal diagonal tiles of block I when it is not kept: ain = tril(phi_q phi_k^T) and,
 * with g, e = tril(g_v v^T - D') (g's last column added on the diagonal side). */
static void diag_tiles(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, int64_t I,
                       const lr_scratch *S, const void *phq, const void *vs, int with_e) {
    const int64_t b = P->b, d = P->d, r = P->r;
    pf_attn_transpose(S->pt, phi_rows(a, P, P_PHK, n, I), b, r, r, P->es);
    ops->gemm(b, b, r, phq, r, S->pt, b, S->ain, b, 0);
    lower(S->ain, b, NULL, 0, 0, P->es);
    if (!with_e) return;
    pf_attn_transpose(S->vt, vs, b, d, d, P->es);
    ops->gemm(b, b, d, S->g, P->d1, S->vt, b, S->e, b, 0);
    lower(S->e, b, S->g, P->d1, d, P->es);
}

void *pf_attn_lr_row(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, int64_t I,
                     void *scr) {
    lr_scratch S;
    scratch_layout(P, scr, &S);
    const int64_t b = P->b, d = P->d, r = P->r, d1 = P->d1;
    query_features(a, P, ops, n, I, &S, S.phq, PTR(S.nd, b * d1 * (int64_t)P->es));
    const int diag = rest_sum(a, P, 0, n, I, S.rest);
    ops->gemm(b, d1, r, S.phq, r, S.rest, d1, S.nd, d1, 0);
    if (a->causal && !diag) {
        const void *vs = finite_values(a, P, n, I, S.y);
        diag_tiles(a, P, ops, n, I, &S, S.phq, vs, 0);
        ops->gemm(b, d, b, S.ain, b, vs, d, S.nd, d1, 1);
        TYPED(P->es, {
            const T *t = (const T *)S.ain;
            T *o = (T *)S.nd;
            for (int64_t i = 0; i < b; ++i)
                for (int64_t j = 0; j <= i; ++j) o[i * d1 + d] += t[i * b + j];
        });
    }
    TYPED(P->es, { /* rounding must not make a sum of positive terms negative */
        T *o = (T *)S.nd;
        for (int64_t i = 0; i < b; ++i) o[i * d1 + d] = o[i * d1 + d] < 0 ? (T)0 : o[i * d1 + d];
    });
    return S.nd;
}

/* acc (b x d) += sqrt(scale) * (da W - rowsum(da) x), da = dphi * phi (in place in dph): the
 * features' backward for the rows of block I of operand t */
static void features_backward(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops,
                              const pf_attn_tensor *t, int64_t n, int64_t I, const void *phi,
                              const lr_scratch *S, void *acc) {
    const int64_t b = P->b, d = P->d, r = P->r;
    const double rs = sqrt(a->scale);
    input_rows(a, P, t, n, I, S->x, S->sq);
    TYPED(P->es, {
        T *da = (T *)S->dph, *sq = (T *)S->sq;
        const T *f = (const T *)phi;
        for (int64_t i = 0; i < b; ++i) {
            T s = 0;
            for (int64_t c = 0; c < r; ++c) {
                da[i * r + c] *= f[i * r + c];
                s += da[i * r + c];
            }
            sq[i] = s; /* sq now holds rowsum(da) */
        }
    });
    ops->gemm(b, d, r, S->dph, r, a->features, d, S->y, d, 0);
    TYPED(P->es, {
        const T *y = (const T *)S->y, *x = (const T *)S->x, *sq = (const T *)S->sq;
        T *o = (T *)acc;
        const T rt = (T)rs;
        for (int64_t i = 0; i < b; ++i)
            for (int64_t e = 0; e < d; ++e) o[i * d + e] += rt * (y[i * d + e] - sq[i] * x[i * d + e]);
    });
}

void pf_attn_lr_dq(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, int64_t I,
                   void *scr, void *acc) {
    lr_scratch S;
    scratch_layout(P, scr, &S);
    const int64_t b = P->b, r = P->r, d1 = P->d1;
    const int diag = rest_sum(a, P, 0, n, I, S.rest);
    pf_attn_transpose(S.restT, S.rest, r, d1, d1, P->es);
    build_g(a, P, n, I, S.g);
    /* dphi_q = g rest^T (the last column of g, -c D, meets the denominators' column) */
    ops->gemm(b, r, d1, S.g, d1, S.restT, r, S.dph, r, 0);
    if (a->causal && !diag) {
        diag_tiles(a, P, ops, n, I, &S, phi_rows(a, P, P_PHQ, n, I), finite_values(a, P, n, I, S.y), 1);
        ops->gemm(b, r, b, S.e, b, phi_rows(a, P, P_PHK, n, I), r, S.dph, r, 1);
    }
    features_backward(a, P, ops, &a->q, n, I, phi_rows(a, P, P_PHQ, n, I), &S, acc);
}

void pf_attn_lr_dkdv(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, int64_t J,
                     void *scr, void *accK, void *accV) {
    lr_scratch S;
    scratch_layout(P, scr, &S);
    const int64_t b = P->b, d = P->d, r = P->r, d1 = P->d1;
    const size_t es = P->es;
    const int diag = rest_sum(a, P, 1, n, J, S.rest); /* G = sum over paired query blocks of phi_q^T g */
    pf_attn_transpose(S.restT, S.rest, r, d1, d1, es);
    const void *vs = finite_values(a, P, n, J, S.y);
    const void *phk = phi_rows(a, P, P_PHK, n, J);
    /* dphi_k = [v, 1] G^T, dv += phi_k G (its value columns) */
    ops->gemm(b, r, d, vs, d, S.restT, r, S.dph, r, 0);
    TYPED(es, {
        T *o = (T *)S.dph;
        const T *last = (const T *)S.restT + d * r;
        for (int64_t i = 0; i < b; ++i)
            for (int64_t c = 0; c < r; ++c) o[i * r + c] += last[c];
    });
    ops->gemm(b, d, r, phk, r, S.rest, d1, accV, d, 1);
    if (a->causal && !diag) {
        build_g(a, P, n, J, S.g);
        diag_tiles(a, P, ops, n, J, &S, phi_rows(a, P, P_PHQ, n, J), vs, 1);
        ops->gemm_tn(b, r, b, S.e, b, phi_rows(a, P, P_PHQ, n, J), r, S.dph, r, 1);
        ops->gemm_tn(b, d, b, S.ain, b, S.g, d1, accV, d, 1);
    }
    features_backward(a, P, ops, &a->k, n, J, phk, &S, accK);
}
