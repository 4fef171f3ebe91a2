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
 *     CSC order so the blocks of one block-column are contiguous. With bf16 storage the
 *     dense operands (x, dy) are also widened once to fp32 in the workspace.
 *   phase 1 (compute):
 *     FWD / BWD_X: task = (chunk of TC rows of T) x (group of consecutive block-rows /
 *       block-columns, balanced by nnz). For every output block-row the kernel holds an
 *       MR x 32 (AVX-512) / 6 x 16 (AVX2) tile of y in registers across ALL the blocks of
 *       that row, so each output element is written exactly once; output block-rows with
 *       no block are written as zeros.
 *     BWD_W: task = a contiguous range of blocks in CSR order (blocks sharing a block-row
 *       of dy are adjacent). pf_bsmm_run loops T in chunks of 128 rows outermost over its
 *       whole task range; per chunk and block the dy panel (kept while the block-row does
 *       not change) and the x panel are packed into contiguous stack buffers (blocks up to
 *       64 x 64; larger ones are read in place in chunks of 256 rows), then a register tile
 *       of 8 x 32 of dw is reduced over the chunk's rows; partial sums round-trip through
 *       fp32 (dw itself for fp32, the workspace for bf16).
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
#define PF_TC 256           /* rows of T per FWD/BWD_X task chunk (may shrink) */
#endif
#ifndef PF_TCW_IN
#define PF_TCW_IN 256       /* rows of T per BWD_W kernel call (smaller measured slower) */
#endif
#ifndef PF_TCW
#define PF_TCW 256          /* rows of T per BWD_W reduction chunk */
#endif
#ifndef PF_PKW
#define PF_PKW 128          /* rows of T per packed BWD_W chunk (2 panels of 16 KiB at b = 32) */
#endif
#ifndef PF_PKB
#define PF_PKB 64           /* BWD_W packs blocks up to PF_PKB x PF_PKB (panels on the stack) */
#endif
#ifndef PF_STREAM_BYTES
#define PF_STREAM_BYTES (4 << 20) /* FWD / BWD_X outputs at least this large ... */
#endif
#ifndef PF_STREAM_MAX_BYTES
#define PF_STREAM_MAX_BYTES (32 << 20) /* ... and, if freshly allocated, below this (run_rows) */
#endif
#define PF_TASK_FLOPS (1 << 21)
#define PF_MAX_TASKS 256
#define PF_PACK_BLOCKS 32   /* blocks per phase-0 packing task */
#define PF_CONV_ELEMS (1 << 16) /* bf16 -> fp32 elements per phase-0 conversion task */

typedef struct {
    int op, bf16;
    int64_t T, R, C, b1, b2, nnz, in, out;
    /* phase 0 */
    int64_t n_pack, n_convx, n_convdy, convx_rows, convdy_rows;
    /* workspace (bytes offsets) */
    int64_t ws_pack, ws_x, ws_dy, ws_acc, ws_total;
    int64_t Np;               /* padded N of packed blocks (FWD: b1, BWD_X: b2) */
    /* phase 1 */
    int64_t TC, nTC, nG, n1;  /* FWD/BWD_X: T chunk, #chunks, #groups, #tasks */
} pf_plan;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

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

    /* workspace */
    int64_t off = 0;
    if (op != PF_OP_BWD_W) {
        p->Np = round_up(op == PF_OP_FWD ? b1 : b2, 16);
        p->ws_pack = off;
        off += round_up(nnz * (op == PF_OP_FWD ? b2 : b1) * p->Np * 4, 64);
        p->n_pack = T > 0 ? ceil_div(nnz, PF_PACK_BLOCKS) : 0;
    }
    if (p->bf16) {
        const int need_x = op != PF_OP_BWD_X, need_dy = op != PF_OP_FWD;
        if (need_x) {
            p->ws_x = off;
            off += round_up(T * p->in * 4, 64);
            p->convx_rows = p->in > 0 ? clamp64(PF_CONV_ELEMS / p->in, 1, T > 0 ? T : 1) : 1;
            p->n_convx = (p->in > 0 && T > 0) ? ceil_div(T, p->convx_rows) : 0;
        }
        if (need_dy) {
            p->ws_dy = off;
            off += round_up(T * p->out * 4, 64);
            p->convdy_rows = p->out > 0 ? clamp64(PF_CONV_ELEMS / p->out, 1, T > 0 ? T : 1) : 1;
            p->n_convdy = (p->out > 0 && T > 0) ? ceil_div(T, p->convdy_rows) : 0;
        }
        if (op == PF_OP_BWD_W && T > (PF_PKW < PF_TCW_IN ? PF_PKW : PF_TCW_IN)) {
            p->ws_acc = off;
            off += round_up(nnz * b1 * b2 * 4, 64);
        }
    }
    p->ws_total = off;

    /* phase 1 */
    if (op == PF_OP_BWD_W) {
        if (nnz == 0) { p->n1 = 0; return 1; }
        const double work = 2.0 * (double)T * (double)nnz * (double)b1 * (double)b2 +
                            (double)nnz * (double)b1 * (double)b2;
        p->n1 = clamp64((int64_t)(work / PF_TASK_FLOPS), 1, nnz < PF_MAX_TASKS ? nnz : PF_MAX_TASKS);
        return 1;
    }
    const int64_t units = op == PF_OP_FWD ? p->R : p->C; /* output block-rows / block-cols */
    if (T == 0 || units == 0) { p->n1 = 0; return 1; }
    const double work = 2.0 * (double)T * (double)nnz * (double)b1 * (double)b2 +
                        (double)T * (double)(op == PF_OP_FWD ? p->out : p->in);
    const int64_t want = clamp64((int64_t)(work / PF_TASK_FLOPS), 1, PF_MAX_TASKS);
    int64_t TC = PF_TC;
    for (;;) {
        p->TC = TC;
        p->nTC = ceil_div(T, TC);
        p->nG = clamp64(ceil_div(want, p->nTC), 1, units);
        if (p->nTC * p->nG >= want || TC <= 64 || TC >= T * 2) break;
        TC /= 2;
    }
    p->n1 = p->nTC * p->nG;
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
    if (phase == 0) return p.n_pack + p.n_convx + p.n_convdy;
    if (phase == 1) return p.n1;
    return 0;
}

