/*
 * kernels_simd.h - the SIMD kernels, written once over a vector layer and compiled once
 * per ISA: kernels_avx2.c, kernels_avx512.c and kernels_avx512bf16.c define PF_TARGET (the
 * gcc/clang target), PF_VEC_HEADER (vec_avx2.h / vec_avx512.h) and PF_SIMD(x) (naming the
 * results x_avx2, x_avx512, x_avx512bf16), then include this file; PF_DPBF16 selects the
 * vdpbf16ps instruction for the pair tiles. The code is built without -march: the target
 * applies to these functions only, and isa.c calls them only on a CPU that has the ISA.
 *
 * The vector layer gives PF_VL fp32 lanes (pf_vf), lane masks (pf_vmask, v_mask(n) = lanes
 * below n; masked loads read 0 and masked stores leave memory untouched in the other
 * lanes), arithmetic, reductions, bf16 rounding stores, and the register-tile heights
 * PF_MR2 (2 vectors wide) and PF_MR1 (1 vector wide).
 *
 * Defines:
 *   pf_tile_<isa>      the tile kernel of kernels.h. Register tiles of PF_MR2 x 2 vectors
 *                      and PF_MR1 x 1 vector live in registers across every segment (block)
 *                      and step of the tile, so each output element is written exactly
 *                      once; per element the fmaf order of the contract (bitwise equal to
 *                      pf_tile_portable).
 *   pf_tile_pairs_<isa> the pair tile of kernels.h (bf16 pairs, two steps per load): the
 *                      same register tiles, vdpbf16ps with PF_DPBF16, else two FMAs.
 *   pf_attn_ops_<isa>  attention's fp32 ops: the GEMM through pf_tile_<isa>, and the
 *                      softmax row ops with a Cephes expf polynomial (x < -87.34, -inf
 *                      included, gives exactly 0; NaN stays NaN).
 */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <math.h>

#define PF_STR(x) #x
#define PF_PRAGMA(x) _Pragma(PF_STR(x))
#ifdef __clang__
PF_PRAGMA(clang attribute push(__attribute__((target(PF_TARGET))), apply_to = function))
#else
PF_PRAGMA(GCC push_options)
PF_PRAGMA(GCC target(PF_TARGET))
#endif

#include PF_VEC_HEADER

#ifndef PF_PFD
#define PF_PFD 2 /* prefetch distance in segments (blocks) */
#endif

/* ------------------------------------------------------------------ tile kernel */

VI void store_vec(const pf_tile *t, int64_t m, int64_t n, pf_vf v, pf_vmask k, int64_t cnt,
                  int full) {
    if (t->c_trans) { /* a column of the output: lane l is element (m, n + l) */
        float lanes[PF_VL];
        v_store(lanes, v);
        const int64_t nl = full ? PF_VL : cnt;
        for (int64_t l = 0; l < nl; ++l) {
            const int64_t at = (n + l) * t->ldc + m;
            if (t->c_bf16) ((uint16_t *)t->C)[at] = pf_f32_to_bf16(lanes[l]);
            else ((float *)t->C)[at] = lanes[l];
        }
    } else if (t->c_bf16) {
        uint16_t *c = (uint16_t *)t->C + m * t->ldc + n;
        if (full && t->c_stream && ((uintptr_t)c & (2 * PF_VL - 1)) == 0) v_stream_bf16(c, v);
        else if (full) v_store_bf16(c, v);
        else if (cnt > 0) v_store_bf16_m(c, k, cnt, v);
    } else {
        float *c = (float *)t->C + m * t->ldc + n;
        if (full && t->c_stream && ((uintptr_t)c & (4 * PF_VL - 1)) == 0) v_stream(c, v);
        else if (full) v_store(c, v);
        else if (cnt > 0) v_store_m(c, k, v);
    }
}

