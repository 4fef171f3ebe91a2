/*
 * test_layout.c - layouts, masks and block-CSR of the C core (csrc/core/layout.c, csr.c),
 * checked against the formulas of SPEC section 1 written out independently here, plus
 * random and extreme arguments thrown at every entry point (run under ASan + UBSan).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pixelfly.h"

#include "check.h"

/* Independent test PRNG (xorshift64*), unrelated to the core's. */
static uint64_t ts = 88172645463325252ULL;
static uint64_t trand(void) {
    ts ^= ts >> 12; ts ^= ts << 25; ts ^= ts >> 27;
    return ts * 2685821657736338717ULL;
}
static int64_t trange(int64_t lo, int64_t hi) { return lo + (int64_t)(trand() % (uint64_t)(hi - lo + 1)); }

static int popcount64(uint64_t x) { int c = 0; while (x) { c += (int)(x & 1); x >>= 1; } return c; }

/* Flat butterfly oracle: XOR distance is 0 or a single bit below 2^m. */
static int flat_keep(int64_t i, int64_t j, int64_t R, int64_t C, int64_t m, int64_t n) {
    int64_t p = i * n / R, q = j * n / C, x = p ^ q;
    if (x == 0) return 1;
    if (popcount64((uint64_t)x) != 1) return 0;
    for (int64_t s = 0; s < m; s++) if (x == ((int64_t)1 << s)) return 1;
    return 0;
}

static void test_flat_and_product(void) {
    const int64_t sizes[] = {2, 3, 4, 5, 6, 7, 8, 12, 16, 17, 24, 32, 33, 64};
    const int ns = (int)(sizeof sizes / sizeof *sizes);
    uint8_t *out = malloc(64 * 64);
    for (int a = 0; a < ns; a++)
        for (int b = 0; b < ns; b++) {
            int64_t R = sizes[a], C = sizes[b], lo = R < C ? R : C;
            int64_t dn = pf_default_butterfly_size(R, C);
            CHECK(dn >= 2 && dn <= lo && 2 * dn > lo && (dn & (dn - 1)) == 0, "default n %lld", (long long)dn);
            for (int64_t n = 2; n <= lo; n *= 2) {
                int64_t logn = 0;
                while (((int64_t)1 << logn) < n) logn++;
                for (int64_t m = 1; m <= logn; m++) {
                    pf_err e = pf_flat_butterfly_layout(R, C, m, n, out);
                    CHECK(e == NULL, "flat R=%lld C=%lld m=%lld n=%lld: %s", (long long)R, (long long)C,
                          (long long)m, (long long)n, e);
                    int bad = 0;
                    for (int64_t i = 0; i < R; i++)
                        for (int64_t j = 0; j < C; j++) bad += out[i * C + j] != flat_keep(i, j, R, C, m, n);
                    CHECK(bad == 0, "flat support R=%lld C=%lld m=%lld n=%lld", (long long)R, (long long)C,
                          (long long)m, (long long)n);
                    if (R == n && C == n) { /* exactly m+1 per row and column */
                        int rows_ok = 1, cols_ok = 1;
                        for (int64_t i = 0; i < n; i++) {
                            int64_t rc = 0, cc = 0;
                            for (int64_t j = 0; j < n; j++) { rc += out[i * n + j]; cc += out[j * n + i]; }
                            rows_ok &= rc == m + 1;
                            cols_ok &= cc == m + 1;
                        }
                        CHECK(rows_ok && cols_ok, "m+1 per row/col n=%lld m=%lld", (long long)n, (long long)m);
                    }
                    if (R % n == 0 && C % n == 0)
                        CHECK(pf_layout_nnz(out, R, C) * n == (m + 1) * R * C, "density (m+1)/n");
                    e = pf_butterfly_product_layout(R, C, m, n, out);
                    CHECK(e == NULL, "product: %s", e);
                    bad = 0;
                    for (int64_t i = 0; i < R; i++)
                        for (int64_t j = 0; j < C; j++)
                            bad += out[i * C + j] != (((i * n / R) ^ (j * n / C)) < ((int64_t)1 << m));
                    CHECK(bad == 0, "product support R=%lld C=%lld m=%lld n=%lld", (long long)R, (long long)C,
                          (long long)m, (long long)n);
                    if (m == logn) CHECK(pf_layout_nnz(out, R, C) == R * C, "full product is dense");
                }
            }
            /* default n (0) equals the explicit default */
            uint8_t *ref = malloc((size_t)(R * C));
            CHECK(pf_flat_butterfly_layout(R, C, 1, 0, out) == NULL, "default");
            CHECK(pf_flat_butterfly_layout(R, C, 1, dn, ref) == NULL, "explicit default");
            CHECK(memcmp(out, ref, (size_t)(R * C)) == 0, "n=0 means default");
            free(ref);
        }
    free(out);
}

