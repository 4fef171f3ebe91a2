/*
 * bsmm_f64.c - the float64 path of the block-sparse matmul ops (PF_FLOAT64).
 *
 * Exact double-precision loops with double accumulation, for gradcheck and float64 models.
 * It is not tuned for speed (float64 training is a correctness tool); it shares the task
 * protocol of bsmm.c: phase 0 has no tasks, phase 1 splits the output into disjoint parts:
 *   FWD:   one task per block-row r      (writes y[:, r*b1 : (r+1)*b1], plus the epilogue:
 *          low-rank term and bias, when given, as BWD_X)
 *   BWD_X: one task per block-column c   (writes dx[:, c*b2 : (c+1)*b2])
 *   BWD_W: one task per stored block     (writes dw[blk])
 * Arguments are validated by pf_bsmm_check before any of this runs.
 */
#include "pixelfly.h"
#include "bsmm_internal.h"

int64_t pf_bsmm_f64_num_tasks(int op, int phase, const pf_bsmm_args *a)
{
    if (phase != 1) return 0;
    const pf_bsr_index *ix = a->ix;
    switch (op) {
    case PF_OP_FWD: return ix->R;
    case PF_OP_BWD_X: return ix->C;
    case PF_OP_BWD_W: return ix->nnz;
    default: return 0;
    }
}

/* o[i] += sum_s lr_a[t, s] lr_b[f0 + i, s] + bias[f0 + i] for i < n (the epilogue of the
 * output features [f0, f0 + n) of row t: pf_bsmm_args rank, lr_a, lr_b, bias). */
static void add_epilogue(const pf_bsmm_args *a, double *o, int64_t t, int64_t f0, int64_t n)
{
    const double *bias = (const double *)a->bias, *hb = (const double *)a->lr_b;
    if (!bias && !a->rank) return;
    const double *ha = a->rank ? (const double *)a->lr_a + t * a->ld_lr_a : NULL;
    for (int64_t i = 0; i < n; ++i) {
        double v = 0.0;
        for (int64_t s = 0; s < a->rank; ++s) v += ha[s] * hb[(f0 + i) * a->rank + s];
        o[i] += bias ? v + bias[f0 + i] : v;
    }
}

/* out[t, o0 + i] = sum over the blocks of one block-row (or column) of in[t, ...] * w. */
static void fwd_row(const pf_bsmm_args *a, int64_t r)
{
    const pf_bsr_index *ix = a->ix;
    const double *x = (const double *)a->x, *w = (const double *)a->w;
    double *y = (double *)a->out;
    const int64_t b1 = ix->b1, b2 = ix->b2;
    for (int64_t t = 0; t < a->T; ++t) {
        double *yr = y + t * a->ldo + r * b1;
        for (int64_t i = 0; i < b1; ++i) yr[i] = 0.0;
        for (int64_t p = ix->row_ptr[r]; p < ix->row_ptr[r + 1]; ++p) {
            const double *xr = x + t * a->ldx + ix->col_idx[p] * b2, *blk = w + p * b1 * b2;
            for (int64_t i = 0; i < b1; ++i) {
                double s = 0.0;
                for (int64_t k = 0; k < b2; ++k) s += xr[k] * blk[i * b2 + k];
                yr[i] += s;
            }
        }
        add_epilogue(a, yr, t, r * b1, b1);
    }
}

static void bwd_x_col(const pf_bsmm_args *a, int64_t c)
{
    const pf_bsr_index *ix = a->ix;
    const double *dy = (const double *)a->dy, *w = (const double *)a->w;
    double *dx = (double *)a->out;
    const int64_t b1 = ix->b1, b2 = ix->b2;
    for (int64_t t = 0; t < a->T; ++t) {
        double *dxr = dx + t * a->ldo + c * b2;
        for (int64_t k = 0; k < b2; ++k) dxr[k] = 0.0;
        for (int64_t q = ix->col_ptr[c]; q < ix->col_ptr[c + 1]; ++q) {
            const int64_t blkid = ix->csc_blk[q];
            const double *dyr = dy + t * a->ldy + ix->row_idx[q] * b1, *blk = w + blkid * b1 * b2;
            for (int64_t i = 0; i < b1; ++i)
                for (int64_t k = 0; k < b2; ++k) dxr[k] += dyr[i] * blk[i * b2 + k];
        }
        add_epilogue(a, dxr, t, c * b2, b2);
    }
}

static void bwd_w_block(const pf_bsmm_args *a, int64_t p, int64_t r)
{
    const pf_bsr_index *ix = a->ix;
    const double *x = (const double *)a->x, *dy = (const double *)a->dy;
    const int64_t b1 = ix->b1, b2 = ix->b2, c = ix->col_idx[p];
    double *dw = (double *)a->out + p * b1 * b2;
    for (int64_t e = 0; e < b1 * b2; ++e) dw[e] = 0.0;
    for (int64_t t = 0; t < a->T; ++t) {
        const double *dyr = dy + t * a->ldy + r * b1, *xr = x + t * a->ldx + c * b2;
        for (int64_t i = 0; i < b1; ++i)
            for (int64_t k = 0; k < b2; ++k) dw[i * b2 + k] += dyr[i] * xr[k];
    }
}

void pf_bsmm_f64_run(int op, int phase, const pf_bsmm_args *a, int64_t begin, int64_t end)
{
    if (phase != 1) return;
    const pf_bsr_index *ix = a->ix;
    for (int64_t task = begin; task < end; ++task) {
        if (op == PF_OP_FWD) {
            fwd_row(a, task);
        } else if (op == PF_OP_BWD_X) {
            bwd_x_col(a, task);
        } else if (op == PF_OP_BWD_W) {
            bwd_w_block(a, task, pf_block_row(ix->row_ptr, ix->R, task));
        }
    }
}
