/*
 * cost.c - the cost model of SPEC section 3 and the closed-form block count of a flat
 * butterfly (the budget allocation that uses them is budget.c). See the budget section of
 * pixelfly.h for the exact formulas.
 */
#include "budget_internal.h"
#include "pixelfly.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ helpers */

static int64_t cdiv64(int64_t a, int64_t b) { return a / b + (a % b != 0); } /* a >= 0, b >= 1 */

/* ceil(a * b / d) as a double, exact whenever a * b fits in int64. a, b >= 0, d >= 1. */
static double ceil_prod_div(int64_t a, int64_t b, int64_t d)
{
    if (b == 0 || a <= INT64_MAX / b) {
        int64_t p = a * b;
        return (double)cdiv64(p, d);
    }
    return ceil((double)a * (double)b / (double)d);
}

pf_err pf_cost_model_check(const pf_cost_model *cm)
{
    if (!cm) return "cost_model must not be NULL";
    if (cm->b1 < 1 || cm->b1 > PF_MAX_GRID) return "b1 must be in [1, PF_MAX_GRID]";
    if (cm->b2 < 1 || cm->b2 > PF_MAX_GRID) return "b2 must be in [1, PF_MAX_GRID]";
    if (!(cm->cost_mem >= 0.0) || !isfinite(cm->cost_mem)) return "cost_mem must be finite and >= 0";
    if (!(cm->cost_flop > 0.0) || !isfinite(cm->cost_flop)) return "cost_flop must be finite and > 0";
    return NULL;
}

pf_err pf_layer_shape_check(const pf_layer_shape *s)
{
    if (!s) return "shape must not be NULL";
    if (s->out_features < 1 || s->out_features > PF_MAX_FEATURES)
        return "out_features must be in [1, 2^40]";
    if (s->in_features < 1 || s->in_features > PF_MAX_FEATURES)
        return "in_features must be in [1, 2^40]";
    if (s->tokens < 1 || s->tokens > PF_MAX_TOKENS) return "tokens must be in [1, 2^50]";
    return NULL;
}

/* ceil(out/b1) * ceil(in/b2) as a double (the tile grid a blocked kernel reads). */
static double weight_blocks(const pf_cost_model *cm, const pf_layer_shape *s)
{
    return (double)cdiv64(s->out_features, cm->b1) * (double)cdiv64(s->in_features, cm->b2);
}

/* x read plus y written: counted in the dense cost only (SPEC 3: a sparse layer counts
 * only its stored blocks and its low-rank factors). */
static double activation_blocks(const pf_cost_model *cm, const pf_layer_shape *s)
{
    int64_t bb = cm->b1 * cm->b2; /* <= 2^40 */
    return ceil_prod_div(s->tokens, s->in_features, bb) + ceil_prod_div(s->tokens, s->out_features, bb);
}

pf_err pf_cost_check(const pf_cost_model *cm, const pf_layer_shape *s, int64_t nnz, int64_t rank)
{
    pf_err e = pf_cost_model_check(cm);
    if (e) return e;
    if ((e = pf_layer_shape_check(s))) return e;
    if (nnz < 0) return "nnz must be >= 0";
    int64_t gr = cdiv64(s->out_features, cm->b1), gc = cdiv64(s->in_features, cm->b2);
    if (gr <= INT64_MAX / gc && nnz > gr * gc)
        return "nnz must be <= the number of weight blocks ceil(out/b1) * ceil(in/b2)";
    if (rank < 0) return "rank must be >= 0";
    int64_t mn = s->out_features < s->in_features ? s->out_features : s->in_features;
    if (rank > mn) return "rank must be <= min(out_features, in_features)";
    return NULL;
}

double pf_cost_dense_u(const pf_cost_model *cm, const pf_layer_shape *s)
{
    double mem = weight_blocks(cm, s) + activation_blocks(cm, s);
    double flop = 2.0 * (double)s->tokens * (double)s->out_features * (double)s->in_features;
    return cm->cost_mem * mem + cm->cost_flop * flop;
}

double pf_cost_sparse_u(const pf_cost_model *cm, const pf_layer_shape *s, int64_t nnz)
{
    double mem = (double)nnz; /* stored blocks only (SPEC 3): activations are in the dense cost */
    double flop = 2.0 * (double)s->tokens * (double)nnz * (double)cm->b1 * (double)cm->b2;
    return cm->cost_mem * mem + cm->cost_flop * flop;
}

