/*
 * bsmm.c - block-sparse matmul on the CPU: the driver (plan, task split, packing). The
 * arguments are checked in bsmm_check.c, the tiles are computed by the kernels of
 * kernels.h (portable, AVX2, AVX-512: one source, kernels_simd.h), float64 in bsmm_f64.c.
 *
 * Ops (W = B: out x in, blocks b1 x b2, blocks [nnz][b1][b2] in block-CSR order):
 *   FWD:   y[T, out]  = x[T, in] B^T
 *   BWD_X: dx[T, in]  = dy[T, out] B
 *   BWD_W: dw[blk]    = dy[:, rows of blk]^T x[:, cols of blk]   (layout blocks only)
 *
 * Design (BLIS-like, see kernels.h for the tile abstraction):
 *   phase 0 (packing): FWD packs every block transposed, W^T[b2][Np] with Np = b1 rounded
 *     up to 16 (zero padding), in CSR order; BWD_X packs W[b1][Np] (Np = b2 rounded up) in
 *     CSC order so the blocks of one block-column are contiguous. On bf16 pairs (plan.pairs,
 *     see make_plan) the blocks are packed as bf16 pairs of steps ([K/2][Np][2]) and the
 *     pair tiles run vdpbf16ps (kernels.h); other bf16 ops widen to fp32.
 *   phase 1 (compute):
 *     FWD / BWD_X: a task owns a range of chunks of TC rows of T (at most max_tasks tasks;
 *       with fewer chunks than that, a chunk is also split into groups of consecutive
 *       block-rows / block-columns balanced by nnz). Per chunk it copies the activation
 *       panels its blocks read (x / dy columns of one block, TC x K: fp32, widened bf16, or
 *       bf16 on pairs) into its workspace slot, block-major, the first time a block needs
 *       one; so the tile reads each block's rows contiguously from L2 instead of rows a
 *       whole feature row apart from L3 (those alias in L1 sets and the TLB when the sizes
 *       are powers of two): measured +5-20% at 4096 features, T = 4096 (AVX2, fp32). For every
 *       output block-row the kernel holds an MR x 32 (AVX-512) / 6 x 16 (AVX2) tile of y in
 *       registers across ALL the blocks of that row, so each output element is written
 *       exactly once; output block-rows with no block are written as zeros. bf16 with at
 *       most PF_INPLACE_REUSE blocks per activation column runs on pairs reading x / dy as
 *       stored instead (no copy to amortise).
 *     BWD_W: task = a contiguous range of blocks in CSR order (blocks sharing a block-row
 *       of dy are adjacent; CSC order, sharing a block-column of x, when with several
 *       tasks each would copy clearly less of x and dy that way, as when x is much wider
 *       than dy: make_plan), at most max_tasks of them, each with a
 *       workspace slot of its own. A task cuts T into chunks of TW rows (outermost); per
 *       chunk it packs the x panels its blocks need (once each, block-major) and the dy
 *       panel of each block-row (CSC order: the other way round) (fp32, widened from bf16
 *       on the fly; on bf16 pairs, pairs of rows) into its slot, then reduces a register
 *       tile of dw over the chunk's rows for every block; partial sums round-trip through
 *       fp32 (dw itself for fp32, the workspace for bf16), the next block's prefetched.
 *   FWD / BWD_X with T <= PF_SMALL_T rows (inference, decoding) skip the packing, whose
 *     cost (a copy of every block) would exceed the product's: phase 0 transposes the
 *     activation (T x width, small), phase 1 computes y^T = B x^T (dx^T = B^T dy^T) with
 *     the blocks read as stored (bf16: widened once) and writes the tile transposed; each
 *     element sums the same products in the same order as the packed path (bitwise equal).
 *     Below PF_NARROW_N rows the SIMD ISAs run the few-row tile (tile_narrow.c), which
 *     vectorises over the output features instead of the rows (C harness, AVX2, 1 thread,
 *     1024 x 1024 at density 1/8, block 32: FWD 1.6-1.8x faster at T = 1-2, 1.4x at 4,
 *     1.15x at 7; BWD_X alike).
 *   Epilogue (FWD / BWD_X with pf_bsmm_args rank / bias: PixelflyLinear's low-rank term
 *     and bias): per task and output unit the fp32 tile sums lr_a lr_b^T of the unit's rows
 *     into a small buffer (plus the bias), and the block tile adds it before its one store
 *     (Cadd), so the output is written once (plan_epilogue, epilogue()).
 *   Results are bitwise identical across ISAs (same fmaf order, kernels.h).
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#include "bsmm_internal.h"
#include "kernels.h"
#include "pixelfly.h"

/* ------------------------------------------------------------------ plan */

#ifndef PF_TC
#define PF_TC 256           /* rows of T per FWD/BWD_X chunk (fewer if the slot would exceed ... */
#endif
#ifndef PF_ASLOT_BYTES
#define PF_ASLOT_BYTES (4 << 20) /* ... this, or to make max_tasks chunks, down to PF_TC_MIN) */
#endif
#define PF_TC_MIN 32
#ifndef PF_TW
#define PF_TW 128           /* rows of T per BWD_W chunk (panels of 16 KiB at b = 32) ... */
#endif
#ifndef PF_SLOT_FLOATS
#define PF_SLOT_FLOATS (1 << 20) /* ... fewer (down to 16) if a task's panels exceed this */
#endif
#ifndef PF_STREAM_BYTES
#define PF_STREAM_BYTES (4 << 20) /* FWD / BWD_X outputs at least this large ... */
#endif
#ifndef PF_STREAM_MAX_BYTES
#define PF_STREAM_MAX_BYTES (32 << 20) /* ... and, if freshly allocated, below this (run_rows) */
#endif
#define PF_TASK_FLOPS (1 << 21)
#define PF_TASK_BYTES (128 << 10) /* of blocks read per task on the few-row path */
#define PF_MAX_TASKS 256
#define PF_PACK_BLOCKS 32   /* blocks per phase-0 packing task */
#ifndef PF_SMALL_T
#define PF_SMALL_T 16       /* FWD / BWD_X with at most this many rows: the transposed path */
#endif
#define PF_CONV_ELEMS (1 << 16) /* bf16 -> fp32 elements per phase-0 conversion task */
#define PF_LR_UNITS 8       /* output units per phase-0 task preparing lr_b and the bias */
#ifndef PF_INPLACE_REUSE
#define PF_INPLACE_REUSE 2  /* bf16 FWD / BWD_X: at most this many blocks per activation column
                             * (on average) read x / dy in place on pairs */