static void test_factor(void) {
    uint8_t *out = malloc(64 * 64);
    for (int64_t n = 2; n <= 64; n *= 2)
        for (int64_t k = 2; k <= n; k *= 2) {
            CHECK(pf_factor_layout(n, k, out) == NULL, "factor n=%lld k=%lld", (long long)n, (long long)k);
            int bad = 0;
            for (int64_t i = 0; i < n; i++)
                for (int64_t j = 0; j < n; j++) {
                    /* n/k diagonal copies of a k x k butterfly factor: same k-block, and
                     * column equals row or row with bit k/2 flipped. */
                    int keep = (i / k == j / k) && (j == i || j == (i ^ (k / 2)));
                    bad += out[i * n + j] != keep;
                }
            CHECK(bad == 0, "factor support n=%lld k=%lld", (long long)n, (long long)k);
            CHECK(pf_layout_nnz(out, n, n) == 2 * n, "factor has 2 per row");
        }
    /* flat = union of I and factors B_2..B_{2^m} */
    uint8_t flat[16 * 16], acc[16 * 16], f[16 * 16];
    for (int64_t m = 1; m <= 4; m++) {
        memset(acc, 0, sizeof acc);
        for (int64_t i = 0; i < 16; i++) acc[i * 16 + i] = 1;
        for (int64_t s = 1; s <= m; s++) {
            CHECK(pf_factor_layout(16, (int64_t)1 << s, f) == NULL, "factor");
            for (int c = 0; c < 256; c++) acc[c] |= f[c];
        }
        CHECK(pf_flat_butterfly_layout(16, 16, m, 16, flat) == NULL, "flat");
        CHECK(memcmp(acc, flat, sizeof flat) == 0, "flat == I + B_2 + ... + B_2^m (m=%lld)", (long long)m);
    }
    free(out);
}

