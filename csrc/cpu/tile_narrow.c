/*
 * tile_narrow.c - the few-row tile (AVX2 + FMA; the AVX-512 ISAs use it too): bsmm.c's
 * transposed tiles (c_trans, no Cin) with N = T < PF_NARROW_N rows of the activation.
 *
 * The general SIMD tile vectorises over n, so at T = 1 an 8-lane (16 on AVX-512) FMA does
 * one useful product. This one vectorises over m instead: 8 output features per vector,
 * one accumulator per row of the activation (n < 8). FWD's A is a block read along its
 * rows (A(m, s) = a[m * ams + s]): 8 x 8 pieces are loaded as rows and transposed in
 * registers; BWD_X's A is read down its columns (A(m, s) = a[m + s * ass]): a column is
 * one load. B(s, n) is broadcast. Each output element sums the same products in the same
 * fmaf order as kernels.h's contract (the pair order too), so the result is bitwise that
 * of pf_tile_portable.
 */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#include "vec_avx2.h"

/* c[0..7] = the columns of the 8 x 8 matrix of rows r[0..7] */
VI void transpose8(const pf_vf r[8], pf_vf c[8]) {
    const pf_vf t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const pf_vf t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const pf_vf t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const pf_vf t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const pf_vf u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
    const pf_vf u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
    const pf_vf u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
    const pf_vf u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
    c[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    c[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    c[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    c[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    c[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    c[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    c[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    c[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* col[j] = A(m0 .. m0 + mr, s0 + j) for j < ks (lanes >= mr and columns >= ks hold 0).
 * ROWS: A(m, s) = a[m * ams + s] (load 8 rows, transpose), else a[m + s * ass]. FULL: mr
 * and ks are 8 (no masks). */
VI void load_cols(const int ROWS, const int FULL, const float *a, int64_t ams, int64_t ass,
                  int64_t mr, int64_t ks, pf_vmask mmask, pf_vmask kmask, pf_vf col[8]) {
    if (ROWS) {
        pf_vf r[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i)
            r[i] = FULL ? v_load(a + i * ams) : (i < mr ? v_load_m(a + i * ams, kmask) : v_zero());
        transpose8(r, col);
    } else {
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j)
            col[j] = FULL ? v_load(a + j * ass) : (j < ks ? v_load_m(a + j * ass, mmask) : v_zero());
    }
}

/* acc[n] += col B(s, n) for n < N (b: row s of B) */
VI void step(const int N, pf_vf acc[8], pf_vf col, const float *b) {
#pragma GCC unroll 8
    for (int n = 0; n < N; ++n) acc[n] = v_fmadd(col, v_bcast(b + n), acc[n]);
}

/* The steps s0 .. s0 + ks of col (ks <= 8) in the contract's order (pairs: odd first); j is
 * a constant in every unrolled step, so col stays in registers. */
VI void steps(const int N, const int FULL, int pairs, pf_vf acc[8], const pf_vf col[8],
              const float *bs, int64_t ks) {
    const int bss = N; /* B rows are N apart (pf_tile_narrow_avx2): constant offsets */
    if (pairs) {
#pragma GCC unroll 4
        for (int j = 0; j < 8; j += 2) {
            if (FULL || j + 1 < ks) {
                step(N, acc, col[j + 1], bs + (j + 1) * bss);
                step(N, acc, col[j], bs + j * bss);
            } else if (j < ks) {
                step(N, acc, col[j], bs + j * bss);
            }
        }
    } else {
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j)
            if (FULL || j < ks) step(N, acc, col[j], bs + j * bss);
    }
}

/* Rows [m0, m0 + mr) of the tile (mr <= 8; FULLM: mr == 8), all N columns. */
VI void narrow_rows(const int N, const int ROWS, const int FULLM, const pf_tile *t, int64_t m0,
                    int64_t mr) {
    const pf_vmask mmask = v_mask(mr);
    const int64_t K = t->K, ams = t->ams, ass = t->ass;
    const int64_t K8 = K & ~(int64_t)7;
    const pf_vmask kmask = v_mask(K - K8);
    const int pairs = t->pairs;
    pf_vf acc[8];
#pragma GCC unroll 8
    for (int n = 0; n < N; ++n) acc[n] = v_zero();
    for (int64_t seg = 0; seg < t->nseg; ++seg) {
        const float *a = t->A + (t->aidx ? t->aidx[seg] * t->ascale : seg * t->aseg) + m0 * ams;
        const float *b = t->B + (t->bidx ? t->bidx[seg] * t->bscale : seg * t->bseg);
        int64_t s0 = 0;
        for (; s0 < K8; s0 += 8) { /* 8 steps */
            pf_vf col[8];
            load_cols(ROWS, FULLM, a + s0 * ass, ams, ass, mr, 8, mmask, v_mask(8), col);
            steps(N, 1, pairs, acc, col, b + s0 * N, 8);
        }
        if (s0 < K) { /* the last K % 8 steps */
            pf_vf col[8];
            load_cols(ROWS, 0, a + s0 * ass, ams, ass, mr, K - s0, mmask, kmask, col);
            steps(N, 0, pairs, acc, col, b + s0 * N, K - s0);
        }
    }
    /* C(m, n) at C[n * ldc + m]: the lanes of acc[n] are contiguous (Cadd's likewise) */
#pragma GCC unroll 8
    for (int n = 0; n < N; ++n) {
        if (t->Cadd) {
            const float *ca = t->Cadd + n * t->ldcadd + m0;
            acc[n] = v_add(acc[n], FULLM ? v_load(ca) : v_load_m(ca, mmask));
        }
        if (t->c_bf16) {
            uint16_t *c = (uint16_t *)t->C + n * t->ldc + m0;
            if (FULLM) v_store_bf16(c, acc[n]);
            else v_store_bf16_m(c, mmask, mr, acc[n]);
        } else {
            float *c = (float *)t->C + n * t->ldc + m0;
            if (FULLM) v_store(c, acc[n]);
            else v_store_m(c, mmask, acc[n]);
        }
    }
}

/* all rows of the tile, N columns; ROWS as load_cols */
VI void narrow(const int N, const int ROWS, const pf_tile *t) {
    int64_t m0 = 0;
    for (; m0 + 8 <= t->M; m0 += 8) narrow_rows(N, ROWS, 1, t, m0, 8);
    if (m0 < t->M) narrow_rows(N, ROWS, 0, t, m0, t->M - m0);
}

/* one function per (N, ROWS): each small enough for its accumulators to stay in registers */
#define DEF_NARROW(N)                                                                  \
    static __attribute__((noinline)) void narrow_r##N(const pf_tile *t) { narrow(N, 1, t); } \
    static __attribute__((noinline)) void narrow_c##N(const pf_tile *t) { narrow(N, 0, t); }
DEF_NARROW(1)
DEF_NARROW(2)
DEF_NARROW(3)
DEF_NARROW(4)
DEF_NARROW(5)
DEF_NARROW(6)
DEF_NARROW(7)

void pf_tile_narrow_avx2(const pf_tile *t) {
    /* a few-row transposed tile whose B rows are N apart (bsmm.c's), else the general tile */
    if (!t->c_trans || t->Cin || t->N >= PF_NARROW_N || t->bss != t->N) {
        pf_tile_avx2(t);
        return;
    }
    static void (*const fns[2][PF_NARROW_N])(const pf_tile *) = {
        {NULL, narrow_c1, narrow_c2, narrow_c3, narrow_c4, narrow_c5, narrow_c6, narrow_c7},
        {NULL, narrow_r1, narrow_r2, narrow_r3, narrow_r4, narrow_r5, narrow_r6, narrow_r7}};
    if (t->N > 0 && t->M > 0) fns[t->ass == 1][t->N](t); /* N as a constant (registers) */
}

#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif /* x86 */