#endif

typedef struct {
    int op, bf16;
    int pairs;                /* bf16 on bf16 pairs (pair tiles, kernels.h): blocks and the
                               * activation panels packed pairwise */
    int a_inplace;            /* FWD / BWD_X on pairs: x / dy read as stored (no panels) */
    int64_t T, R, C, b1, b2, nnz, in, out;
    /* phase 0 */
    int64_t n_pack;
    int small;                /* FWD / BWD_X with T <= PF_SMALL_T: blocks read in place (bf16:
                               * widened to ws_w), the activation transposed to ws_act */
    int64_t n_tr, tr_cols, ws_act, ws_w;
    /* workspace (bytes offsets) */
    int64_t ws_pack, ws_acc, ws_slots, ws_total;
    int64_t TW, slot_bytes;   /* BWD_W: rows per chunk (even); bytes of one task's slot */
    int by_cols;              /* BWD_W: tasks own ranges of blocks in CSC order (see run_bwd_w_task) */
    int64_t Np;               /* padded N of packed blocks (FWD: b1, BWD_X: b2) */
    /* phase 1 */
    int64_t TC, nTC, nG, n1;  /* FWD/BWD_X: T chunk, #chunks, #groups per chunk, #tasks */
    int64_t nRT;              /* FWD/BWD_X: tasks over the chunks (each a range of them) */
    /* FWD / BWD_X epilogue (pf_bsmm_args rank, lr_a, lr_b, bias; see epilogue()) */
    int64_t rank, n_lr;       /* rank; phase-0 tasks preparing lr_b and bias (units each) */
    int64_t ws_lrb, ws_bias;  /* lr_b as the tile reads it: per unit [rank][Np] (small path:
                               * [width][rank], bf16 only); the bias in fp32 (bf16 only) */
    int64_t ws_lra, ws_sum;   /* small path: lr_a^T [rank][T] fp32; per task [T][b] sums, */
    int64_t sum_bytes;        /* sum_bytes apart */
    int64_t slot_sum, slot_lra; /* packed path, offsets in a task's slot: the low-rank sums
                               * [TC][Np] and (bf16) lr_a rows widened [TC][rank] */
} pf_plan;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* Expected distinct units of `units` that `draws` blocks spread evenly over meet. */
static double meets(int64_t units, double draws) {
    return units > 0 ? (double)units * (1.0 - exp(-draws / (double)units)) : 0.0;
}

/* The epilogue's workspace (FWD / BWD_X with T > 0): from `off`, returns the new end. Its
 * phase-0 tasks prepare lr_b (packed per output unit as the tile's B: [rank][Np]; on the
 * few-row path, where it is the tile's A, widened from bf16) and the bias (fp32). The
 * packed path's slots grow by the sums of one chunk x unit and the chunk's lr_a rows
 * (bf16: widened); the few-row path transposes lr_a (its B) and gives each task sums. */
static int64_t plan_epilogue(const pf_bsmm_args *a, pf_plan *p, int64_t units, int64_t off) {
    const int64_t width = p->op == PF_OP_FWD ? p->out : p->in, N = p->op == PF_OP_FWD ? p->b1 : p->b2;
    p->rank = a->rank > 0 ? a->rank : 0;
    const int bias16 = a->bias && p->bf16;
    if (!p->rank && !bias16) return off;
    p->n_lr = ceil_div(units, PF_LR_UNITS);
    if (p->rank && !p->small) {
        /* each task's slot: [stamps, panels] (none when a_inplace), sums, lr_a rows; the
         * slots are the workspace's last part so far */
        const int64_t base = p->slot_bytes;
        p->slot_sum = base;
        p->slot_lra = base + round_up(p->TC * p->Np * 4, 64);
        p->slot_bytes = p->slot_lra + (p->bf16 ? round_up(p->TC * p->rank * 4, 64) : 0);
        off += p->n1 * (p->slot_bytes - base);
    }
    if (bias16) {
        p->ws_bias = off;
        off += round_up(width * 4, 64);
    }
    if (!p->rank) return off;
    if (!p->small) {
        p->ws_lrb = off;
        return off + round_up(units * p->rank * p->Np * 4, 64);
    }
    if (p->bf16) {
        p->ws_lrb = off;
        off += round_up(width * p->rank * 4, 64);
    }
    p->ws_lra = off;
    off += round_up(p->rank * p->T * 4, 64);
    p->ws_sum = off;
    p->sum_bytes = round_up(p->T * N * 4, 64);
    return off + p->n1 * p->sum_bytes;
}

