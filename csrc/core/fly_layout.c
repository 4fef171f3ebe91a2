/*
 * fly_layout.c - the flat block butterfly layout as the authors' release builds it
 * (Dao et al.'s `fly` code, FlatBlockButterflySparsityConfig): the butterfly pattern is
 * laid over *elements*, each of its n x n cells stretched over (out/n) x (in/n) elements,
 * then every b1 x b2 block holding at least one kept element is kept ("any"-pooling).
 * When a cell spans whole blocks this is pf_flat_butterfly_layout; when it does not (their
 * GPT-2 / ViT configs: n = 16 on 768 features gives cells of 48 elements, blocks of 32), a
 * cell straddles blocks and the pooled layout is denser than (m + 1) / n.
 *
 * The rule is written out in pixelfly.h. The layout is built cell by cell: every kept
 * cell marks the rectangle of blocks its elements touch, so no element mask is formed.
 */
#include "pixelfly.h"

#include <string.h>

static int is_pow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

/* features >= 1 already checked; *grid = features / b. */
static pf_err check_features(int64_t features, int64_t b, const char *bad_b, const char *not_mult,
                             const char *too_many, int64_t *grid) {
    if (b < 1 || b > PF_MAX_GRID) return bad_b;
    if (features % b != 0) return not_mult;
    if (features / b > PF_MAX_GRID) return too_many;
    *grid = features / b;
    return NULL;
}

/* Validate everything; on success *R, *C are the block grid. */
static pf_err check_args(int64_t out_f, int64_t in_f, int64_t n, int64_t m, int64_t b1, int64_t b2,
                         int64_t global_size, int shuffle, int64_t *R, int64_t *C) {
    if (out_f < 1) return "out_features must be >= 1";
    if (in_f < 1) return "in_features must be >= 1";
    pf_err e = check_features(out_f, b1, "block b1 must be in [1, PF_MAX_GRID (2^20)]",
                              "out_features must be a multiple of the block size b1",
                              "out_features / b1 must be <= PF_MAX_GRID (2^20)", R);
    if (e) return e;
    e = check_features(in_f, b2, "block b2 must be in [1, PF_MAX_GRID (2^20)]",
                       "in_features must be a multiple of the block size b2",
                       "in_features / b2 must be <= PF_MAX_GRID (2^20)", C);
    if (e) return e;
    if (*R * *C > PF_MAX_CELLS) return "(out_features / b1) * (in_features / b2) must be <= PF_MAX_CELLS (2^30)";
    if (n < 2 || !is_pow2(n)) return "butterfly_size must be a power of two >= 2";
    if (n > PF_MAX_GRID) return "butterfly_size must be <= PF_MAX_GRID (2^20)";
    if (out_f % n != 0) return "butterfly_size must divide out_features";
    if (in_f % n != 0) return "butterfly_size must divide in_features";
    int64_t log_n = 0;
    while (((int64_t)1 << log_n) < n) log_n++;
    if (m < 1 || m > log_n) return "n_factors must be in [1, log2(butterfly_size)]";
    if (global_size < 0) return "global_size must be >= 0";
    if (shuffle != 0 && shuffle != 1) return "shuffle must be 0 or 1";
    return NULL;
}

pf_err pf_fly_config_check(int64_t out_features, int64_t in_features, int64_t butterfly_size,
                           int64_t n_factors, int64_t b1, int64_t b2, int64_t global_size,
                           int shuffle) {
    int64_t R, C;
    return check_args(out_features, in_features, butterfly_size, n_factors, b1, b2, global_size,
                      shuffle, &R, &C);
}

/* Keep the blocks of rows [r0, r1] x cols [c0, c1] (inclusive). */
static void mark(uint8_t *out, int64_t C, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    for (int64_t i = r0; i <= r1; i++) memset(out + i * C + c0, 1, (size_t)(c1 - c0 + 1));
}

pf_err pf_fly_config_layout(int64_t out_features, int64_t in_features, int64_t butterfly_size,
                            int64_t n_factors, int64_t b1, int64_t b2, int64_t global_size,
                            int shuffle, uint8_t *out) {
    int64_t R = 0, C = 0;
    pf_err e = check_args(out_features, in_features, butterfly_size, n_factors, b1, b2,
                          global_size, shuffle, &R, &C);
    if (e) return e;
    if (!out) return "out must not be NULL";
    memset(out, 0, (size_t)(R * C));
    const int64_t n = butterfly_size, m = n_factors;
    const int64_t fr = out_features / n, fc = in_features / n; /* elements per cell */
    const int64_t per_group = (int64_t)1 << m, groups = n / per_group;
    for (int64_t p = 0; p < n; p++) {
        const int64_t r0 = p * fr / b1, r1 = ((p + 1) * fr - 1) / b1;
        for (int64_t s = -1; s < m; s++) {
            /* Unshuffled support: column cell c = p ^ d, d in {0} U {2^s : s < m}. */
            const int64_t c = s < 0 ? p : p ^ ((int64_t)1 << s);
            /* With shuffle the columns are regrouped: column q of the shuffled layout is
             * column (q % groups) * 2^m + q / groups of the unshuffled one, so c lands on
             * q = (c % 2^m) * groups + c / 2^m. */
            const int64_t q = shuffle ? (c % per_group) * groups + c / per_group : c;
            mark(out, C, r0, r1, q * fc / b2, ((q + 1) * fc - 1) / b2);
        }
    }
    if (global_size > 0) { /* the first global_size element rows and columns */
        const int64_t gr = global_size / b1 + (global_size % b1 != 0);
        const int64_t gc = global_size / b2 + (global_size % b2 != 0);
        if (gr > 0) mark(out, C, 0, (gr < R ? gr : R) - 1, 0, C - 1);
        if (gc > 0) mark(out, C, 0, R - 1, 0, (gc < C ? gc : C) - 1);
    }
    return NULL;
}