double pf_cost_lowrank_u(const pf_cost_model *cm, const pf_layer_shape *s, int64_t r)
{
    if (r == 0) return 0.0;
    int64_t bb = cm->b1 * cm->b2;
    double mem = ceil_prod_div(s->out_features, r, bb) + ceil_prod_div(s->in_features, r, bb); /* U, V */
    double flop = 2.0 * (double)s->tokens * (double)r
                * ((double)s->in_features + (double)s->out_features);
    return cm->cost_mem * mem + cm->cost_flop * flop;
}

double pf_cost_dense(const pf_cost_model *cm, const pf_layer_shape *s)
{
    if (pf_cost_check(cm, s, 0, 0)) return NAN;
    return pf_cost_dense_u(cm, s);
}

double pf_cost_sparse(const pf_cost_model *cm, const pf_layer_shape *s, int64_t nnz)
{
    if (pf_cost_check(cm, s, nnz, 0)) return NAN;
    return pf_cost_sparse_u(cm, s, nnz);
}

double pf_cost_lowrank(const pf_cost_model *cm, const pf_layer_shape *s, int64_t rank)
{
    if (pf_cost_check(cm, s, 0, rank)) return NAN;
    return pf_cost_lowrank_u(cm, s, rank);
}

/* ------------------------------------------------- flat butterfly nnz */

static int is_pow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

int64_t pf_log2i(int64_t x) /* x a power of two */
{
    int64_t k = 0;
    while (((int64_t)1 << k) < x) k++;
    return k;
}

static int64_t default_n(int64_t R, int64_t C) { return pf_default_butterfly_size(R, C); }

pf_err pf_flat_butterfly_check(int64_t R, int64_t C, int64_t m, int64_t n)
{
    if (R < 1 || R > PF_MAX_GRID) return "R must be in [1, PF_MAX_GRID]";
    if (C < 1 || C > PF_MAX_GRID) return "C must be in [1, PF_MAX_GRID]";
    if (n == 0) {
        n = default_n(R, C);
        if (n == 0) return "R and C must both be >= 2 for a butterfly";
    }
    if (!is_pow2(n)) return "butterfly_size must be a power of two";
    if (n < 2 || n > R || n > C) return "butterfly_size must be in [2, min(R, C)]";
    if (m < 1 || m > pf_log2i(n)) return "n_factors must be in [1, log2(butterfly_size)]";
    return NULL;
}

/* Number of grid lines (rows of R) mapped to cell p by p = floor(i * n / R). */
static int64_t per_cell(int64_t R, int64_t n, int64_t p)
{
    return cdiv64((p + 1) * R, n) - cdiv64(p * R, n);
}

/* nnz for every m = 1..log2 n at once into by_m[1..log2 n]. Validated R, C, n. */
void pf_flat_nnz_all(int64_t R, int64_t C, int64_t n, int64_t *by_m)
{
    int64_t L = pf_log2i(n);
    if (R % n == 0 || C % n == 0) {
        /* p -> p ^ d permutes the cells, so each support diagonal holds R*C/n blocks. */
        int64_t per = (R % n == 0) ? (R / n) * C : R * (C / n);
        for (int64_t m = 1; m <= L; m++) by_m[m] = (m + 1) * per;
        return;
    }
    int64_t acc = 0;
    for (int64_t p = 0; p < n; p++) acc += per_cell(R, n, p) * per_cell(C, n, p);
    for (int64_t s = 0; s < L; s++) {
        int64_t d = (int64_t)1 << s;
        for (int64_t p = 0; p < n; p++) acc += per_cell(R, n, p) * per_cell(C, n, p ^ d);
        by_m[s + 1] = acc;
    }
}

int64_t pf_flat_butterfly_nnz(int64_t R, int64_t C, int64_t m, int64_t n)
{
    if (pf_flat_butterfly_check(R, C, m, n)) return -1;
    if (n == 0) n = default_n(R, C);
    int64_t by_m[64];
    if (R % n == 0 || C % n == 0) {
        pf_flat_nnz_all(R, C, n, by_m);
        return by_m[m];
    }
    int64_t acc = 0;
    for (int64_t p = 0; p < n; p++) {
        int64_t rp = per_cell(R, n, p), cs = per_cell(C, n, p);
        for (int64_t s = 0; s < m; s++) cs += per_cell(C, n, p ^ ((int64_t)1 << s));
        acc += rp * cs;
    }
    return acc;
}