/* Cheap sanity (the full validation is pf_bsmm_check): 0 if the plan cannot be made. */
static int make_plan(int op, const pf_bsmm_args *a, pf_plan *p) {
    memset(p, 0, sizeof(*p));
    if (!a || !a->ix || op < PF_OP_FWD || op > PF_OP_BWD_W) return 0;
    if (a->dtype != PF_FLOAT32 && a->dtype != PF_BFLOAT16) return 0;
    const pf_bsr_index *ix = a->ix;
    if (a->T < 0 || ix->R < 0 || ix->C < 0 || ix->b1 < 1 || ix->b2 < 1 || ix->nnz < 0) return 0;
    p->op = op;
    p->bf16 = a->dtype == PF_BFLOAT16;
    p->T = a->T; p->R = ix->R; p->C = ix->C; p->b1 = ix->b1; p->b2 = ix->b2; p->nnz = ix->nnz;
    p->in = ix->C * ix->b2; p->out = ix->R * ix->b1;
    const int64_t T = p->T, nnz = p->nnz, b1 = p->b1, b2 = p->b2;
    p->small = op != PF_OP_BWD_W && T > 0 && T <= PF_SMALL_T;
    /* bf16 pairs where the ISA has vdpbf16ps (or forced); FWD / BWD_X need an even K (b2 /
     * b1) to pair adjacent steps of the panels, BWD_W packs its panels pairwise and pads.
     * The FMA emulation of the pair tile (AVX2, AVX-512F) is slower than widening the
     * panels to fp32 (C harness, AVX2, T = 4096, 4096 features: -12-18% at densities
     * 1/16-1/4), so auto widens there, except where a copy of the activation has too little
     * reuse to pay (at most PF_INPLACE_REUSE blocks per activation block-column for FWD,
     * block-row for BWD_X): there pairs read x / dy as stored (C harness, AVX2, bf16,
     * T = 4096, 2 blocks per column: +25-30% over widened panels; at 4: -10%). */
    const pf_kernels *k = pf_kernels_pick(a->isa);
    const int low_reuse = op != PF_OP_BWD_W && nnz <= PF_INPLACE_REUSE * (op == PF_OP_FWD ? p->C : p->R);
    const int want_pairs = a->bf16_pairs > 0 || (a->bf16_pairs == 0 && (k->pairs_native || low_reuse));
    p->pairs = p->bf16 && want_pairs && !p->small &&
               (op == PF_OP_BWD_W || (op == PF_OP_FWD ? b2 : b1) % 2 == 0);
    p->a_inplace = p->pairs && low_reuse;
    const int64_t pes = p->pairs ? 2 : 4; /* bytes of a packed element */
    /* FWD / BWD_X: phase-1 tasks the work is worth (PF_TASK_FLOPS each) */
    const int64_t units = op == PF_OP_FWD ? p->R : p->C; /* output block-rows / block-cols */
    const double work = 2.0 * (double)T * (double)nnz * (double)b1 * (double)b2 +
                        (double)T * (double)(op == PF_OP_FWD ? p->out : p->in);
    const int64_t want = clamp64((int64_t)(work / PF_TASK_FLOPS), 1, PF_MAX_TASKS);

    /* workspace */
    int64_t off = 0;
    if (p->small) {
        /* y^T = B x^T (FWD), dx^T = B^T dy^T (BWD_X): no packing of the weights, whose
         * copy would cost as much as the product at a few rows */
        const int64_t width = op == PF_OP_FWD ? p->in : p->out;
        p->ws_act = off;
        off += round_up(width * T * 4, 64);
        p->tr_cols = clamp64(PF_CONV_ELEMS / T, 1, width > 0 ? width : 1);
        p->n_tr = width > 0 ? ceil_div(width, p->tr_cols) : 0;
        if (p->bf16) {
            p->ws_w = off;
            off += round_up(nnz * b1 * b2 * 4, 64);
            p->n_pack = ceil_div(nnz, PF_PACK_BLOCKS);
        }
    } else if (op != PF_OP_BWD_W) {
        p->Np = round_up(op == PF_OP_FWD ? b1 : b2, 16);
        p->ws_pack = off;
        off += round_up(nnz * (op == PF_OP_FWD ? b2 : b1) * p->Np * pes, 64);
        p->n_pack = T > 0 ? ceil_div(nnz, PF_PACK_BLOCKS) : 0;
        /* phase 1: chunks of TC rows, a task a range of them (or one chunk x a group of
         * output units when there are fewer chunks than tasks), a slot per task */
        const int fwd = op == PF_OP_FWD;
        const int64_t width = fwd ? p->in : p->out;
        if (T > 0 && units > 0) {
            const int64_t tasks = clamp64(a->max_tasks, 1, PF_MAX_TASKS);
            const int64_t cap = want < tasks ? want : tasks;
            int64_t TC = clamp64(PF_ASLOT_BYTES / (width > 0 ? width * pes : 1), PF_TC_MIN, PF_TC);
            if (ceil_div(T, TC) < cap) TC = clamp64(ceil_div(T, cap), PF_TC_MIN, TC);
            p->TC = TC < T ? TC : T;
            p->nTC = ceil_div(T, p->TC);
            p->nRT = p->nTC < cap ? p->nTC : cap;
            p->nG = p->nTC < cap ? clamp64(ceil_div(cap, p->nTC), 1, units) : 1;
            p->n1 = p->nRT * p->nG;
            p->slot_bytes = p->a_inplace ? 0 : round_up((fwd ? p->C : p->R) * 8, 64) + round_up(p->TC * width * pes, 64);
            p->ws_slots = off;
            off += p->n1 * p->slot_bytes;
        }
    }
    if (op == PF_OP_BWD_W) {
        const int64_t cap = a->max_tasks > 0 ? a->max_tasks : 1;
        const double work = 2.0 * (double)T * (double)nnz * (double)b1 * (double)b2 +
                            (double)nnz * (double)b1 * (double)b2;
        p->n1 = nnz == 0 ? 0 : clamp64((int64_t)(work / PF_TASK_FLOPS), 1,
                                       nnz < cap ? nnz : cap);
        /* A task copies the panels of the side it splits (1 / n1 of it) and those of the
         * other side its blocks meet: CSC order when that copies less (blocks spread
         * evenly: nnz / n1 blocks meet u (1 - e^(-nnz / (n1 u))) of u units), by a margin:
         * at equal copies CSC order measured 6% slower (its partial sums are not
         * contiguous). C harness, AVX2, 2 threads, T = 4096, 1024 x 4096 (x the wider),
         * median of 4 interleaved runs: density 1/8 +14%, 1/4 +5%. */
        if (p->n1 > 1 && nnz > 0) {
            const double per = (double)nnz / (double)p->n1;
            const double csr = (double)p->R / (double)p->n1 * (double)b1 + meets(p->C, per) * (double)b2;
            const double csc = (double)p->C / (double)p->n1 * (double)b2 + meets(p->R, per) * (double)b1;
            p->by_cols = csc < 0.9 * csr;
        }
        const int64_t per_row = p->by_cols ? p->out + b2 : p->in + b1;
        /* even, so chunks start on a pair (bf16 sums steps in pairs, kernels.h) */
        p->TW = clamp64(PF_SLOT_FLOATS / (per_row > 0 ? per_row : 1), 16, PF_TW) & ~(int64_t)1;
        if (T > 0 && T < p->TW) p->TW = T;
        if (p->bf16 && T > p->TW) {
            p->ws_acc = off;
            off += round_up(nnz * b1 * b2 * 4, 64);
        }
        p->slot_bytes = T == 0 ? 0 : round_up((p->by_cols ? p->R : p->C) * 8, 64) +
                                     round_up(per_row * round_up(p->TW, 2) * pes, 64);
        p->ws_slots = off;
        off += p->n1 * p->slot_bytes;
    }
    /* phase 1 of the few-row path: groups of output units (block-rows / block-cols) */
    if (p->small && units > 0) { /* a few rows: reading the blocks is the cost, split it too */
        p->nG = clamp64(ceil_div(nnz * b1 * b2 * (p->bf16 ? 2 : 4), PF_TASK_BYTES), want, PF_MAX_TASKS);
        if (p->nG > units) p->nG = units;
        p->n1 = p->nG;
    }
    if (op != PF_OP_BWD_W && T > 0) off = plan_epilogue(a, p, units, off);
    p->ws_total = off;
    return 1;
}

