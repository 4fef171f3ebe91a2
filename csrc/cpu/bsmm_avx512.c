/*
 * bsmm_avx512.c - AVX-512 (F/BW/VL) micro-kernels for the block-sparse matmul.
 *
 * Compiled without -march: every function carries its own target attribute and is only
 * reached when the driver (bsmm.c) has seen avx512f/bw/vl at run time.
 *
 * Register tiles: MR2 x 32 (2 zmm per row, MR2 = 8 -> 16 accumulators) and MR1 x 16
 * (MR1 = 16 -> 16 accumulators). The accumulators live in registers across every segment
 * (block) and step of the tile, so each output element is written exactly once.
 * Order of operations per element: see bsmm_internal.h (bitwise equal to the portable path).
 */
#include "bsmm_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#ifndef PF_PFD
#define PF_PFD 2 /* prefetch distance in segments (blocks) */
#endif
#ifndef PF_PFW
#define PF_PFW 32 /* BWD_W prefetch distance in steps (rows of T) */
#endif
#define INL static inline __attribute__((always_inline)) T512

#ifndef PF512_MR2
#define PF512_MR2 8
#endif
#ifndef PF512_MR1
#define PF512_MR1 16
#endif

INL __m256i bf16_pack(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i absu = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(absu, _mm512_set1_epi32(0x7f800000));
    const __m512i hi = _mm512_srli_epi32(u, 16);
    const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    r = _mm512_srli_epi32(r, 16);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
    return _mm512_cvtepi32_epi16(r);
}

INL void store_vec(const pf_tile *t, int64_t m, int64_t n, __m512 v, __mmask16 k, int full) {
    if (t->c_bf16) {
        uint16_t *c = (uint16_t *)t->C + m * t->ldc + n;
        const __m256i h = bf16_pack(v);
        if (full && t->c_stream && ((uintptr_t)c & 31) == 0)
            _mm256_stream_si256((__m256i *)c, h);
        else if (full)
            _mm256_storeu_si256((__m256i *)c, h);
        else
            _mm256_mask_storeu_epi16(c, k, h);
    } else {
        float *c = (float *)t->C + m * t->ldc + n;
        if (full && t->c_stream && ((uintptr_t)c & 63) == 0)
            _mm512_stream_ps(c, v);
        else if (full)
            _mm512_storeu_ps(c, v);
        else
            _mm512_mask_storeu_ps(c, k, v);
    }
}

/* One register tile: rows [m0, m0 + MR), columns [n0, n0 + nr), nr <= 16 * NV.
 * AROWS: A(m, s) = a[m * ams + s] (x / dy rows), else a[m + s * ass].
 * FULL: nr == 16 * NV (no masks). */
INL void mk(const int NV, const int MR, const int AROWS, const int FULL, const pf_tile *t,
            int64_t m0, int64_t n0, int64_t nr) {
    __mmask16 km[2];
    km[0] = (FULL || nr >= 16) ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1u);
    km[1] = (FULL || nr >= 32) ? (__mmask16)0xFFFF
                               : (nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1u) : (__mmask16)0);
    const int bfull = FULL || t->b_padded;
    __m512 c[16][2]; /* fixed size (MR, NV are not constant expressions in C): no VLA */
    if (t->Cin) {
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
            const float *ci = t->Cin + (m0 + m) * t->ldcin + n0;
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v)
                c[m][v] = FULL ? _mm512_loadu_ps(ci + 16 * v) : _mm512_maskz_loadu_ps(km[v], ci + 16 * v);
        }
    } else {
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m)
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) c[m][v] = _mm512_setzero_ps();
    }
    const int64_t ams = AROWS ? t->ams : 1, ass = AROWS ? 1 : t->ass;
    const int64_t K = t->K, bss = t->bss;
    for (int64_t seg = 0; seg < t->nseg; ++seg) {
        const float *a = t->A + m0 * ams + (t->aidx ? t->aidx[seg] * t->ascale : 0);
        const float *b = t->B + seg * t->bseg + n0;
        if (AROWS && t->aidx) {
            /* prefetch the rows of A that the block PF_PFD segments ahead will read (the
             * next row tile's first blocks when this tile is about to end): A rows of
             * different blocks are not contiguous, so hardware prefetchers miss them */
            int64_t v = seg + PF_PFD, mm = m0;
            if (v >= t->nseg) { v -= t->nseg; mm += MR; }
            if (v < t->nseg) {
                const float *an = t->A + mm * ams + t->aidx[v] * t->ascale;
#pragma GCC unroll 16
                for (int m = 0; m < MR; ++m) {
                    if (mm + m >= t->M) break;
                    _mm_prefetch((const char *)(an + m * ams), _MM_HINT_T0);
                    if (K > 16) _mm_prefetch((const char *)(an + m * ams + 16), _MM_HINT_T0);
                }
            }
        }
        for (int64_t s = 0; s < K; ++s) {
            if (!AROWS && s + PF_PFW < K) {
                /* BWD_W: steps are rows of x / dy, far apart in memory: prefetch ahead */
                _mm_prefetch((const char *)(b + PF_PFW * bss), _MM_HINT_T0);
                if (NV * 16 > 16) _mm_prefetch((const char *)(b + PF_PFW * bss + 16), _MM_HINT_T0);
                _mm_prefetch((const char *)(a + PF_PFW * ass), _MM_HINT_T0);
            }
            __m512 bv[2];
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v)
                bv[v] = bfull ? _mm512_loadu_ps(b + 16 * v) : _mm512_maskz_loadu_ps(km[v], b + 16 * v);
#pragma GCC unroll 16
            for (int m = 0; m < MR; ++m) {
                const __m512 av = _mm512_set1_ps(AROWS ? a[m * ams] : a[m]);
#pragma GCC unroll 2
                for (int v = 0; v < NV; ++v) c[m][v] = _mm512_fmadd_ps(av, bv[v], c[m][v]);
            }
            a += ass;
            b += bss;
        }
    }
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) store_vec(t, m0 + m, n0 + 16 * v, c[m][v], km[v], FULL);
}

