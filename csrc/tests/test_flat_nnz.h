/* The flat butterfly's block count by brute force from its definition (SPEC 1), shared
 * by test_cost.c and test_budget.c. */
#ifndef PIXELFLY_TESTS_FLAT_NNZ_H
#define PIXELFLY_TESTS_FLAT_NNZ_H

#include <stdint.h>

/* Brute-force flat butterfly nnz from the definition (SPEC 1). */
static inline int64_t brute_nnz(int64_t R, int64_t C, int64_t m, int64_t n)
{
    int64_t cnt = 0;
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) {
            int64_t x = (i * n / R) ^ (j * n / C);
            int keep = x == 0;
            for (int64_t s = 0; s < m; s++) keep |= x == ((int64_t)1 << s);
            cnt += keep;
        }
    return cnt;
}

#endif