/* The pair product of two vectors of bf16 pairs, added to acc: per lane the odd (high)
 * products first, then the even (low) one: vdpbf16ps, or its emulation by two FMAs (each
 * product of two bf16 is exact, so the FMAs round like the instruction's additions). */
#ifdef PF_DPBF16
VI pf_vf v_dp(pf_vf acc, pf_vf a, pf_vf b) {
    return (pf_vf)_mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}
#else
VI pf_vf v_dp(pf_vf acc, pf_vf a, pf_vf b) {
    return v_fmadd(v_pair_lo(a), v_pair_lo(b), v_fmadd(v_pair_hi(a), v_pair_hi(b), acc));
}
#endif

/* Register tile setup / store shared by the fp32 and the pair tiles: c = Cin rows or 0. */
VI void acc_init(const int NV, const int MR, const int FULL, const pf_tile *t, int64_t m0,
                 int64_t n0, const pf_vmask km[2], pf_vf c[PF_MRMAX][2]) {
    if (t->Cin) {
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
            const float *ci = t->Cin + (m0 + m) * t->ldcin + n0;
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v)
                c[m][v] = FULL ? v_load(ci + PF_VL * v) : v_load_m(ci + PF_VL * v, km[v]);
        }
    } else {
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m)
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) c[m][v] = v_zero();
    }
}

VI void acc_store(const int NV, const int MR, const int FULL, const pf_tile *t, int64_t m0,
                  int64_t n0, const pf_vmask km[2], const int64_t cnt[2], pf_vf c[PF_MRMAX][2]) {
    if (t->Cadd && t->c_trans) { /* Cadd(m, n) at Cadd[n * ldcadd + m]: lane by lane */
        for (int m = 0; m < MR; ++m)
            for (int v = 0; v < NV; ++v) {
                float lanes[PF_VL];
                for (int l = 0; l < PF_VL; ++l)
                    lanes[l] = FULL || l < cnt[v] ? t->Cadd[(n0 + PF_VL * v + l) * t->ldcadd + m0 + m] : 0.0f;
                c[m][v] = v_add(c[m][v], v_load(lanes));
            }
    } else if (t->Cadd) {
        for (int m = 0; m < MR; ++m)
            for (int v = 0; v < NV; ++v) {
                const float *ca = t->Cadd + (m0 + m) * t->ldcadd + n0 + PF_VL * v;
                c[m][v] = v_add(c[m][v], FULL ? v_load(ca) : v_load_m(ca, km[v]));
            }
    }
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v)
            store_vec(t, m0 + m, n0 + PF_VL * v, c[m][v], km[v], cnt[v], FULL);
}

/* Lanes used by the two vectors of a piece of nr columns (nr <= 2 PF_VL) and their masks. */
VI void piece_masks(const int FULL, int64_t nr, int64_t cnt[2], pf_vmask km[2]) {
    cnt[0] = FULL ? PF_VL : (nr < PF_VL ? nr : PF_VL);
    cnt[1] = FULL ? PF_VL : (nr - PF_VL < 0 ? 0 : (nr - PF_VL < PF_VL ? nr - PF_VL : PF_VL));
    km[0] = v_mask(cnt[0]);
    km[1] = v_mask(cnt[1]);
}

/* Prefetch the MR rows of A (from row mm = m0, `rb` bytes each, es-byte elements) that
 * the block PF_PFD segments ahead reads (the next row tile's first blocks when this tile
 * is about to end): A rows of different blocks are not contiguous, so hardware
 * prefetchers miss them. */
VI void prefetch_ahead(const int MR, const pf_tile *t, int64_t seg, int64_t m0, int64_t es,
                       int64_t rb) {
    int64_t v = seg + PF_PFD, mm = m0;
    if (v >= t->nseg) { v -= t->nseg; mm += MR; }
    if (v >= t->nseg) return;
    const char *an = (const char *)t->A + (mm * t->ams + t->aidx[v] * t->ascale) * es;
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
        if (mm + m >= t->M) break;
        v_prefetch(an + m * t->ams * es);
        if (rb > 64) v_prefetch(an + m * t->ams * es + 64);
    }
}