static void test_baselines(void) {
    uint8_t a[40 * 40], b[40 * 40];
    /* local, square: |i - j| <= w */
    for (int64_t w = 0; w <= 5; w++) {
        CHECK(pf_local_layout(17, 17, w, a) == NULL, "local");
        int bad = 0;
        for (int64_t i = 0; i < 17; i++)
            for (int64_t j = 0; j < 17; j++) bad += a[i * 17 + j] != (llabs(i - j) <= w);
        CHECK(bad == 0, "local band w=%lld", (long long)w);
    }
    /* local, rectangular window 0: every row and column covered */
    for (int t = 0; t < 50; t++) {
        int64_t R = trange(1, 40), C = trange(1, 40);
        CHECK(pf_local_layout(R, C, 0, a) == NULL, "local rect");
        int ok = 1;
        for (int64_t i = 0; i < R; i++) { int64_t s = 0; for (int64_t j = 0; j < C; j++) s += a[i * C + j]; ok &= s >= 1; }
        for (int64_t j = 0; j < C; j++) { int64_t s = 0; for (int64_t i = 0; i < R; i++) s += a[i * C + j]; ok &= s >= 1; }
        CHECK(ok, "local window 0 covers R=%lld C=%lld", (long long)R, (long long)C);
    }
    /* bigbird: contains band + globals, n_random extra per row, seeded */
    for (int t = 0; t < 30; t++) {
        int64_t R = trange(1, 40), C = trange(1, 40), lo = R < C ? R : C, hi = R > C ? R : C;
        int64_t w = trange(0, hi < 3 ? hi : 3), g = trange(0, lo < 2 ? lo : 2), r = trange(0, C < 4 ? C : 4);
        uint64_t seed = trand();
        CHECK(pf_bigbird_layout(R, C, w, g, r, seed, a) == NULL, "bigbird");
        CHECK(pf_bigbird_layout(R, C, w, g, r, seed, b) == NULL, "bigbird");
        CHECK(memcmp(a, b, (size_t)(R * C)) == 0, "bigbird deterministic");
        uint8_t band[40 * 40];
        CHECK(pf_local_layout(R, C, w, band) == NULL, "band");
        int ok = 1;
        for (int64_t i = 0; i < R; i++) {
            int64_t base = 0, got = 0;
            for (int64_t j = 0; j < C; j++) {
                int fixed = band[i * C + j] || i < g || j < g;
                base += fixed;
                got += a[i * C + j];
                if (fixed && !a[i * C + j]) ok = 0;
            }
            int64_t extra = r < C - base ? r : C - base;
            if (got != base + extra) ok = 0;
        }
        CHECK(ok, "bigbird structure R=%lld C=%lld w=%lld g=%lld r=%lld", (long long)R, (long long)C,
              (long long)w, (long long)g, (long long)r);
    }
    CHECK(pf_bigbird_layout(32, 32, 0, 0, 3, 1, a) == NULL && pf_bigbird_layout(32, 32, 0, 0, 3, 2, b) == NULL &&
              memcmp(a, b, 32 * 32) != 0, "bigbird depends on the seed");
    /* sparse transformer */
    for (int64_t s = 1; s <= 6; s++) {
        CHECK(pf_sparse_transformer_layout(13, 21, s, a) == NULL, "st");
        int bad = 0;
        for (int64_t i = 0; i < 13; i++)
            for (int64_t j = 0; j < 21; j++) bad += a[i * 21 + j] != (i / s == j / s || j % s == s - 1);
        CHECK(bad == 0, "sparse transformer stride %lld", (long long)s);
    }
    /* random: exact count, determinism, seed dependence */
    for (int t = 0; t < 50; t++) {
        int64_t R = trange(1, 40), C = trange(1, 40);
        double d = (double)(trand() % 1001) / 1000.0;
        uint64_t seed = trand();
        CHECK(pf_random_layout(R, C, d, seed, a) == NULL, "random");
        CHECK(pf_random_layout(R, C, d, seed, b) == NULL, "random");
        int64_t want = (int64_t)(d * (double)(R * C) + 0.5);
        CHECK(pf_layout_nnz(a, R, C) == want, "random count %lld vs %lld", (long long)pf_layout_nnz(a, R, C),
              (long long)want);
        CHECK(memcmp(a, b, (size_t)(R * C)) == 0, "random deterministic");
    }
    CHECK(pf_random_layout(40, 40, 0.5, 7, a) == NULL && pf_random_layout(40, 40, 0.5, 8, b) == NULL &&
              memcmp(a, b, 1600) != 0, "random depends on the seed");
    CHECK(pf_random_layout(3, 3, 1.0, 0, a) == NULL && pf_layout_nnz(a, 3, 3) == 9, "density 1");
    CHECK(pf_random_layout(3, 3, 0.0, 0, a) == NULL && pf_layout_nnz(a, 3, 3) == 0, "density 0");
}

