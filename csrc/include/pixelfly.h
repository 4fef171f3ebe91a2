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
/* csrc/core/layout.c. `out` must hold the stated number of uint8_t; it is written with
 * 0/1 and only after every argument has been validated (on error it is untouched).
 * Grids: 1 <= R, C <= PF_MAX_GRID and R * C <= PF_MAX_CELLS. Error messages use the
 * Python argument names: rows = R, cols = C, n_factors = m, butterfly_size = n.
 * Seeded layouts use splitmix64 (csrc/core/rng.h): identical on every platform. */

/* Block butterfly factor B_k on an n x n grid: keep (i, j) iff (i ^ j) in {0, k/2}.
 * n, k powers of two, 2 <= k <= n, n * n <= PF_MAX_CELLS. out: n*n. */
pf_err pf_factor_layout(int64_t n, int64_t k, uint8_t *out);

/* Largest power of two <= min(R, C) (0 if min(R, C) < 2). Never fails. */
int64_t pf_default_butterfly_size(int64_t R, int64_t C);

/* Flat block butterfly with m factors on an R x C grid, butterfly size n
 * (0 = pf_default_butterfly_size(R, C)); n a power of two, 2 <= n <= min(R, C),
 * 1 <= m <= log2 n. Cell map p = floor(i*n/R), q = floor(j*n/C); keep iff
 * (p ^ q) in {0} U {2^s : 0 <= s < m}. out: R*C. */
pf_err pf_flat_butterfly_layout(int64_t R, int64_t C, int64_t m, int64_t n, uint8_t *out);

/* Support of the product of the first m factors B_{2^m} ... B_2 on an n x n cell
 * grid stretched over R x C (same arguments and cell map as the flat layout): keep iff
 * (p ^ q) < 2^m. m = log2(n) is dense. out: R*C. */
pf_err pf_butterfly_product_layout(int64_t R, int64_t C, int64_t m, int64_t n, uint8_t *out);

/* Local band, 0 <= window <= max(R, C). Block (i, j) covers rows [i*C, (i+1)*C) and
 * columns [j*R, (j+1)*R) of the unit square scaled by R*C; keep iff these intervals come
 * closer than window * min(R, C):
 *     j*R - (i+1)*C < window * min(R, C)  and  i*C - (j+1)*R < window * min(R, C).
 * Square grids: |i - j| <= window. window = 0 keeps exactly the blocks the diagonal of
 * the matrix passes through, so every block-row and block-column holds >= 1 block.
 * out: R*C. */
pf_err pf_local_layout(int64_t R, int64_t C, int64_t window, uint8_t *out);

/* BigBird: the local band of `window` (rule of pf_local_layout), plus the first
 * n_global block-rows and the first n_global block-columns (0 <= n_global <= min(R, C)),
 * plus, in each block-row i = 0..R-1 in turn, min(n_random, free) distinct columns drawn
 * uniformly at random among the `free` columns that row does not hold yet
 * (0 <= n_random <= C). One splitmix64 stream seeded with `seed` serves all rows
 * (selection sampling). Same seed, same layout. out: R*C. */
pf_err pf_bigbird_layout(int64_t R, int64_t C, int64_t window, int64_t n_global,
                         int64_t n_random, uint64_t seed, uint8_t *out);

/* Sparse Transformer "fixed" pattern, 1 <= stride <= max(R, C): keep (i, j) iff
 * floor(i / stride) == floor(j / stride) (same chunk of `stride` blocks) or
 * j % stride == stride - 1 (summary columns). Not causal (intersect with a causal
 * mask where wanted). out: R*C. */
pf_err pf_sparse_transformer_layout(int64_t R, int64_t C, int64_t stride, uint8_t *out);

/* Seeded uniform random layout with exactly floor(density * R * C + 0.5) blocks
 * (round half up), 0 <= density <= 1 (NaN is an error): every such subset of the R*C
 * cells is equally likely (selection sampling on a splitmix64 stream). out: R*C. */
pf_err pf_random_layout(int64_t R, int64_t C, double density, uint64_t seed, uint8_t *out);