/* One step s of the fp32 tile: c[m][.] += A(m, s) B(s, .), a / b at step s. */
VI void step(const int NV, const int MR, const int AROWS, const int bfull, const float *a,
             const float *b, int64_t ams, const pf_vmask km[2], pf_vf c[PF_MRMAX][2]) {
    pf_vf bv[2];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
        /* padded B may be read up to round_up(N, 16): a vector with no valid lane (only
         * possible for v = 1 of a partial piece) is still in bounds */
        bv[v] = bfull ? v_load(b + PF_VL * v) : v_load_m(b + PF_VL * v, km[v]);
    }
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
        const pf_vf av = v_bcast(AROWS ? a + m * ams : a + m);
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) c[m][v] = v_fmadd(av, bv[v], c[m][v]);
    }
}

/* One register tile: rows [m0, m0 + MR), columns [n0, n0 + nr), nr <= PF_VL * NV.
 * AROWS: A(m, s) = a[m * ams + s] (x / dy rows), else a[m + s * ass].
 * FULL: nr == PF_VL * NV (no masks). */
VI void mk(const int NV, const int MR, const int AROWS, const int FULL, const pf_tile *t,
           int64_t m0, int64_t n0, int64_t nr) {
    int64_t cnt[2];
    pf_vmask km[2];
    piece_masks(FULL, nr, cnt, km);
    const int bfull = FULL || t->b_padded;
    pf_vf c[PF_MRMAX][2]; /* fixed size (MR, NV are not constant expressions in C): no VLA */
    acc_init(NV, MR, FULL, t, m0, n0, km, c);
    const int64_t ams = AROWS ? t->ams : 1, ass = AROWS ? 1 : t->ass;
    const int64_t K = t->K, bss = t->bss;
    for (int64_t seg = 0; seg < t->nseg; ++seg) {
        const float *a = t->A + m0 * ams + (t->aidx ? t->aidx[seg] * t->ascale : seg * t->aseg);
        const float *b = t->B + (t->bidx ? t->bidx[seg] * t->bscale : seg * t->bseg) + n0;
        if (AROWS && t->aidx) prefetch_ahead(MR, t, seg, m0, 4, K * 4);
        int64_t s = 0;
        if (t->pairs) /* bf16 operands: the odd step of each pair first (kernels.h) */
            for (; s + 1 < K; s += 2, a += 2 * ass, b += 2 * bss) {
                step(NV, MR, AROWS, bfull, a + ass, b + bss, ams, km, c);
                step(NV, MR, AROWS, bfull, a, b, ams, km, c);
            }
        for (; s < K; ++s, a += ass, b += bss) step(NV, MR, AROWS, bfull, a, b, ams, km, c);
    }
    acc_store(NV, MR, FULL, t, m0, n0, km, cnt, c);
}

/* One register tile of a pair tile (bf16 pairs, kernels.h): as mk, two steps per load. */
VI void mk2(const int NV, const int MR, const int FULL, const pf_tile *t, int64_t m0,
            int64_t n0, int64_t nr) {
    int64_t cnt[2];
    pf_vmask km[2];
    piece_masks(FULL, nr, cnt, km);
    const int bfull = FULL || t->b_padded;
    pf_vf c[PF_MRMAX][2];
    acc_init(NV, MR, FULL, t, m0, n0, km, c);
    const uint16_t *A = (const uint16_t *)(const void *)t->A, *B = (const uint16_t *)(const void *)t->B;
    const int64_t ams = t->ams, ass = t->ass, K = t->K, bss = t->bss;
    for (int64_t seg = 0; seg < t->nseg; ++seg) {
        const uint16_t *a = A + m0 * ams + (t->aidx ? t->aidx[seg] * t->ascale : seg * t->aseg);
        const uint16_t *b = B + (t->bidx ? t->bidx[seg] * t->bscale : seg * t->bseg) + 2 * n0;
        if (t->aidx) prefetch_ahead(MR, t, seg, m0, 2, K * 4);
        for (int64_t p = 0; p < K; ++p, a += ass, b += bss) {
            pf_vf bv[2];
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) {
                const float *bp = (const float *)(const void *)(b + 2 * PF_VL * v);
                bv[v] = bfull ? v_load(bp) : v_load_m(bp, km[v]);
            }
#pragma GCC unroll 16
            for (int m = 0; m < MR; ++m) {
                const pf_vf av = v_bcast_pair(a + m * ams);
#pragma GCC unroll 2
                for (int v = 0; v < NV; ++v) c[m][v] = v_dp(c[m][v], av, bv[v]);
            }
        }
    }
    acc_store(NV, MR, FULL, t, m0, n0, km, cnt, c);
}