/* Units [lo, hi) (block-rows for FWD, block-cols for BWD_X) of group g: balanced on the
 * cumulative weight ptr[u] + u (blocks plus one per unit for its output). */
static int64_t group_start(const int64_t *ptr, int64_t units, int64_t nG, int64_t g) {
    if (g <= 0) return 0;
    if (g >= nG) return units;
    const double total = (double)(ptr[units] + units);
    const double target = total * (double)g / (double)nG;
    int64_t lo = 0, hi = units; /* first u with ptr[u] + u >= target */
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if ((double)(ptr[mid] + mid) >= target) hi = mid; else lo = mid + 1;
    }
    return lo;
}

/* ------------------------------------------------------------------ API */

int64_t pf_bsmm_workspace(int op, const pf_bsmm_args *a) {
    if (a && a->dtype == PF_FLOAT64) return 0; /* the float64 path reads operands in place */
    pf_plan p;
    if (!make_plan(op, a, &p)) return 0;
    return p.ws_total;
}

int64_t pf_bsmm_num_tasks(int op, int phase, const pf_bsmm_args *a) {
    if (a && a->dtype == PF_FLOAT64) return pf_bsmm_f64_num_tasks(op, phase, a);
    pf_plan p;
    if (!make_plan(op, a, &p)) return 0;
    if (phase == 0) return p.n_pack + p.n_tr + p.n_lr;
    if (phase == 1) return p.n1;
    return 0;
}

/* Phase 0 packing of blocks [j0, j1) on bf16 pairs (p->pairs): the steps s of the tile
 * (FWD: k, BWD_X: i) pairwise, dst[s / 2][n][s % 2] with Np (zero-padded) columns n. FWD
 * packs in CSR order, dst[k/2][i][k%2] = w[j][i][k] (a pair of a block row is its two
 * adjacent bf16, so the transpose moves 32-bit pairs); BWD_X in CSC order, position j
 * holding dst[i/2][k][i%2] = w[csc_blk[j]][i][k] (two block rows interleaved). */
static void pack_block_pairs(const pf_plan *p, const pf_bsmm_args *a, int64_t j0, int64_t j1) {
    uint16_t *pack = (uint16_t *)(void *)((char *)a->work + p->ws_pack);
    const uint16_t *w = (const uint16_t *)a->w;
    const int64_t b1 = p->b1, b2 = p->b2, Np = p->Np;
    for (int64_t j = j0; j < j1; ++j) {
        if (p->op == PF_OP_FWD) {
            uint16_t *dst = pack + j * b2 * Np;
            for (int64_t i = 0; i < b1; ++i)
                for (int64_t q = 0; q < b2 / 2; ++q)
                    memcpy(dst + (q * Np + i) * 2, w + (j * b1 + i) * b2 + 2 * q, 4);
            for (int64_t q = 0; q < b2 / 2; ++q)
                memset(dst + (q * Np + b1) * 2, 0, (size_t)(Np - b1) * 4);
        } else {
            uint16_t *dst = pack + j * b1 * Np;
            const uint16_t *src = w + a->ix->csc_blk[j] * b1 * b2;
            for (int64_t q = 0; q < b1 / 2; ++q) {
                uint16_t *d = dst + q * Np * 2;
                for (int64_t k = 0; k < b2; ++k) {
                    d[2 * k] = src[2 * q * b2 + k];
                    d[2 * k + 1] = src[(2 * q + 1) * b2 + k];
                }
                memset(d + 2 * b2, 0, (size_t)(Np - b2) * 4);
            }
        }
    }
}

/* Phase 0 packing task: blocks [j0, j1) into fp32 panels of Np (zero-padded) columns. FWD
 * packs in CSR order, transposed: dst[k][i] = w[j][i][k]; BWD_X in CSC order: CSC position
 * j holds dst[i][k] = w[csc_blk[j]][i][k]. */
static void pack_blocks(const pf_plan *p, const pf_bsmm_args *a, int64_t j0, int64_t j1) {
    float *pack = (float *)((char *)a->work + p->ws_pack);
    const int64_t b1 = p->b1, b2 = p->b2, Np = p->Np;
    if (p->small) { /* the transposed path reads the blocks as they are: bf16 widened */
        float *w = (float *)((char *)a->work + p->ws_w);
        pf_bf16_to_f32_n(w + j0 * b1 * b2, (const uint16_t *)a->w + j0 * b1 * b2, (j1 - j0) * b1 * b2);
        return;
    }
    if (p->pairs) {
        pack_block_pairs(p, a, j0, j1);
        return;
    }
    for (int64_t j = j0; j < j1; ++j) {
        if (p->op == PF_OP_FWD) {
            float *dst = pack + j * b2 * Np;
            const int64_t src = j * b1 * b2;
            /* transpose: rows of the block are read contiguously, one column at a time */
            for (int64_t i = 0; i < b1; ++i) {
                if (p->bf16) {
                    const uint16_t *w = (const uint16_t *)a->w + src + i * b2;
                    for (int64_t k = 0; k < b2; ++k) dst[k * Np + i] = pf_bf16_to_f32(w[k]);
                } else {
                    const float *w = (const float *)a->w + src + i * b2;
                    for (int64_t k = 0; k < b2; ++k) dst[k * Np + i] = w[k];
                }
            }
            if (Np > b1)
                for (int64_t k = 0; k < b2; ++k) memset(dst + k * Np + b1, 0, (size_t)(Np - b1) * 4);
        } else {
            float *dst = pack + j * b1 * Np;
            const int64_t src = a->ix->csc_blk[j] * b1 * b2;
            for (int64_t i = 0; i < b1; ++i) {
                float *d = dst + i * Np;
                if (!p->bf16)
                    memcpy(d, (const float *)a->w + src + i * b2, (size_t)b2 * sizeof(float));
                else
                    pf_bf16_to_f32_n(d, (const uint16_t *)a->w + src + i * b2, b2);
                for (int64_t k = b2; k < Np; ++k) d[k] = 0.0f;
            }
        }
    }
}

static float elem_f32(const void *src, int bf16, int64_t i) {
    return bf16 ? pf_bf16_to_f32(((const uint16_t *)src)[i]) : ((const float *)src)[i];
}

