/*
 * test_tiles.c - the tile kernels (csrc/cpu/kernels*.c) on their own, with fp32 outputs,
 * where no bf16 rounding hides a change of summation order: on bf16 values, every ISA's
 * fp32 tile in the pair order and every pair tile (emulated with FMAs, and vdpbf16ps
 * where the CPU has it) must be bitwise equal to the portable fp32 tile in the pair
 * order; the plain order must differ from it somewhere (so these comparisons can fail).
 * Register-tile edges (M, N not multiples of the tile), padded and unpadded B, segments
 * uniform and indexed, A as rows and as columns, Cin, transposed output; the few-row tile
 * (tile_narrow.c) at every width it specialises. fp32 tiles in the plain order as well.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pixelfly.h"
#include "../cpu/kernels.h"

#include "check.h"
#include "test_rng.h"

static int64_t rndi(int64_t n) { return n > 0 ? (int64_t)(rnd() % (uint64_t)n) : 0; }

/* a bf16 with a random sign, mantissa and exponent in 2^-8 .. 2^8 (never subnormal) */
static uint16_t rnd_bf16(void) {
    const float f = ldexpf((float)(runif() * 2.0 - 1.0), (int)rndi(17) - 8);
    return pf_f32_to_bf16(f);
}

typedef struct {
    int64_t M, N, S, nseg, Nb; /* S steps per segment; Nb: B row length (N or padded) */
    int arows, aindexed, bindexed, ctrans;
    uint16_t *a, *b;           /* logical A[seg][m][s], B[seg][s][n] */
    int64_t *aidx, *bidx;      /* segment seg stored at slot aidx[seg] / bidx[seg] */
    float *cin;                /* [M][N] */
} tcase;

static int64_t ldc_of(const tcase *c) { return (c->ctrans ? c->M : c->N) + 3; }
static int64_t out_len(const tcase *c) { return (c->ctrans ? c->N : c->M) * ldc_of(c); }

/* The tile fields both layouts share (segment slots, sizes, Cin, output); the callers set
 * A, B, their strides and K. Segment strides count elements: M*S of A, S*Nb of B. */
static pf_tile tile_of(const tcase *c, float *out) {
    pf_tile t;
    memset(&t, 0, sizeof t);
    t.aidx = c->aindexed ? c->aidx : NULL;
    t.ascale = t.aseg = c->M * c->S;
    t.bidx = c->bindexed ? c->bidx : NULL;
    t.bscale = t.bseg = c->S * c->Nb;
    t.b_padded = c->Nb > c->N;
    t.nseg = c->nseg;
    t.M = c->M;
    t.N = c->N;
    t.Cin = c->cin;
    t.ldcin = c->N;
    t.C = out;
    t.ldc = ldc_of(c);
    t.c_trans = c->ctrans;
    return t;
}

/* The fp32 tile on the widened values; `pairs` selects the pair order. */
static void run_fp32(const tcase *c, pf_tile_fn fn, int pairs, float *out) {
    const int64_t M = c->M, S = c->S, Nb = c->Nb, ns = c->nseg;
    float *A = calloc((size_t)(ns * M * S + 1), 4), *B = calloc((size_t)(ns * S * Nb + 16), 4);
    for (int64_t g = 0; g < ns; ++g) {
        const int64_t sa = c->aindexed ? c->aidx[g] : g, sb = c->bindexed ? c->bidx[g] : g;
        for (int64_t m = 0; m < M; ++m)
            for (int64_t s = 0; s < S; ++s)
                A[sa * M * S + (c->arows ? m * S + s : s * M + m)] = pf_bf16_to_f32(c->a[(g * M + m) * S + s]);
        for (int64_t s = 0; s < S; ++s)
            for (int64_t n = 0; n < c->N; ++n) B[sb * S * Nb + s * Nb + n] = pf_bf16_to_f32(c->b[(g * S + s) * c->N + n]);
    }
    pf_tile t = tile_of(c, out);
    t.A = A;
    t.ams = c->arows ? S : 1;
    t.ass = c->arows ? 1 : M;
    t.B = B;
    t.bss = Nb;
    t.K = S;
    t.pairs = pairs;
    fn(&t);
    free(A);
    free(B);
}

/* The pair tile on the same values in the pair layouts of kernels.h (S even). */
static void run_pairs(const tcase *c, pf_tile_fn fn, float *out) {
    const int64_t M = c->M, S = c->S, P = S / 2, Nb = c->Nb, ns = c->nseg;
    uint16_t *A = calloc((size_t)(ns * M * S + 2), 2), *B = calloc((size_t)(ns * S * Nb + 32), 2);
    for (int64_t g = 0; g < ns; ++g) {
        const int64_t sa = c->aindexed ? c->aidx[g] : g, sb = c->bindexed ? c->bidx[g] : g;
        for (int64_t m = 0; m < M; ++m)
            for (int64_t s = 0; s < S; ++s) /* rows: [m][s]; columns: [s / 2][m][s % 2] */
                A[sa * M * S + (c->arows ? m * S + s : ((s / 2) * M + m) * 2 + s % 2)] = c->a[(g * M + m) * S + s];
        for (int64_t s = 0; s < S; ++s)
            for (int64_t n = 0; n < c->N; ++n) B[sb * S * Nb + ((s / 2) * Nb + n) * 2 + s % 2] = c->b[(g * S + s) * c->N + n];
    }
    pf_tile t = tile_of(c, out);
    t.A = (const float *)(const void *)A;
    t.ams = c->arows ? S : 2;
    t.ass = c->arows ? 2 : 2 * M;
    t.B = (const float *)(const void *)B;
    t.bss = 2 * Nb;
    t.K = P;
    fn(&t);
    free(A);
    free(B);
}