/* All row tiles of one column piece: full MRX tiles, then 8/4/2/1-row remainders. */
#define DEF_ROWS(NAME, MK, NV, MRX, ...)                                                   \
    static void NAME(const pf_tile *t, int64_t n0, int64_t nr) {                          \
        int64_t m0 = 0;                                                                   \
        for (; m0 + (MRX) <= t->M; m0 += (MRX)) MK(NV, MRX, __VA_ARGS__, t, m0, n0, nr);   \
        if ((MRX) > 8 && m0 + 8 <= t->M) { MK(NV, 8, __VA_ARGS__, t, m0, n0, nr); m0 += 8; } \
        if (m0 + 4 <= t->M) { MK(NV, 4, __VA_ARGS__, t, m0, n0, nr); m0 += 4; }            \
        if (m0 + 2 <= t->M) { MK(NV, 2, __VA_ARGS__, t, m0, n0, nr); m0 += 2; }            \
        if (m0 + 1 <= t->M) { MK(NV, 1, __VA_ARGS__, t, m0, n0, nr); m0 += 1; }            \
    }

DEF_ROWS(rows2_r_f, mk, 2, PF_MR2, 1, 1)
DEF_ROWS(rows2_r_p, mk, 2, PF_MR2, 1, 0)
DEF_ROWS(rows2_c_f, mk, 2, PF_MR2, 0, 1)
DEF_ROWS(rows2_c_p, mk, 2, PF_MR2, 0, 0)
DEF_ROWS(rows1_r_f, mk, 1, PF_MR1, 1, 1)
DEF_ROWS(rows1_r_p, mk, 1, PF_MR1, 1, 0)
DEF_ROWS(rows1_c_f, mk, 1, PF_MR1, 0, 1)
DEF_ROWS(rows1_c_p, mk, 1, PF_MR1, 0, 0)
DEF_ROWS(rows2_pairs_f, mk2, 2, PF_MR2, 1)
DEF_ROWS(rows2_pairs_p, mk2, 2, PF_MR2, 0)
DEF_ROWS(rows1_pairs_f, mk2, 1, PF_MR1, 1)
DEF_ROWS(rows1_pairs_p, mk2, 1, PF_MR1, 0)

enum { ROWS_AROWS, ROWS_ACOLS, ROWS_PAIRS }; /* kinds of tile: fp32 A rows / columns, pairs */

/* Column pieces of 2 vectors, then one (full or partial) piece of at most 2 vectors. The
 * row functions are called by name, so full pieces get their width as a constant. */
