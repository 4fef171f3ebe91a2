/*
 * bsmm_avx2.c - AVX2 + FMA micro-kernels for the block-sparse matmul.
 *
 * Compiled without -march: every function carries its own target attribute and is only
 * reached when the driver (bsmm.c) has seen avx2 and fma at run time.
 *
 * Register tiles: 6 x 16 (2 ymm per row, 12 accumulators) and 12 x 8 (12 accumulators),
 * kept in registers across every segment (block) and step of the tile.
 * Order of operations per element: see bsmm_internal.h (bitwise equal to the portable path).
 */
#include "bsmm_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define T256 __attribute__((target("avx2,fma")))
#ifndef PF_PFD
#define PF_PFD 2 /* prefetch distance in segments (blocks) */
#endif
#ifndef PF_PFW
#define PF_PFW 32 /* BWD_W prefetch distance in steps (rows of T) */
#endif
#define INL static inline __attribute__((always_inline)) T256

#define PF256_MR2 6
#define PF256_MR1 12

INL __m256i lane_mask(int64_t n) { /* lanes < n set */
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 8 ? (n < 0 ? 0 : n) : 8)), idx);
}

INL __m128i bf16_pack(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i absu = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    const __m256i nan = _mm256_cmpgt_epi32(absu, _mm256_set1_epi32(0x7f800000));
    const __m256i hi = _mm256_srli_epi32(u, 16);
    const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    r = _mm256_srli_epi32(r, 16);
    r = _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    return _mm256_castsi256_si128(p);
}

INL void store_vec(const pf_tile *t, int64_t m, int64_t n, __m256 v, __m256i k, int64_t cnt,
                   int full) {
    if (t->c_bf16) {
        uint16_t *c = (uint16_t *)t->C + m * t->ldc + n;
        const __m128i h = bf16_pack(v);
        if (full && t->c_stream && ((uintptr_t)c & 15) == 0) {
            _mm_stream_si128((__m128i *)c, h);
        } else if (full) {
            _mm_storeu_si128((__m128i *)c, h);
        } else if (cnt > 0) {
            uint16_t tmp[8];
            _mm_storeu_si128((__m128i *)tmp, h);
            memcpy(c, tmp, (size_t)(cnt > 8 ? 8 : cnt) * 2);
        }
    } else {
        float *c = (float *)t->C + m * t->ldc + n;
        if (full && t->c_stream && ((uintptr_t)c & 31) == 0)
            _mm256_stream_ps(c, v);
        else if (full)
            _mm256_storeu_ps(c, v);
        else if (cnt > 0)
            _mm256_maskstore_ps(c, k, v);
    }
}

INL void mk(const int NV, const int MR, const int AROWS, const int FULL, const pf_tile *t,
            int64_t m0, int64_t n0, int64_t nr) {
    __m256i km[2];
    int64_t cnt[2];
    cnt[0] = FULL ? 8 : (nr < 8 ? nr : 8);
    cnt[1] = FULL ? 8 : (nr - 8 < 0 ? 0 : (nr - 8 < 8 ? nr - 8 : 8));
    km[0] = lane_mask(cnt[0]);
    km[1] = lane_mask(cnt[1]);
    const int bfull = FULL || t->b_padded;
    __m256 c[12][2]; /* fixed size: no VLA */
    if (t->Cin) {
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
            const float *ci = t->Cin + (m0 + m) * t->ldcin + n0;
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v)
                c[m][v] = FULL ? _mm256_loadu_ps(ci + 8 * v) : _mm256_maskload_ps(ci + 8 * v, km[v]);
        }
    } else {
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m)
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) c[m][v] = _mm256_setzero_ps();
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
                if (NV * 8 > 16) _mm_prefetch((const char *)(b + PF_PFW * bss + 16), _MM_HINT_T0);
                _mm_prefetch((const char *)(a + PF_PFW * ass), _MM_HINT_T0);
            }
            __m256 bv[2];
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) {
                /* padded B may be read up to round_up(N, 16): a vector with no valid lane
                 * (only possible for v = 1 of a partial piece) is still in bounds */
                bv[v] = bfull ? _mm256_loadu_ps(b + 8 * v) : _mm256_maskload_ps(b + 8 * v, km[v]);
            }
#pragma GCC unroll 16
            for (int m = 0; m < MR; ++m) {
                const __m256 av = _mm256_broadcast_ss(AROWS ? a + m * ams : a + m);
#pragma GCC unroll 2
                for (int v = 0; v < NV; ++v) c[m][v] = _mm256_fmadd_ps(av, bv[v], c[m][v]);
            }
            a += ass;
            b += bss;
        }
    }
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) store_vec(t, m0 + m, n0 + 8 * v, c[m][v], km[v], cnt[v], FULL);
}

#define DEF_ROWS(NAME, NV, MRX, AROWS, FULL)                                              \
    static T256 void NAME(const pf_tile *t, int64_t n0, int64_t nr) {                     \
        int64_t m0 = 0;                                                                   \
        for (; m0 + (MRX) <= t->M; m0 += (MRX)) mk(NV, MRX, AROWS, FULL, t, m0, n0, nr); \
        if ((MRX) > 8 && m0 + 8 <= t->M) { mk(NV, 8, AROWS, FULL, t, m0, n0, nr); m0 += 8; } \
        if (m0 + 4 <= t->M) { mk(NV, 4, AROWS, FULL, t, m0, n0, nr); m0 += 4; }           \
        if (m0 + 2 <= t->M) { mk(NV, 2, AROWS, FULL, t, m0, n0, nr); m0 += 2; }           \
        if (m0 + 1 <= t->M) { mk(NV, 1, AROWS, FULL, t, m0, n0, nr); m0 += 1; }           \
    }

DEF_ROWS(rows2_r_f, 2, PF256_MR2, 1, 1)
DEF_ROWS(rows2_r_p, 2, PF256_MR2, 1, 0)
DEF_ROWS(rows2_c_f, 2, PF256_MR2, 0, 1)
DEF_ROWS(rows2_c_p, 2, PF256_MR2, 0, 0)
DEF_ROWS(rows1_r_f, 1, PF256_MR1, 1, 1)
DEF_ROWS(rows1_r_p, 1, PF256_MR1, 1, 0)
DEF_ROWS(rows1_c_f, 1, PF256_MR1, 0, 1)
DEF_ROWS(rows1_c_p, 1, PF256_MR1, 0, 0)

T256 void pf_tile_avx2(const pf_tile *t) {
    if (t->M <= 0 || t->N <= 0) return;
    const int arows = t->ass == 1;
    for (int64_t n0 = 0; n0 < t->N;) {
        const int64_t rem = t->N - n0;
        if (rem >= 16) {
            if (arows) rows2_r_f(t, n0, 16); else rows2_c_f(t, n0, 16);
            n0 += 16;
        } else if (rem > 8) {
            if (arows) rows2_r_p(t, n0, rem); else rows2_c_p(t, n0, rem);
            n0 += rem;
        } else if (rem == 8) {
            if (arows) rows1_r_f(t, n0, 8); else rows1_c_f(t, n0, 8);
            n0 += 8;
        } else {
            if (arows) rows1_r_p(t, n0, rem); else rows1_c_p(t, n0, rem);
            n0 += rem;
        }
    }
}

#else
void pf_tile_avx2(const pf_tile *t) { pf_tile_portable(t); }
#endif
