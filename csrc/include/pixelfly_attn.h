/*
 * pixelfly_attn.h - block-sparse attention on the CPU (torch-free C11; csrc/cpu/attn.c).
 *
 * For q, k, v of shape [batch, heads, L, d] (any strides over batch, heads and rows; unit
 * stride over d) and a block layout over the (L/b) x (L/b) score matrix given as block-CSR
 * (row_ptr, col_idx) plus its transpose (col_ptr, row_idx), the forward computes
 *
 *     S = scale * q k^T                  on the layout's blocks only
 *     P = softmax_row(S)                 over each row's kept entries (causal: j <= i)
 *     out = P v,   lse_i = log sum_j exp(S_ij)
 *
 * flash-attention style: score blocks live one at a time in a small per-task scratch, so
 * memory grows with L (and never with L^2 or even nnz). Causal masking drops every block
 * above the diagonal and the upper triangle of diagonal blocks. A row without any kept
 * entry (possible with causal or empty block-rows) gives out = 0 and lse = -inf.
 *
 * The backward recomputes P from the saved lse and gives dq, dk, dv (and accepts an
 * optional gradient of lse, so callers may combine (out, lse) with other terms):
 *
 *     dP = dout v^T,  D_i = sum_c dout_ic out_ic - dlse_i,  dS = P * (dP - D)
 *     dq = scale * dS k,  dk = scale * dS^T q,  dv = P^T dout
 *
 * dq is computed by tasks that own query block-rows (CSR), dk/dv by tasks that own key
 * block-columns (CSC, the transposed index), or (per_problem) one task owns a whole
 * (batch, head) problem: outputs are disjoint, no atomics, no reduction, results are
 * deterministic and independent of the thread count.
 *
 * Low-rank part (SPEC section 4; rank > 0). Every allowed key that the layout does not keep
 * pairs with query i through positive random features of the softmax kernel, with one
 * normaliser shared with the sparse part. With x = sqrt(scale) * (q or k) (NaN/inf entries
 * taken as 0; the caller gives the output the dense pattern of non-finite inputs), W the
 * [rank][d] projection and a(x) = W x - |x|^2 / 2:
 *
 *     phi(x) = exp(a(x) - off) / sqrt(rank)    off: per query row, one per problem for keys
 *     k_ij   = exp(off_i + off_k) phi(q_i) . phi(k_j)
 *     out_i  = (sum_{j kept} exp(S_ij) v_j + sum_{j low rank} k_ij v_j) / Z_i,
 *     Z_i    = sum_{j kept} exp(S_ij) + sum_{j low rank} k_ij,   lse_i = log Z_i
 *
 * ("low rank": allowed, i.e. j <= i when causal, and outside the kept blocks; inside a
 * causal diagonal block that is not kept, element by element). Only per-block summaries
 * (rank x (d + 1) per block: sum phi(k_j) [v_j, 1]) are formed: the low-rank sum of query
 * block I is phi(q) . (all allowed blocks' summaries - the summaries of I's kept blocks),
 * the first from a prefix sum (causal) or the total. Nothing of size nnz * b * rank or L^2
 * exists; memory stays linear in L. The backward takes the forward's (out, lse) and gives
 * the gradients of both parts (the features' offsets are constants: they cancel).
 *
 * Key mask (key_mask != NULL, [batch][L] bytes): a key with mask 0 is excluded from every
 * row in both parts, element by element (padding); what it holds never matters. A row
 * left with no key at all gives out = 0 and lse = -inf.
 *
 * Storage dtypes: PF_FLOAT32, PF_BFLOAT16 (uint16_t storage, fp32 accumulation) and
 * PF_FLOAT64 (double accumulation, the exact path used by gradcheck). lse (and dlse) are
 * float32 for FLOAT32/BFLOAT16 and float64 for FLOAT64, contiguous [batch, heads, L].
 *
 * Threading: work is split into PF_ATTN_PHASES phases (below) of
 * independent tasks. The caller runs, for each phase in order, tasks [0, pf_attn_num_tasks) in
 * any order on any threads (e.g. at::parallel_for), calling pf_attn_run on sub-ranges.
 * No allocation happens inside: packed operands and every task's scratch live in the
 * caller's workspace (pf_attn_workspace bytes, linear in L). Outputs are fully overwritten.
 *
 * Include after pixelfly.h (or alone: it includes pixelfly.h for pf_err and pf_dtype).
 */
