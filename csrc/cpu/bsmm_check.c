/*
 * bsmm_check.c - pf_bsmm_check: every argument of a block-sparse matmul call, in steps
 * (the call itself, the index's sizes, the index, the dense operands).
 */
#include <stdint.h>

#include "kernels.h"
#include "pixelfly.h"

#define LIM_BLOCK ((int64_t)1 << 20)
#define LIM_ELEMS ((int64_t)1 << 60)

static int mul_ok(int64_t a, int64_t b, int64_t lim) { return a == 0 || b <= lim / a; }

static pf_err check_call(int op, const pf_bsmm_args *a) {
    if (!a) return "pf_bsmm: args is NULL";
    if (op != PF_OP_FWD && op != PF_OP_BWD_X && op != PF_OP_BWD_W)
        return "pf_bsmm: op must be PF_OP_FWD, PF_OP_BWD_X or PF_OP_BWD_W";
    if (a->dtype != PF_FLOAT32 && a->dtype != PF_BFLOAT16 && a->dtype != PF_FLOAT64)
        return "pf_bsmm: dtype must be PF_FLOAT32, PF_BFLOAT16 or PF_FLOAT64 on the CPU";
    pf_err e = pf_isa_check(a->isa);
    if (e) return e;
    if (a->T < 0) return "pf_bsmm: T (rows) must be >= 0";
    if (!a->ix) return "pf_bsmm: index ix is NULL";
    return NULL;
}

static pf_err check_sizes(const pf_bsmm_args *a) {
    const pf_bsr_index *ix = a->ix;
    if (ix->b1 < 1 || ix->b2 < 1) return "pf_bsmm: block sizes b1 and b2 must be >= 1";
    if (ix->b1 > LIM_BLOCK || ix->b2 > LIM_BLOCK) return "pf_bsmm: block size too large";
    if (ix->R < 0 || ix->C < 0) return "pf_bsmm: block grid R and C must be >= 0";
    if (ix->R > PF_MAX_GRID || ix->C > PF_MAX_GRID) return "pf_bsmm: block grid R or C too large";
    if (ix->nnz < 0 || ix->nnz > ix->R * ix->C) return "pf_bsmm: nnz must be in [0, R*C]";
    if (!mul_ok(ix->nnz, ix->b1 * ix->b2, LIM_ELEMS / 8)) return "pf_bsmm: nnz*b1*b2 too large";
    const int64_t in = ix->C * ix->b2, out = ix->R * ix->b1;
    if (!mul_ok(a->T, in > out ? in : out, LIM_ELEMS / 8)) return "pf_bsmm: T * features too large";
    return NULL;
}

static pf_err check_index(const pf_bsr_index *ix) {
    pf_err e = pf_csr_check(ix->R, ix->C, ix->nnz, ix->row_ptr, ix->col_idx);
    if (!e)
        e = pf_csc_check(ix->R, ix->C, ix->nnz, ix->row_ptr, ix->col_idx, ix->col_ptr,
                         ix->row_idx, ix->csc_blk, 1);
    return e;
}

/* Messages of one dense operand: row stride too small, T * stride too large, NULL,
 * misaligned. */
static const char *const X_MSG[4] = {
    "pf_bsmm: ldx must be >= in = C*b2", "pf_bsmm: T * ldx too large", "pf_bsmm: x is NULL",
    "pf_bsmm: x is not aligned to its element size"};
static const char *const DY_MSG[4] = {
    "pf_bsmm: ldy must be >= out = R*b1", "pf_bsmm: T * ldy too large", "pf_bsmm: dy is NULL",
    "pf_bsmm: dy is not aligned to its element size"};
static const char *const Y_MSG[4] = {
    "pf_bsmm: ldo must be >= out = R*b1 (y row stride)", "pf_bsmm: T * ldo too large",
    "pf_bsmm: out (y) is NULL", "pf_bsmm: out is not aligned to its element size"};
static const char *const DX_MSG[4] = {
    "pf_bsmm: ldo must be >= in = C*b2 (dx row stride)", "pf_bsmm: T * ldo too large",
    "pf_bsmm: out (dx) is NULL", "pf_bsmm: out is not aligned to its element size"};

