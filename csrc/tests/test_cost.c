/* Tests of the cost model and the flat butterfly block count (csrc/core/cost.c). Plain C,
 * exits nonzero on failure. The brute-force count from SPEC 1 is test_flat_nnz.h. */
#include "pixelfly.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "test_rng.h"
#include "test_flat_nnz.h"

static void test_cost_formulas(void)
{
    pf_cost_model cm = {3.0, 0.5, 2, 4};
    pf_layer_shape s = {6, 8, 5};
    /* weights 3*2 = 6 blocks, x: ceil(40/8) = 5, y: ceil(30/8) = 4, flops 480 */
    CHECK(pf_cost_dense(&cm, &s) == 3.0 * 15 + 0.5 * 480, "dense %g", pf_cost_dense(&cm, &s));
    /* sparse: stored blocks only (SPEC 3), activations are counted in the dense cost only */
    CHECK(pf_cost_sparse(&cm, &s, 2) == 3.0 * 2 + 0.5 * 160, "sparse %g", pf_cost_sparse(&cm, &s, 2));
    CHECK(pf_cost_sparse(&cm, &s, 6) == 3.0 * 6 + 0.5 * 480, "full sparse %g", pf_cost_sparse(&cm, &s, 6));
    CHECK(pf_cost_sparse(&cm, &s, 6) == pf_cost_dense(&cm, &s) - 3.0 * 9, "full sparse == dense - activations");
    CHECK(pf_cost_sparse(&cm, &s, 0) == 0.0, "nnz 0 costs 0");
    /* U: ceil(18/8) = 3, V: ceil(24/8) = 3 (factors only); flops 2*5*3*14 = 420 */
    CHECK(pf_cost_lowrank(&cm, &s, 3) == 3.0 * 6 + 0.5 * 420, "lowrank %g", pf_cost_lowrank(&cm, &s, 3));
    /* rank 1: U ceil(6/8) = 1, V ceil(8/8) = 1; flops 2*5*1*14 = 140 */
    CHECK(pf_cost_lowrank(&cm, &s, 1) == 3.0 * 2 + 0.5 * 140, "lowrank r=1 %g", pf_cost_lowrank(&cm, &s, 1));
    CHECK(pf_cost_lowrank(&cm, &s, 0) == 0.0, "rank 0 costs 0");
    CHECK(pf_cost_lowrank(&cm, &s, 6) > 0 && isnan(pf_cost_lowrank(&cm, &s, 7)), "rank <= min(out,in)");
    /* non-divisible: partial blocks count whole */
    pf_layer_shape s2 = {7, 9, 1};
    /* weights ceil(7/2)*ceil(9/4) = 4*3 = 12; x ceil(9/8) = 2, y ceil(7/8) = 1; flops 126 */
    CHECK(pf_cost_dense(&cm, &s2) == 3.0 * 15 + 0.5 * 126, "nondiv dense %g", pf_cost_dense(&cm, &s2));
    CHECK(!isnan(pf_cost_sparse(&cm, &s2, 12)) && isnan(pf_cost_sparse(&cm, &s2, 13)), "nnz range nondiv");
    /* all 12 grid blocks: 3*12 + 0.5 * 2*1*12*8 = 36 + 96 */
    CHECK(pf_cost_sparse(&cm, &s2, 12) == 3.0 * 12 + 0.5 * 192, "nondiv full sparse %g", pf_cost_sparse(&cm, &s2, 12));
    /* rank 7 (= min): U ceil(49/8) = 7, V ceil(63/8) = 8; flops 2*1*7*16 = 224 */
    CHECK(pf_cost_lowrank(&cm, &s2, 7) == 3.0 * 15 + 0.5 * 224, "nondiv lowrank %g", pf_cost_lowrank(&cm, &s2, 7));
    /* cost_mem = 0: pure flops */
    pf_cost_model cf = {0.0, 1.0, 32, 32};
    pf_layer_shape g = {3072, 768, 1024};
    CHECK(pf_cost_dense(&cf, &g) == 2.0 * 1024 * 3072 * 768, "flops only");
    /* monotone in nnz and rank */
    pf_cost_model cd = {409600.0, 1.0, 32, 32};
    double prev = -1;
    for (int64_t z = 0; z <= 96 * 24; z += 7) {
        double c = pf_cost_sparse(&cd, &g, z);
        CHECK(c > prev, "sparse monotone at %lld", (long long)z);
        prev = c;
    }
    prev = -1;
    for (int64_t r = 0; r <= 768; r += 5) {
        double c = pf_cost_lowrank(&cd, &g, r);
        CHECK(c > prev, "lowrank monotone at %lld", (long long)r);
        prev = c;
    }
    /* extremes stay finite, never overflow */
    pf_cost_model c1 = {1e6, 1e3, 1, 1};
    pf_layer_shape big = {PF_MAX_FEATURES, PF_MAX_FEATURES, PF_MAX_TOKENS};
    double d = pf_cost_dense(&c1, &big);
    CHECK(isfinite(d) && d > 1e42, "huge dense %g", d);
    CHECK(isfinite(pf_cost_lowrank(&c1, &big, PF_MAX_FEATURES)), "huge lowrank");
    CHECK(isfinite(pf_cost_sparse(&c1, &big, INT64_MAX)), "huge sparse nnz");
}