/* Phase 0 epilogue task: output units [u0, u1) of lr_b and the bias as the tiles read them
 * (plan_epilogue); the first task also transposes lr_a on the few-row path. */
static void prepare_epilogue(const pf_plan *p, const pf_bsmm_args *a, int64_t u0, int64_t u1) {
    char *ws = (char *)a->work;
    const int64_t N = p->op == PF_OP_FWD ? p->b1 : p->b2, r = p->rank, f0 = u0 * N, f1 = u1 * N;
    if (a->bias && p->bf16)
        pf_bf16_to_f32_n((float *)(ws + p->ws_bias) + f0, (const uint16_t *)a->bias + f0, f1 - f0);
    if (!r) return;
    if (!p->small) { /* unit u: [rank][Np], dst[s][i] = lr_b[u N + i][s], zero-padded */
        for (int64_t u = u0; u < u1; ++u) {
            float *dst = (float *)(ws + p->ws_lrb) + u * r * p->Np;
            for (int64_t s = 0; s < r; ++s) {
                for (int64_t i = 0; i < N; ++i) dst[s * p->Np + i] = elem_f32(a->lr_b, p->bf16, (u * N + i) * r + s);
                for (int64_t i = N; i < p->Np; ++i) dst[s * p->Np + i] = 0.0f;
            }
        }
        return;
    }
    if (p->bf16)
        pf_bf16_to_f32_n((float *)(ws + p->ws_lrb) + f0 * r, (const uint16_t *)a->lr_b + f0 * r, (f1 - f0) * r);
    if (u0 == 0) { /* lr_a^T [rank][T] */
        float *dst = (float *)(ws + p->ws_lra);
        for (int64_t t = 0; t < p->T; ++t)
            for (int64_t s = 0; s < r; ++s) dst[s * p->T + t] = elem_f32(a->lr_a, p->bf16, t * a->ld_lr_a + s);
    }
}

/* Phase 0 task: packing tasks first, then (few-row path) the transposes, then the
 * epilogue's operands. */
static void run_phase0(const pf_plan *p, const pf_bsmm_args *a, int64_t task) {
    char *ws = (char *)a->work;
    if (task < p->n_pack) {
        const int64_t j0 = task * PF_PACK_BLOCKS;
        pack_blocks(p, a, j0, j0 + PF_PACK_BLOCKS < p->nnz ? j0 + PF_PACK_BLOCKS : p->nnz);
        return;
    }
    task -= p->n_pack;
    if (task < p->n_tr) { /* columns [c0, c1) of x (FWD) / dy (BWD_X) into act^T [width][T] */
        const int fwd = p->op == PF_OP_FWD;
        const void *src = fwd ? a->x : a->dy;
        const int64_t ld = fwd ? a->ldx : a->ldy, width = fwd ? p->in : p->out, T = p->T;
        const int64_t c0 = task * p->tr_cols, c1 = c0 + p->tr_cols < width ? c0 + p->tr_cols : width;
        float *dst = (float *)(ws + p->ws_act);
        for (int64_t t = 0; t < T; ++t)
            for (int64_t c = c0; c < c1; ++c)
                dst[c * T + t] = elem_f32(src, p->bf16, t * ld + c);
        return;
    }
    task -= p->n_tr;
    if (task < p->n_lr) {
        const int64_t units = p->op == PF_OP_FWD ? p->R : p->C, u0 = task * PF_LR_UNITS;
        prepare_epilogue(p, a, u0, u0 + PF_LR_UNITS < units ? u0 + PF_LR_UNITS : units);
    }
}

/* The bias in fp32 (NULL without one) */
static const float *bias_f32(const pf_plan *p, const pf_bsmm_args *a) {
    if (!a->bias) return NULL;
    return p->bf16 ? (const float *)(const void *)((const char *)a->work + p->ws_bias) : (const float *)a->bias;
}

/* The epilogue of output unit u (features [u N, u N + N)): sets t->Cadd so that its tile
 * adds lr_a lr_b^T + bias to the block products. With a low-rank term the fp32 tile `fn`
 * first computes those sums into `sum` (s ascending from +0, then the bias: the order of
 * pf_bsmm_args), over the same rows and features as t: packed path (t not transposed):
 * A = lr_a rows `lra` (row stride lra_ld), B = lr_b packed for the unit, sum [M][Np];
 * few-row path (t->c_trans): A = lr_b rows `lrb` of the unit, B = lr_a^T, sum [T][M].
 * With only a bias, every row of Cadd is the bias (ldcadd 0). */
static void epilogue(const pf_plan *p, const pf_bsmm_args *a, pf_tile_fn fn, pf_tile *t, int64_t u,
                     const float *lra, int64_t lra_ld, const float *lrb, float *sum) {
    const float *bias = bias_f32(p, a);
    const int64_t N = p->op == PF_OP_FWD ? p->b1 : p->b2;
    if (!p->rank) {
        t->Cadd = bias ? bias + u * N : NULL;
        t->ldcadd = 0;
        return;
    }
    pf_tile e;
    memset(&e, 0, sizeof e);
    e.nseg = 1;
    e.K = p->rank;
    e.M = t->M;
    e.N = t->N;
    e.Cadd = bias ? bias + u * N : NULL; /* ldcadd 0: the bias on every row */
    e.C = sum;
    e.c_trans = t->c_trans;
    e.ass = 1;
    if (!t->c_trans) {
        e.A = lra;
        e.ams = lra_ld;
        e.B = (const float *)(const void *)((const char *)a->work + p->ws_lrb) + u * p->rank * p->Np;
        e.bss = p->Np;
        e.b_padded = 1;
        e.ldc = p->Np;
    } else {
        e.A = lrb + u * N * p->rank;
        e.ams = p->rank;
        e.B = (const float *)(const void *)((const char *)a->work + p->ws_lra);
        e.bss = p->T;
        e.ldc = t->M;
    }
    fn(&e);
    t->Cadd = sum;
    t->ldcadd = e.ldc;
}

/* FWD / BWD_X task with T <= PF_SMALL_T: output units [u0, u1) of group `task`, computed
 * transposed from the blocks as stored. FWD: y^T block-row u = sum_j W_j x^T[cols of j]
 * (A = W_j rows, segments the CSR blocks); BWD_X: dx^T block-column c = sum_j W_j^T
 * dy^T[rows of j] (A = W_j read down its columns, segments the CSC blocks). The tile's
 * N is T and its output is written transposed; each element sums the same products in
 * the same order as the packed path, so the two agree bitwise. */
