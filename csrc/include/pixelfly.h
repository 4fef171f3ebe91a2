/*
 * pixelfly.h - the one public header of the torch-free C core.
 *
 * Everything here is plain C11: pointers, sizes, strides. No Python, no torch.
 * Conventions (see SPEC.md):
 *   - A weight W has shape out x in and is cut into b1 x b2 blocks, giving a block
 *     grid of R = out / b1 block-rows and C = in / b2 block-columns.
 *   - A layout is a row-major R x C array of uint8_t, 1 = block kept, 0 = zero block.
 *   - Functions that can fail return `pf_err`: NULL on success, otherwise a static,
 *     human-readable message that names the offending argument (e.g.
 *     "butterfly_size must be a power of two"). The Python bindings turn it into a
 *     ValueError. No function ever aborts or writes out of bounds on bad input.
 */
#ifndef PIXELFLY_H
#define PIXELFLY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef const char *pf_err;

/* Largest accepted block-grid side and element-mask size; larger asks are errors. */
#define PF_MAX_GRID ((int64_t)1 << 20)
#define PF_MAX_CELLS ((int64_t)1 << 30)

/* ------------------------------------------------------------------ layouts */
/* csrc/core/layout.c. `out` must hold the stated number of uint8_t. */

/* Block butterfly factor B_k on an n x n grid: (i ^ j) in {0, k/2}. out: n*n. */
pf_err pf_factor_layout(int64_t n, int64_t k, uint8_t *out);

/* Largest power of two <= min(R, C) (0 if min(R, C) < 2). */
int64_t pf_default_butterfly_size(int64_t R, int64_t C);

/* Flat block butterfly with m factors on an R x C grid, butterfly size n
 * (0 = default). Cell map p = i*n/R, q = j*n/C; keep iff (p ^ q) in {0} U {2^s, s < m}.
 * out: R*C. */
pf_err pf_flat_butterfly_layout(int64_t R, int64_t C, int64_t m, int64_t n, uint8_t *out);

/* Support of the product of the first m factors B_{2^m} ... B_2 on an n x n cell
 * grid stretched over R x C: keep iff (p ^ q) < 2^m. m = log2(n) is dense. out: R*C. */
pf_err pf_butterfly_product_layout(int64_t R, int64_t C, int64_t m, int64_t n, uint8_t *out);

/* Local band: keep iff |i*C - j*R| < (window + 1) * max(R, C) ... see layout.c for the
 * exact rule (square grids: |i - j| <= window). out: R*C. */
pf_err pf_local_layout(int64_t R, int64_t C, int64_t window, uint8_t *out);

/* BigBird: local band of `window` + first n_global block-rows and block-columns +
 * n_random seeded random blocks per block-row. out: R*C. */
pf_err pf_bigbird_layout(int64_t R, int64_t C, int64_t window, int64_t n_global,
                         int64_t n_random, uint64_t seed, uint8_t *out);

/* Sparse Transformer (fixed): local blocks (same chunk of `stride` blocks) plus the
 * strided "summary" columns j % stride == stride - 1. out: R*C. */
pf_err pf_sparse_transformer_layout(int64_t R, int64_t C, int64_t stride, uint8_t *out);

/* Seeded uniform random layout with exactly round(density * R * C) blocks. out: R*C. */
pf_err pf_random_layout(int64_t R, int64_t C, double density, uint64_t seed, uint8_t *out);

/* --------------------------------------------------------- masks and CSR */
/* csrc/core/csr.c */

/* Expand a layout to an element mask of (R*b1) x (C*b2). */
pf_err pf_layout_to_mask(const uint8_t *layout, int64_t R, int64_t C, int64_t b1,
                         int64_t b2, uint8_t *mask);

/* Collapse a block-aligned element mask (M x N) back to a layout; error if a block is
 * partially set or b1/b2 do not divide M/N. out: (M/b1)*(N/b2). */
pf_err pf_mask_to_layout(const uint8_t *mask, int64_t M, int64_t N, int64_t b1,
                         int64_t b2, uint8_t *layout);

int64_t pf_layout_nnz(const uint8_t *layout, int64_t R, int64_t C);

/* Block-CSR: blocks are stored row by row, columns ascending. row_ptr: R+1, col_idx: nnz. */
pf_err pf_layout_to_csr(const uint8_t *layout, int64_t R, int64_t C, int64_t *row_ptr,
                        int64_t *col_idx);

/* Transpose index (block-CSC): col_ptr: C+1, row_idx: nnz, csc_blk: nnz, where csc_blk[k]
 * is the position in CSR storage of the k-th block of the CSC order. Validates the CSR. */
pf_err pf_csr_transpose(int64_t R, int64_t C, const int64_t *row_ptr, const int64_t *col_idx,
                        int64_t *col_ptr, int64_t *row_idx, int64_t *csc_blk);

/* ------------------------------------------------------------------ budget */
/* csrc/core/budget.c. Cost model of SPEC section 3, in flop-equivalents. */

typedef struct {
    double cost_mem;  /* cost of touching one b1 x b2 block (weights or activations) */
    double cost_flop; /* cost of one floating-point operation */
    int64_t b1, b2;   /* block size */
} pf_cost_model;

typedef struct {
    int64_t out_features, in_features; /* weight is out x in */
    int64_t tokens;                     /* T: rows of input the layer sees per step */
} pf_layer_shape;

/* Costs: dense layer; sparse part with nnz blocks (weights + input/output activations);
 * low-rank part of rank r (U, V, and the T x r intermediate), 0 for r = 0. */
