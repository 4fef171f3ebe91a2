/*
 * layout.c - block layouts (SPEC section 1 and the baselines of section 5).
 *
 * Every generator validates all of its arguments before writing anything to `out`, and
 * returns a static message naming the offending argument (Python-facing names: rows = R,
 * cols = C, n_factors = m, butterfly_size = n). The exact rules are documented in
 * pixelfly.h next to each declaration.
 */
#include "pixelfly.h"
#include "rng.h"

#include <math.h>
#include <string.h>

static int is_pow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

static int64_t ilog2(int64_t x) { /* x > 0 */
    int64_t l = 0;
    while (x > 1) {
        x >>= 1;
        l++;
    }
    return l;
}

/* R x C block grid with 1 <= R, C <= PF_MAX_GRID and R * C <= PF_MAX_CELLS. */
static pf_err check_grid(int64_t R, int64_t C) {
    if (R < 1) return "rows must be >= 1";
    if (C < 1) return "cols must be >= 1";
    if (R > PF_MAX_GRID) return "rows must be <= PF_MAX_GRID (2^20)";
    if (C > PF_MAX_GRID) return "cols must be <= PF_MAX_GRID (2^20)";
    if (R * C > PF_MAX_CELLS) return "rows * cols must be <= PF_MAX_CELLS (2^30)"; /* <= 2^40, no overflow */
    return NULL;
}

int64_t pf_default_butterfly_size(int64_t R, int64_t C) {
    int64_t lo = R < C ? R : C;
    if (lo < 2) return 0;
    int64_t n = 1;
    while (n <= lo / 2) n <<= 1; /* n <= lo/2 => 2n <= lo, never overflows */
    return n;
}

pf_err pf_factor_layout(int64_t n, int64_t k, uint8_t *out) {
    if (n < 2 || n > PF_MAX_GRID) return "n must be in [2, PF_MAX_GRID (2^20)]";
    if (!is_pow2(n)) return "n must be a power of two";
    if (n * n > PF_MAX_CELLS) return "n * n must be <= PF_MAX_CELLS (2^30)";
    if (k < 2 || k > n) return "k must be in [2, n]";
    if (!is_pow2(k)) return "k must be a power of two";
    if (n % k != 0) return "k must divide n";
    if (!out) return "out must not be NULL";
    const int64_t h = k / 2;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            int64_t x = i ^ j;
            out[i * n + j] = (uint8_t)(x == 0 || x == h);
        }
    return NULL;
}

/* Shared validation of (R, C, m, n) for the butterfly layouts; resolves n = 0. */
static pf_err check_butterfly(int64_t R, int64_t C, int64_t m, int64_t *n, const uint8_t *out) {
    pf_err e = check_grid(R, C);
    if (e) return e;
    int64_t lo = R < C ? R : C;
    if (lo < 2) return "rows and cols must both be >= 2 for a butterfly layout (butterfly_size >= 2)";
    if (*n == 0) *n = pf_default_butterfly_size(R, C);
    if (*n < 2) return "butterfly_size must be >= 2 (or 0 for the default)";
    if (!is_pow2(*n)) return "butterfly_size must be a power of two";
    if (*n > lo) return "butterfly_size must be <= min(rows, cols)";
    if (m < 1 || m > ilog2(*n)) return "n_factors must be in [1, log2(butterfly_size)]";
    if (!out) return "out must not be NULL";
    return NULL;
}

/* Fill out[i, j] = keep(p ^ q) with p = i*n/R, q = j*n/C, where keep[x] is a table over x < n. */
static void stretch(int64_t R, int64_t C, int64_t n, int64_t m, int flat, uint8_t *out) {
    for (int64_t i = 0; i < R; i++) {
        const int64_t p = i * n / R; /* < 2^40 */
        uint8_t *row = out + i * C;
        for (int64_t j = 0; j < C; j++) {
            const int64_t x = p ^ (j * n / C);
            int keep;
            if (flat) /* x in {0} U {2^s : s < m} */
                keep = x == 0 || (is_pow2(x) && x < ((int64_t)1 << m));
            else /* product of the first m factors: x < 2^m */
                keep = x < ((int64_t)1 << m);
            row[j] = (uint8_t)keep;
        }
    }
}