static void run_rows_small(const pf_plan *p, const pf_bsmm_args *a, pf_tile_fn fn, int64_t task) {
    const pf_bsr_index *ix = a->ix;
    const int fwd = p->op == PF_OP_FWD;
    const int64_t *ptr = fwd ? ix->row_ptr : ix->col_ptr;
    const int64_t units = fwd ? p->R : p->C, b1 = p->b1, b2 = p->b2, T = p->T;
    const int64_t u0 = group_start(ptr, units, p->nG, task), u1 = group_start(ptr, units, p->nG, task + 1);
    const float *W = p->bf16 ? (const float *)((const char *)a->work + p->ws_w) : (const float *)a->w;
    const int64_t es = p->bf16 ? 2 : 4;
    const float *lrb = !p->rank ? NULL : p->bf16 ? (const float *)(const void *)((const char *)a->work + p->ws_lrb)
                                                 : (const float *)a->lr_b;
    float *sum = p->rank ? (float *)(void *)((char *)a->work + p->ws_sum + task * p->sum_bytes) : NULL;
    pf_tile t;
    memset(&t, 0, sizeof t);
    t.B = (const float *)((const char *)a->work + p->ws_act);
    t.bss = T;
    t.bscale = (fwd ? b2 : b1) * T;
    t.K = fwd ? b2 : b1;
    t.M = fwd ? b1 : b2;
    t.N = T;
    t.ldc = a->ldo;
    t.c_bf16 = p->bf16;
    t.pairs = p->bf16;
    t.c_trans = 1;
    if (fwd) { /* A(i, k) = W_j[i][k] */
        t.ams = b2;
        t.ass = 1;
        t.aseg = b1 * b2;
    } else {   /* A(k, i) = W_j[i][k] */
        t.ams = 1;
        t.ass = b2;
        t.ascale = b1 * b2;
    }
    for (int64_t u = u0; u < u1; ++u) {
        t.nseg = ptr[u + 1] - ptr[u];
        t.bidx = (fwd ? ix->col_idx : ix->row_idx) + ptr[u];
        if (fwd) t.A = W + ptr[u] * b1 * b2;
        else { t.A = W; t.aidx = ix->csc_blk + ptr[u]; }
        t.C = (char *)a->out + u * t.M * es;
        epilogue(p, a, fn, &t, u, NULL, 0, lrb, sum);
        fn(&t);
    }
}

/* How an activation panel is copied into a slot: fp32 as is, bf16 widened to fp32, or
 * bf16 as is (pair tiles read adjacent steps as pairs). */
enum { PANEL_F32, PANEL_WIDEN, PANEL_BF16 };

/* rows [s0, s1) of the w columns from col0 of src (row stride ld elements) into dst
 * [s1 - s0][w] (mode: PANEL_*) */
static void pack_panel(void *dst, const void *src, int mode, int64_t ld, int64_t col0,
                       int64_t w, int64_t s0, int64_t s1) {
    for (int64_t k = s0; k < s1; ++k) {
        if (mode == PANEL_WIDEN)
            pf_bf16_to_f32_n((float *)dst + (k - s0) * w, (const uint16_t *)src + k * ld + col0, w);
        else if (mode == PANEL_BF16)
            memcpy((uint16_t *)dst + (k - s0) * w, (const uint16_t *)src + k * ld + col0, (size_t)w * 2);
        else
            memcpy((float *)dst + (k - s0) * w, (const float *)src + k * ld + col0, (size_t)w * 4);
    }
}

/* FWD / BWD_X task: chunks [i nTC / nRT, (i + 1) nTC / nRT) of TC rows (i = task / nG) x
 * output units [u0, u1) of group task % nG. Per chunk, the activation panel of every
 * block-column of x (FWD; block-row of dy for BWD_X) that a block reads is copied into
 * the task's slot, block-major (panel c = [rows][K] at c * TC * K), the first time it is
 * needed (stamp[c] = chunk + 1); the tile of each output unit then reads it as A. On bf16
 * pairs the panels stay bf16 (A pairs: adjacent steps), else fp32; with a_inplace (pairs,
 * too few blocks per column for the copy to pay) A is x / dy as stored. */