/* The authors' flat block butterfly (csrc/core/fly_layout.c): the rule of the paper's own
 * release (FlatBlockButterflySparsityConfig), which lays the pattern over elements and
 * pools it to blocks. With n = butterfly_size, m = n_factors, a weight of out x in
 * elements (out = out_features, in = in_features) and blocks b1 x b2:
 *   1. cells: element row a is in cell p = floor(a / (out/n)), element column b in cell
 *      q = floor(b / (in/n)) (n must divide out and in);
 *   2. shuffle = 0: element (a, b) is kept iff (p ^ q) in {0} U {2^s : 0 <= s < m};
 *      shuffle = 1 (ShuffleNet channel shuffle of the cell columns, G = n / 2^m groups):
 *      kept iff (p ^ c) is, with c = (q mod G) * 2^m + floor(q / G);
 *   3. the first global_size element rows and the first global_size element columns are
 *      kept too (global_size >= 0; larger than out or in keeps everything);
 *   4. block (i, j) is kept iff any element of it is kept.
 * When b1 divides out/n and b2 divides in/n (a cell spans whole blocks), shuffle = 0 and
 * global_size = 0, this equals pf_flat_butterfly_layout(out/b1, in/b2, m, n).
 * Requires 1 <= b1, b2 <= PF_MAX_GRID dividing out and in, a grid R = out/b1, C = in/b2 as
 * for the other layouts, n a power of two in [2, PF_MAX_GRID] dividing out and in, and
 * 1 <= m <= log2 n. Messages name out_features, in_features, butterfly_size, n_factors,
 * block b1 / b2, global_size, shuffle. out: R*C. Work O((m + 1)(n + R + C) + R*C). */
pf_err pf_fly_config_layout(int64_t out_features, int64_t in_features, int64_t butterfly_size,
                            int64_t n_factors, int64_t b1, int64_t b2, int64_t global_size,
                            int shuffle, uint8_t *out);

/* NULL if pf_fly_config_layout accepts these arguments (out aside), else its message. */
pf_err pf_fly_config_check(int64_t out_features, int64_t in_features, int64_t butterfly_size,
                           int64_t n_factors, int64_t b1, int64_t b2, int64_t global_size,
                           int shuffle);

/* --------------------------------------------------------- masks and CSR */
/* csrc/core/csr.c. Here grids may be empty: 0 <= R, C <= PF_MAX_GRID, R * C <=
 * PF_MAX_CELLS. A nonzero layout / mask byte means "kept". Nothing is written on error. */

/* Expand a layout to an element mask of (R*b1) x (C*b2) (0/1), b1, b2 >= 1,
 * (R*b1) * (C*b2) <= PF_MAX_CELLS. */
pf_err pf_layout_to_mask(const uint8_t *layout, int64_t R, int64_t C, int64_t b1,
                         int64_t b2, uint8_t *mask);

/* Collapse a block-aligned element mask (M x N, M * N <= PF_MAX_CELLS) back to a layout;
 * error if a block is partially set or b1/b2 do not divide M/N. out: (M/b1)*(N/b2). */
pf_err pf_mask_to_layout(const uint8_t *mask, int64_t M, int64_t N, int64_t b1,
                         int64_t b2, uint8_t *layout);

/* Number of nonzero cells; -1 on invalid arguments (bad grid, NULL layout). */
int64_t pf_layout_nnz(const uint8_t *layout, int64_t R, int64_t C);

/* Block-CSR: blocks are stored row by row, columns ascending. row_ptr: R+1, col_idx: nnz
 * (col_idx may be NULL when the layout is empty). */
pf_err pf_layout_to_csr(const uint8_t *layout, int64_t R, int64_t C, int64_t *row_ptr,
                        int64_t *col_idx);

/* Transpose index (block-CSC): col_ptr: C+1, row_idx: nnz, csc_blk: nnz, where csc_blk[k]
 * is the position in CSR storage of the k-th block of the CSC order (rows ascend within a
 * column). Validates the CSR first: row_ptr[0] == 0, row_ptr non-decreasing with at most
 * C blocks per row, col_idx in [0, C) and strictly ascending within each row. The caller
 * guarantees row_ptr has R+1 entries and col_idx has row_ptr[R] entries (the arrays
 * indexed by nnz may be NULL when row_ptr[R] == 0). */
pf_err pf_csr_transpose(int64_t R, int64_t C, const int64_t *row_ptr, const int64_t *col_idx,
                        int64_t *col_ptr, int64_t *row_idx, int64_t *csc_blk);

