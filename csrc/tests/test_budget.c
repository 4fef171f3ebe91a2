/* Tests of the budget allocation (csrc/core/budget.c). Plain C, exits nonzero on failure. */
#include "pixelfly.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "test_rng.h"
#include "test_flat_nnz.h"

static int close_rel(double a, double b) { return fabs(a - b) <= 1e-12 * fmax(1.0, fmax(fabs(a), fabs(b))); }

/* The 48 linear layers of GPT-2 small (qkv, proj, fc, fc2 per block) at 1024 tokens. */
static void gpt2_small_layers(pf_layer_shape L[48])
{
    const int64_t shp[4][2] = {{2304, 768}, {768, 768}, {3072, 768}, {768, 3072}};
    for (int i = 0; i < 48; i++) {
        L[i].out_features = shp[i % 4][0];
        L[i].in_features = shp[i % 4][1];
        L[i].tokens = 1024;
    }
}

static pf_budget_opts default_opts(double rho)
{
    pf_budget_opts o;
    memset(&o, 0, sizeof o);
    o.rho = rho;
    o.phi = 0.25;
    o.cm.cost_mem = 409600.0;
    o.cm.cost_flop = 1.0;
    o.cm.b1 = o.cm.b2 = 32;
    o.redistribute = 1;
    o.max_rank = 0;
    return o;
}

static void test_alloc_errors(void)
{
    pf_layer_shape L[2] = {{64, 64, 16}, {128, 64, 16}};
    pf_layer_plan P[2];
    pf_budget_opts o = default_opts(0.25);
    CHECK(pf_allocate_budget(L, 2, &o, P) == NULL, "valid");
    CHECK(pf_allocate_budget(L, 0, &o, NULL) == NULL, "zero layers");
    CHECK(pf_allocate_budget(NULL, 0, &o, P) == NULL, "zero layers NULL");
    pf_err e;
#define BAD(call, word) do { e = (call); CHECK(e && strstr(e, word), "%s -> %s", #call, e ? e : "(null)"); } while (0)
    BAD(pf_allocate_budget(L, 2, NULL, P), "opts");
    BAD(pf_allocate_budget(NULL, 2, &o, P), "layers");
    BAD(pf_allocate_budget(L, 2, &o, NULL), "out");
    BAD(pf_allocate_budget(L, -1, &o, P), "n_layers");
    BAD(pf_allocate_budget(L, PF_MAX_LAYERS + 1, &o, P), "n_layers");
    BAD(pf_allocate_budget(L, INT64_MIN, &o, P), "n_layers");
    double rhos[] = {0.0, -0.1, 1.0000001, NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < 6; k++) { pf_budget_opts q = o; q.rho = rhos[k]; BAD(pf_allocate_budget(L, 2, &q, P), "rho must be in (0, 1]"); }
    double phis[] = {0.2, 0.34, NAN, 0.0, 1.0, -0.25};
    for (size_t k = 0; k < 6; k++) { pf_budget_opts q = o; q.phi = phis[k]; BAD(pf_allocate_budget(L, 2, &q, P), "phi must be in [1/4, 1/3]"); }
    { pf_budget_opts q = o; q.phi = 0.25 - 1e-12; CHECK(!pf_allocate_budget(L, 2, &q, P), "phi tolerance low"); }
    { pf_budget_opts q = o; q.phi = 1.0 / 3.0 + 1e-12; CHECK(!pf_allocate_budget(L, 2, &q, P), "phi tolerance high"); }
    { pf_budget_opts q = o; q.max_rank = -1; BAD(pf_allocate_budget(L, 2, &q, P), "max_rank"); }
    { pf_budget_opts q = o; q.cm.b1 = 0; BAD(pf_allocate_budget(L, 2, &q, P), "b1"); }
    { pf_budget_opts q = o; q.cm.b2 = INT64_MIN; BAD(pf_allocate_budget(L, 2, &q, P), "b2"); }
    { pf_budget_opts q = o; q.cm.cost_mem = -1; BAD(pf_allocate_budget(L, 2, &q, P), "cost_mem"); }
    { pf_budget_opts q = o; q.cm.cost_flop = 0; BAD(pf_allocate_budget(L, 2, &q, P), "cost_flop"); }
    { pf_budget_opts q = o; q.cm.cost_flop = INFINITY; BAD(pf_allocate_budget(L, 2, &q, P), "cost_flop"); }
    { pf_budget_opts q = o; q.cm.cost_mem = 1e300; q.cm.cost_flop = 1e300;
      pf_layer_shape H[1] = {{1 << 20, 1 << 20, 1 << 20}};
      BAD(pf_allocate_budget(H, 1, &q, P), "overflow"); }
    pf_layer_shape B1[1] = {{0, 64, 16}}, B2[1] = {{64, -5, 16}}, B3[1] = {{64, 64, 0}},
                   B4[1] = {{64, 64, INT64_MAX}}, B5[1] = {{(int64_t)32 << 30, 64, 1}};
    BAD(pf_allocate_budget(B1, 1, &o, P), "out_features");
    BAD(pf_allocate_budget(B2, 1, &o, P), "in_features");
    BAD(pf_allocate_budget(B3, 1, &o, P), "tokens");
    BAD(pf_allocate_budget(B4, 1, &o, P), "tokens");
    BAD(pf_allocate_budget(B5, 1, &o, P), "PF_MAX_GRID");
#undef BAD
}