/* rows [r0, r1) of a bf16 [T, width] matrix (row stride ld) into fp32 dst [T][width] */
static void convert_rows(const uint16_t *src, int64_t ld, float *dst, int64_t width,
                         int64_t r0, int64_t r1) {
    for (int64_t t = r0; t < r1; ++t) pf_bf16_to_f32_n(dst + t * width, src + t * ld, width);
}

static float load_elem(const void *base, int bf16, int64_t i) {
    return bf16 ? pf_bf16_to_f32(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

/* Phase 0 packing task: blocks [j0, j1) into fp32 panels of Np (zero-padded) columns. FWD
 * packs in CSR order, transposed: dst[k][i] = w[j][i][k]; BWD_X in CSC order: CSC position
 * j holds dst[i][k] = w[csc_blk[j]][i][k]. */
static void pack_blocks(const pf_plan *p, const pf_bsmm_args *a, int64_t j0, int64_t j1) {
    float *pack = (float *)((char *)a->work + p->ws_pack);
    const int64_t b1 = p->b1, b2 = p->b2, Np = p->Np;
    for (int64_t j = j0; j < j1; ++j) {
        if (p->op == PF_OP_FWD) {
            float *dst = pack + j * b2 * Np;
            const int64_t src = j * b1 * b2;
            for (int64_t k = 0; k < b2; ++k) {
                float *d = dst + k * Np;
                for (int64_t i = 0; i < b1; ++i) d[i] = load_elem(a->w, p->bf16, src + i * b2 + k);
                for (int64_t i = b1; i < Np; ++i) d[i] = 0.0f;
            }
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

/* Phase 0 task: packing tasks first, then bf16 -> fp32 conversion of x, then of dy. */
static void run_phase0(const pf_plan *p, const pf_bsmm_args *a, int64_t task) {
    char *ws = (char *)a->work;
    if (task < p->n_pack) {
        const int64_t j0 = task * PF_PACK_BLOCKS;
        pack_blocks(p, a, j0, j0 + PF_PACK_BLOCKS < p->nnz ? j0 + PF_PACK_BLOCKS : p->nnz);
        return;
    }
    task -= p->n_pack;
    if (task < p->n_convx) {
        const int64_t r0 = task * p->convx_rows;
        const int64_t r1 = r0 + p->convx_rows < p->T ? r0 + p->convx_rows : p->T;
        convert_rows((const uint16_t *)a->x, a->ldx, (float *)(ws + p->ws_x), p->in, r0, r1);
        return;
    }
    task -= p->n_convx;
    if (task < p->n_convdy) {
        const int64_t r0 = task * p->convdy_rows;
        const int64_t r1 = r0 + p->convdy_rows < p->T ? r0 + p->convdy_rows : p->T;
        convert_rows((const uint16_t *)a->dy, a->ldy, (float *)(ws + p->ws_dy), p->out, r0, r1);
    }
}

/* FWD / BWD_X task: T rows [t0, t1) x output units [u0, u1). */
static void run_rows(const pf_plan *p, const pf_bsmm_args *a, pf_tile_fn fn, int64_t task) {
    const pf_bsr_index *ix = a->ix;
    const int fwd = p->op == PF_OP_FWD;
    const int64_t tci = task / p->nG, g = task % p->nG;
    const int64_t t0 = tci * p->TC, t1 = t0 + p->TC < p->T ? t0 + p->TC : p->T;
    const int64_t *ptr = fwd ? ix->row_ptr : ix->col_ptr;
    const int64_t *idx = fwd ? ix->col_idx : ix->row_idx;
    const int64_t units = fwd ? p->R : p->C;
    const int64_t u0 = group_start(ptr, units, p->nG, g), u1 = group_start(ptr, units, p->nG, g + 1);
    const int64_t K = fwd ? p->b2 : p->b1, N = fwd ? p->b1 : p->b2;
    const float *A;
    int64_t lda;
    if (p->bf16) {
        A = (const float *)((const char *)a->work + (fwd ? p->ws_x : p->ws_dy));
        lda = fwd ? p->in : p->out;
    } else {
        A = (const float *)(fwd ? a->x : a->dy);
        lda = fwd ? a->ldx : a->ldy;
    }
    if (!A) lda = 0; /* in (or out) == 0: A is never read */
    const float *pack = (const float *)((const char *)a->work + p->ws_pack);
    const int64_t es = p->bf16 ? 2 : 4;
    pf_tile t;
    memset(&t, 0, sizeof t);
    t.A = A + t0 * lda;
    t.ams = lda;
    t.ass = 1;
    t.ascale = fwd ? p->b2 : p->b1;
    t.bss = p->Np;
    t.bseg = K * p->Np;
    t.b_padded = 1;
    t.K = K;
    t.M = t1 - t0;
    t.N = N;
    t.ldc = a->ldo;
    t.c_bf16 = p->bf16;
    /* An output larger than a core's L2 is streamed past the caches: it is written exactly
     * once, and plain stores would first read every line (RFO) and evict the operands
     * (measured: up to +45% kernel throughput into an already-touched buffer). Not into a
     * fresh buffer of 32 MiB or more: glibc's malloc maps allocations that large freshly
     * every time (its mmap threshold never rises above 32 MiB), so its pages are not yet
     * faulted in, and streaming into pages the OS has just zeroed measured 10-20% slower. */
    const double out_bytes = (double)p->T * (double)(fwd ? p->out : p->in) * (double)es;
    t.c_stream = out_bytes >= PF_STREAM_BYTES && (!a->out_fresh || out_bytes < PF_STREAM_MAX_BYTES);
    for (int64_t u = u0; u < u1; ++u) {
        t.aidx = idx + ptr[u];
        t.nseg = ptr[u + 1] - ptr[u];
        t.B = pack + ptr[u] * K * p->Np;
        t.C = (char *)a->out + (t0 * a->ldo + u * N) * es;
        fn(&t);
    }
}

/* BWD_W: the fp32 operands, where the partial sums go, and the packed panels. */
typedef struct {
    const float *X, *DY;  /* x and dy in fp32: the operands, or their copies (bf16) */
    int64_t ldx, ldy;
    float *acc;           /* fp32 partial sums: dw itself (fp32), the workspace (bf16) */
    int pack;             /* blocks up to PF_PKB x PF_PKB: panels packed into pa, pb */
    float *pa, *pb;       /* dy panel [rows][b1] of block-row packed_r, x panel [rows][b2] */
    int64_t packed_r;
    pf_tile t;            /* the fields every call shares */
} bwd_w_state;

/* First block of BWD_W task w: task w owns [w*q + min(w, rem), (w+1)*q + min(w+1, rem)). */
static int64_t task_first_block(const pf_plan *p, int64_t w) {
    const int64_t q = p->nnz / p->n1, rem = p->nnz % p->n1;
    return w * q + (w < rem ? w : rem);
}

static void bwd_w_init(const pf_plan *p, const pf_bsmm_args *a, bwd_w_state *st) {
    if (p->bf16) {
        st->X = (const float *)((const char *)a->work + p->ws_x);
        st->DY = (const float *)((const char *)a->work + p->ws_dy);
        st->ldx = p->in;
        st->ldy = p->out;
        st->acc = (float *)((char *)a->work + p->ws_acc);
    } else {
        st->X = (const float *)a->x;
        st->DY = (const float *)a->dy;
        st->ldx = a->ldx;
        st->ldy = a->ldy;
        st->acc = (float *)a->out;
    }
    /* Packed blocks: per chunk of PF_PKW rows, the dy panel of the block-row (kept while
     * consecutive blocks share it) and the x panel of the block are copied into contiguous
     * stack buffers, so the kernel reads dense 128-byte rows from L1 instead of rows ldx /
     * ldy apart (which alias in L1 sets and the TLB when the feature sizes are powers of
     * two). Larger blocks are read in place. */
    st->pack = p->b1 <= PF_PKB && p->b2 <= PF_PKB;
    st->packed_r = -1;
    memset(&st->t, 0, sizeof st->t);
    st->t.ams = 1;
    st->t.ass = st->pack ? p->b1 : st->ldy;
    st->t.bss = st->pack ? p->b2 : st->ldx;
    st->t.nseg = 1;
    st->t.M = p->b1;
    st->t.N = p->b2;
    st->t.ldcin = p->b2;
    st->t.ldc = p->b2;
}

/* rows [s0, s1) of the w columns from col0 of src (row stride ld) into dst [s1 - s0][w] */
static void pack_panel(float *dst, const float *src, int64_t ld, int64_t col0, int64_t w,
                       int64_t s0, int64_t s1) {
    for (int64_t k = s0; k < s1; ++k)
        memcpy(dst + (k - s0) * w, src + k * ld + col0, (size_t)w * sizeof(float));
}

/* One kernel call: block j (block-row r, block-col c) reduced over rows [s0, s1) of T, on
 * top of the partial sums of the rows before s0; the last rows write dw itself. */
static void bwd_w_rows(const pf_plan *p, const pf_bsmm_args *a, pf_tile_fn fn, bwd_w_state *st,
                       int64_t j, int64_t r, int64_t s0, int64_t s1) {
    const int64_t b1 = p->b1, b2 = p->b2, c = a->ix->col_idx[j];
    pf_tile *t = &st->t;
    if (st->pack && s1 > s0) {
        if (r != st->packed_r) {
            pack_panel(st->pa, st->DY, st->ldy, r * b1, b1, s0, s1);
            st->packed_r = r;
        }
        pack_panel(st->pb, st->X, st->ldx, c * b2, b2, s0, s1);
        t->A = st->pa;
        t->B = st->pb;
    } else {
        /* T == 0: K = 0, A and B are never read (and may be NULL) */
        t->A = p->T > 0 ? st->DY + s0 * st->ldy + r * b1 : st->DY;
        t->B = p->T > 0 ? st->X + s0 * st->ldx + c * b2 : st->X;
    }
    t->K = s1 - s0;
    t->Cin = s0 == 0 ? NULL : st->acc + j * b1 * b2;
    if (s1 == p->T) {
        t->C = (char *)a->out + j * b1 * b2 * (p->bf16 ? 2 : 4);
        t->c_bf16 = p->bf16;
    } else {
        t->C = st->acc + j * b1 * b2;
        t->c_bf16 = 0;
    }
    fn(t);
}

/* BWD_W tasks [b, e): T in chunks (outermost), then their blocks in CSR order. */
static void run_bwd_w(const pf_plan *p, const pf_bsmm_args *a, pf_tile_fn fn, int64_t b, int64_t e) {
    const pf_bsr_index *ix = a->ix;
    const int64_t lo = task_first_block(p, b), hi = task_first_block(p, e), T = p->T;
    if (lo >= hi) return;
    float pa[PF_PKW * PF_PKB] __attribute__((aligned(64)));
    float pb[PF_PKW * PF_PKB] __attribute__((aligned(64)));
    bwd_w_state st;
    bwd_w_init(p, a, &st);
    st.pa = pa;
    st.pb = pb;
    const int64_t rows = st.pack ? PF_PKW : PF_TCW;
    const int64_t nchunks = T > 0 ? ceil_div(T, rows) : 1;
    const int64_t r_first = pf_block_row(ix->row_ptr, p->R, lo);
    for (int64_t ch = 0; ch < nchunks; ++ch) {
        const int64_t t0 = ch * rows, t1 = t0 + rows < T ? t0 + rows : T;
        int64_t r = r_first;
        st.packed_r = -1;
        for (int64_t j = lo; j < hi; ++j) {
            while (ix->row_ptr[r + 1] <= j) ++r;
            /* sub-chunks of PF_TCW_IN rows (unpacked path): the x / dy rows they touch
             * stay in L1 while every row tile of the block reduces over them; the partial
             * dw block round-trips through L1 */
            for (int64_t s0 = t0; s0 < t1 || s0 == t0; s0 += PF_TCW_IN) {
                const int64_t s1 = s0 + PF_TCW_IN < t1 ? s0 + PF_TCW_IN : t1;
                bwd_w_rows(p, a, fn, &st, j, r, s0, s1);
                if (s1 >= t1) break;
            }
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
        const int64_t n = p.n_pack + p.n_convx + p.n_convdy;
        if (end > n) end = n;
        for (int64_t task = begin; task < end; ++task) run_phase0(&p, a, task);
        return;
    }
    if (phase != 1) return;
    if (end > p.n1) end = p.n1;
    if (begin >= end) return;
    const pf_tile_fn fn = pf_kernels_pick(a->isa)->tile;
    if (op == PF_OP_BWD_W) {
        run_bwd_w(&p, a, fn, begin, end);
    } else {
        for (int64_t task = begin; task < end; ++task) run_rows(&p, a, fn, task);
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
