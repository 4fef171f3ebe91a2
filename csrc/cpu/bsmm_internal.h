/*
 * bsmm_internal.h - private interface of the block-sparse matmul driver (bsmm.c) and its
 * float64 path (bsmm_f64.c). The fp32 / bf16 kernels are behind kernels.h.
 */
#ifndef PF_BSMM_INTERNAL_H
#define PF_BSMM_INTERNAL_H

#include <stdint.h>

#include "pixelfly.h"

/* The float64 path (bsmm_f64.c): exact loops, same task protocol, no workspace. */
int64_t pf_bsmm_f64_num_tasks(int op, int phase, const pf_bsmm_args *a);
void pf_bsmm_f64_run(int op, int phase, const pf_bsmm_args *a, int64_t begin, int64_t end);

/* Block-row of the block at CSR position j (0 <= j < row_ptr[R]): the r with
 * row_ptr[r] <= j < row_ptr[r + 1] (binary search). */
static inline int64_t pf_block_row(const int64_t *row_ptr, int64_t R, int64_t j) {
    int64_t lo = 0, hi = R;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (row_ptr[mid + 1] <= j) lo = mid + 1; else hi = mid;
    }
    return lo;
}

#endif /* PF_BSMM_INTERNAL_H */