/* Properties every plan must have; returns the number of sparsified layers. */
static int check_plan(const pf_layer_shape *L, int64_t n, const pf_budget_opts *o, const pf_layer_plan *P)
{
    const pf_cost_model *cm = &o->cm;
    double allowed = 0, spent = 0;
    int ns = 0;
    for (int64_t i = 0; i < n; i++) {
        const pf_layer_plan *p = &P[i];
        double dense = pf_cost_dense(cm, &L[i]);
        CHECK(p->dense_cost == dense, "dense cost %lld", (long long)i);
        int div = L[i].out_features % cm->b1 == 0 && L[i].in_features % cm->b2 == 0;
        if (!div) { CHECK(p->status == PF_PLAN_NOT_DIVISIBLE, "status nondiv %d", p->status); continue; }
        CHECK(p->R == L[i].out_features / cm->b1 && p->C == L[i].in_features / cm->b2, "grid");
        /* butterflies with n = 2 are dense: the planner needs a 4 x 4 grid */
        if (p->R < 4 || p->C < 4) {
            CHECK(p->status == PF_PLAN_TOO_SMALL && p->nnz == p->R * p->C && p->rank == 0 &&
                  p->density == 1.0 && p->butterfly_size == 0, "too small %d", p->status);
            continue;
        }
        CHECK(p->status != PF_PLAN_TOO_SMALL, "grid %lldx%lld is not too small", (long long)p->R, (long long)p->C);
        if (o->rho == 1.0) { CHECK(p->status == PF_PLAN_BUDGET_ONE, "rho 1 %d", p->status); continue; }
        if (p->status != PF_PLAN_SPARSE) {
            CHECK(p->status == PF_PLAN_OVER_BUDGET, "status %d", p->status);
            CHECK(p->nnz == p->R * p->C && p->rank == 0 && p->density == 1.0 &&
                  p->sparse_cost == dense && p->lowrank_cost == 0, "dense-kept fields");
            /* over budget: even the sparsest costs more than the budget */
            int64_t mn = p->R < p->C ? p->R : p->C, dn = 1;
            while (dn * 2 <= mn) dn *= 2;
            int64_t minnnz = INT64_MAX;
            for (int64_t nn = 4; nn <= mn; nn *= 2) {
                int64_t z = pf_flat_butterfly_nnz(p->R, p->C, 1, nn);
                if (z < minnnz) minnnz = z;
            }
            CHECK(pf_cost_sparse(cm, &L[i], minnnz) > p->budget * (1 - 2e-9), "over budget but sparsest fits");
            continue;
        }
        ns++;
        CHECK(pf_flat_butterfly_check(p->R, p->C, p->n_factors, p->butterfly_size) == NULL, "valid config");
        CHECK(p->butterfly_size >= 4, "planner picked n = %lld (dense layout)", (long long)p->butterfly_size);
        CHECK(p->nnz < p->R * p->C && p->density < 1.0, "sparse plan with every block kept");
        CHECK(p->nnz == pf_flat_butterfly_nnz(p->R, p->C, p->n_factors, p->butterfly_size), "nnz matches");
        CHECK(close_rel(p->density, (double)p->nnz / ((double)p->R * (double)p->C)), "density");
        CHECK(p->sparse_cost == pf_cost_sparse(cm, &L[i], p->nnz), "sparse cost");
        CHECK(p->lowrank_cost == pf_cost_lowrank(cm, &L[i], p->rank), "lowrank cost");
        CHECK(p->sparse_cost + p->lowrank_cost <= p->budget, "cost <= budget (%g > %g)",
              p->sparse_cost + p->lowrank_cost, p->budget);
        CHECK(p->lowrank_cost <= o->phi * p->budget, "phi share");
        CHECK(p->budget >= o->rho * dense, "budget >= own share");
        int64_t rmax = L[i].out_features < L[i].in_features ? L[i].out_features : L[i].in_features;
        if (o->max_rank > 0 && o->max_rank < rmax) rmax = o->max_rank;
        CHECK(p->rank >= 0 && p->rank <= rmax, "rank range");
        if (!o->redistribute) CHECK(p->budget == o->rho * dense, "no redistribution: own budget");
        allowed += o->rho * dense;
        spent += p->sparse_cost + p->lowrank_cost;
    }
    CHECK(spent <= allowed, "sparsified total %.17g > rho * dense %.17g", spent, allowed);
    /* identical (out, in, tokens) -> identical plan, with or without redistribution */
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = i + 1; j < n; j++) {
            if (L[i].out_features != L[j].out_features || L[i].in_features != L[j].in_features ||
                L[i].tokens != L[j].tokens) continue;
            CHECK(P[i].status == P[j].status && P[i].butterfly_size == P[j].butterfly_size &&
                  P[i].n_factors == P[j].n_factors && P[i].rank == P[j].rank && P[i].nnz == P[j].nnz &&
                  P[i].budget == P[j].budget,
                  "identical layers %lld, %lld differ: n %lld/%lld m %lld/%lld r %lld/%lld", (long long)i,
                  (long long)j, (long long)P[i].butterfly_size, (long long)P[j].butterfly_size,
                  (long long)P[i].n_factors, (long long)P[j].n_factors, (long long)P[i].rank, (long long)P[j].rank);
        }
    return ns;
}