/* The one validator of a block index (used by pf_csr_transpose, pf_bsmm_check and
 * pf_attn_check). Sizes: 0 <= R, C <= PF_MAX_GRID and 0 <= nnz <= R*C (no cell limit).
 * pf_csr_check: row_ptr [R+1] with row_ptr[0] = 0, non-decreasing, row_ptr[R] = nnz;
 * col_idx [nnz] in [0, C), strictly ascending within each row. O(R + nnz).
 * pf_csc_check: the same for col_ptr [C+1] / row_idx [nnz] (rows ascending within each
 * column), and that the CSC is exactly the transpose of the CSR, which must have passed
 * pf_csr_check: with_csc_blk = 1 checks csc_blk [nnz] (csc_blk[k] = CSR position of the
 * k-th CSC block, O(C + nnz)); 0 ignores csc_blk and looks each block up in the CSR
 * (O(C + nnz log C)). Messages name the array (row_ptr, col_idx, col_ptr, row_idx,
 * csc_blk). */
pf_err pf_csr_check(int64_t R, int64_t C, int64_t nnz, const int64_t *row_ptr,
                    const int64_t *col_idx);
pf_err pf_csc_check(int64_t R, int64_t C, int64_t nnz, const int64_t *row_ptr,
                    const int64_t *col_idx, const int64_t *col_ptr, const int64_t *row_idx,
                    const int64_t *csc_blk, int with_csc_blk);

/* ------------------------------------------------------------------ budget */
/* csrc/core/budget.c. Cost model of SPEC section 3, in flop-equivalents.
 *
 *   cost = cost_mem * N_blockmem + cost_flop * N_flop
 *
 * A "block" is b1 * b2 elements; touching one block costs cost_mem whatever its size;
 * partial blocks count as whole ones (ceil). For an out x in layer applied to T rows:
 *   dense:    N_flop = 2 T out in;
 *             N_blockmem = ceil(out/b1) * ceil(in/b2)          (weight blocks; = R*C)
 *                        + ceil(T*in/(b1*b2)) + ceil(T*out/(b1*b2))  (x read, y written)
 *   sparse:   N_blockmem = nnz (stored weight blocks only), N_flop = 2 T nnz b1 b2;
 *   low rank: rank r > 0: N_blockmem = ceil(out*r/(b1*b2)) + ceil(in*r/(b1*b2))
 *             (the factors U, V only), N_flop = 2 T r (in + out); 0 for r = 0.
 * Following SPEC 3's wording ("a sparse layer ... counts only its stored blocks and its
 * low-rank factors"), activation traffic (x read, y written), which sparsity cannot
 * remove, is counted in the dense cost only; the sparse and low-rank parts count neither
 * it nor the low-rank T x r intermediate. So for a divisible shape nnz = R*C costs the
 * dense cost minus cost_mem times the activation blocks.
 * A sparsified layer costs pf_cost_sparse(nnz) + pf_cost_lowrank(rank).
 * Everything is computed in double, so no size in the accepted ranges overflows. */

/* Accepted ranges (larger asks are errors): feature sizes, tokens, layers per plan. */
#define PF_MAX_FEATURES ((int64_t)1 << 40)
#define PF_MAX_TOKENS ((int64_t)1 << 50)
#define PF_MAX_LAYERS ((int64_t)1 << 20)

typedef struct {
    double cost_mem;  /* cost of touching one b1 x b2 block (weights, or activations in the dense cost), finite, >= 0 */
    double cost_flop; /* cost of one floating-point operation, finite, > 0 */
    int64_t b1, b2;   /* block size, each in [1, PF_MAX_GRID] */
} pf_cost_model;

/* The defaults of the cost model and of the budget's low-rank share (SPEC 3), written only
 * here: the _C module exports them and pixelfly/defaults.py reads them from it.
 * cost_mem = machine balance (FLOP per byte) * bytes per element * b1 * b2: an A100's
 * 312 TFLOP/s (bf16) over 1.555 TB/s is ~200 FLOP/byte, bf16 is 2 bytes, so a 32 x 32
 * block costs 409600 flop-equivalents. */
#define PF_DEFAULT_BLOCK 32
#define PF_DEFAULT_MACHINE_BALANCE 200.0
#define PF_DEFAULT_ELEM_BYTES 2
#define PF_DEFAULT_COST_MEM \
    (PF_DEFAULT_MACHINE_BALANCE * PF_DEFAULT_ELEM_BYTES * PF_DEFAULT_BLOCK * PF_DEFAULT_BLOCK)
#define PF_DEFAULT_COST_FLOP 1.0
#define PF_DEFAULT_PHI 0.25
/* Smallest butterfly size the planner considers: n = 2 has density (m + 1) / n = 1, the
 * dense layout, which costs more than nn.Linear once a rank is added. */
#define PF_PLAN_MIN_BUTTERFLY 4

