/*
 * vec_avx2.h - the vector layer of kernels_simd.h for AVX2 + FMA: 8 fp32 lanes (ymm).
 * Included by kernels_avx2.c inside its target("avx2,fma") region. vec_avx512.h defines
 * the same names; kernels_simd.h documents what each must do.
 */
#ifndef PF_VEC_AVX2_H
#define PF_VEC_AVX2_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define PF_VL 8    /* fp32 lanes */
#define PF_MR2 6   /* rows of the 2-vector register tile (12 accumulators) */
#define PF_MR1 12  /* rows of the 1-vector register tile (12 accumulators) */
#define PF_MRMAX 12
#define VI static inline __attribute__((always_inline))

typedef __m256 pf_vf;
typedef __m256i pf_vmask;

VI pf_vf v_zero(void) { return _mm256_setzero_ps(); }
VI pf_vf v_set1(float a) { return _mm256_set1_ps(a); }
VI pf_vf v_bcast(const float *p) { return _mm256_broadcast_ss(p); }
VI pf_vf v_load(const float *p) { return _mm256_loadu_ps(p); }
VI void v_store(float *p, pf_vf v) { _mm256_storeu_ps(p, v); }
VI void v_stream(float *p, pf_vf v) { _mm256_stream_ps(p, v); }
VI pf_vf v_add(pf_vf a, pf_vf b) { return _mm256_add_ps(a, b); }
VI pf_vf v_sub(pf_vf a, pf_vf b) { return _mm256_sub_ps(a, b); }
VI pf_vf v_mul(pf_vf a, pf_vf b) { return _mm256_mul_ps(a, b); }
VI pf_vf v_max(pf_vf a, pf_vf b) { return _mm256_max_ps(a, b); } /* b where either is NaN */
VI pf_vf v_min(pf_vf a, pf_vf b) { return _mm256_min_ps(a, b); } /* b where either is NaN */
VI pf_vf v_fmadd(pf_vf a, pf_vf b, pf_vf c) { return _mm256_fmadd_ps(a, b, c); }  /* a b + c */
VI pf_vf v_fnmadd(pf_vf a, pf_vf b, pf_vf c) { return _mm256_fnmadd_ps(a, b, c); } /* c - a b */

/* lanes < n set (n clamped to [0, PF_VL]) */
VI pf_vmask v_mask(int64_t n) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 8 ? (n < 0 ? 0 : n) : 8)), idx);
}
/* masked-off lanes read as 0 and are never touched in memory */
VI pf_vf v_load_m(const float *p, pf_vmask k) { return _mm256_maskload_ps(p, k); }
VI void v_store_m(float *p, pf_vmask k, pf_vf v) { _mm256_maskstore_ps(p, k, v); }
VI pf_vf v_select(pf_vmask k, pf_vf a, pf_vf b) { /* k ? a : b */
    return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(k));
}

VI float v_reduce_add(pf_vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
VI float v_reduce_max(pf_vf v) { /* v holds no NaN */
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* p * 2^n for integer-valued n in [-126, 128]: two exact power-of-two factors (each
 * exponent in [-63, 64]), so the one rounding is that of the AVX-512 scalef */
VI pf_vf v_scale2(pf_vf p, pf_vf n) {
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i h = _mm256_srai_epi32(ni, 1);
    const __m256i e1 = _mm256_slli_epi32(_mm256_add_epi32(h, _mm256_set1_epi32(127)), 23);
    const __m256i e2 = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_sub_epi32(ni, h), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e1)), _mm256_castsi256_ps(e2));
}
VI pf_vf v_round(pf_vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
VI pf_vmask v_isnan(pf_vf x) { return _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)); }
VI pf_vmask v_lt(pf_vf a, pf_vf b) { return _mm256_castps_si256(_mm256_cmp_ps(a, b, _CMP_LT_OQ)); }

/* bf16 (round to nearest even, NaN stays a quiet NaN): 8 lanes -> 8 uint16 */
VI __m128i v_bf16(pf_vf v) {
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
VI void v_store_bf16(uint16_t *p, pf_vf v) { _mm_storeu_si128((__m128i *)p, v_bf16(v)); }
VI void v_stream_bf16(uint16_t *p, pf_vf v) { _mm_stream_si128((__m128i *)p, v_bf16(v)); }
/* the first n (1..PF_VL) lanes; k = v_mask(n) */
VI void v_store_bf16_m(uint16_t *p, pf_vmask k, int64_t n, pf_vf v) {
    (void)k;
    uint16_t tmp[8];
    _mm_storeu_si128((__m128i *)tmp, v_bf16(v));
    memcpy(p, tmp, (size_t)(n > 8 ? 8 : n) * 2);
}

VI void v_prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }

/* bf16 pairs (pair tiles): a lane holds two bf16, the even step in its low half */
VI pf_vf v_bcast_pair(const uint16_t *p) { /* the pair at p in every lane */
    uint32_t u;
    memcpy(&u, p, 4);
    return _mm256_castsi256_ps(_mm256_set1_epi32((int)u));
}
VI pf_vf v_pair_hi(pf_vf v) { /* the high (odd-step) bf16 of each lane, as fp32 */
    return _mm256_castsi256_ps(_mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32((int)0xffff0000u)));
}
VI pf_vf v_pair_lo(pf_vf v) { /* the low (even-step) bf16 of each lane, as fp32 */
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(v), 16));
}

#endif /* PF_VEC_AVX2_H */