static void test_alloc_properties(void)
{
    int total_sparse = 0, total_over = 0;
    for (int t = 0; t < 300; t++) {
        int64_t n = rint_in(0, 12);
        pf_layer_shape L[12];
        pf_layer_plan P[12];
        pf_budget_opts o = default_opts(runif() < 0.05 ? 1.0 : 0.02 + 0.96 * runif());
        o.phi = 0.25 + runif() / 12.0;
        o.redistribute = (int)(rnd() & 1);
        o.cm.b1 = (int64_t[]){1, 4, 16, 32}[rnd() % 4];
        o.cm.b2 = (int64_t[]){1, 8, 16, 32}[rnd() % 4];
        o.cm.cost_mem = (double[]){0.0, 1.0, 1000.0, 409600.0}[rnd() % 4];
        o.cm.cost_flop = 0.5 + runif();
        o.max_rank = rnd() % 3 ? 0 : rint_in(1, 64);
        for (int64_t i = 0; i < n; i++) {
            L[i].out_features = rnd() % 5 ? o.cm.b1 * rint_in(1, 80) : rint_in(1, 3000);
            L[i].in_features = rnd() % 5 ? o.cm.b2 * rint_in(1, 80) : rint_in(1, 3000);
            L[i].tokens = rnd() % 2 ? rint_in(1, 64) : rint_in(1, 1 << 16);
        }
        pf_err e = pf_allocate_budget(L, n, &o, P);
        CHECK(e == NULL, "alloc: %s", e ? e : "");
        if (e) continue;
        total_sparse += check_plan(L, n, &o, P);
        for (int64_t i = 0; i < n; i++) total_over += P[i].status == PF_PLAN_OVER_BUDGET;
    }
    CHECK(total_sparse > 200 && total_over > 0, "random plans exercise both (%d sparse, %d over)",
          total_sparse, total_over);
}