static void test_mask_csr(void) {
    for (int t = 0; t < 200; t++) {
        int64_t R = trange(0, 12), C = trange(0, 12), b1 = trange(1, 5), b2 = trange(1, 5);
        uint8_t lay[144], back[144], mask[144 * 25];
        for (int64_t c = 0; c < R * C; c++) lay[c] = (uint8_t)(trand() % 3 == 0);
        CHECK(pf_layout_to_mask(lay, R, C, b1, b2, mask) == NULL, "to mask");
        int bad = 0;
        for (int64_t i = 0; i < R * b1; i++)
            for (int64_t j = 0; j < C * b2; j++) bad += mask[i * C * b2 + j] != lay[(i / b1) * C + j / b2];
        CHECK(bad == 0, "mask content");
        CHECK(pf_mask_to_layout(mask, R * b1, C * b2, b1, b2, back) == NULL, "from mask");
        CHECK(R * C == 0 || memcmp(lay, back, (size_t)(R * C)) == 0, "mask round trip");
        if (R > 0 && C > 0 && (b1 > 1 || b2 > 1)) { /* break block alignment */
            int64_t i = trange(0, R * b1 - 1), j = trange(0, C * b2 - 1);
            mask[i * C * b2 + j] ^= 1;
            memset(back, 0xAB, sizeof back);
            CHECK(pf_mask_to_layout(mask, R * b1, C * b2, b1, b2, back) != NULL, "partial block rejected");
            CHECK(back[0] == 0xAB, "nothing written on error");
        }
        int64_t row_ptr[13], col_idx[144], col_ptr[13], row_idx[144], csc_blk[144];
        int64_t nnz = pf_layout_nnz(lay, R, C);
        CHECK(pf_layout_to_csr(lay, R, C, row_ptr, col_idx) == NULL, "csr");
        CHECK(row_ptr[0] == 0 && row_ptr[R] == nnz, "csr row_ptr ends");
        uint8_t rebuilt[144] = {0};
        for (int64_t i = 0; i < R; i++)
            for (int64_t k = row_ptr[i]; k < row_ptr[i + 1]; k++) {
                rebuilt[i * C + col_idx[k]] = 1;
                if (k > row_ptr[i]) CHECK(col_idx[k] > col_idx[k - 1], "csr ascending");
            }
        CHECK(R * C == 0 || memcmp(rebuilt, lay, (size_t)(R * C)) == 0, "csr round trip");
        CHECK(pf_csr_transpose(R, C, row_ptr, col_idx, col_ptr, row_idx, csc_blk) == NULL, "transpose");
        CHECK(col_ptr[0] == 0 && col_ptr[C] == nnz, "col_ptr ends");
        int ok = 1;
        for (int64_t j = 0; j < C; j++)
            for (int64_t k = col_ptr[j]; k < col_ptr[j + 1]; k++) {
                int64_t blk = csc_blk[k];
                ok &= blk >= 0 && blk < nnz && col_idx[blk] == j;
                ok &= row_ptr[row_idx[k]] <= blk && blk < row_ptr[row_idx[k] + 1];
                if (k > col_ptr[j]) ok &= row_idx[k] > row_idx[k - 1];
            }
        CHECK(ok, "csc consistent with csr");
    }
    /* invalid CSR */
    int64_t cp[5], ri[8], cb[8];
    int64_t rp1[] = {1, 2, 3}, ci1[] = {0, 1, 2};
    CHECK(pf_csr_transpose(2, 4, rp1, ci1, cp, ri, cb) != NULL, "row_ptr[0] != 0");
    int64_t rp2[] = {0, 2, 1}, ci2[] = {0, 1};
    CHECK(pf_csr_transpose(2, 4, rp2, ci2, cp, ri, cb) != NULL, "row_ptr decreasing");
    int64_t rp3[] = {0, 2, 3}, ci3[] = {1, 1, 0};
    CHECK(pf_csr_transpose(2, 4, rp3, ci3, cp, ri, cb) != NULL, "columns not strictly ascending");
    int64_t ci4[] = {0, 4, 0};
    CHECK(pf_csr_transpose(2, 4, rp3, ci4, cp, ri, cb) != NULL, "column out of range");
    int64_t ci5[] = {-1, 2, 0};
    CHECK(pf_csr_transpose(2, 4, rp3, ci5, cp, ri, cb) != NULL, "negative column");
    int64_t rp6[] = {0, 5, 5};
    CHECK(pf_csr_transpose(2, 4, rp6, ci3, cp, ri, cb) != NULL, "row with more than C blocks");
    int64_t rp7[] = {0, INT64_MAX, INT64_MIN};
    CHECK(pf_csr_transpose(2, 4, rp7, ci3, cp, ri, cb) != NULL, "extreme row_ptr");
}

static const int64_t EXTREMES[] = {INT64_MIN, INT64_MIN + 1, -((int64_t)1 << 40), -3, -1, 0, 1, 2, 3, 4, 7, 8, 16,
                                   PF_MAX_GRID - 1, PF_MAX_GRID, PF_MAX_GRID + 1, PF_MAX_CELLS,
                                   PF_MAX_CELLS + 1, (int64_t)1 << 62, INT64_MAX - 1, INT64_MAX};
#define NE ((int)(sizeof EXTREMES / sizeof *EXTREMES))

static int64_t pick(void) { return trand() % 3 ? EXTREMES[trand() % NE] : trange(-3, 20); }

/* Only arguments whose output fits `cap` bytes are run with a real buffer; every other
 * combination must be rejected (NULL out passed: an accepted call would dereference it,
 * which ASan catches). */