/* All row tiles of one column piece: full MR tiles, then 8/4/2/1-row remainders. */
#define DEF_ROWS(NAME, NV, MRX, AROWS, FULL)                                              \
    static T512 void NAME(const pf_tile *t, int64_t n0, int64_t nr) {                     \
        int64_t m0 = 0;                                                                   \
        for (; m0 + (MRX) <= t->M; m0 += (MRX)) mk(NV, MRX, AROWS, FULL, t, m0, n0, nr); \
        if ((MRX) > 8 && m0 + 8 <= t->M) { mk(NV, 8, AROWS, FULL, t, m0, n0, nr); m0 += 8; } \
        if (m0 + 4 <= t->M) { mk(NV, 4, AROWS, FULL, t, m0, n0, nr); m0 += 4; }           \
        if (m0 + 2 <= t->M) { mk(NV, 2, AROWS, FULL, t, m0, n0, nr); m0 += 2; }           \
        if (m0 + 1 <= t->M) { mk(NV, 1, AROWS, FULL, t, m0, n0, nr); m0 += 1; }           \
    }

DEF_ROWS(rows2_r_f, 2, PF512_MR2, 1, 1)
DEF_ROWS(rows2_r_p, 2, PF512_MR2, 1, 0)
DEF_ROWS(rows2_c_f, 2, PF512_MR2, 0, 1)
DEF_ROWS(rows2_c_p, 2, PF512_MR2, 0, 0)
DEF_ROWS(rows1_r_f, 1, PF512_MR1, 1, 1)
DEF_ROWS(rows1_r_p, 1, PF512_MR1, 1, 0)
DEF_ROWS(rows1_c_f, 1, PF512_MR1, 0, 1)
DEF_ROWS(rows1_c_p, 1, PF512_MR1, 0, 0)

T512 void pf_tile_avx512(const pf_tile *t) {
    if (t->M <= 0 || t->N <= 0) return;
    const int arows = t->ass == 1;
    for (int64_t n0 = 0; n0 < t->N;) {
        const int64_t rem = t->N - n0;
        if (rem >= 32) {
            if (arows) rows2_r_f(t, n0, 32); else rows2_c_f(t, n0, 32);
            n0 += 32;
        } else if (rem > 16) {
            if (arows) rows2_r_p(t, n0, rem); else rows2_c_p(t, n0, rem);
            n0 += rem;
        } else if (rem == 16) {
            if (arows) rows1_r_f(t, n0, 16); else rows1_c_f(t, n0, 16);
            n0 += 16;
        } else {
            if (arows) rows1_r_p(t, n0, rem); else rows1_c_p(t, n0, rem);
            n0 += rem;
        }
    }
}

#else /* not x86: never selected by the driver, kept for linking */
void pf_tile_avx512(const pf_tile *t) { pf_tile_portable(t); }
#endif