typedef struct {
    int64_t out_features, in_features; /* weight is out x in, each in [1, PF_MAX_FEATURES] */
    int64_t tokens;                     /* T: rows of input the layer sees per step, [1, PF_MAX_TOKENS] */
} pf_layer_shape;

/* Costs: dense layer (weights + input/output activations); sparse part with nnz blocks
 * (stored blocks only); low-rank part of rank r (U and V only), 0 for r = 0.
 * Return NaN when pf_cost_check(cm, s, nnz, rank) fails (never crash). */
double pf_cost_dense(const pf_cost_model *cm, const pf_layer_shape *s);
double pf_cost_sparse(const pf_cost_model *cm, const pf_layer_shape *s, int64_t nnz);
double pf_cost_lowrank(const pf_cost_model *cm, const pf_layer_shape *s, int64_t rank);

/* NULL if the cost functions accept these arguments: cm and s non-NULL and in range,
 * 0 <= nnz <= ceil(out/b1) * ceil(in/b2), 0 <= rank <= min(out, in). (Added to the
 * contract so that bindings report the core's own message.) */
pf_err pf_cost_check(const pf_cost_model *cm, const pf_layer_shape *s, int64_t nnz, int64_t rank);

/* Number of kept blocks of pf_flat_butterfly_layout(R, C, m, n) without building it
 * (closed form: rows per cell times columns per cell, summed over the support cells;
 * O(1) when n divides R or C, else O(n m)). n = 0 picks pf_default_butterfly_size.
 * -1 when pf_flat_butterfly_check fails. Unlike the layout, no R*C cell limit applies. */
int64_t pf_flat_butterfly_nnz(int64_t R, int64_t C, int64_t m, int64_t n);

/* NULL if 1 <= R, C <= PF_MAX_GRID, n (after n = 0 -> default) is a power of two with
 * 2 <= n <= min(R, C), and 1 <= m <= log2 n; else a message naming the argument. */
pf_err pf_flat_butterfly_check(int64_t R, int64_t C, int64_t m, int64_t n);

typedef enum {
    PF_PLAN_SPARSE = 0,         /* sparsified */
    PF_PLAN_NOT_DIVISIBLE = 1,  /* a feature size is not a multiple of the block size */
    PF_PLAN_TOO_SMALL = 2,      /* block grid below 4 x 4: every butterfly on it is dense */
    PF_PLAN_OVER_BUDGET = 3,    /* even the sparsest configuration exceeds its budget */
    PF_PLAN_BUDGET_ONE = 4      /* rho == 1 leaves the layer dense (dense is cheapest) */
} pf_plan_status;

typedef struct {
    double rho;         /* global budget, 0 < rho <= 1 */
    double phi;         /* low-rank share of each layer's budget, 1/4 <= phi <= 1/3 (+-1e-9) */
    pf_cost_model cm;
    int redistribute;   /* hand what rounding leaves over to other layers */
    int64_t max_rank;   /* cap on the rank (0 = min(out, in)), >= 0 */
} pf_budget_opts;

typedef struct {
    int status;              /* pf_plan_status */
    int64_t R, C;            /* block grid (0 x 0 when not divisible) */
    int64_t butterfly_size;  /* n (0 when left dense) */
    int64_t n_factors;       /* m (0 when left dense) */
    int64_t nnz;             /* kept blocks (R*C when left dense) */
    int64_t rank;            /* r (0 when left dense) */
    double density;          /* nnz / (R * C) (1 when left dense) */
    double dense_cost;       /* pf_cost_dense */
    double budget;           /* rho * dense_cost + what the layer took from the shared pool */
    double sparse_cost;      /* pf_cost_sparse(nnz); the dense cost when left dense */
    double lowrank_cost;     /* pf_cost_lowrank(rank) */
    /* The layer's planned cost is always sparse_cost + lowrank_cost. */
} pf_layer_plan;

