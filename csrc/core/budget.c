/*
 * budget.c - the cost model and the budget allocation of SPEC section 3.
 * See the budget section of pixelfly.h for the exact formulas and guarantees.
 */
#include "pixelfly.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Relative margin kept free of every budget so that float rounding in sums can never
 * push the sparsified total above rho times its dense total. */
#define PF_BUDGET_SLACK 1e-9
#define PF_PHI_TOL 1e-9

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

static pf_err check_cm(const pf_cost_model *cm)
{
    if (!cm) return "cost_model must not be NULL";
    if (cm->b1 < 1 || cm->b1 > PF_MAX_GRID) return "b1 must be in [1, PF_MAX_GRID]";
    if (cm->b2 < 1 || cm->b2 > PF_MAX_GRID) return "b2 must be in [1, PF_MAX_GRID]";
    if (!(cm->cost_mem >= 0.0) || !isfinite(cm->cost_mem)) return "cost_mem must be finite and >= 0";
    if (!(cm->cost_flop > 0.0) || !isfinite(cm->cost_flop)) return "cost_flop must be finite and > 0";
    return NULL;
}

static pf_err check_shape(const pf_layer_shape *s)
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
    pf_err e = check_cm(cm);
    if (e) return e;
    if ((e = check_shape(s))) return e;
    if (nnz < 0) return "nnz must be >= 0";
    int64_t gr = cdiv64(s->out_features, cm->b1), gc = cdiv64(s->in_features, cm->b2);
    if (gr <= INT64_MAX / gc && nnz > gr * gc)
        return "nnz must be <= the number of weight blocks ceil(out/b1) * ceil(in/b2)";
    if (rank < 0) return "rank must be >= 0";
    int64_t mn = s->out_features < s->in_features ? s->out_features : s->in_features;
    if (rank > mn) return "rank must be <= min(out_features, in_features)";
    return NULL;
}

/* Unchecked versions (arguments already validated). */
static double cost_dense_u(const pf_cost_model *cm, const pf_layer_shape *s)
{
    double mem = weight_blocks(cm, s) + activation_blocks(cm, s);
    double flop = 2.0 * (double)s->tokens * (double)s->out_features * (double)s->in_features;
    return cm->cost_mem * mem + cm->cost_flop * flop;
}

static double cost_sparse_u(const pf_cost_model *cm, const pf_layer_shape *s, int64_t nnz)
{
    double mem = (double)nnz; /* stored blocks only (SPEC 3): activations are in the dense cost */
    double flop = 2.0 * (double)s->tokens * (double)nnz * (double)cm->b1 * (double)cm->b2;
    return cm->cost_mem * mem + cm->cost_flop * flop;
}

static double cost_lowrank_u(const pf_cost_model *cm, const pf_layer_shape *s, int64_t r)
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
    return cost_dense_u(cm, s);
}

double pf_cost_sparse(const pf_cost_model *cm, const pf_layer_shape *s, int64_t nnz)
{
    if (pf_cost_check(cm, s, nnz, 0)) return NAN;
    return cost_sparse_u(cm, s, nnz);
}

double pf_cost_lowrank(const pf_cost_model *cm, const pf_layer_shape *s, int64_t rank)
{
    if (pf_cost_check(cm, s, 0, rank)) return NAN;
    return cost_lowrank_u(cm, s, rank);
}

/* ------------------------------------------------- flat butterfly nnz */

static int is_pow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

static int64_t log2i(int64_t x) /* x a power of two */
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
    if (m < 1 || m > log2i(n)) return "n_factors must be in [1, log2(butterfly_size)]";
    return NULL;
}

/* Number of grid lines (rows of R) mapped to cell p by p = floor(i * n / R). */
static int64_t per_cell(int64_t R, int64_t n, int64_t p)
{
    return cdiv64((p + 1) * R, n) - cdiv64(p * R, n);
}

