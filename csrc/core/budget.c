/*
 * budget.c - the budget allocation of SPEC section 3 (pf_allocate_budget) over the cost
 * model of cost.c. See the budget section of pixelfly.h for the exact rules and guarantees.
 */
#include "budget_internal.h"
#include "pixelfly.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Relative margin kept free of every budget so that float rounding in sums can never
 * push the sparsified total above rho times its dense total. */
#define PF_BUDGET_SLACK 1e-9
#define PF_PHI_TOL 1e-9

/* ------------------------------------------------------- allocation */

typedef struct { int64_t n, m, nnz; } cand;

enum { PICK_BEST_LE = 0, PICK_NEXT_GT = 1 };

/* Smallest butterfly size the planner considers: PF_PLAN_MIN_BUTTERFLY (pixelfly.h). */
#define PF_PLAN_MIN_N PF_PLAN_MIN_BUTTERFLY

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
        int64_t L = pf_log2i(n);
        pf_flat_nnz_all(R, C, n, by_m);
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
    return pf_cost_sparse_u(cm, &L->s, L->cur.nnz) + pf_cost_lowrank_u(cm, &L->s, L->rank);
}

/* Largest r in [lo, hi] with lowrank_cost(r) <= cap (lowrank cost is non-decreasing in r);
 * lo - 1 if none. */
static int64_t max_rank_within(const pf_cost_model *cm, const pf_layer_shape *s, int64_t lo,
                               int64_t hi, double cap)
{
    int64_t ans = lo - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (pf_cost_lowrank_u(cm, s, mid) <= cap) { ans = mid; lo = mid + 1; }
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
        if (pf_cost_sparse_u(cm, s, res->nnz) <= avail) return 1;
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
    double min_sparse = pf_cost_sparse_u(cm, &L->s, sparsest.nnz);
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
    *delta = pf_cost_sparse_u(cm, &L->s, next->nnz) - pf_cost_sparse_u(cm, &L->s, L->cur.nnz);
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
    pf_err e = pf_cost_model_check(cm);
    if (e) return e;
    for (int64_t i = 0; i < n_layers; i++) {
        if ((e = pf_layer_shape_check(&layers[i]))) return e;
        if (layers[i].out_features % cm->b1 == 0 && layers[i].in_features % cm->b2 == 0 &&
            (layers[i].out_features / cm->b1 > PF_MAX_GRID || layers[i].in_features / cm->b2 > PF_MAX_GRID))
            return "layers: block grid side (out_features/b1 or in_features/b2) exceeds PF_MAX_GRID";
        if (!isfinite(pf_cost_dense_u(cm, &layers[i])))
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
        p->dense_cost = pf_cost_dense_u(cm, s);
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
            hent h = {pf_cost_sparse_u(cm, &L->s, sp.nnz) - L->own, g};
            heap[nh++] = h;
        }
        qsort(heap, (size_t)nh, sizeof *heap, cmp_hent);
        for (int64_t k = 0; k < nh; k++) {
            const pf_group *G = &grp[heap[k].idx];
            lstate *L = &st[G->first];
            double cnt = (double)G->count;
            cand sp;
            pick(L->R, L->C, PICK_NEXT_GT, -1, &sp);
            double c = pf_cost_sparse_u(cm, &L->s, sp.nnz);
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
            double d = pf_cost_sparse_u(cm, &L->s, L->next.nnz) - pf_cost_sparse_u(cm, &L->s, L->cur.nnz);
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
            double d = pf_cost_lowrank_u(cm, &L->s, L->rank + 1) - pf_cost_lowrank_u(cm, &L->s, L->rank);
            heap[nh++] = (hent){d / out[i].dense_cost, g};
        }
        qsort(heap, (size_t)nh, sizeof *heap, cmp_hent);
        for (int64_t k = 0; k < nh; k++) {
            const pf_group *G = &grp[heap[k].idx];
            lstate *L = &st[G->first];
            double cnt = (double)G->count;
            double lr0 = pf_cost_lowrank_u(cm, &L->s, L->rank);
            double B = L->own + L->received;
            double pool = allowed * (1.0 - PF_BUDGET_SLACK) - spent;
            if (!(pool > 0.0)) break;
            /* r' fits iff cnt * (lr(r') - lr0) <= pool and lr(r') <= phi * (B + lr(r') - lr0),
             * i.e. lr(r') <= min(lr0 + pool / cnt, phi * (B - lr0) / (1 - phi)). */
            double cap = lr0 + pool / cnt, capphi = phi * (B - lr0) / (1.0 - phi) * (1.0 - 1e-12);
            if (capphi < cap) cap = capphi;
            int64_t r2 = max_rank_within(cm, &L->s, L->rank + 1, L->rmax, cap);
            if (r2 <= L->rank) continue;
            double d = pf_cost_lowrank_u(cm, &L->s, r2) - lr0;
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
        p->sparse_cost = pf_cost_sparse_u(cm, &L->s, L->cur.nnz);
        p->lowrank_cost = pf_cost_lowrank_u(cm, &L->s, L->rank);
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