/* Without redistribution, one layer: the rank is the largest fitting phi * budget (unless it
 * had to be lowered) and no denser butterfly fits next to it. Monotone in rho. */
static void test_alloc_single_layer(void)
{
    pf_layer_shape s = {3072, 768, 8192};
    pf_budget_opts o = default_opts(0.25);
    o.redistribute = 0;
    o.cm.cost_mem = 1000.0; /* balance ~0.5 FLOP/byte: memory is nearly free, flops decide */
    int64_t prev_rank = -1;
    double prev_density = -1;
    int n_sparse = 0;
    for (int k = 1; k <= 99; k++) {
        o.rho = k / 100.0;
        pf_layer_plan p;
        CHECK(pf_allocate_budget(&s, 1, &o, &p) == NULL, "alloc");
        check_plan(&s, 1, &o, &p);
        if (p.status != PF_PLAN_SPARSE) { CHECK(prev_rank < 0, "sparse then dense again at rho %g", o.rho); continue; }
        n_sparse++;
        CHECK(p.rank >= prev_rank && p.density >= prev_density, "monotone at rho %g", o.rho);
        prev_rank = p.rank;
        prev_density = p.density;
        double B = p.budget, net = B * (1 - 1e-9);
        int64_t next = INT64_MAX, sparsest = INT64_MAX;
        for (int64_t n = 4; n <= 24; n *= 2)
            for (int64_t m = 1; (1 << m) <= n; m++) {
                int64_t z = pf_flat_butterfly_nnz(96, 24, m, n);
                if (z < sparsest) sparsest = z;
                if (z > p.nnz && z < next) next = z;
                /* every strictly denser config exceeds the sparse share */
                if (z > p.nnz) CHECK(pf_cost_sparse(&o.cm, &s, z) > (1 - o.phi) * net, "denser fits at rho %g", o.rho);
                if (z == p.nnz) CHECK(m <= p.n_factors, "tie prefers more factors");
            }
        double lr1 = pf_cost_lowrank(&o.cm, &s, p.rank + 1);
        /* the rank is the largest within phi * B, or (fallback: sparsest butterfly) the
         * largest that fits next to it */
        CHECK(lr1 > o.phi * net || (p.nnz == sparsest && lr1 + p.sparse_cost > net), "rank maximal at rho %g", o.rho);
        /* close to the budget: the leftover is below one rank step plus one density step */
        double dr = lr1 - p.lowrank_cost;
        double dd = next == INT64_MAX ? 0 : pf_cost_sparse(&o.cm, &s, next) - p.sparse_cost;
        CHECK(B - (p.sparse_cost + p.lowrank_cost) <= dr + dd + 1e-9 * B, "leftover bounded at rho %g", o.rho);
    }
    CHECK(n_sparse > 60, "most rhos sparsify (%d)", n_sparse);
    /* the paper's regime: grid 96 x 24 at a quarter budget uses a multi-block butterfly */
    o.rho = 0.25;
    pf_layer_plan p;
    pf_allocate_budget(&s, 1, &o, &p);
    CHECK(p.status == PF_PLAN_SPARSE && p.rank > 0 && p.butterfly_size < 24, "n=%lld m=%lld r=%lld",
          (long long)p.butterfly_size, (long long)p.n_factors, (long long)p.rank);
}