/* nnz for every m = 1..log2 n at once into by_m[1..log2 n]. Validated R, C, n. */
static void flat_nnz_all(int64_t R, int64_t C, int64_t n, int64_t *by_m)
{
    int64_t L = log2i(n);
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
        flat_nnz_all(R, C, n, by_m);
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

/* ------------------------------------------------------- allocation */

typedef struct { int64_t n, m, nnz; } cand;

enum { PICK_BEST_LE = 0, PICK_NEXT_GT = 1 };

/* Smallest butterfly size the planner considers: n = 2 has density (m + 1) / n = 1, the
 * dense layout, which costs more than nn.Linear once a rank is added. */
#define PF_PLAN_MIN_N 4

/* Candidates: n a power of two, PF_PLAN_MIN_N <= n <= min(R, C), 1 <= m <= log2 n, and
 * nnz < R * C (a butterfly keeping every block is the dense layout; with n >= 4 the
 * cells with p ^ q = n - 1 are always dropped, so this only guards the invariant).
 * PICK_BEST_LE: the candidate with the largest nnz <= bound (ties: more m, then larger n).
 * PICK_NEXT_GT: the one with the smallest nnz > bound (same ties; bound = -1 gives the
 * sparsest). Returns 0 if none (always so when min(R, C) < PF_PLAN_MIN_N). */
static int pick(int64_t R, int64_t C, int mode, int64_t bound, cand *res)
{
    int64_t by_m[64];
    int found = 0;
    cand best = {0, 0, 0};
    int64_t mn = R < C ? R : C, all = R * C; /* R, C <= PF_MAX_GRID = 2^20 */
    for (int64_t n = PF_PLAN_MIN_N; n <= mn; n *= 2) {
        int64_t L = log2i(n);
        flat_nnz_all(R, C, n, by_m);
        for (int64_t m = 1; m <= L; m++) {
            cand c = {n, m, by_m[m]};
            if (c.nnz >= all) continue;
            int ok = mode == PICK_BEST_LE ? c.nnz <= bound : c.nnz > bound;
            if (!ok) continue;
            int better;
            if (!found) better = 1;
            else if (c.nnz != best.nnz)
                better = mode == PICK_BEST_LE ? c.nnz > best.nnz : c.nnz < best.nnz;
            else if (c.m != best.m) better = c.m > best.m;
            else better = c.n > best.n;
            if (better) { best = c; found = 1; }
        }
    }
    if (found) *res = best;
    return found;
}

typedef struct {
    pf_layer_shape s;
    int64_t R, C, rmax;
    cand cur, next; /* next: the next denser butterfly (density phase) */
    int64_t rank;
    double own, received;
} lstate;

static double lstate_cost(const pf_cost_model *cm, const lstate *L)
{
    return cost_sparse_u(cm, &L->s, L->cur.nnz) + cost_lowrank_u(cm, &L->s, L->rank);
}

/* Largest r in [lo, hi] with lowrank_cost(r) <= cap (lowrank cost is non-decreasing in r);
 * lo - 1 if none. */
static int64_t max_rank_within(const pf_cost_model *cm, const pf_layer_shape *s, int64_t lo,
                               int64_t hi, double cap)
{
    int64_t ans = lo - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (cost_lowrank_u(cm, s, mid) <= cap) { ans = mid; lo = mid + 1; }
        else hi = mid - 1;
    }
    return ans;
}

/* Best butterfly whose sparse cost fits `avail` (a budget already net of margins). */
static int best_sparse_within(const pf_cost_model *cm, const lstate *L, double avail, cand *res)
{
    const pf_layer_shape *s = &L->s;
    double per = cm->cost_mem + cm->cost_flop * 2.0 * (double)s->tokens * (double)cm->b1 * (double)cm->b2;
    double capd = floor(avail / per); /* cost_sparse(nnz) = per * nnz */
    if (!(capd >= 0.0)) return 0;
    double grid = (double)L->R * (double)L->C;
    int64_t cap = capd >= grid ? L->R * L->C : (int64_t)capd;
    for (;;) { /* the float estimate of cap may be off by rounding: verify, step down */
        if (cap < 0 || !pick(L->R, L->C, PICK_BEST_LE, cap, res)) return 0;
        if (cost_sparse_u(cm, s, res->nnz) <= avail) return 1;
        cap = res->nnz - 1;
    }
}