static void run_rows(const pf_plan *p, const pf_bsmm_args *a, const pf_kernels *k, int64_t task) {
    const pf_bsr_index *ix = a->ix;
    const int fwd = p->op == PF_OP_FWD;
    const int64_t i = task / p->nG, g = task % p->nG;
    const int64_t *ptr = fwd ? ix->row_ptr : ix->col_ptr;
    const int64_t *idx = fwd ? ix->col_idx : ix->row_idx;
    const int64_t units = fwd ? p->R : p->C;
    const int64_t u0 = group_start(ptr, units, p->nG, g), u1 = group_start(ptr, units, p->nG, g + 1);
    const int64_t K = fwd ? p->b2 : p->b1, N = fwd ? p->b1 : p->b2, TC = p->TC;
    const void *src = fwd ? a->x : a->dy;
    const int64_t ld = fwd ? a->ldx : a->ldy;
    const int mode = p->pairs ? PANEL_BF16 : (p->bf16 ? PANEL_WIDEN : PANEL_F32);
    const int64_t aes = p->pairs ? 2 : 4; /* bytes of an element of A (the slot) and of the pack */
    char *slot = p->slot_bytes ? (char *)a->work + p->ws_slots + task * p->slot_bytes : NULL;
    int64_t *stamp = p->a_inplace ? NULL : (int64_t *)(void *)slot;
    char *panels = stamp ? slot + round_up((fwd ? p->C : p->R) * 8, 64) : NULL;
    for (int64_t c = 0; stamp && c < (fwd ? p->C : p->R); ++c) stamp[c] = 0;
    float *sum = p->rank ? (float *)(void *)(slot + p->slot_sum) : NULL;
    float *lra16 = p->rank && p->bf16 ? (float *)(void *)(slot + p->slot_lra) : NULL;
    const char *pack = (const char *)a->work + p->ws_pack;
    const int64_t es = p->bf16 ? 2 : 4;
    pf_tile t;
    memset(&t, 0, sizeof t);
    t.ams = p->a_inplace ? ld : K;
    t.ass = p->pairs ? 2 : 1;
    t.ascale = p->a_inplace ? K : TC * K;
    t.bss = p->pairs ? 2 * p->Np : p->Np;
    t.bseg = K * p->Np;
    t.b_padded = 1;
    t.K = p->pairs ? K / 2 : K;
    t.N = N;
    t.ldc = a->ldo;
    t.c_bf16 = p->bf16;
    t.pairs = p->bf16 && !p->pairs;
    /* An output larger than a core's L2 is streamed past the caches: it is written exactly
     * once, and plain stores would first read every line (RFO) and evict the operands
     * (measured: up to +45% kernel throughput into an already-touched buffer). Not into a
     * fresh buffer of 32 MiB or more: glibc's malloc maps allocations that large freshly
     * every time (its mmap threshold never rises above 32 MiB), so its pages are not yet
     * faulted in, and streaming into pages the OS has just zeroed measured 10-20% slower. */
    const double out_bytes = (double)p->T * (double)(fwd ? p->out : p->in) * (double)es;
    t.c_stream = out_bytes >= PF_STREAM_BYTES && (!a->out_fresh || out_bytes < PF_STREAM_MAX_BYTES);
    const pf_tile_fn fn = p->pairs ? k->tile_pairs : k->tile;
    const int64_t ch1 = (i + 1) * p->nTC / p->nRT;
    for (int64_t ch = i * p->nTC / p->nRT; ch < ch1; ++ch) {
        const int64_t t0 = ch * TC, t1 = t0 + TC < p->T ? t0 + TC : p->T;
        t.M = t1 - t0;
        t.A = (const float *)(const void *)(p->a_inplace ? (const char *)src + t0 * ld * 2 : panels);
        const float *lra = p->rank && !lra16 ? (const float *)a->lr_a + t0 * a->ld_lr_a : lra16;
        for (int64_t r = t0; lra16 && r < t1; ++r) /* the chunk's lr_a rows widened: [rows][rank] */
            pf_bf16_to_f32_n(lra16 + (r - t0) * p->rank, (const uint16_t *)a->lr_a + r * a->ld_lr_a, p->rank);
        const int64_t lra_ld = lra16 ? p->rank : a->ld_lr_a;
        for (int64_t u = u0; u < u1; ++u) {
            for (int64_t j = ptr[u]; j < ptr[u + 1] && !p->a_inplace; ++j) {
                const int64_t c = idx[j];
                if (stamp[c] == ch + 1) continue;
                pack_panel(panels + c * TC * K * aes, src, mode, ld, c * K, K, t0, t1);
                stamp[c] = ch + 1;
            }
            t.aidx = idx + ptr[u];
            t.nseg = ptr[u + 1] - ptr[u];
            t.B = (const float *)(const void *)(pack + ptr[u] * K * p->Np * aes);
            t.C = (char *)a->out + (t0 * a->ldo + u * N) * es;
            epilogue(p, a, k->tile, &t, u, lra, lra_ld, NULL, sum);
            fn(&t);
        }
    }
}

/* BWD_W: task w owns blocks [w*q + min(w, rem), (w+1)*q + min(w+1, rem)) in CSR order. */
static int64_t task_first_block(const pf_plan *p, int64_t w) {
    const int64_t q = p->nnz / p->n1, rem = p->nnz % p->n1;
    return w * q + (w < rem ? w : rem);
}

/* rows [s0, s1) of the w columns from col0 of bf16 src (row stride ld) into pairs of rows:
 * dst[q][i][h] = src[s0 + 2q + h][col0 + i], a missing last row zero */
static void pack_panel_pairs(uint16_t *dst, const uint16_t *src, int64_t ld, int64_t col0,
                             int64_t w, int64_t s0, int64_t s1) {
    for (int64_t q = 0; s0 + 2 * q < s1; ++q) {
        const uint16_t *r0 = src + (s0 + 2 * q) * ld + col0;
        const uint16_t *r1 = s0 + 2 * q + 1 < s1 ? r0 + ld : NULL;
        uint16_t *d = dst + q * w * 2;
        for (int64_t i = 0; i < w; ++i) {
            d[2 * i] = r0[i];
            d[2 * i + 1] = r1 ? r1[i] : 0;
        }
    }
}

/* Prefetch `bytes` from p into L2. BWD_W reads each block's partial sums (4 KiB at b = 32)
 * and its x panel from L3; hardware prefetchers stop at page boundaries, so without this
 * every row tile of a block starts with a stall on its Cin rows (12% of the tile's samples
 * in a perf profile at 4096 x 4096, density 1/8, T = 4096, AVX2). */
static void prefetch_l2(const void *p, int64_t bytes) {
#if defined(__GNUC__)
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch((const char *)p + o, 0, 2);
#else
    (void)p; (void)bytes;
#endif
}

/* rows [s0, s1) of the w columns from col0 of x / dy into a BWD_W panel: fp32 rows, or
 * bf16 pairs of rows on pairs */
static void pack_bwd_w_panel(const pf_plan *p, void *dst, const void *src, int64_t ld,
                             int64_t col0, int64_t w, int64_t s0, int64_t s1) {
    if (p->pairs) pack_panel_pairs((uint16_t *)dst, (const uint16_t *)src, ld, col0, w, s0, s1);
    else pack_panel(dst, src, p->bf16 ? PANEL_WIDEN : PANEL_F32, ld, col0, w, s0, s1);
}

/* BWD_W: the block (CSR position) at position j of the task order */
static int64_t bwd_w_block(const pf_plan *p, const pf_bsr_index *ix, int64_t j) {
    return p->by_cols ? ix->csc_blk[j] : j;
}

/* BWD_W task w. T is cut into chunks of TW rows (outermost); per chunk the task walks its
 * blocks in CSR order (by_cols: CSC order). Its workspace slot holds the chunk's panels of
 * the other side, block-major: the x panels xp[c] = [rows][b2] (by_cols: the dy panels
 * [rows][b1] of the block-rows), each packed the first time one of the task's blocks needs
 * it in this chunk, and the panel of the current block-row of dy (by_cols: block-column
 * of x; blocks sharing it are adjacent). So every element of x and dy is copied once per
 * task, and the tile kernel reads dense rows from L1 / L2 instead of rows ldx / ldy apart
 * (which alias in L1 sets and in the TLB when the feature sizes are powers of two). Partial
 * sums over the chunks round-trip through fp32 (dw itself for fp32, the workspace for
 * bf16); the last chunk writes dw. Each element sums the same products in the same order
 * in either block order (bitwise equal). */