static void test_alloc_redistribute(void)
{
    /* a list where some layers are over budget alone: the pool rescues or upgrades them,
     * and the total never exceeds rho * dense of the sparsified layers */
    pf_layer_shape L[6] = {{2304, 768, 1024}, {768, 768, 1024}, {3072, 768, 1024},
                           {768, 3072, 1024}, {4096, 4096, 64}, {128, 128, 100000}};
    for (int k = 5; k <= 95; k += 10) {
        pf_budget_opts o = default_opts(k / 100.0);
        pf_layer_plan P0[6], P1[6];
        o.redistribute = 0;
        CHECK(!pf_allocate_budget(L, 6, &o, P0), "a");
        check_plan(L, 6, &o, P0);
        o.redistribute = 1;
        CHECK(!pf_allocate_budget(L, 6, &o, P1), "b");
        check_plan(L, 6, &o, P1);
        double t0 = 0, t1 = 0;
        int s0 = 0, s1 = 0;
        for (int i = 0; i < 6; i++) {
            s0 += P0[i].status == PF_PLAN_SPARSE;
            s1 += P1[i].status == PF_PLAN_SPARSE;
            if (P0[i].status == PF_PLAN_SPARSE) {
                CHECK(P1[i].status == PF_PLAN_SPARSE && P1[i].nnz >= P0[i].nnz, "redistribution never downgrades");
                t0 += P0[i].sparse_cost + P0[i].lowrank_cost;
                t1 += P1[i].sparse_cost + P1[i].lowrank_cost;
            }
        }
        CHECK(s1 >= s0 && t1 >= t0, "redistribution spends leftovers");
    }
}

/* The default A100-like model (cost_mem = 200 FLOP/byte * 2 bytes * 32 * 32): activation
 * traffic is counted in the dense cost only, so at a quarter budget every GPT-2-small layer
 * (T = 1024) is sparsified and the total stays within rho. */
static void test_alloc_gpt2_small(void)
{
    pf_layer_shape L[48];
    pf_layer_plan P[48];
    gpt2_small_layers(L);
    for (int red = 0; red <= 1; red++) {
        pf_budget_opts o = default_opts(0.25);
        o.redistribute = red;
        CHECK(!pf_allocate_budget(L, 48, &o, P), "gpt2");
        CHECK(check_plan(L, 48, &o, P) == 48, "every GPT-2-small layer sparsified at rho 0.25 (redistribute %d)", red);
        double spent = 0, dense = 0;
        for (int i = 0; i < 48; i++) {
            spent += P[i].sparse_cost + P[i].lowrank_cost;
            dense += P[i].dense_cost;
            CHECK(P[i].rank > 0 && P[i].density < 1.0, "layer %d: rank %lld density %g", i,
                  (long long)P[i].rank, P[i].density);
        }
        CHECK(spent <= 0.25 * dense, "gpt2 ratio %g", spent / dense);
    }
}

static void test_small_grid_statuses(void)
{
    pf_layer_shape L[6] = {{100, 64, 8}, {64, 100, 8}, {32, 4096, 8}, {128, 128, 8}, {4096, 4096, 4096},
                           {64, 64, 8}};
    pf_layer_plan P[6];
    pf_budget_opts o = default_opts(1.0);
    CHECK(!pf_allocate_budget(L, 6, &o, P), "rho 1");
    CHECK(P[5].status == PF_PLAN_TOO_SMALL && P[5].R == 2 && P[5].C == 2, "2x2 too small (n = 2 is dense)");
    o.rho = 0.5;
    CHECK(!pf_allocate_budget(L, 6, &o, P), "rho .5");
    CHECK(P[5].status == PF_PLAN_TOO_SMALL && P[5].nnz == 4 && P[5].butterfly_size == 0, "2x2 stays dense");
}

