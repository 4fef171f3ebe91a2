/*
 * attn_internal.h - private interface between attention's driver (attn.c: checks, plan,
 * phases), its sparse work items (attn_steps.c) and its low-rank ones (attn_lowrank.c),
 * plus the row helpers they share.
 */
#ifndef PF_ATTN_INTERNAL_H
#define PF_ATTN_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "pixelfly_attn.h"

#define ALIGN64(x) (((x) + 63) & ~(int64_t)63)
#define PTR(base, off_bytes) ((void *)((char *)(base) + (off_bytes)))

/* Packed operands and low-rank buffers: byte offsets P->off[P_*] in the workspace (-1 when
 * the op has none). Row arrays are [N][L][...], block arrays [N][R][...]. */
enum {
    P_QS, P_QT, P_KS, P_KT, P_V, P_VT, P_DO, P_DOT, P_D, P_LSE, P_DQ, /* sparse part */
    P_WT,    /* W^T [d][rank] (local: one per slot) */
    P_PHQ,   /* BWD: phi(q) rows [N][L][rank] */
    P_PHK,   /* phi(k) rows [N][L][rank] (FWD: only when some causal diagonal block is missing) */
    P_OFFQ,  /* BWD: per-row query offsets [N][L] */
    P_BMAX,  /* per-block max of a(k) [N][R] */
    P_OFFK,  /* the key offset of each problem [N] */
    P_KV,    /* per key block sum phi(k_j) [v_j, 1]: [N][R][rank][d + 1] */
    P_PRE,   /* causal: exclusive prefix sums of P_KV [N][R][rank][d + 1]; else the total [N][..] */
    P_CLR,   /* BWD: c_i = exp(off_i + off_k - lse_i) [N][L] */
    P_QG,    /* BWD: per query block sum phi(q_i) [c_i dout_i, -c_i D_i]: [N][R][rank][d + 1] */
    P_SUF,   /* BWD: causal: exclusive suffix sums of P_QG; else the total */
    P_COUNT
};

/* The workspace plan: packed operands, low-rank buffers, then one scratch area per task. */
typedef struct {
    int64_t N, R, b, d, L;
    int64_t r, d1;      /* rank and d + 1 (0 and d + 1 without a low-rank part) */
    int fused;          /* BWD: one pass per (problem), 5 GEMMs per block instead of 7 */
    int local;          /* every step of a problem in one phase-4 task, in that task's buffers */
    int miss;           /* causal, and some diagonal block is not kept */
    int64_t slots;      /* problems with buffers: N, or (local) the phase-4 tasks */
    size_t es;
    int64_t items[PF_ATTN_PHASES], tasks[PF_ATTN_PHASES];
    int64_t off[P_COUNT];
    int64_t scratch;    /* start of per-task scratch */
    int64_t per_task;   /* bytes of scratch per task */
    int64_t lr_scratch; /* offset of the low-rank part of a task's scratch */
    int64_t total;
} plan_t;

/* the buffer slot of problem n (local: its task's) */
static inline int64_t pf_attn_slot(const plan_t *P, int64_t n) { return P->local ? n % P->tasks[4] : n; }

/* ------------------------------------------------------------ row helpers */

static inline size_t pf_attn_dtype_size(pf_dtype t) { return t == PF_FLOAT64 ? 8 : t == PF_FLOAT32 ? 4 : 2; }

/* element (n0, h, i, 0) of an operand */
static inline const char *pf_attn_elem(const pf_attn_tensor *t, pf_dtype dt, int64_t n0, int64_t h, int64_t i) {
    return (const char *)t->p + (size_t)(n0 * t->sb + h * t->sh + i * t->sl) * pf_attn_dtype_size(dt);
}

/* dst (accumulator type) = src (storage dtype), n elements */
static inline void pf_attn_load_row(void *dst, const void *src, pf_dtype dt, int64_t n) {
    if (dt == PF_FLOAT64) memcpy(dst, src, (size_t)n * 8);
    else if (dt == PF_FLOAT32) memcpy(dst, src, (size_t)n * 4);
    else pf_bf16_to_f32_n((float *)dst, (const uint16_t *)src, n);
}

static inline void pf_attn_set(void *p, int64_t i, double v, size_t es) {
    if (es == 8) ((double *)p)[i] = v; else ((float *)p)[i] = (float)v;
}
static inline double pf_attn_get(const void *p, int64_t i, size_t es) {
    return es == 8 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

/* 1 if every one of the n values is finite */
static inline int pf_attn_all_finite(const void *x, int64_t n, size_t es) {
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

/* dst [cols][rows] = src^T, src [rows][cols] with row stride lds (accumulator type) */
static inline void pf_attn_transpose(void *dst, const void *src, int64_t rows, int64_t cols, int64_t lds, size_t es) {
    if (es == 8) {
        double *o = (double *)dst;
        const double *s = (const double *)src;
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) o[j * rows + i] = s[i * lds + j];
    } else {
        float *o = (float *)dst;
        const float *s = (const float *)src;
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) o[j * rows + i] = s[i * lds + j];
    }
}

/* 1 when key j of batch entry n0 takes part (no key mask, or its byte is non-zero) */
static inline int pf_attn_key_kept(const pf_attn_args *a, int64_t n0, int64_t j) {
    return !a->key_mask || a->key_mask[n0 * a->L + j];
}

/* ------------------------------------------------------------ work items */

/* Phase 0 item: pack block-row `item` (problem n = item / R, block I = item % R). */
void pf_attn_pack_block(int op, const pf_attn_args *a, const plan_t *P, int64_t item);
/* Phase 4 items; scr is the task's scratch (P->per_task bytes). */
void pf_attn_fwd_row(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t item, void *scr);
/* FWD, local: every step of problem n (packing, low-rank phases, its block-rows) */
void pf_attn_fwd_problem(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, void *scr);
void pf_attn_bwd_dq(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t item, void *scr);
void pf_attn_bwd_dkdv(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t item, void *scr);
void pf_attn_bwd_problem(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, void *scr);

/* Low-rank part (attn_lowrank.c). Scratch: the task's area from P->lr_scratch on. */
int64_t pf_attn_lr_scratch_bytes(const plan_t *P);
/* phase 1, item (n, I): the block max of a(k) (and BWD: phi(q) rows and offsets) */
void pf_attn_lr_features(int op, const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t item,
                         void *scr);
/* W^T into the workspace (phase 0, task 0; local: per problem) */
void pf_attn_lr_pack_w(const pf_attn_args *a, const plan_t *P, int64_t n);
/* phase 2, item (n, J): phi(k) rows, the block's summary (and BWD: c_i and the query summary) */
void pf_attn_lr_summaries(int op, const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t item,
                          void *scr);
/* phase 3, item n: the prefix (suffix) sums or totals */
void pf_attn_lr_sums(int op, const pf_attn_args *a, const plan_t *P, int64_t n);
/* local mode: W^T and phases 1-3 of problem n, run by its phase-4 task */
void pf_attn_lr_prepare(int op, const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, void *scr);
/* FWD: the low-rank numerators and denominators [b][d + 1] of query block I of problem n (in
 * the low-rank scratch) */
void *pf_attn_lr_row(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, int64_t I,
                     void *scr);
/* BWD: acc [b][d] += the low-rank part's dq of query block I */
void pf_attn_lr_dq(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, int64_t I,
                   void *scr, void *acc);
/* BWD: accK, accV [b][d] += the low-rank part's dk, dv of key block J */
void pf_attn_lr_dkdv(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, int64_t J,
                     void *scr, void *accK, void *accV);

#endif /* PF_ATTN_INTERNAL_H */