pf_err pf_flat_butterfly_layout(int64_t R, int64_t C, int64_t m, int64_t n, uint8_t *out) {
    pf_err e = check_butterfly(R, C, m, &n, out);
    if (e) return e;
    stretch(R, C, n, m, 1, out);
    return NULL;
}

pf_err pf_butterfly_product_layout(int64_t R, int64_t C, int64_t m, int64_t n, uint8_t *out) {
    pf_err e = check_butterfly(R, C, m, &n, out);
    if (e) return e;
    stretch(R, C, n, m, 0, out);
    return NULL;
}

/* Band rule, shared by local and BigBird (window already validated, R, C <= 2^20). */
static int in_band(int64_t i, int64_t j, int64_t R, int64_t C, int64_t w) {
    const int64_t g = R < C ? R : C;
    const int64_t reach = w * g; /* <= 2^20 * 2^20 */
    return j * R - (i + 1) * C < reach && i * C - (j + 1) * R < reach;
}

static pf_err check_window(int64_t R, int64_t C, int64_t window) {
    const int64_t hi = R > C ? R : C;
    if (window < 0 || window > hi) return "window must be in [0, max(rows, cols)]";
    return NULL;
}

pf_err pf_local_layout(int64_t R, int64_t C, int64_t window, uint8_t *out) {
    pf_err e = check_grid(R, C);
    if (e) return e;
    if ((e = check_window(R, C, window))) return e;
    if (!out) return "out must not be NULL";
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) out[i * C + j] = (uint8_t)in_band(i, j, R, C, window);
    return NULL;
}

pf_err pf_bigbird_layout(int64_t R, int64_t C, int64_t window, int64_t n_global,
                         int64_t n_random, uint64_t seed, uint8_t *out) {
    pf_err e = check_grid(R, C);
    if (e) return e;
    if ((e = check_window(R, C, window))) return e;
    const int64_t lo = R < C ? R : C;
    if (n_global < 0 || n_global > lo) return "n_global must be in [0, min(rows, cols)]";
    if (n_random < 0 || n_random > C) return "n_random must be in [0, cols]";
    if (!out) return "out must not be NULL";
    pf_rng rng;
    pf_rng_seed(&rng, seed);
    for (int64_t i = 0; i < R; i++) {
        uint8_t *row = out + i * C;
        int64_t free_cols = 0;
        for (int64_t j = 0; j < C; j++) {
            row[j] = (uint8_t)(i < n_global || j < n_global || in_band(i, j, R, C, window));
            free_cols += !row[j];
        }
        /* Selection sampling (Knuth's algorithm S): a uniformly random subset of
         * min(n_random, free_cols) of the columns this row does not hold yet. */
        int64_t need = n_random < free_cols ? n_random : free_cols;
        for (int64_t j = 0; j < C && need > 0; j++) {
            if (row[j]) continue;
            if ((int64_t)pf_rng_below(&rng, (uint64_t)free_cols) < need) {
                row[j] = 1;
                need--;
            }
            free_cols--;
        }
    }
    return NULL;
}

pf_err pf_sparse_transformer_layout(int64_t R, int64_t C, int64_t stride, uint8_t *out) {
    pf_err e = check_grid(R, C);
    if (e) return e;
    const int64_t hi = R > C ? R : C;
    if (stride < 1 || stride > hi) return "stride must be in [1, max(rows, cols)]";
    if (!out) return "out must not be NULL";
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++)
            out[i * C + j] = (uint8_t)(i / stride == j / stride || j % stride == stride - 1);
    return NULL;
}

pf_err pf_random_layout(int64_t R, int64_t C, double density, uint64_t seed, uint8_t *out) {
    pf_err e = check_grid(R, C);
    if (e) return e;
    if (!(density >= 0.0 && density <= 1.0)) return "density must be in [0, 1]"; /* NaN too */
    if (!out) return "out must not be NULL";
    const int64_t total = R * C;
    int64_t need = (int64_t)floor(density * (double)total + 0.5); /* round half up */
    if (need > total) need = total;
    pf_rng rng;
    pf_rng_seed(&rng, seed);
    int64_t left = total;
    for (int64_t c = 0; c < total; c++, left--) {
        uint8_t keep = 0;
        if (need > 0 && (need == left || (int64_t)pf_rng_below(&rng, (uint64_t)left) < need)) {
            keep = 1;
            need--;
        }
        out[c] = keep;
    }
    return NULL;
}