double pf_cost_dense(const pf_cost_model *cm, const pf_layer_shape *s);
double pf_cost_sparse(const pf_cost_model *cm, const pf_layer_shape *s, int64_t nnz);
double pf_cost_lowrank(const pf_cost_model *cm, const pf_layer_shape *s, int64_t rank);

/* Number of kept blocks of pf_flat_butterfly_layout(R, C, m, n) without building it. */
int64_t pf_flat_butterfly_nnz(int64_t R, int64_t C, int64_t m, int64_t n);

typedef enum {
    PF_PLAN_SPARSE = 0,         /* sparsified */
    PF_PLAN_NOT_DIVISIBLE = 1,  /* a feature size is not a multiple of the block size */
    PF_PLAN_TOO_SMALL = 2,      /* block grid below 2 x 2: no butterfly fits */
    PF_PLAN_OVER_BUDGET = 3,    /* even the sparsest configuration exceeds its budget */
    PF_PLAN_BUDGET_ONE = 4      /* rho == 1 leaves the layer dense (dense is cheapest) */
} pf_plan_status;

typedef struct {
    double rho;         /* global budget, 0 < rho <= 1 */
    double phi;         /* low-rank share of each layer's budget, 1/4 <= phi <= 1/3 */
    pf_cost_model cm;
    int redistribute;   /* hand what rounding leaves over to other layers */
    int64_t max_rank;   /* cap on the rank (0 = min(out, in)) */
} pf_budget_opts;

typedef struct {
    int status;              /* pf_plan_status */
    int64_t R, C;            /* block grid */
    int64_t butterfly_size;  /* n */
    int64_t n_factors;       /* m */
    int64_t nnz;             /* kept blocks */
    int64_t rank;            /* r */
    double density;          /* nnz / (R * C) */
    double dense_cost, budget, sparse_cost, lowrank_cost; /* budget = rho * dense_cost (+ leftovers) */
} pf_layer_plan;

/* Plan n_layers layers. out: n_layers entries. Guarantees: the summed cost of the
 * sparsified layers never exceeds rho times their summed dense cost. */
pf_err pf_allocate_budget(const pf_layer_shape *layers, int64_t n_layers,
                          const pf_budget_opts *opts, pf_layer_plan *out);

/* ------------------------------------------------- block-sparse matmul (CPU) */
/* csrc/cpu/bsmm.c. Weight B: out x in, blocks b1 x b2 stored compactly as
 * [nnz, b1, b2] (row-major inside a block) in CSR order. */

typedef enum { PF_FLOAT32 = 0, PF_BFLOAT16 = 1, PF_FLOAT16 = 2, PF_FLOAT64 = 3 } pf_dtype;
/* 16-bit types stored as uint16_t. CPU kernels: FLOAT32, BFLOAT16 (fp32 accumulation) and
 * FLOAT64 (double accumulation; the exact path used by gradcheck). CUDA: FLOAT32, FLOAT16, BFLOAT16. */

typedef struct {
    int64_t R, C, b1, b2, nnz;
    const int64_t *row_ptr;  /* [R+1] */
    const int64_t *col_idx;  /* [nnz] */
    const int64_t *col_ptr;  /* [C+1] */
    const int64_t *row_idx;  /* [nnz] */
    const int64_t *csc_blk;  /* [nnz] */
} pf_bsr_index;

enum { PF_OP_FWD = 0, PF_OP_BWD_X = 1, PF_OP_BWD_W = 2 };

typedef struct {
    pf_dtype dtype;          /* storage dtype of every operand; accumulation is fp32 */
    int64_t T;               /* rows of x / dy (any T >= 0) */
    const pf_bsr_index *ix;
    const void *x;  int64_t ldx;  /* [T, in],  row stride ldx >= in  (FWD, BWD_W) */
    const void *w;                /* [nnz, b1, b2] contiguous        (FWD, BWD_X) */
    const void *dy; int64_t ldy;  /* [T, out], row stride ldy >= out (BWD_X, BWD_W) */
    void *out;      int64_t ldo;  /* FWD: y [T, out]; BWD_X: dx [T, in]; BWD_W: dw [nnz, b1, b2] (ldo ignored) */
    void *work;                   /* scratch of pf_bsmm_workspace() bytes, may be NULL if 0 */
    int isa;                      /* PF_ISA_*: AUTO picks the best the CPU has */
} pf_bsmm_args;

enum { PF_ISA_AUTO = 0, PF_ISA_PORTABLE = 1, PF_ISA_AVX2 = 2, PF_ISA_AVX512 = 3 };

int pf_cpu_has_avx2_fma(void);
int pf_cpu_has_avx512(void); /* avx512f (+bw/vl) */

/* Check sizes, strides and index consistency; NULL if the call is well-formed. */
pf_err pf_bsmm_check(int op, const pf_bsmm_args *a);

/* Bytes of scratch the op needs (e.g. packed blocks). */
int64_t pf_bsmm_workspace(int op, const pf_bsmm_args *a);

/* Work is split into phases (0: packing, 1: compute) of independent tasks. The caller
 * runs, for phase = 0 then 1, tasks [0, pf_bsmm_num_tasks) in any order and on any
 * threads (e.g. at::parallel_for), calling pf_bsmm_run on sub-ranges. Outputs are fully
 * overwritten (not accumulated into). No allocation happens inside. */
#define PF_BSMM_PHASES 2
int64_t pf_bsmm_num_tasks(int op, int phase, const pf_bsmm_args *a);
void pf_bsmm_run(int op, int phase, const pf_bsmm_args *a, int64_t begin, int64_t end);

/* Convenience: check, then run every phase serially. */
pf_err pf_bsmm_serial(int op, const pf_bsmm_args *a);

#ifdef __cplusplus
}
#endif
#endif /* PIXELFLY_H */
