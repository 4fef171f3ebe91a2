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
 *   Kernels: the ones of kernels.h for the ISA chosen at run time (AVX-512, AVX2 or
 *   portable; every GEMM is a tile of the block-sparse matmul's kernels), and the portable
 *   float64 ops. The accumulator type is float for FLOAT32/BFLOAT16 and double for FLOAT64;
 *   the steps dispatch on its size `es` through the table of ops (pf_attn_ops).
 *
 *   Low rank (rank > 0): phase 1 computes the random features of every query and key row,
 *   phase 2 the per-block summaries (rank x (d + 1)), phase 3 their prefix sums (causal) or
 *   totals, and phase 4 (the work items above) adds each query block's low-rank terms before
 *   it stores its rows: "all allowed blocks minus the kept ones", formed from the summaries
 *   while the kernel walks the kept blocks anyway (attn_lowrank.c).
 *
 *   Files: attn.c (checks, plan, phases), attn_steps.c (the sparse work items),
 *   attn_lowrank.c (the low-rank ones).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attn_internal.h"
#include "kernels.h"
#include "pixelfly_attn.h"

/* ------------------------------------------------------------------ checks */

static pf_err check_tensor(const pf_attn_tensor *t, const char *null_msg, const char *stride_msg) {
    if (!t->p) return null_msg;
    if (t->sb < 0 || t->sh < 0 || t->sl < 0) return stride_msg;
    return NULL;
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
    if (a->rank < 0 || a->rank > 65536) return "rank (random features) must be in [0, 65536]";
    if (a->rank > 0 && !a->features) return "features must not be NULL when rank > 0";
    if (a->rank > 0 && a->scale < 0) return "scale must be >= 0 with a low-rank part (features use sqrt(scale))";
    pf_err e = pf_isa_check(a->isa);
    if (e) return e;
    const int64_t N = a->batch * a->heads;
    if (a->batch > 0 && N / a->batch != a->heads) return "batch * heads overflows";
    /* bound the workspace arithmetic: 10 packed copies of N*L*d doubles and the low-rank
     * buffers (< 6 copies of N*L*rank*(d+2)) must fit int64 */
    if (N > 0 && ((double)N * (double)a->L * ((double)(a->d + 2) * 10.0 + (double)a->rank * (a->d + 2) * 6.0) *
                  8.0 > 9.0e18))
        return "batch * heads * L * d is too large";
    const int64_t R = a->L / a->block;
    if (a->nnz < 0 || a->nnz > R * R) return "nnz must be in [0, (L/block)^2]";
    if ((e = pf_csr_check(R, R, a->nnz, a->row_ptr, a->col_idx))) return e;
    if (op == PF_ATTN_BWD &&
        (e = pf_csc_check(R, R, a->nnz, a->row_ptr, a->col_idx, a->col_ptr, a->row_idx, NULL, 0)))
        return e;
    if (N == 0) return NULL;
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

static int64_t ntasks(int64_t items, int64_t cap) { return cap > 0 && cap < items ? cap : items; }

static void make_plan(int op, const pf_attn_args *a, plan_t *P) {
    P->N = a->batch * a->heads;
    P->b = a->block;
    P->d = a->d;
    P->L = a->L;
    P->R = a->L / a->block;
    P->r = a->rank;
    P->d1 = a->d + 1;
    P->es = a->dtype == PF_FLOAT64 ? 8 : 4;
    const int64_t es = (int64_t)P->es, N = P->N, R = P->R;
    const int lr = P->r > 0, causal = a->causal != 0;
    P->fused = op == PF_ATTN_BWD && a->per_problem;
    P->local = a->per_problem != 0; /* a task owns whole problems: its buffers serve them in turn */
    P->miss = 0;
    for (int64_t I = 0; causal && I < R && !P->miss; ++I) {
        int kept = 0;
        for (int64_t p = a->row_ptr[I]; p < a->row_ptr[I + 1]; ++p) kept |= a->col_idx[p] == I;
        P->miss = !kept;
    }
    const int64_t pre = P->local ? 0 : 1; /* phases 0-3 run inside phase 4 when local */
    P->items[0] = pre * N * R;
    P->items[1] = lr ? pre * N * R : 0;
    P->items[2] = lr ? pre * N * R : 0;
    P->items[3] = lr ? pre * N : 0;
    P->items[4] = P->local ? N : op == PF_ATTN_FWD ? N * R : 2 * N * R;
    int64_t most = 0;
    for (int ph = 0; ph < PF_ATTN_PHASES; ++ph) {
        P->tasks[ph] = ntasks(P->items[ph], a->max_tasks);
        if (ph > 0 && P->tasks[ph] > most) most = P->tasks[ph];
    }
    P->slots = P->local ? P->tasks[4] : N;
    const int64_t S = P->slots, NLd = S * P->L * P->d, NL = S * P->L;
    /* elements of every buffer (0: the op has none) */
    int64_t n[P_COUNT];
    memset(n, 0, sizeof n);
    static const int fwd_parts[] = {P_QS, P_KT, P_V};
    static const int bwd_parts[] = {P_QS, P_QT, P_KS, P_KT, P_V, P_VT, P_DO, P_DOT, P_D, P_LSE};
    static const int fused_parts[] = {P_QS, P_QT, P_KS, P_V, P_DO, P_DOT, P_D, P_LSE, P_DQ};
    const int *parts = op == PF_ATTN_FWD ? fwd_parts : P->fused ? fused_parts : bwd_parts;
    const int np = op == PF_ATTN_FWD ? 3 : P->fused ? 9 : 10;
    for (int i = 0; i < np; ++i) n[parts[i]] = parts[i] == P_D || parts[i] == P_LSE ? NL : NLd;
    if (lr) {
        const int64_t blk = P->r * P->d1; /* one summary */
        n[P_WT] = (P->local ? S : 1) * P->d * P->r;
        n[P_BMAX] = S * R;
        n[P_OFFK] = S;
        n[P_KV] = S * R * blk;
        n[P_PRE] = (causal ? S * R : S) * blk;
        /* FWD keeps phi(k) when a missing causal diagonal block needs it, or when the
         * buffers are per task (small): else phase 2 recomputes a(k) rather than store it */
        if (op == PF_ATTN_FWD && (P->miss || P->local)) n[P_PHK] = NL * P->r;
        if (op == PF_ATTN_BWD) {
            n[P_PHQ] = n[P_PHK] = NL * P->r;
            n[P_OFFQ] = n[P_CLR] = NL;
            n[P_QG] = S * R * blk;
            n[P_SUF] = (causal ? S * R : S) * blk;
        }
    }
    int64_t o = 0;
    for (int i = 0; i < P_COUNT; ++i) {
        P->off[i] = n[i] > 0 ? o : -1;
        o += ALIGN64(n[i] * es);
    }
    P->scratch = o;
    const int64_t b = P->b, d = P->d;
    if (op == PF_ATTN_FWD)  /* S tile, acc, m, l, alpha, seen (double) */
        P->lr_scratch = ALIGN64(b * b * es) + ALIGN64(b * d * es) + ALIGN64(4 * b * 8);
    else                    /* S, dP tiles, two accumulators (+ the dS^T tile when fused) */
        P->lr_scratch = (P->fused ? 3 : 2) * ALIGN64(b * b * es) + 2 * ALIGN64(b * d * es);
    P->per_task = P->lr_scratch + (lr ? pf_attn_lr_scratch_bytes(P) : 0);
    P->total = o + most * P->per_task;
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
    return P.tasks[phase];
}

/* ------------------------------------------------------------------ phases */

void pf_attn_run(int op, int phase, const pf_attn_args *a, int64_t begin, int64_t end) {
    /* re-validated here too (O(nnz log nnz)), so a bad call is a no-op, never a crash */
    if (!a || !a->work || phase < 0 || phase >= PF_ATTN_PHASES || pf_attn_check(op, a)) return;
    plan_t P;
    make_plan(op, a, &P);
    const pf_attn_ops *ops = a->dtype == PF_FLOAT64 ? &pf_attn_ops_f64 : pf_kernels_pick(a->isa)->attn;
    if (begin < 0) begin = 0;
    if (end > P.tasks[phase]) end = P.tasks[phase];
    const int64_t items = P.items[phase], tasks = P.tasks[phase], NR = P.N * P.R;
    for (int64_t t = begin; t < end; ++t) {
        void *scr = phase > 0 ? PTR(a->work, P.scratch + t * P.per_task) : NULL;
        for (int64_t it = t; it < items; it += tasks) {
            switch (phase) {
            case 0:
                if (it == 0 && P.r > 0) pf_attn_lr_pack_w(a, &P, 0);
                pf_attn_pack_block(op, a, &P, it);
                break;
            case 1: pf_attn_lr_features(op, a, &P, ops, it, scr); break;
            case 2: pf_attn_lr_summaries(op, a, &P, ops, it, scr); break;
            case 3: pf_attn_lr_sums(op, a, &P, it); break;
            default:
                if (op == PF_ATTN_FWD && P.local) pf_attn_fwd_problem(a, &P, ops, it, scr);
                else if (op == PF_ATTN_FWD) pf_attn_fwd_row(a, &P, ops, it, scr);
                else if (P.fused) pf_attn_bwd_problem(a, &P, ops, it, scr);
                else if (it < NR) pf_attn_bwd_dq(a, &P, ops, it, scr);
                else pf_attn_bwd_dkdv(a, &P, ops, it - NR, scr);
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