static void pieces(const pf_tile *t, int kind) {
    for (int64_t n0 = 0; n0 < t->N;) {
        const int64_t rem = t->N - n0;
        if (rem >= 2 * PF_VL) {
            if (kind == ROWS_AROWS) rows2_r_f(t, n0, 2 * PF_VL);
            else if (kind == ROWS_ACOLS) rows2_c_f(t, n0, 2 * PF_VL);
            else rows2_pairs_f(t, n0, 2 * PF_VL);
            n0 += 2 * PF_VL;
        } else if (rem > PF_VL) {
            if (kind == ROWS_AROWS) rows2_r_p(t, n0, rem);
            else if (kind == ROWS_ACOLS) rows2_c_p(t, n0, rem);
            else rows2_pairs_p(t, n0, rem);
            n0 += rem;
        } else if (rem == PF_VL) {
            if (kind == ROWS_AROWS) rows1_r_f(t, n0, PF_VL);
            else if (kind == ROWS_ACOLS) rows1_c_f(t, n0, PF_VL);
            else rows1_pairs_f(t, n0, PF_VL);
            n0 += PF_VL;
        } else {
            if (kind == ROWS_AROWS) rows1_r_p(t, n0, rem);
            else if (kind == ROWS_ACOLS) rows1_c_p(t, n0, rem);
            else rows1_pairs_p(t, n0, rem);
            n0 += rem;
        }
    }
}

#define PF_BAND (2 * PF_MR2) /* rows per band when a tile is wider than one column piece */

/* A tile wider than one column piece runs in bands of PF_BAND rows, each through every
 * piece, so the pieces read a band's A rows from L1 instead of each streaming all of A
 * (measured +3-5% for FWD / BWD_X at 4096 x 4096 on AVX2, where b = 32 is two pieces).
 * `aes`: bytes of an A element (4, or 2 for bf16 pairs, whose A row m always starts at
 * m * ams). */
static void bands(const pf_tile *t, int kind, int64_t aes) {
    if (t->M <= 0 || t->N <= 0) return;
    if (t->N <= 2 * PF_VL || t->M <= PF_BAND) {
        pieces(t, kind);
        return;
    }
    const int64_t es = t->c_bf16 ? 2 : 4;
    const int64_t rs = aes == 4 && t->ass != 1 ? 1 : t->ams; /* elements between A rows */
    for (int64_t m0 = 0; m0 < t->M; m0 += PF_BAND) {
        pf_tile b = *t;
        b.M = t->M - m0 < PF_BAND ? t->M - m0 : PF_BAND;
        b.A = (const float *)(const void *)((const char *)t->A + m0 * rs * aes);
        if (t->Cin) b.Cin = t->Cin + m0 * t->ldcin;
        if (t->Cadd) b.Cadd = t->Cadd + m0 * (t->c_trans ? 1 : t->ldcadd);
        b.C = (char *)t->C + m0 * (t->c_trans ? 1 : t->ldc) * es;
        pieces(&b, kind);
    }
}

void PF_SIMD(pf_tile)(const pf_tile *t) { bands(t, t->ass == 1 ? ROWS_AROWS : ROWS_ACOLS, 4); }
void PF_SIMD(pf_tile_pairs)(const pf_tile *t) { bands(t, ROWS_PAIRS, 2); }

/* ------------------------------------------------------------------ attention ops */

/* the r lanes left of a row (all PF_VL when r >= PF_VL) */
VI pf_vf load_n(const float *p, int64_t r) { return r >= PF_VL ? v_load(p) : v_load_m(p, v_mask(r)); }
VI void store_n(float *p, int64_t r, pf_vf v) {
    if (r >= PF_VL) v_store(p, v); else v_store_m(p, v_mask(r), v);
}

/* exp(x) for x <= 88.7; x < -87.3365 (incl. -inf) gives exactly 0, NaN gives NaN. Cephes
 * expf polynomial. */