static void test_cost_errors(void)
{
    pf_cost_model ok = {1.0, 1.0, 4, 4};
    pf_layer_shape s = {16, 16, 8};
    CHECK(pf_cost_check(&ok, &s, 0, 0) == NULL, "valid");
    CHECK(pf_cost_check(NULL, &s, 0, 0) != NULL && isnan(pf_cost_dense(NULL, &s)), "NULL cm");
    CHECK(pf_cost_check(&ok, NULL, 0, 0) != NULL && isnan(pf_cost_sparse(&ok, NULL, 0)), "NULL shape");
    CHECK(isnan(pf_cost_lowrank(NULL, NULL, 1)), "NULL both");
    struct { pf_cost_model cm; pf_layer_shape s; int64_t nnz, rank; const char *word; } bad[] = {
        {{1, 1, 0, 4}, {16, 16, 8}, 0, 0, "b1"},
        {{1, 1, 4, -3}, {16, 16, 8}, 0, 0, "b2"},
        {{1, 1, PF_MAX_GRID + 1, 4}, {16, 16, 8}, 0, 0, "b1"},
        {{-1, 1, 4, 4}, {16, 16, 8}, 0, 0, "cost_mem"},
        {{NAN, 1, 4, 4}, {16, 16, 8}, 0, 0, "cost_mem"},
        {{INFINITY, 1, 4, 4}, {16, 16, 8}, 0, 0, "cost_mem"},
        {{1, 0, 4, 4}, {16, 16, 8}, 0, 0, "cost_flop"},
        {{1, -INFINITY, 4, 4}, {16, 16, 8}, 0, 0, "cost_flop"},
        {{1, NAN, 4, 4}, {16, 16, 8}, 0, 0, "cost_flop"},
        {{1, 1, 4, 4}, {0, 16, 8}, 0, 0, "out_features"},
        {{1, 1, 4, 4}, {INT64_MIN, 16, 8}, 0, 0, "out_features"},
        {{1, 1, 4, 4}, {16, PF_MAX_FEATURES + 1, 8}, 0, 0, "in_features"},
        {{1, 1, 4, 4}, {16, 16, 0}, 0, 0, "tokens"},
        {{1, 1, 4, 4}, {16, 16, INT64_MAX}, 0, 0, "tokens"},
        {{1, 1, 4, 4}, {16, 16, 8}, -1, 0, "nnz"},
        {{1, 1, 4, 4}, {16, 16, 8}, 17, 0, "nnz"},
        {{1, 1, 4, 4}, {16, 16, 8}, 0, -1, "rank"},
        {{1, 1, 4, 4}, {16, 16, 8}, 0, 17, "rank"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        pf_err e = pf_cost_check(&bad[k].cm, &bad[k].s, bad[k].nnz, bad[k].rank);
        CHECK(e && strstr(e, bad[k].word), "case %zu: %s", k, e ? e : "(null)");
        CHECK(isnan(pf_cost_sparse(&bad[k].cm, &bad[k].s, bad[k].nnz)) ||
              isnan(pf_cost_lowrank(&bad[k].cm, &bad[k].s, bad[k].rank)), "case %zu NaN", k);
    }
}

static void test_flat_nnz(void)
{
    /* exhaustive on small grids against the definition */
    for (int64_t R = 1; R <= 24; R++)
        for (int64_t C = 1; C <= 24; C++) {
            int64_t mn = R < C ? R : C;
            for (int64_t n = 2; n <= mn; n *= 2)
                for (int64_t m = 1; (1 << m) <= n; m++) {
                    int64_t got = pf_flat_butterfly_nnz(R, C, m, n), want = brute_nnz(R, C, m, n);
                    if (got != want) CHECK(got == want, "R=%lld C=%lld m=%lld n=%lld: %lld vs %lld",
                                           (long long)R, (long long)C, (long long)m, (long long)n,
                                           (long long)got, (long long)want);
                    else n_pass++;
                }
            if (mn >= 2) {
                int64_t dn = 1;
                while (dn * 2 <= mn) dn *= 2;
                CHECK(pf_flat_butterfly_nnz(R, C, 1, 0) == brute_nnz(R, C, 1, dn), "default n");
            } else {
                CHECK(pf_flat_butterfly_nnz(R, C, 1, 0) == -1, "no butterfly on %lldx%lld", (long long)R, (long long)C);
            }
        }
    /* the layout itself (csrc/core/layout.c) holds exactly that many blocks */
    {
        uint8_t *buf = malloc(200 * 200);
        int cmp = 0;
        for (int t = 0; t < 300 && buf; t++) {
            int64_t R = rint_in(2, 200), C = rint_in(2, 200), mn = R < C ? R : C, n = 2;
            while (n * 2 <= mn && rnd() % 4) n *= 2;
            int64_t L = 0;
            while (((int64_t)1 << L) < n) L++;
            int64_t m = rint_in(1, L);
            if (rnd() % 5 == 0) n = 0, m = 1;
            pf_err e = pf_flat_butterfly_layout(R, C, m, n, buf);
            CHECK(e == NULL, "layout: %s", e ? e : "");
            if (e) continue;
            CHECK(pf_flat_butterfly_nnz(R, C, m, n) == pf_layout_nnz(buf, R, C), "nnz vs layout R=%lld C=%lld m=%lld n=%lld",
                  (long long)R, (long long)C, (long long)m, (long long)n);
            cmp++;
        }
        CHECK(cmp == 300, "compared %d layouts", cmp);
        free(buf);
    }
    /* random larger, non-divisible grids */
    for (int t = 0; t < 60; t++) {
        int64_t R = rint_in(2, 300), C = rint_in(2, 300), mn = R < C ? R : C, n = 2;
        while (n * 2 <= mn && rnd() % 3) n *= 2;
        int64_t L = 0;
        while (((int64_t)1 << L) < n) L++;
        int64_t m = rint_in(1, L);
        CHECK(pf_flat_butterfly_nnz(R, C, m, n) == brute_nnz(R, C, m, n), "R=%lld C=%lld m=%lld n=%lld",
              (long long)R, (long long)C, (long long)m, (long long)n);
    }
    /* square, divisible: (m + 1) * R * C / n; the authors' 16 x 2 config on 96 x 24 */
    CHECK(pf_flat_butterfly_nnz(128, 128, 7, 128) == 8 * 128, "full flat");
    CHECK(pf_flat_butterfly_nnz(96, 24, 2, 16) == 3 * 96 * 24 / 16, "rect");
    CHECK(pf_flat_butterfly_nnz(PF_MAX_GRID, PF_MAX_GRID, 20, 0) == 21 * PF_MAX_GRID, "max grid");
    { /* a large non-divisible grid, counted from per-cell row/column counts built by scanning */
        int64_t R = PF_MAX_GRID - 1, C = PF_MAX_GRID - 3, n = 4, rows[4] = {0}, cols[4] = {0}, want = 0;
        for (int64_t i = 0; i < R; i++) rows[i * n / R]++;
        for (int64_t j = 0; j < C; j++) cols[j * n / C]++;
        for (int64_t p = 0; p < n; p++)
            for (int64_t q = 0; q < n; q++)
                if ((p ^ q) <= 1) want += rows[p] * cols[q];
        CHECK(pf_flat_butterfly_nnz(R, C, 1, n) == want, "large nondiv");
    }
    /* errors */
    struct { int64_t R, C, m, n; const char *word; } bad[] = {
        {0, 8, 1, 2, "R"}, {8, -1, 1, 2, "C"}, {PF_MAX_GRID + 1, 8, 1, 2, "R"},
        {8, 8, 1, 3, "power of two"}, {8, 8, 1, 16, "butterfly_size"}, {8, 8, 1, 1, "butterfly_size"},
        {8, 8, 0, 8, "n_factors"}, {8, 8, 4, 8, "n_factors"}, {8, 8, 1, -8, "butterfly_size"},
        {1, 8, 1, 0, "R and C"}, {INT64_MAX, INT64_MIN, INT64_MAX, INT64_MIN, "R"},
        {8, 8, INT64_MIN, 8, "n_factors"}, {8, 8, 1, INT64_MIN, "butterfly_size"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        pf_err e = pf_flat_butterfly_check(bad[k].R, bad[k].C, bad[k].m, bad[k].n);
        CHECK(e && strstr(e, bad[k].word), "case %zu: %s", k, e ? e : "(null)");
        CHECK(pf_flat_butterfly_nnz(bad[k].R, bad[k].C, bad[k].m, bad[k].n) == -1, "case %zu -1", k);
    }
}
int main(void)
{
    test_cost_formulas();
    test_cost_errors();
    test_flat_nnz();
    printf("test_cost: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail != 0;
}