/* Plan n_layers layers (SPEC 3). out: n_layers entries, fully written on success.
 *  1. budget_l = rho * dense_cost_l (layers not divisible by b1 x b2, grids with
 *     min(R, C) < 4, and every layer when rho == 1 stay dense and are left out of the
 *     accounting). The planner only uses butterfly sizes n >= 4: n = 2 has density
 *     (m + 1) / n = 1, the dense layout, which with a rank on top costs more than the
 *     dense layer; so a grid below 4 x 4 is PF_PLAN_TOO_SMALL. A sparsified layer always
 *     has nnz < R * C (pf_flat_butterfly_nnz itself still accepts n = 2);
 *  2. rank = largest r <= min(out, in, max_rank) with lowrank_cost(r) <= phi * budget_l;
 *  3. the rest, (1 - phi) * budget_l, buys the largest nnz among flat butterflies with n a
 *     power of two, 4 <= n <= min(R, C), 1 <= m <= log2 n (ties: more factors m, then
 *     larger n). Splitting by the shares (not by the rank's actual cost) keeps rank and
 *     density non-decreasing in rho; what rounding leaves goes to the pool (step 4).
 *     If not even the sparsest butterfly fits (1 - phi) * budget_l, it is taken anyway
 *     with the largest rank that still fits next to it; if not even rank 0 fits:
 *     PF_PLAN_OVER_BUDGET (the layer stays dense).
 *  4. redistribute: pool = sum over sparsified layers of (budget_l - cost_l). Layers of
 *     identical (out_features, in_features, tokens) form a group that is upgraded as one:
 *     a step is applied to every member at once, and only if the pool pays for all of
 *     them, so identical layers always get identical plans (butterfly_size, n_factors,
 *     rank, budget). The pool first rescues over-budget groups (smallest per-layer
 *     shortfall first, sparsest butterfly, rank 0), then buys density (repeatedly the
 *     group whose step to its next denser butterfly is smallest relative to the layer's
 *     dense cost; a group whose step the pool cannot pay drops out), then rank (groups in
 *     the order of their relative rank step, each as far as the pool and
 *     lowrank_cost <= phi * budget_l allow).
 * Guarantees: every sparsified layer has cost <= budget; the summed cost of the
 * sparsified layers never exceeds rho times their summed dense cost (a relative margin of
 * 1e-9 absorbs float rounding). Argument errors are returned before anything is planned. */
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
    int out_fresh;                /* 1: `out` was just allocated and its pages may not be
                                   * faulted in yet (0: already touched, e.g. reused).
                                   * A hint: large FWD / BWD_X outputs are written with
                                   * streaming stores unless fresh and >= 32 MiB */
    int64_t max_tasks;            /* cap on the phase-1 tasks of T > 16 rows (FWD / BWD_X
                                   * a little more when T is short), each with a workspace
                                   * slot of its own (0: 1). Set it to the threads that will
                                   * run them; results do not depend on it. */
    int bf16_pairs;               /* bf16 only: 0 chooses for speed between computing on
                                   * bf16 pairs (blocks and activation panels packed
                                   * pairwise) and widening to fp32: pairs where the ISA
                                   * has vdpbf16ps (PF_ISA_AVX512BF16), and for FWD /
                                   * BWD_X with at most 2 blocks per activation column
                                   * (x / dy then read as stored, no copy); 1 always pairs
                                   * (emulated by FMAs without the instruction), -1 never.
                                   * Results do not depend on it. */
    /* FWD / BWD_X only: a low-rank term and a bias added in the output tile, so the output
     * is written once: out = act B^T (B) + lr_a lr_b^T + bias. Per output element, in fp32:
     * P = the block products summed as below, L = lr_a(t, s) lr_b(o, s) summed from +0 with
     * fused multiply-adds for s ascending, E = L + bias (L without bias; the bias alone
     * with rank 0), and out = P + E, rounded once to the output dtype. rank 0 and no bias:
     * no epilogue. */
    int64_t rank;
    const void *lr_a; int64_t ld_lr_a; /* [T, rank], row stride >= rank: x V (FWD), dy U (BWD_X) */
    const void *lr_b;                  /* [out, rank] (FWD: U) / [in, rank] (BWD_X: V), contiguous */
    const void *bias;                  /* [out] (FWD) / [in] (BWD_X), or NULL */
} pf_bsmm_args;

/* PF_ISA_AVX512BF16: AVX-512 plus vdpbf16ps, which the bf16 matmuls use on bf16 pairs
 * (the fp32 kernels are AVX-512's). */
enum { PF_ISA_AUTO = 0, PF_ISA_PORTABLE = 1, PF_ISA_AVX2 = 2, PF_ISA_AVX512 = 3, PF_ISA_AVX512BF16 = 4 };

/* The CPU features the kernels use (csrc/cpu/isa.c; the attention kernels use the same). */
int pf_cpu_has_avx2_fma(void);
int pf_cpu_has_avx512(void); /* avx512f + avx512bw + avx512vl */
int pf_cpu_has_avx512_bf16(void); /* the above + avx512bf16 (vdpbf16ps) */