VI pf_vf v_exp(pf_vf x) {
    const pf_vf x0 = x;
    const pf_vmask nan = v_isnan(x);
    const pf_vmask tiny = v_lt(x, v_set1(-87.3365f));
    x = v_min(x, v_set1(88.72283f));
    x = v_max(x, v_set1(-87.3365f));
    const pf_vf n = v_round(v_mul(x, v_set1(1.44269504088896341f)));
    pf_vf f = v_fnmadd(n, v_set1(0.693359375f), x);
    f = v_fnmadd(n, v_set1(-2.12194440e-4f), f);
    pf_vf p = v_set1(1.9875691500E-4f);
    p = v_fmadd(p, f, v_set1(1.3981999507E-3f));
    p = v_fmadd(p, f, v_set1(8.3334519073E-3f));
    p = v_fmadd(p, f, v_set1(4.1665795894E-2f));
    p = v_fmadd(p, f, v_set1(1.6666665459E-1f));
    p = v_fmadd(p, f, v_set1(5.0000001201E-1f));
    p = v_fmadd(p, v_mul(f, f), v_add(f, v_set1(1.0f)));
    return v_select(nan, x0, v_select(tiny, v_zero(), v_scale2(p, n)));
}

static void gemm(int64_t m, int64_t n, int64_t k, const void *A, int64_t lda, const void *B,
                 int64_t ldb, void *C, int64_t ldc, int acc) {
    pf_tile_gemm(PF_SIMD(pf_tile), m, n, k, (const float *)A, lda, (const float *)B, ldb,
                 (float *)C, ldc, acc);
}

static void gemm_tn(int64_t m, int64_t n, int64_t k, const void *A, int64_t lda, const void *B,
                    int64_t ldb, void *C, int64_t ldc, int acc) {
    pf_tile_gemm_tn(PF_SIMD(pf_tile), m, n, k, (const float *)A, lda, (const float *)B, ldb,
                    (float *)C, ldc, acc);
}

static double rowmax(const void *s_, int64_t n) {
    const float *s = (const float *)s_;
    const pf_vf ninf = v_set1(-INFINITY);
    pf_vf mx = ninf;
    for (int64_t j = 0; j < n; j += PF_VL) {
        const int64_t r = n - j;
        const pf_vf x = load_n(s + j, r);
        mx = v_max(r >= PF_VL ? x : v_select(v_mask(r), x, ninf), mx); /* NaN lanes keep mx */
    }
    return (double)v_reduce_max(mx);
}

static double exp_sub_sum(void *s_, int64_t n, double c) {
    float *s = (float *)s_;
    const pf_vf cc = v_set1((float)c);
    pf_vf sum = v_zero();
    for (int64_t j = 0; j < n; j += PF_VL) {
        const int64_t r = n - j;
        const pf_vf e = v_exp(v_sub(load_n(s + j, r), cc));
        store_n(s + j, r, e);
        sum = v_add(sum, r >= PF_VL ? e : v_select(v_mask(r), e, v_zero()));
    }
    return (double)v_reduce_add(sum);
}

static void scale(void *x_, int64_t n, double a) {
    float *x = (float *)x_;
    const pf_vf av = v_set1((float)a);
    for (int64_t j = 0; j < n; j += PF_VL) store_n(x + j, n - j, v_mul(load_n(x + j, n - j), av));
}

static void p_ds(void *S_, void *dP_, int64_t rows, int64_t n, const void *c_, const void *D_,
                 int per_row) {
    const float *c = (const float *)c_, *D = (const float *)D_;
    for (int64_t r = 0; r < rows; ++r) {
        float *Sr = (float *)S_ + r * n, *dPr = (float *)dP_ + r * n;
        const pf_vf cr = v_set1(per_row ? c[r] : 0.f), Dr = v_set1(per_row ? D[r] : 0.f);
        for (int64_t j = 0; j < n; j += PF_VL) {
            const int64_t w = n - j;
            const pf_vf cv = per_row ? cr : load_n(c + j, w);
            const pf_vf Dv = per_row ? Dr : load_n(D + j, w);
            const pf_vf p = v_exp(v_sub(load_n(Sr + j, w), cv));
            store_n(Sr + j, w, p);
            store_n(dPr + j, w, v_mul(p, v_sub(load_n(dPr + j, w), Dv)));
        }
    }
}

const pf_attn_ops PF_SIMD(pf_attn_ops) = {4, gemm, gemm_tn, rowmax, exp_sub_sum, scale, p_ds};

/* ------------------------------------------------------------------ peak probe */