static void test_special_statuses(void)
{
    pf_layer_shape L[5] = {{100, 64, 8}, {64, 100, 8}, {32, 4096, 8}, {128, 128, 8}, {4096, 4096, 4096}};
    pf_layer_plan P[5];
    pf_budget_opts o = default_opts(1.0);
    CHECK(!pf_allocate_budget(L, 5, &o, P), "rho 1");
    CHECK(P[0].status == PF_PLAN_NOT_DIVISIBLE && P[1].status == PF_PLAN_NOT_DIVISIBLE, "nondiv");
    CHECK(P[0].R == 0 && P[0].C == 0 && P[0].nnz == 0 && P[0].sparse_cost == P[0].dense_cost, "nondiv fields");
    CHECK(P[2].status == PF_PLAN_TOO_SMALL && P[2].R == 1 && P[2].C == 128, "too small");
    CHECK(P[3].status == PF_PLAN_BUDGET_ONE && P[4].status == PF_PLAN_BUDGET_ONE, "budget one");
    o.rho = 0.3;
    CHECK(!pf_allocate_budget(L, 5, &o, P), "rho .3");
    CHECK(P[0].status == PF_PLAN_NOT_DIVISIBLE && P[2].status == PF_PLAN_TOO_SMALL, "statuses kept");
    CHECK(P[4].status == PF_PLAN_SPARSE, "big layer sparse %d", P[4].status);
    /* tiny budget: over budget (even the sparsest butterfly exceeds it) */
    o.rho = 1e-6;
    CHECK(!pf_allocate_budget(L, 5, &o, P), "tiny rho");
    CHECK(P[4].status == PF_PLAN_OVER_BUDGET && P[3].status == PF_PLAN_OVER_BUDGET, "over budget");
    /* max_rank caps, cost_mem = 0 (pure flops) is allowed */
    o.rho = 0.5;
    o.max_rank = 3;
    o.cm.cost_mem = 0;
    CHECK(!pf_allocate_budget(L, 5, &o, P), "max_rank");
    CHECK(P[4].status == PF_PLAN_SPARSE && P[4].rank == 3, "rank capped at 3: %lld", (long long)P[4].rank);
}

/* n = 2 butterflies are dense ((m + 1) / n = 1): the planner never picks them, and a grid
 * with min(R, C) < 4 stays dense (PF_PLAN_TOO_SMALL) at every budget. */
static void test_alloc_no_dense_butterfly(void)
{
    /* 256 x 64 with 32 x 32 blocks: grid 8 x 2, where only n = 2 would fit */
    pf_layer_shape L[4] = {{256, 64, 1024}, {96, 256, 1024}, {128, 128, 1024}, {256, 256, 1024}};
    pf_layer_plan P[4];
    int sparse4 = 0;
    for (int k = 1; k <= 100; k++) {
        for (int red = 0; red <= 1; red++) {
            pf_budget_opts o = default_opts(k / 100.0);
            o.redistribute = red;
            o.cm.cost_mem = 1000.0;
            CHECK(!pf_allocate_budget(L, 4, &o, P), "alloc");
            check_plan(L, 4, &o, P);
            CHECK(P[0].status == PF_PLAN_TOO_SMALL && P[0].R == 8 && P[0].C == 2, "8x2 too small at rho %g", o.rho);
            CHECK(P[1].status == PF_PLAN_TOO_SMALL && P[1].R == 3 && P[1].C == 8, "3x8 too small at rho %g", o.rho);
            if (P[2].status == PF_PLAN_SPARSE) {
                CHECK(P[2].butterfly_size == 4 && P[2].nnz < 16, "4x4: n %lld nnz %lld",
                      (long long)P[2].butterfly_size, (long long)P[2].nnz);
                sparse4++;
            }
        }
    }
    CHECK(sparse4 > 50, "a 4x4 grid is sparsified with n = 4 (%d)", sparse4);
    /* every grid up to 12 x 12 (block 1): sparse plans use n >= 4 and keep fewer than R*C blocks */
    for (int64_t R = 1; R <= 12; R++)
        for (int64_t C = 1; C <= 12; C++) {
            pf_layer_shape s = {R, C, 64};
            pf_layer_plan p;
            for (int k = 1; k <= 19; k++) {
                pf_budget_opts o = default_opts(k / 20.0);
                o.cm.b1 = o.cm.b2 = 1;
                o.cm.cost_mem = (k % 3) * 10.0;
                o.redistribute = k & 1;
                CHECK(!pf_allocate_budget(&s, 1, &o, &p), "alloc");
                check_plan(&s, 1, &o, &p);
                CHECK((p.status == PF_PLAN_TOO_SMALL) == (R < 4 || C < 4), "%lldx%lld status %d",
                      (long long)R, (long long)C, p.status);
            }
        }
}

