/*
 * attn_internal.h - private interface between attention's driver (attn.c: checks, plan,
 * phases) and its work items (attn_steps.c).
 */
#ifndef PF_ATTN_INTERNAL_H
#define PF_ATTN_INTERNAL_H

#include <stdint.h>

#include "kernels.h"
#include "pixelfly_attn.h"

#define ALIGN64(x) (((x) + 63) & ~(int64_t)63)
#define PTR(base, off_bytes) ((void *)((char *)(base) + (off_bytes)))

/* The workspace plan: packed operands (byte offsets off[P_*], -1 when the op has none),
 * then one scratch area per phase-1 task. */
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


/* Phase 0 item: pack block-row `item` (problem n = item / R, block I = item % R). */
void pf_attn_pack_block(int op, const pf_attn_args *a, const plan_t *P, int64_t item);
/* Phase 1 items; scr is the task's scratch (P->per_task bytes). */
void pf_attn_fwd_row(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t item, void *scr);
void pf_attn_bwd_dq(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t item, void *scr);
void pf_attn_bwd_dkdv(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t item, void *scr);
void pf_attn_bwd_problem(const pf_attn_args *a, const plan_t *P, const pf_attn_ops *ops, int64_t n, void *scr);

#endif /* PF_ATTN_INTERNAL_H */