static int order_differs; /* cases where the plain order gave other bits than the pair order */

/* narrow: a tile of bsmm.c's few-row path (transposed output, no Cin, B rows N apart),
 * the one pf_tile_narrow_avx2 computes itself rather than passing to pf_tile_avx2 */
static void test_case(int64_t M, int64_t N, int64_t S, int64_t ns, int narrow) {
    tcase c;
    memset(&c, 0, sizeof c);
    c.M = M; c.N = N; c.S = S; c.nseg = ns;
    c.arows = (int)rndi(2);
    c.aindexed = (int)rndi(2);
    c.bindexed = (int)rndi(2);
    c.cin = NULL;
    c.ctrans = narrow || (int)rndi(4) == 0;
    c.Nb = !narrow && rndi(2) ? (N + 15) / 16 * 16 : N;
    c.a = malloc((size_t)(ns * M * S + 1) * 2);
    c.b = malloc((size_t)(ns * S * N + 1) * 2);
    for (int64_t i = 0; i < ns * M * S; ++i) c.a[i] = rnd_bf16();
    for (int64_t i = 0; i < ns * S * N; ++i) c.b[i] = rnd_bf16();
    c.aidx = malloc((size_t)ns * 8);
    c.bidx = malloc((size_t)ns * 8);
    for (int64_t g = 0; g < ns; ++g) c.aidx[g] = c.bidx[g] = ns - 1 - g; /* reversed slots */
    if (!c.ctrans && rndi(2)) {
        c.cin = malloc((size_t)(M * N + 1) * 4);
        for (int64_t i = 0; i < M * N; ++i) c.cin[i] = pf_bf16_to_f32(rnd_bf16()) * 64.0f;
    }
    const int64_t len = out_len(&c);
    const size_t bytes = (size_t)(len + 1) * 4;
    float *ref = malloc(bytes), *got = malloc(bytes);
    memset(ref, 0, bytes);
    run_fp32(&c, pf_tile_portable, 1, ref);
    char what[200];
    snprintf(what, sizeof what, "M=%lld N=%lld S=%lld nseg=%lld arows=%d aidx=%d bidx=%d padded=%d cin=%d trans=%d",
             (long long)M, (long long)N, (long long)S, (long long)ns, c.arows, c.aindexed, c.bindexed,
             (int)(c.Nb > N), c.cin != NULL, c.ctrans);

    float *plain = malloc(bytes);
    memset(plain, 0, bytes);
    run_fp32(&c, pf_tile_portable, 0, plain);
    if (memcmp(ref, plain, bytes) != 0) order_differs++;

    struct { const char *name; pf_tile_fn fn; int pair_tile, have; } runs[] = {
        {"fp32 avx2", pf_tile_avx2, 0, pf_cpu_has_avx2_fma()},
        {"fp32 avx512", pf_tile_avx512, 0, pf_cpu_has_avx512()},
        {"fp32 narrow", pf_tile_narrow_avx2, 0, pf_cpu_has_avx2_fma()},
        {"pairs portable", pf_tile_pairs_portable, 1, 1},
        {"pairs avx2", pf_tile_pairs_avx2, 1, pf_cpu_has_avx2_fma()},
        {"pairs avx512", pf_tile_pairs_avx512, 1, pf_cpu_has_avx512()},
        {"pairs avx512bf16 (vdpbf16ps)", pf_tile_pairs_avx512bf16, 1, pf_cpu_has_avx512_bf16()},
    };
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; ++r) {
        if (!runs[r].have || (runs[r].pair_tile && S % 2)) continue;
        memset(got, 0, bytes);
        if (runs[r].pair_tile) run_pairs(&c, runs[r].fn, got);
        else run_fp32(&c, runs[r].fn, 1, got);
        CHECK(memcmp(ref, got, bytes) == 0, "%s: %s differs from the portable pair order", what, runs[r].name);
        if (runs[r].pair_tile) continue;
        memset(got, 0, bytes); /* fp32 tiles in the plain order too */
        run_fp32(&c, runs[r].fn, 0, got);
        CHECK(memcmp(plain, got, bytes) == 0, "%s: %s differs from the portable plain order", what, runs[r].name);
    }
    free(plain); free(ref); free(got); free(c.a); free(c.b); free(c.aidx); free(c.bidx); free(c.cin);
}

int main(void) {
    printf("ISAs: avx2+fma %d, avx512 %d, avx512bf16 %d\n", pf_cpu_has_avx2_fma(), pf_cpu_has_avx512(),
           pf_cpu_has_avx512_bf16());
    const int64_t Ms[] = {1, 2, 5, 6, 7, 12, 13, 16, 17, 25, 40};
    const int64_t Ns[] = {1, 3, 8, 9, 16, 17, 24, 32, 33, 48, 64};
    const int64_t Ss[] = {1, 2, 3, 8, 31, 64};
    for (size_t i = 0; i < sizeof Ms / sizeof Ms[0]; ++i)
        for (size_t j = 0; j < sizeof Ns / sizeof Ns[0]; ++j)
            for (size_t k = 0; k < sizeof Ss / sizeof Ss[0]; ++k) test_case(Ms[i], Ns[j], Ss[k], 1 + rndi(3), 0);
    for (int64_t n = 1; n < PF_NARROW_N; ++n) /* every width of the few-row tile */
        for (size_t i = 0; i < sizeof Ms / sizeof Ms[0]; ++i)
            for (size_t k = 0; k < sizeof Ss / sizeof Ss[0]; ++k) test_case(Ms[i], n, Ss[k], 1 + rndi(3), 1);
    CHECK(order_differs > 0, "the pair order never changed a result: the comparisons cannot fail");
    printf("pair order != plain order in %d cases\n", order_differs);
    printf("test_tiles: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