/* Layers of identical (out, in, tokens) get identical plans: the pool upgrades them together. */
static void test_alloc_identical_layers(void)
{
    pf_layer_shape L[48];
    pf_layer_plan P[48];
    gpt2_small_layers(L);
    const double rhos[] = {0.1, 0.25, 0.3, 0.5, 0.75};
    for (int k = 0; k < 5; k++) {
        pf_budget_opts o = default_opts(rhos[k]);
        CHECK(!pf_allocate_budget(L, 48, &o, P), "gpt2");
        check_plan(L, 48, &o, P); /* includes: identical shapes -> identical plans */
        for (int i = 4; i < 48; i++)
            CHECK(P[i].butterfly_size == P[i % 4].butterfly_size && P[i].n_factors == P[i % 4].n_factors &&
                  P[i].rank == P[i % 4].rank, "gpt2 rho %g: layer %d differs from layer %d", rhos[k], i, i % 4);
    }
    /* random plans drawn from a small palette of shapes, so shapes repeat */
    int repeats = 0, upgraded = 0;
    for (int t = 0; t < 300; t++) {
        pf_layer_shape pal[4], Q[24];
        pf_layer_plan R0[24], R1[24];
        pf_budget_opts o = default_opts(0.03 + 0.9 * runif());
        o.phi = 0.25 + runif() / 12.0;
        o.cm.cost_mem = (double[]){0.0, 1000.0, 409600.0}[rnd() % 3];
        o.cm.b1 = o.cm.b2 = (int64_t[]){8, 16, 32}[rnd() % 3];
        o.max_rank = rnd() % 3 ? 0 : rint_in(1, 64);
        int64_t np = rint_in(1, 4), n = rint_in(2, 24);
        for (int64_t i = 0; i < np; i++) {
            pal[i].out_features = o.cm.b1 * rint_in(1, 64);
            pal[i].in_features = o.cm.b2 * rint_in(1, 64);
            pal[i].tokens = rint_in(1, 4096);
        }
        for (int64_t i = 0; i < n; i++) Q[i] = pal[rnd() % (uint64_t)np];
        o.redistribute = 0;
        CHECK(!pf_allocate_budget(Q, n, &o, R0), "alloc");
        check_plan(Q, n, &o, R0);
        o.redistribute = 1;
        CHECK(!pf_allocate_budget(Q, n, &o, R1), "alloc");
        check_plan(Q, n, &o, R1);
        repeats += n > np;
        for (int64_t i = 0; i < n; i++)
            upgraded += R1[i].status == PF_PLAN_SPARSE &&
                        (R0[i].status != PF_PLAN_SPARSE || R1[i].nnz > R0[i].nnz || R1[i].rank > R0[i].rank);
    }
    CHECK(repeats > 200 && upgraded > 100, "identical-layer plans exercised (%d repeats, %d upgraded)",
          repeats, upgraded);
}

/* Random and extreme arguments at every entry point: must not crash (ASan/UBSan watch),
 * and anything accepted must give a consistent, finite answer. */