/* The peak probes (peak.c): `iters` rounds of PF_PEAK_CHAINS independent vector ops,
 * enough chains to cover the latency on two pipes. Each returns the lanes' sum (so the
 * work is kept). fp32 FMA: acc = acc * a + b with a < 1 converges (no overflow, no
 * denormals); FLOPs done: iters * PF_PEAK_CHAINS * PF_VL * 2. */
VI double peak_loop(int64_t iters, const int DP, pf_vf a, pf_vf b) {
    pf_vf acc[PF_PEAK_CHAINS];
    for (int j = 0; j < PF_PEAK_CHAINS; ++j) acc[j] = v_set1((float)j);
    for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16 /* >= PF_PEAK_CHAINS: the whole round */
        for (int j = 0; j < PF_PEAK_CHAINS; ++j) acc[j] = DP ? v_dp(acc[j], a, b) : v_fmadd(acc[j], a, b);
    }
    pf_vf sum = acc[0];
    for (int j = 1; j < PF_PEAK_CHAINS; ++j) sum = v_add(sum, acc[j]);
    return (double)v_reduce_add(sum);
}

double PF_SIMD(pf_peak_fma)(int64_t iters) { return peak_loop(iters, 0, v_set1(0.999999f), v_set1(1e-6f)); }

/* The tile probe: the fp32 tile's own step (step(): PF_MR2 broadcasts of A, two vector loads
 * of B, 2 PF_MR2 FMAs into the PF_MR2 x 2 register tile) looped over PF_PEAK_TILE_K steps
 * of operands that stay in L1: the FMA peak as far as this core's load path lets the
 * register tile reach it, with no cache miss, packing or bookkeeping. FLOPs: iters *
 * PF_PEAK_TILE_K * PF_MR2 * 2 PF_VL * 2. a, b: PF_MR2 x K and K x 2 PF_VL fp32 (peak.c). */
double PF_SIMD(pf_peak_tile)(int64_t iters, const float *a, const float *b) {
    pf_vf c[PF_MRMAX][2];
    const pf_vmask km[2] = {v_mask(PF_VL), v_mask(PF_VL)};
#pragma GCC unroll 16 /* whole loops over the register tile keep it in registers */
    for (int m = 0; m < PF_MR2; ++m) c[m][0] = c[m][1] = v_zero();
    for (int64_t it = 0; it < iters; ++it) {
        __asm__ volatile("" : "+r"(a), "+r"(b)); /* reload the operands every round */
        for (int64_t s = 0; s < PF_PEAK_TILE_K; ++s)
            step(2, PF_MR2, 1, 1, a + s, b + s * 2 * PF_VL, PF_PEAK_TILE_K, km, c);
    }
    pf_vf sum = v_add(c[0][0], c[0][1]);
#pragma GCC unroll 16
    for (int m = 1; m < PF_MR2; ++m) sum = v_add(sum, v_add(c[m][0], c[m][1]));
    return (double)v_reduce_add(sum);
}

/* rows of the tile probe's register tile (peak.c sizes its operands and counts its FLOPs) */
int PF_SIMD(pf_peak_tile_rows)(void) { return PF_MR2; }

#ifdef PF_DPBF16
/* bf16 pair products: acc += a . b over both halves of each lane (2 PF_VL products, 4 PF_VL
 * FLOPs per op); a = bf16 1.0, b = bf16 2^-20 in both halves, so acc grows by 2^-19 per
 * step and stays far from overflow. */
double PF_SIMD(pf_peak_dp)(int64_t iters) {
    return peak_loop(iters, 1, _mm512_castsi512_ps(_mm512_set1_epi16(0x3f80)),
                     _mm512_castsi512_ps(_mm512_set1_epi16(0x3580)));
}
#endif

#ifdef __clang__
PF_PRAGMA(clang attribute pop)
#else
PF_PRAGMA(GCC pop_options)
#endif
#endif /* x86 */