static void run_bwd_w_task(const pf_plan *p, const pf_bsmm_args *a, const pf_kernels *k, int64_t w) {
    const pf_bsr_index *ix = a->ix;
    const int64_t lo = task_first_block(p, w), hi = task_first_block(p, w + 1);
    if (lo >= hi) return;
    const int64_t T = p->T, b1 = p->b1, b2 = p->b2, TW = p->TW;
    if (T == 0) { /* empty reduction: dw = +0 (all-zero bits in fp32 and bf16) */
        const int64_t es = p->bf16 ? 2 : 4;
        memset((char *)a->out + lo * b1 * b2 * es, 0, (size_t)((hi - lo) * b1 * b2 * es));
        return;
    }
    const int cols = p->by_cols;
    /* the task's units (CSR: block-rows, dy; CSC: block-columns, x) and the other side */
    const int64_t *ptr = cols ? ix->col_ptr : ix->row_ptr, *other = cols ? ix->row_idx : ix->col_idx;
    const int64_t n_other = cols ? p->R : p->C;
    const void *usrc = cols ? a->x : a->dy, *osrc = cols ? a->dy : a->x;
    const int64_t u_ld = cols ? a->ldx : a->ldy, o_ld = cols ? a->ldy : a->ldx;
    const int64_t uw = cols ? b2 : b1, ow = cols ? b1 : b2; /* panel widths */
    char *slot = (char *)a->work + p->ws_slots + w * p->slot_bytes;
    int64_t *stamp = (int64_t *)slot; /* stamp[o]: chunk + 1 whose rows op[o] holds */
    /* panels: fp32 [rows][width], or bf16 pairs of rows [rows / 2][width][2] (pes = 2) */
    const int64_t pes = p->pairs ? 2 : 4, TWp = round_up(TW, 2);
    char *op = slot + round_up(n_other * 8, 64), *up = op + n_other * ow * TWp * pes;
    for (int64_t o = 0; o < n_other; ++o) stamp[o] = 0;
    float *acc = p->bf16 ? (float *)((char *)a->work + p->ws_acc) : (float *)a->out;
    const pf_tile_fn fn = p->pairs ? k->tile_pairs : k->tile;
    pf_tile t;
    memset(&t, 0, sizeof t);
    t.ams = p->pairs ? 2 : 1;
    t.ass = p->pairs ? 2 * b1 : b1;
    t.bss = p->pairs ? 2 * b2 : b2;
    t.pairs = p->bf16 && !p->pairs;
    t.nseg = 1;
    t.M = b1;
    t.N = b2;
    t.ldcin = b2;
    t.ldc = b2;
    const int64_t nchunks = ceil_div(T, TW);
    const int64_t u_first = pf_block_row(ptr, cols ? p->C : p->R, lo);
    for (int64_t ch = 0; ch < nchunks; ++ch) {
        const int64_t s0 = ch * TW, s1 = s0 + TW < T ? s0 + TW : T;
        const int last = s1 == T;
        int64_t u = u_first, packed_u = -1;
        for (int64_t j = lo; j < hi; ++j) {
            while (ptr[u + 1] <= j) ++u;
            const int64_t o = other[j], blk = bwd_w_block(p, ix, j);
            char *oc = op + o * TWp * ow * pes;
            if (u != packed_u) {
                pack_bwd_w_panel(p, up, usrc, u_ld, u * uw, uw, s0, s1);
                packed_u = u;
            }
            if (stamp[o] != ch + 1) {
                pack_bwd_w_panel(p, oc, osrc, o_ld, o * ow, ow, s0, s1);
                stamp[o] = ch + 1;
            }
            t.A = (const float *)(const void *)(cols ? oc : up);
            t.B = (const float *)(const void *)(cols ? up : oc);
            t.K = p->pairs ? ceil_div(s1 - s0, 2) : s1 - s0;
            t.Cin = ch == 0 ? NULL : acc + blk * b1 * b2;
            t.C = last ? (char *)a->out + blk * b1 * b2 * (p->bf16 ? 2 : 4) : (void *)(acc + blk * b1 * b2);
            t.c_bf16 = last && p->bf16;
            if (j + 1 < hi) { /* the next block's operands, from L3, while this one computes */
                const int64_t on = other[j + 1];
                if (ch > 0) prefetch_l2(acc + bwd_w_block(p, ix, j + 1) * b1 * b2, b1 * b2 * 4);
                if (stamp[on] == ch + 1) prefetch_l2(op + on * TWp * ow * pes, round_up(s1 - s0, 2) * ow * pes);
            }
            fn(&t);
        }
    }
}

void pf_bsmm_run(int op, int phase, const pf_bsmm_args *a, int64_t begin, int64_t end) {
    if (a && a->dtype == PF_FLOAT64) {
        const int64_t n = pf_bsmm_f64_num_tasks(op, phase, a);
        if (begin < 0) begin = 0;
        pf_bsmm_f64_run(op, phase, a, begin, end > n ? n : end);
        return;
    }
    pf_plan p;
    if (!make_plan(op, a, &p)) return;
    if (begin < 0) begin = 0;
    if (phase == 0) {
        const int64_t n = p.n_pack + p.n_tr + p.n_lr;
        if (end > n) end = n;
        for (int64_t task = begin; task < end; ++task) run_phase0(&p, a, task);
        return;
    }
    if (phase != 1) return;
    if (end > p.n1) end = p.n1;
    if (begin >= end) return;
    const pf_kernels *k = pf_kernels_pick(a->isa);
    if (op == PF_OP_BWD_W) {
        for (int64_t task = begin; task < end; ++task) run_bwd_w_task(&p, a, k, task);
    } else {
        for (int64_t task = begin; task < end; ++task) {
            if (p.small) run_rows_small(&p, a, p.T < PF_NARROW_N ? k->tile_narrow : k->tile, task);
            else run_rows(&p, a, k, task);
        }
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
        __builtin_ia32_sfence(); /* order the non-temporal stores before the caller's join */
#endif
    }
}

pf_err pf_bsmm_serial(int op, const pf_bsmm_args *a) {
    pf_err e = pf_bsmm_check(op, a);
    if (e) return e;
    if (pf_bsmm_workspace(op, a) > 0 && !a->work)
        return "pf_bsmm: work is NULL but the op needs pf_bsmm_workspace() bytes";
    for (int phase = 0; phase < PF_BSMM_PHASES; ++phase) {
        const int64_t n = pf_bsmm_num_tasks(op, phase, a);
        if (n > 0) pf_bsmm_run(op, phase, a, 0, n);
    }
    return NULL;
}
