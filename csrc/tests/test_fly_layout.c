/*
 * test_fly_layout.c - pf_fly_config_layout (csrc/core/fly_layout.c), the authors' rule,
 * against an element-level oracle written out here from the rule in pixelfly.h (build the
 * out x in element mask, then pool it to blocks), against pf_flat_butterfly_layout where a
 * cell spans whole blocks, and with bad and extreme arguments (run under ASan + UBSan).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pixelfly.h"

#include "check.h"

static uint64_t ts = 0x9E3779B97F4A7C15ULL;
static uint64_t trand(void) {
    ts ^= ts >> 12; ts ^= ts << 25; ts ^= ts >> 27;
    return ts * 2685821657736338717ULL;
}

static int64_t log2i(int64_t n) { int64_t l = 0; while (((int64_t)1 << l) < n) l++; return l; }

/* Element (a, b) of the authors' pattern, straight from the rule. */
static int elem_keep(int64_t a, int64_t b, int64_t O, int64_t I, int64_t n, int64_t m, int64_t g,
                     int shuffle) {
    if (a < g || b < g) return 1;
    int64_t p = a / (O / n), q = b / (I / n);
    if (shuffle) {
        int64_t groups = n >> m;
        q = (q % groups) * ((int64_t)1 << m) + q / groups;
    }
    int64_t x = p ^ q;
    if (x == 0) return 1;
    for (int64_t s = 0; s < m; s++)
        if (x == ((int64_t)1 << s)) return 1;
    return 0;
}

/* Any-pool the element pattern into b1 x b2 blocks. */
static void oracle(int64_t O, int64_t I, int64_t n, int64_t m, int64_t b1, int64_t b2, int64_t g,
                   int shuffle, uint8_t *lay) {
    int64_t R = O / b1, C = I / b2;
    memset(lay, 0, (size_t)(R * C));
    for (int64_t a = 0; a < O; a++)
        for (int64_t b = 0; b < I; b++)
            if (elem_keep(a, b, O, I, n, m, g, shuffle)) lay[(a / b1) * C + b / b2] = 1;
}

static void test_against_oracle(void) {
    const int64_t feats[] = {8, 16, 24, 32, 48, 64, 96, 128, 192};
    const int64_t blocks[] = {1, 2, 3, 4, 8, 16, 32};
    const int nf = (int)(sizeof feats / sizeof *feats), nb = (int)(sizeof blocks / sizeof *blocks);
    uint8_t *got = malloc(192 * 192), *want = malloc(192 * 192);
    long cases = 0;
    for (int a = 0; a < nf; a++)
        for (int c = 0; c < nf; c++)
            for (int bi = 0; bi < nb; bi++) {
                int64_t O = feats[a], I = feats[c], b1 = blocks[bi], b2 = blocks[(bi + a) % nb];
                if (O % b1 || I % b2) continue;
                for (int64_t n = 2; n <= O && n <= I; n *= 2) {
                    if (O % n || I % n) continue;
                    for (int64_t m = 1; m <= log2i(n); m++)
                        for (int shuffle = 0; shuffle <= 1; shuffle++) {
                            const int64_t gs[] = {0, 1, b1 + 1, (O + I) / 3, 1000};
                            int64_t g = gs[(a + c + bi + m) % 5];
                            pf_err e = pf_fly_config_layout(O, I, n, m, b1, b2, g, shuffle, got);
                            CHECK(e == NULL, "%lldx%lld n=%lld m=%lld: %s", (long long)O, (long long)I,
                                  (long long)n, (long long)m, e);
                            oracle(O, I, n, m, b1, b2, g, shuffle, want);
                            CHECK(memcmp(got, want, (size_t)((O / b1) * (I / b2))) == 0,
                                  "O=%lld I=%lld n=%lld m=%lld b=%lldx%lld g=%lld shuffle=%d",
                                  (long long)O, (long long)I, (long long)n, (long long)m,
                                  (long long)b1, (long long)b2, (long long)g, shuffle);
                            cases++;
                        }
                }
            }
    CHECK(cases > 1000, "only %ld cases", cases);
    free(got);
    free(want);
}

/* Cells spanning whole blocks: the same as the block-level flat butterfly. */
static void test_whole_block_cells(void) {
    uint8_t got[64 * 64], flat[64 * 64];
    for (int64_t R = 2; R <= 64; R *= 2)
        for (int64_t C = 2; C <= 64; C *= 2)
            for (int64_t n = 2; n <= R && n <= C; n *= 2)
                for (int64_t m = 1; m <= log2i(n); m++) {
                    int64_t b1 = 4, b2 = 8;
                    CHECK(pf_fly_config_layout(R * b1, C * b2, n, m, b1, b2, 0, 0, got) == NULL, "fly");
                    CHECK(pf_flat_butterfly_layout(R, C, m, n, flat) == NULL, "flat");
                    CHECK(memcmp(got, flat, (size_t)(R * C)) == 0, "R=%lld C=%lld n=%lld m=%lld",
                          (long long)R, (long long)C, (long long)n, (long long)m);
                }
}