#ifndef PIXELFLY_ATTN_H
#define PIXELFLY_ATTN_H

#include "pixelfly.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One [batch, heads, L, d] operand: element (n0, h, i, c) is at p + n0*sb + h*sh + i*sl + c
 * (strides in elements of the storage dtype). */
typedef struct {
    void *p;
    int64_t sb, sh, sl;
} pf_attn_tensor;

enum { PF_ATTN_FWD = 0, PF_ATTN_BWD = 1 };
/* Phases: 0 packing, 1 features, 2 per-block summaries, 3 prefix sums, 4 attention (the
 * low-rank phases 1-3 have no tasks when rank == 0). */
#define PF_ATTN_PHASES 5

typedef struct {
    pf_dtype dtype;            /* FLOAT32, BFLOAT16 or FLOAT64 for every dense operand */
    int64_t batch, heads;      /* batch * heads independent attention problems */
    int64_t L, d, block;       /* sequence length (a multiple of block), head dim, block size */
    int64_t nnz;               /* kept blocks of the (L/block)^2 layout */
    const int64_t *row_ptr;    /* [L/block + 1] block-CSR */
    const int64_t *col_idx;    /* [nnz], ascending inside a row */
    const int64_t *col_ptr;    /* [L/block + 1] transpose (block-CSC); BWD only (may be NULL for FWD) */
    const int64_t *row_idx;    /* [nnz] */
    double scale;              /* softmax scale, usually 1/sqrt(d) */
    int causal;                /* mask key j > query i */
    pf_attn_tensor q, k, v;    /* inputs (FWD, BWD) */
    pf_attn_tensor out;        /* FWD: output; BWD: the forward's output (input) */
    pf_attn_tensor dout;       /* BWD: gradient of out */
    void *lse;                 /* FWD: output; BWD: input. [batch, heads, L] contiguous */
    const void *dlse;          /* BWD: gradient of lse, same layout, or NULL for zero */
    pf_attn_tensor dq, dk, dv; /* BWD outputs */
    int64_t max_tasks;         /* cap on tasks per phase (0: one per work item); sets workspace */
    int per_problem;           /* schedule: 0 = tasks over query block-rows (FWD; BWD: dq by
                                * query block-rows (CSR) and dk/dv by key block-columns (CSC),
                                * 7 small GEMMs per block), parallel over batch*heads*L/block;
                                * 1 = one task per (batch, head) does all of it (BWD: walks the
                                * CSC once and accumulates dq in its own buffer, 5 GEMMs per
                                * block), in buffers of its own, reused for each problem it
                                * takes: the workspace grows with the tasks (max_tasks), not
                                * batch*heads. Use it when batch*heads keeps every thread busy.
                                * Same results up to rounding. */
    void *work;                /* pf_attn_workspace() bytes, 64-byte aligned is best */
    int isa;                   /* PF_ISA_*: 0 picks the best the CPU has (AVX-512, AVX2 or portable) */
    int64_t rank;              /* random features of the low-rank part (0: the sparse part alone) */
    const void *features;      /* [rank][d] contiguous projection W: float32 (float64 for FLOAT64) */
    const uint8_t *key_mask;   /* [batch][L] contiguous, 0 excludes the key; NULL: every key kept */
} pf_attn_args;

/* Check sizes, strides, dtypes, pointers, the isa (one the CPU lacks is an error) and the
 * index (pf_csr_check, and pf_csc_check for BWD); NULL if the call is well-formed. Never
 * reads a dense operand. */
pf_err pf_attn_check(int op, const pf_attn_args *a);

/* Bytes of workspace the op needs (-1 if the arguments fail pf_attn_check). */
int64_t pf_attn_workspace(int op, const pf_attn_args *a);

int64_t pf_attn_num_tasks(int op, int phase, const pf_attn_args *a);
void pf_attn_run(int op, int phase, const pf_attn_args *a, int64_t begin, int64_t end);

/* Convenience: check, then run every phase serially (a->work must hold the workspace). */
pf_err pf_attn_serial(int op, const pf_attn_args *a);

/* 1 when the AVX-512 kernels can run on this CPU: pf_cpu_has_avx512() (kept for callers). */
int pf_attn_has_avx512(void);

#ifdef __cplusplus
}
#endif
#endif /* PIXELFLY_ATTN_H */