static void test_fuzz(void)
{
    const int64_t ints[] = {INT64_MIN, -1, 0, 1, 2, 3, 7, 31, 32, 33, 64, 96, 1000, 1024, 3072,
                            PF_MAX_GRID - 1, PF_MAX_GRID, PF_MAX_GRID + 1, PF_MAX_FEATURES,
                            PF_MAX_FEATURES + 1, PF_MAX_TOKENS, INT64_MAX};
    const double dbls[] = {-INFINITY, -1.0, -0.0, 0.0, 1e-300, 1e-9, 0.25, 1.0 / 3.0, 0.5, 1.0,
                           1.5, 409600.0, 1e300, INFINITY, NAN};
    const int NI = sizeof ints / sizeof ints[0], ND = sizeof dbls / sizeof dbls[0];
#define RI() (rnd() % 2 ? ints[rnd() % NI] : (int64_t)rnd())
#define RD() (rnd() % 2 ? dbls[rnd() % ND] : runif() * 2)
    int accepted = 0;
    for (int t = 0; t < 20000; t++) {
        pf_cost_model cm = {RD(), RD(), RI(), RI()};
        pf_layer_shape s = {RI(), RI(), RI()};
        int64_t z = RI(), r = RI();
        if (rnd() % 2) { /* mostly valid: exercise the edges of the accepted ranges */
            cm.b1 = rint_in(0, 64); cm.b2 = rint_in(0, 64); cm.cost_mem = runif() * 1e6; cm.cost_flop = runif() + 1e-3;
            s.out_features = rint_in(0, 5000); s.in_features = rint_in(0, 5000); s.tokens = rint_in(0, 1 << 20);
            z = rint_in(-1, 30000); r = rint_in(-1, 6000);
        }
        double a = pf_cost_dense(&cm, &s), b = pf_cost_sparse(&cm, &s, z), c = pf_cost_lowrank(&cm, &s, r);
        int okd = pf_cost_check(&cm, &s, 0, 0) == NULL;
        CHECK(okd == !isnan(a), "dense NaN iff invalid");
        CHECK((pf_cost_check(&cm, &s, z, 0) == NULL) == !isnan(b), "sparse NaN iff invalid");
        CHECK((pf_cost_check(&cm, &s, 0, r) == NULL) == !isnan(c), "lowrank NaN iff invalid");
        if (okd) { accepted++; CHECK(a >= 0, "dense >= 0"); }
        int64_t R = RI(), C = RI(), m = RI(), n = RI();
        if (rnd() % 2) { R = rint_in(-2, 70); C = rint_in(-2, 70); m = rint_in(-1, 7); n = (int64_t[]){0, 1, 2, 4, 8, 16, 32, 64, 3}[rnd() % 9]; }
        int64_t k = pf_flat_butterfly_nnz(R, C, m, n);
        CHECK((pf_flat_butterfly_check(R, C, m, n) == NULL) == (k >= 0), "nnz -1 iff invalid");
        if (k >= 0 && R <= 70 && C <= 70) {
            int64_t nn = n;
            if (nn == 0) { nn = 1; while (nn * 2 <= (R < C ? R : C)) nn *= 2; }
            CHECK(k == brute_nnz(R, C, m, nn), "fuzz nnz");
        }
    }
    CHECK(accepted > 100, "fuzz reached valid cost arguments (%d)", accepted);
    int planned = 0;
    for (int t = 0; t < 3000; t++) {
        pf_layer_shape L[4];
        pf_layer_plan P[4];
        pf_budget_opts o = default_opts(RD());
        if (rnd() % 2) o.rho = runif();
        if (rnd() % 3 == 0) o.phi = RD();
        if (rnd() % 3 == 0) { o.cm.cost_mem = RD(); o.cm.cost_flop = RD(); }
        if (rnd() % 3 == 0) { o.cm.b1 = RI(); o.cm.b2 = RI(); }
        if (rnd() % 4 == 0) o.max_rank = RI();
        o.redistribute = (int)(rnd() % 2);
        int64_t n = rint_in(0, 4);
        for (int64_t i = 0; i < n; i++) {
            if (rnd() % 2) { L[i].out_features = RI(); L[i].in_features = RI(); L[i].tokens = RI(); }
            else {
                L[i].out_features = rint_in(1, 4096);
                L[i].in_features = rint_in(1, 4096);
                L[i].tokens = rint_in(1, 1 << 20);
            }
            /* keep huge non-divisible grids (slow enumeration) out of the fuzz */
            if (L[i].out_features > (1 << 16) && L[i].out_features % 1024) L[i].out_features = 1024;
            if (L[i].in_features > (1 << 16) && L[i].in_features % 1024) L[i].in_features = 1024;
        }
        pf_err e = pf_allocate_budget(L, n, &o, P);
        if (!e) { planned++; check_plan(L, n, &o, P); }
    }
    CHECK(planned > 300, "fuzz reached valid plans (%d)", planned);
#undef RI
#undef RD
}

int main(void)
{
    test_alloc_errors();
    test_alloc_properties();
    test_alloc_single_layer();
    test_alloc_redistribute();
    test_alloc_gpt2_small();
    test_special_statuses();
    test_small_grid_statuses();
    test_alloc_no_dense_butterfly();
    test_alloc_identical_layers();
    test_fuzz();
    printf("test_budget: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail != 0;
}