/* Plan one layer on its own budget B. Normal case: the rank takes the largest cost within
 * phi * B, the butterfly the largest nnz within (1 - phi) * B (both net of the margin), so
 * rank and density are non-decreasing in B. Fallback when not even the sparsest butterfly
 * fits (1 - phi) * B: sparsest butterfly, and the largest rank <= the phi rank that fits
 * next to it. Returns 0 if not even rank 0 with the sparsest butterfly fits. */
static int plan_layer(const pf_cost_model *cm, double phi, lstate *L, double B)
{
    double net = B * (1.0 - PF_BUDGET_SLACK);
    cand sparsest, c;
    if (!pick(L->R, L->C, PICK_NEXT_GT, -1, &sparsest)) return 0;
    double min_sparse = cost_sparse_u(cm, &L->s, sparsest.nnz);
    if (!(min_sparse <= net)) return 0;
    int64_t r = max_rank_within(cm, &L->s, 0, L->rmax, phi * net);
    if (r < 0) r = 0;
    if (best_sparse_within(cm, L, (1.0 - phi) * net, &c)) {
        L->cur = c;
        L->rank = r;
        return 1;
    }
    r = max_rank_within(cm, &L->s, 0, r, net - min_sparse);
    L->cur = sparsest;
    L->rank = r < 0 ? 0 : r;
    return 1;
}

/* Minimal binary heap of (key, index). */
typedef struct { double key; int64_t idx; } hent;

static void heap_push(hent *h, int64_t *n, hent e)
{
    int64_t i = (*n)++;
    h[i] = e;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (h[p].key < h[i].key || (h[p].key == h[i].key && h[p].idx <= h[i].idx)) break;
        hent t = h[p]; h[p] = h[i]; h[i] = t;
        i = p;
    }
}

static hent heap_pop(hent *h, int64_t *n)
{
    hent top = h[0];
    h[0] = h[--(*n)];
    int64_t i = 0;
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && (h[l].key < h[m].key || (h[l].key == h[m].key && h[l].idx < h[m].idx))) m = l;
        if (r < *n && (h[r].key < h[m].key || (h[r].key == h[m].key && h[r].idx < h[m].idx))) m = r;
        if (m == i) break;
        hent t = h[m]; h[m] = h[i]; h[i] = t;
        i = m;
    }
    return top;
}