/* One dense [T, width] operand with row stride ld and element alignment al. */
static pf_err check_dense(const void *p, int64_t T, int64_t width, int64_t ld, uintptr_t al,
                          const char *const msg[4]) {
    if (ld < width) return msg[0];
    if (!mul_ok(T, ld, LIM_ELEMS / 8)) return msg[1];
    if (T > 0 && width > 0 && !p) return msg[2];
    if ((uintptr_t)p % al) return msg[3];
    return NULL;
}

static pf_err check_operands(int op, const pf_bsmm_args *a) {
    const pf_bsr_index *ix = a->ix;
    const int64_t in = ix->C * ix->b2, out = ix->R * ix->b1, T = a->T, nnz = ix->nnz;
    const uintptr_t al = a->dtype == PF_BFLOAT16 ? 2 : (a->dtype == PF_FLOAT64 ? 8 : 4);
    pf_err e = NULL;
    if (op != PF_OP_BWD_X && (e = check_dense(a->x, T, in, a->ldx, al, X_MSG))) return e;
    if (op != PF_OP_FWD && (e = check_dense(a->dy, T, out, a->ldy, al, DY_MSG))) return e;
    if (op != PF_OP_BWD_W) {
        if (nnz > 0 && !a->w) return "pf_bsmm: w (blocks) is NULL";
        if ((uintptr_t)a->w % al) return "pf_bsmm: w is not aligned to its element size";
    }
    if (op == PF_OP_FWD) return check_dense(a->out, T, out, a->ldo, al, Y_MSG);
    if (op == PF_OP_BWD_X) return check_dense(a->out, T, in, a->ldo, al, DX_MSG);
    if (nnz > 0 && !a->out) return "pf_bsmm: out (dw) is NULL";
    if ((uintptr_t)a->out % al) return "pf_bsmm: out is not aligned to its element size";
    return NULL;
}

static const char *const LR_MSG[4] = {
    "pf_bsmm: ld_lr_a must be >= rank", "pf_bsmm: T * ld_lr_a too large", "pf_bsmm: lr_a is NULL",
    "pf_bsmm: lr_a is not aligned to its element size"};

/* The low-rank term and the bias (FWD / BWD_X only). */
static pf_err check_epilogue(int op, const pf_bsmm_args *a) {
    if (op == PF_OP_BWD_W)
        return a->rank || a->lr_a || a->lr_b || a->bias ? "pf_bsmm: rank, lr_a, lr_b and bias are for FWD / BWD_X only" : NULL;
    const pf_bsr_index *ix = a->ix;
    const int64_t width = op == PF_OP_FWD ? ix->R * ix->b1 : ix->C * ix->b2;
    const uintptr_t al = a->dtype == PF_BFLOAT16 ? 2 : (a->dtype == PF_FLOAT64 ? 8 : 4);
    if ((uintptr_t)a->bias % al) return "pf_bsmm: bias is not aligned to its element size";
    if (a->rank < 0) return "pf_bsmm: rank must be >= 0";
    if (a->rank == 0) return NULL;
    if (a->rank > LIM_BLOCK) return "pf_bsmm: rank too large";
    if (!mul_ok(width, a->rank, LIM_ELEMS / 8)) return "pf_bsmm: rank * features too large";
    pf_err e = check_dense(a->lr_a, a->T, a->rank, a->ld_lr_a, al, LR_MSG);
    if (e) return e;
    if (width > 0 && !a->lr_b) return "pf_bsmm: lr_b is NULL";
    if ((uintptr_t)a->lr_b % al) return "pf_bsmm: lr_b is not aligned to its element size";
    return NULL;
}

pf_err pf_bsmm_check(int op, const pf_bsmm_args *a) {
    pf_err e = check_call(op, a);
    if (!e) e = check_sizes(a);
    if (!e) e = check_index(a->ix);
    if (!e) e = check_operands(op, a);
    if (!e) e = check_epilogue(op, a);
    return e;
}