static void test_fuzz(void) {
    enum { CAP = 1 << 16 };
    uint8_t *buf = malloc(CAP);
    uint8_t *mask = malloc(CAP);
    for (int t = 0; t < 20000; t++) {
        int64_t R = pick(), C = pick(), a = pick(), b = pick(), c = pick();
        int fits = R >= 0 && C >= 0 && R <= 256 && C <= 256;
        uint8_t *o = fits ? buf : NULL;
        pf_err e;
        e = pf_flat_butterfly_layout(R, C, a, b, o);
        if (!o) CHECK(e != NULL, "flat accepted NULL/huge");
        e = pf_butterfly_product_layout(R, C, a, b, o);
        if (!o) CHECK(e != NULL, "product accepted NULL/huge");
        e = pf_local_layout(R, C, a, o);
        if (!o) CHECK(e != NULL, "local accepted NULL/huge");
        e = pf_bigbird_layout(R, C, a, b, c, trand(), o);
        if (!o) CHECK(e != NULL, "bigbird accepted NULL/huge");
        e = pf_sparse_transformer_layout(R, C, a, o);
        if (!o) CHECK(e != NULL, "st accepted NULL/huge");
        const double dens[] = {-1.0, -0.0, 0.0, 0.3, 1.0, 1.0000001, 1e300, -1e300, 0.0 / 0.0, 1.0 / 0.0};
        e = pf_random_layout(R, C, dens[trand() % 10], trand(), o);
        if (!o) CHECK(e != NULL, "random accepted NULL/huge");
        int64_t n = pick();
        e = pf_factor_layout(n, a, n >= 0 && n <= 256 ? buf : NULL);
        if (!(n >= 0 && n <= 256)) CHECK(e != NULL, "factor accepted huge");
        (void)pf_default_butterfly_size(R, C);
        int64_t nnz = pf_layout_nnz(fits ? buf : NULL, R, C);
        if (!fits) CHECK(nnz == -1, "nnz of NULL");
        /* masks: only small products get real buffers */
        int mfits = fits && a >= 1 && b >= 1 && a <= 256 && b <= 256 && R * a * C * b <= CAP;
        e = pf_layout_to_mask(fits ? buf : NULL, R, C, a, b, mfits ? mask : NULL);
        if (!mfits) CHECK(e != NULL, "layout_to_mask accepted NULL/huge");
        int lfits = R >= 0 && C >= 0 && R <= 256 && C <= 256; /* mask R x C */
        e = pf_mask_to_layout(lfits ? mask : NULL, R, C, a, b, lfits ? buf : NULL);
        if (!lfits) CHECK(e != NULL, "mask_to_layout accepted NULL/huge");
        int64_t rp[300], ci[CAP / 8], cp[300], ri[CAP / 8], cb[CAP / 8];
        if (fits && R * C <= CAP / 8) {
            for (int64_t i = 0; i < R * C && i < CAP; i++) buf[i] = (uint8_t)(trand() & 1);
            CHECK(pf_layout_to_csr(buf, R, C, rp, ci) == NULL, "csr");
            if (trand() % 2 && R > 0) rp[trange(0, R)] = pick(); /* corrupt */
            if (trand() % 2 && rp[R] > 0 && rp[R] <= CAP / 8) ci[trange(0, rp[R] - 1)] = pick();
            if (rp[R] >= 0 && rp[R] <= CAP / 8) (void)pf_csr_transpose(R, C, rp, ci, cp, ri, cb);
        } else {
            CHECK(pf_layout_to_csr(NULL, R, C, rp, ci) != NULL, "csr NULL");
            CHECK(pf_csr_transpose(R, C, NULL, ci, cp, ri, cb) != NULL, "transpose NULL");
        }
    }
    /* NULL pointers with otherwise valid arguments */
    CHECK(pf_flat_butterfly_layout(8, 8, 1, 8, NULL) != NULL, "NULL out");
    CHECK(pf_factor_layout(8, 2, NULL) != NULL, "NULL out");
    CHECK(pf_random_layout(8, 8, 0.5, 0, NULL) != NULL, "NULL out");
    CHECK(pf_layout_to_mask(NULL, 2, 2, 1, 1, mask) != NULL, "NULL layout");
    CHECK(pf_mask_to_layout(mask, 2, 2, 1, 1, NULL) != NULL, "NULL layout out");
    /* messages name the argument */
    CHECK(strstr(pf_flat_butterfly_layout(8, 8, 4, 8, buf), "n_factors") != NULL, "names n_factors");
    CHECK(strstr(pf_flat_butterfly_layout(8, 8, 1, 6, buf), "butterfly_size") != NULL, "names butterfly_size");
    CHECK(strstr(pf_flat_butterfly_layout(8, 8, 1, 16, buf), "butterfly_size") != NULL, "n > min(R, C)");
    CHECK(strstr(pf_factor_layout(8, 16, buf), "k") != NULL, "names k");
    CHECK(strstr(pf_mask_to_layout(mask, 6, 6, 4, 3, buf), "b1") != NULL, "names b1");
    CHECK(strstr(pf_random_layout(2, 2, 2.0, 0, buf), "density") != NULL, "names density");
    free(buf);
    free(mask);
}

int main(void) {
    test_flat_and_product();
    test_factor();
    test_baselines();
    test_mask_csr();
    test_fuzz();
    printf("test_layout: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail != 0;
}