static int cmp_hent(const void *a, const void *b)
{
    const hent *x = a, *y = b;
    if (x->key < y->key) return -1;
    if (x->key > y->key) return 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* Density step of layer i: cost of moving to its next denser butterfly (same rank). */
static int density_step(const pf_cost_model *cm, const lstate *L, cand *next, double *delta)
{
    if (!pick(L->R, L->C, PICK_NEXT_GT, L->cur.nnz, next)) return 0;
    *delta = cost_sparse_u(cm, &L->s, next->nnz) - cost_sparse_u(cm, &L->s, L->cur.nnz);
    return 1;
}

/* Layers of identical (out_features, in_features, tokens) that the pool may upgrade
 * (status SPARSE or OVER_BUDGET after pass 1; equal shapes always share the status).
 * Members are mem[start .. start + count), ascending; first = mem[start]. */
typedef struct { int64_t start, count, first; } pf_group;

typedef struct { int64_t o, i, t, idx; } shape_key;

static int cmp_shape_key(const void *a, const void *b)
{
    const shape_key *x = a, *y = b;
    if (x->o != y->o) return x->o < y->o ? -1 : 1;
    if (x->i != y->i) return x->i < y->i ? -1 : 1;
    if (x->t != y->t) return x->t < y->t ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

static int cmp_group_first(const void *a, const void *b)
{
    const pf_group *x = a, *y = b;
    return (x->first > y->first) - (x->first < y->first);
}

/* Groups ordered by their first member, so ties in the heaps fall to the earlier layer. */
static pf_err make_groups(const pf_layer_shape *layers, const pf_layer_plan *out, int64_t n,
                          pf_group **grp_out, int64_t **mem_out, int64_t *ng_out)
{
    shape_key *key = malloc((size_t)n * sizeof *key);
    int64_t *mem = malloc((size_t)n * sizeof *mem);
    pf_group *grp = malloc((size_t)n * sizeof *grp);
    if (!key || !mem || !grp) { free(key); free(mem); free(grp); return "out of memory"; }
    int64_t nm = 0;
    for (int64_t i = 0; i < n; i++)
        if (out[i].status == PF_PLAN_SPARSE || out[i].status == PF_PLAN_OVER_BUDGET)
            key[nm++] = (shape_key){layers[i].out_features, layers[i].in_features, layers[i].tokens, i};
    qsort(key, (size_t)nm, sizeof *key, cmp_shape_key);
    int64_t ng = 0;
    for (int64_t k = 0; k < nm; k++) {
        mem[k] = key[k].idx;
        if (k == 0 || key[k].o != key[k - 1].o || key[k].i != key[k - 1].i || key[k].t != key[k - 1].t)
            grp[ng++] = (pf_group){k, 0, key[k].idx};
        grp[ng - 1].count++;
    }
    free(key);
    qsort(grp, (size_t)ng, sizeof *grp, cmp_group_first);
    *grp_out = grp;
    *mem_out = mem;
    *ng_out = ng;
    return NULL;
}

pf_err pf_allocate_budget(const pf_layer_shape *layers, int64_t n_layers,
                          const pf_budget_opts *opts, pf_layer_plan *out)
{
    if (!opts) return "opts must not be NULL";
    if (n_layers < 0 || n_layers > PF_MAX_LAYERS) return "n_layers must be in [0, 2^20]";
    if (n_layers > 0 && !layers) return "layers must not be NULL";
    if (n_layers > 0 && !out) return "out must not be NULL";
    if (!(opts->rho > 0.0 && opts->rho <= 1.0)) return "rho must be in (0, 1]";
    if (!(opts->phi >= 0.25 - PF_PHI_TOL && opts->phi <= 1.0 / 3.0 + PF_PHI_TOL))
        return "phi must be in [1/4, 1/3]";
    if (opts->max_rank < 0) return "max_rank must be >= 0 (0 = no cap)";
    const pf_cost_model *cm = &opts->cm;
    pf_err e = check_cm(cm);
    if (e) return e;
    for (int64_t i = 0; i < n_layers; i++) {
        if ((e = check_shape(&layers[i]))) return e;
        if (layers[i].out_features % cm->b1 == 0 && layers[i].in_features % cm->b2 == 0 &&
            (layers[i].out_features / cm->b1 > PF_MAX_GRID || layers[i].in_features / cm->b2 > PF_MAX_GRID))
            return "layers: block grid side (out_features/b1 or in_features/b2) exceeds PF_MAX_GRID";
        if (!isfinite(cost_dense_u(cm, &layers[i])))
            return "layers: dense cost overflows a double (cost_mem or cost_flop too large)";
    }
    if (n_layers == 0) return NULL;

    pf_group *grp = NULL;
    int64_t *mem = NULL;
    lstate *st = calloc((size_t)n_layers, sizeof *st);
    hent *heap = malloc((size_t)n_layers * sizeof *heap);
    if (!st || !heap) { free(st); free(heap); return "out of memory"; }

    const double rho = opts->rho, phi = opts->phi;
    double allowed = 0.0, spent = 0.0; /* over sparsified layers: rho * dense, cost */

    /* Pass 1: statuses and each layer on its own budget. */
    for (int64_t i = 0; i < n_layers; i++) {
        const pf_layer_shape *s = &layers[i];
        pf_layer_plan *p = &out[i];
        lstate *L = &st[i];
        memset(p, 0, sizeof *p);
        L->s = *s;
        p->dense_cost = cost_dense_u(cm, s);
        p->budget = rho * p->dense_cost;
        p->sparse_cost = p->dense_cost;
        p->density = 1.0;
        L->own = p->budget;
        if (s->out_features % cm->b1 || s->in_features % cm->b2) {
            p->status = PF_PLAN_NOT_DIVISIBLE;
            continue;
        }
        L->R = p->R = s->out_features / cm->b1;
        L->C = p->C = s->in_features / cm->b2;
        p->nnz = p->R * p->C;
        cand sp0;
        if (p->R < PF_PLAN_MIN_N || p->C < PF_PLAN_MIN_N || !pick(L->R, L->C, PICK_NEXT_GT, -1, &sp0)) {
            p->status = PF_PLAN_TOO_SMALL; /* every butterfly on this grid is dense */
            continue;
        }
        if (rho == 1.0) { p->status = PF_PLAN_BUDGET_ONE; continue; }
        int64_t mn = s->out_features < s->in_features ? s->out_features : s->in_features;
        L->rmax = (opts->max_rank > 0 && opts->max_rank < mn) ? opts->max_rank : mn;
        if (plan_layer(cm, phi, L, L->own)) {
            p->status = PF_PLAN_SPARSE;
            allowed += L->own;
            spent += lstate_cost(cm, L);
        } else {
            p->status = PF_PLAN_OVER_BUDGET;
        }
    }

    if (opts->redistribute) {
        /* Pool = allowed - spent, always kept above a margin of SLACK * allowed. Layers of
         * identical (out, in, tokens) form a group (their status and pass-1 plan are equal):
         * every upgrade below is bought for the whole group at once, so they stay equal.
         * The group's state lives in its first member and is copied to the others at the end. */
        int64_t ng = 0;
        if ((e = make_groups(layers, out, n_layers, &grp, &mem, &ng))) goto done;
        int64_t nh = 0;
        /* (a) rescue over-budget groups, smallest shortfall (per layer) first. */
        for (int64_t g = 0; g < ng; g++) {
            int64_t i = grp[g].first;
            if (out[i].status != PF_PLAN_OVER_BUDGET) continue;
            lstate *L = &st[i];
            cand sp;
            if (!pick(L->R, L->C, PICK_NEXT_GT, -1, &sp)) continue;
            hent h = {cost_sparse_u(cm, &L->s, sp.nnz) - L->own, g};
            heap[nh++] = h;
        }
        qsort(heap, (size_t)nh, sizeof *heap, cmp_hent);
        for (int64_t k = 0; k < nh; k++) {
            const pf_group *G = &grp[heap[k].idx];
            lstate *L = &st[G->first];
            double cnt = (double)G->count;
            cand sp;
            pick(L->R, L->C, PICK_NEXT_GT, -1, &sp);
            double c = cost_sparse_u(cm, &L->s, sp.nnz);
            double a2 = allowed + cnt * L->own, s2 = spent + cnt * c;
            if (!(s2 <= a2 * (1.0 - PF_BUDGET_SLACK))) continue; /* a smaller group may still fit */
            L->cur = sp;
            L->rank = 0;
            L->received = c > L->own ? c - L->own : 0.0;
            allowed = a2;
            spent = s2;
            out[G->first].status = PF_PLAN_SPARSE;
        }
        /* (b) density: repeatedly the group whose step to its next denser butterfly is
         * smallest relative to the layer's dense cost; a step the pool cannot pay for the
         * whole group drops that group. */
        nh = 0;
        for (int64_t g = 0; g < ng; g++) {
            int64_t i = grp[g].first;
            if (out[i].status != PF_PLAN_SPARSE) continue;
            double d;
            if (density_step(cm, &st[i], &st[i].next, &d)) heap_push(heap, &nh, (hent){d / out[i].dense_cost, g});
        }
        while (nh > 0) {
            hent h = heap_pop(heap, &nh);
            const pf_group *G = &grp[h.idx];
            lstate *L = &st[G->first];
            double d = cost_sparse_u(cm, &L->s, L->next.nnz) - cost_sparse_u(cm, &L->s, L->cur.nnz);
            double dg = (double)G->count * d;
            if (!(spent + dg <= allowed * (1.0 - PF_BUDGET_SLACK))) continue; /* too big: drop it */
            L->cur = L->next;
            L->received += d;
            spent += dg;
            if (density_step(cm, L, &L->next, &d))
                heap_push(heap, &nh, (hent){d / out[G->first].dense_cost, h.idx});
        }
        /* (c) rank: groups in order of their next rank step relative to the layer's dense
         * cost; each takes as many rank steps as the pool (for the whole group) and the
         * phi share allow. */
        nh = 0;
        for (int64_t g = 0; g < ng; g++) {
            int64_t i = grp[g].first;
            lstate *L = &st[i];
            if (out[i].status != PF_PLAN_SPARSE || L->rank >= L->rmax) continue;
            double d = cost_lowrank_u(cm, &L->s, L->rank + 1) - cost_lowrank_u(cm, &L->s, L->rank);
            heap[nh++] = (hent){d / out[i].dense_cost, g};
        }
        qsort(heap, (size_t)nh, sizeof *heap, cmp_hent);
        for (int64_t k = 0; k < nh; k++) {
            const pf_group *G = &grp[heap[k].idx];
            lstate *L = &st[G->first];
            double cnt = (double)G->count;
            double lr0 = cost_lowrank_u(cm, &L->s, L->rank);
            double B = L->own + L->received;
            double pool = allowed * (1.0 - PF_BUDGET_SLACK) - spent;
            if (!(pool > 0.0)) break;
            /* r' fits iff cnt * (lr(r') - lr0) <= pool and lr(r') <= phi * (B + lr(r') - lr0),
             * i.e. lr(r') <= min(lr0 + pool / cnt, phi * (B - lr0) / (1 - phi)). */
            double cap = lr0 + pool / cnt, capphi = phi * (B - lr0) / (1.0 - phi) * (1.0 - 1e-12);
            if (capphi < cap) cap = capphi;
            int64_t r2 = max_rank_within(cm, &L->s, L->rank + 1, L->rmax, cap);
            if (r2 <= L->rank) continue;
            double d = cost_lowrank_u(cm, &L->s, r2) - lr0;
            if (!(spent + cnt * d <= allowed * (1.0 - PF_BUDGET_SLACK))) continue;
            L->rank = r2;
            L->received += d;
            spent += cnt * d;
        }
        /* Hand every group's state to its other members. */
        for (int64_t g = 0; g < ng; g++) {
            const pf_group *G = &grp[g];
            for (int64_t k = 1; k < G->count; k++) {
                int64_t j = mem[G->start + k];
                st[j].cur = st[G->first].cur;
                st[j].rank = st[G->first].rank;
                st[j].received = st[G->first].received;
                out[j].status = out[G->first].status;
            }
        }
    }

    for (int64_t i = 0; i < n_layers; i++) {
        pf_layer_plan *p = &out[i];
        const lstate *L = &st[i];
        if (p->status != PF_PLAN_SPARSE) continue;
        p->butterfly_size = L->cur.n;
        p->n_factors = L->cur.m;
        p->nnz = L->cur.nnz;
        p->rank = L->rank;
        p->density = (double)L->cur.nnz / ((double)L->R * (double)L->C);
        p->budget = L->own + L->received;
        p->sparse_cost = cost_sparse_u(cm, &L->s, L->cur.nnz);
        p->lowrank_cost = cost_lowrank_u(cm, &L->s, L->rank);
        /* received is a sum of cost differences: absorb its rounding so cost <= budget. */
        if (p->budget < p->sparse_cost + p->lowrank_cost) p->budget = p->sparse_cost + p->lowrank_cost;
    }
done:
    free(st);
    free(heap);
    free(grp);
    free(mem);
    return e;
}