/* Every bad argument is refused with a message naming it, and out is left untouched. */
static void test_errors(void) {
    uint8_t out[64];
    struct { int64_t O, I, n, m, b1, b2, g; int sh; const char *name; } bad[] = {
        {0, 64, 2, 1, 32, 32, 0, 0, "out_features"},
        {64, -1, 2, 1, 32, 32, 0, 0, "in_features"},
        {64, 64, 2, 1, 0, 32, 0, 0, "b1"},
        {64, 64, 2, 1, 32, -5, 0, 0, "b2"},
        {48, 64, 2, 1, 32, 32, 0, 0, "out_features"},
        {64, 48, 2, 1, 32, 32, 0, 0, "in_features"},
        {64, 64, 3, 1, 32, 32, 0, 0, "butterfly_size"},
        {64, 64, 1, 1, 32, 32, 0, 0, "butterfly_size"},
        {64, 64, 128, 1, 32, 32, 0, 0, "butterfly_size"},
        {96, 64, 64, 1, 32, 32, 0, 0, "butterfly_size"},
        {64, 64, 8, 0, 32, 32, 0, 0, "n_factors"},
        {64, 64, 8, 4, 32, 32, 0, 0, "n_factors"},
        {64, 64, 8, 1, 32, 32, -1, 0, "global_size"},
        {64, 64, 8, 1, 32, 32, 0, 2, "shuffle"},
        {INT64_MAX, 64, 8, 1, 1, 32, 0, 0, "out_features"},
        {(int64_t)1 << 40, (int64_t)1 << 40, 8, 1, 1 << 20, 1 << 20, 0, 0, "PF_MAX_CELLS"},
        {64, 64, (int64_t)1 << 21, 1, 32, 32, 0, 0, "butterfly_size"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        memset(out, 0xAB, sizeof out);
        pf_err e = pf_fly_config_layout(bad[k].O, bad[k].I, bad[k].n, bad[k].m, bad[k].b1, bad[k].b2,
                                        bad[k].g, bad[k].sh, out);
        CHECK(e != NULL && strstr(e, bad[k].name) != NULL, "case %zu: want %s, got %s", k, bad[k].name,
              e ? e : "(accepted)");
        CHECK(e == NULL || pf_fly_config_check(bad[k].O, bad[k].I, bad[k].n, bad[k].m, bad[k].b1,
                                               bad[k].b2, bad[k].g, bad[k].sh) == e, "check agrees");
        int untouched = 1;
        for (size_t i = 0; i < sizeof out; i++) untouched &= out[i] == 0xAB;
        CHECK(untouched, "case %zu wrote to out", k);
    }
    CHECK(pf_fly_config_layout(64, 64, 8, 1, 32, 32, 0, 0, NULL) != NULL, "NULL out refused");
    CHECK(pf_fly_config_check(64, 64, 8, 1, 32, 32, 0, 0) == NULL, "valid accepted");
}

/* Random (often invalid) arguments: never a crash or an out-of-bounds write. */
static void test_fuzz(void) {
    uint8_t *out = malloc(256 * 256);
    for (int t = 0; t < 20000; t++) {
        int64_t O = (int64_t)(trand() % 1100) - 10, I = (int64_t)(trand() % 1100) - 10;
        int64_t b1 = (int64_t)(trand() % 40) - 2, b2 = (int64_t)(trand() % 40) - 2;
        int64_t n = (int64_t)1 << (trand() % 12), m = (int64_t)(trand() % 13) - 1;
        int64_t g = (int64_t)(trand() % 300) - 5;
        int sh = (int)(trand() % 3);
        if (trand() % 7 == 0) O = (int64_t)(trand() >> 1);
        if (trand() % 11 == 0) n = (int64_t)(trand() % 100);
        if (b1 > 0 && b2 > 0 && O > 0 && I > 0 && O % b1 == 0 && I % b2 == 0 &&
            (O / b1 > 256 * 256 || (O / b1) * (I / b2) > 256 * 256)) /* I / b2 < 1100 */
            continue; /* a valid grid larger than the buffer */
        pf_err e = pf_fly_config_layout(O, I, n, m, b1, b2, g, sh, out);
        if (e == NULL) CHECK(pf_layout_nnz(out, O / b1, I / b2) >= 1, "a valid layout keeps a block");
    }
    free(out);
}

int main(void) {
    test_against_oracle();
    test_whole_block_cells();
    test_errors();
    test_fuzz();
    printf("test_fly_layout: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail != 0;
}
