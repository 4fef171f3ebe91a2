/*
 * budget_internal.h - what the budget allocation (budget.c) uses of the cost model
 * (cost.c). Arguments of the *_u functions are validated by the caller.
 */
#ifndef PF_BUDGET_INTERNAL_H
#define PF_BUDGET_INTERNAL_H

#include <stdint.h>

#include "pixelfly.h"

pf_err pf_cost_model_check(const pf_cost_model *cm);
pf_err pf_layer_shape_check(const pf_layer_shape *s);

/* pf_cost_dense / sparse / lowrank without the argument check */
double pf_cost_dense_u(const pf_cost_model *cm, const pf_layer_shape *s);
double pf_cost_sparse_u(const pf_cost_model *cm, const pf_layer_shape *s, int64_t nnz);
double pf_cost_lowrank_u(const pf_cost_model *cm, const pf_layer_shape *s, int64_t r);

/* log2 of a power of two */
int64_t pf_log2i(int64_t x);

/* Flat butterfly nnz on an R x C grid for every m = 1..log2 n at once into
 * by_m[1..log2 n] (R, C, n valid for pf_flat_butterfly_check). */
void pf_flat_nnz_all(int64_t R, int64_t C, int64_t n, int64_t *by_m);

#endif /* PF_BUDGET_INTERNAL_H */