/* The machine's arithmetic peak, measured (csrc/cpu/peak.c): `iters` rounds of one
 * thread's fp32 FMA loop in `isa` (PF_ISA_AUTO: the best this CPU has; PF_ISA_PORTABLE:
 * scalar fmaf), or of the AVX512_BF16 dot-product loop. Each returns the FLOPs it did
 * (a multiply-add counts 2), or -1 if this CPU cannot run it or iters < 0; *sink (may be
 * NULL) gets a value computed from every lane. Run one per thread at once and divide by
 * the wall time for the machine's peak. */
int64_t pf_peak_fma(int isa, int64_t iters, double *sink);
int64_t pf_peak_dpbf16(int64_t iters, double *sink);
/* The tile probe: `iters` rounds of the fp32 tile kernel's register tile in `isa` (its own
 * step: broadcasts of A, vector loads of B, FMAs) over 64 steps of operands that stay in L1,
 * so no cache miss, packing or bookkeeping (PF_ISA_PORTABLE: the portable tile on 8 x 16).
 * Its rate over the FMA peak is what this core's load path leaves to any GEMM kernel: the
 * ceiling of the block-sparse kernels (csrc/cpu/kernels_simd.h). FLOPs done, or -1 as
 * pf_peak_fma; *sink gets a value computed from every accumulator. */
int64_t pf_peak_tile(int isa, int64_t iters, double *sink);

/* Check sizes, strides, pointers (non-NULL wherever the operand has elements, aligned
 * to the element size), the isa (an explicit PF_ISA_AVX2/AVX512 the CPU lacks is an
 * error) and full index consistency (CSR and CSC sorted, in range, csc_blk the exact
 * transpose); O(R + C + nnz). NULL if the call is well-formed. Does not look at `work`
 * (it is sized afterwards with pf_bsmm_workspace). */
pf_err pf_bsmm_check(int op, const pf_bsmm_args *a);

/* Bytes of scratch the op needs: FWD / BWD_X the packed (padded) blocks, fp32 or, on bf16
 * pairs, bf16, and per task (about max_tasks) a slot for the activation panels of one
 * chunk of rows (x / dy, fp32 or bf16 pairs) of at most ~4 MiB (at T <= 16 rows instead:
 * x / dy transposed, and with bf16 the blocks widened); BWD_W per task (max_tasks) a slot
 * of panels (x and dy rows of one chunk, fp32 or bf16 pairs) of at most ~4 MiB, with bf16
 * also fp32 partial sums of dw. With an epilogue (rank > 0) FWD / BWD_X also hold lr_b
 * packed per output unit and, per task, the low-rank sums of a chunk (and its lr_a rows
 * widened from bf16), or on the few-row path lr_a transposed; a bf16 bias is widened.
 * It must be 8-byte aligned; 64 bytes is best. */
int64_t pf_bsmm_workspace(int op, const pf_bsmm_args *a);

/* Work is split into phases (0: packing, 1: compute) of independent tasks. The caller
 * runs, for phase = 0 then 1, tasks [0, pf_bsmm_num_tasks) in any order and on any
 * threads (e.g. at::parallel_for), calling pf_bsmm_run on sub-ranges. Outputs are fully
 * overwritten (not accumulated into). No allocation happens inside. */
#define PF_BSMM_PHASES 2
int64_t pf_bsmm_num_tasks(int op, int phase, const pf_bsmm_args *a);
void pf_bsmm_run(int op, int phase, const pf_bsmm_args *a, int64_t begin, int64_t end);

/* Results do not depend on the task split, the order tasks run in, or the ISA: every ISA
 * accumulates each output in fp32 with fused multiply-adds in the same order (blocks in
 * index order, then k / t ascending; with bf16 operands k / t go in pairs, the odd one
 * first: 1, 0, 3, 2, ..., the order of vdpbf16ps), so AVX2, AVX-512 and portable are
 * bitwise equal. AVX512_BF16's vdpbf16ps gives the same bits except where a bf16 operand,
 * a product or a partial sum is subnormal (it treats those as zero). bf16 outputs are
 * rounded to nearest even once, at the end. */

/* Convenience: check, then run every phase serially (a->work must hold
 * pf_bsmm_workspace bytes when that is > 0, else an error is returned). */
pf_err pf_bsmm_serial(int op, const pf_bsmm_args *a);

#ifdef __cplusplus
}
#endif
/* Block-sparse attention kernels (csrc/cpu/attn.c). */
#include "pixelfly_attn.h"

#endif /* PIXELFLY_H */
