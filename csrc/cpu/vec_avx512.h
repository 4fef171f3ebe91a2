/*
 * vec_avx512.h - the vector layer of kernels_simd.h for AVX-512 F/BW/VL: 16 fp32 lanes
 * (zmm), k-register masks. Included by kernels_avx512.c inside its target region.
 * vec_avx2.h defines the same names; kernels_simd.h documents what each must do.
 */
#ifndef PF_VEC_AVX512_H
#define PF_VEC_AVX512_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define PF_VL 16   /* fp32 lanes */
#define PF_MR2 8   /* rows of the 2-vector register tile (16 accumulators) */
#define PF_MR1 16  /* rows of the 1-vector register tile (16 accumulators) */
#define PF_MRMAX 16
#define VI static inline __attribute__((always_inline))

typedef __m512 pf_vf;
typedef __mmask16 pf_vmask;

VI pf_vf v_zero(void) { return _mm512_setzero_ps(); }
VI pf_vf v_set1(float a) { return _mm512_set1_ps(a); }
VI pf_vf v_bcast(const float *p) { return _mm512_set1_ps(*p); }
VI pf_vf v_load(const float *p) { return _mm512_loadu_ps(p); }
VI void v_store(float *p, pf_vf v) { _mm512_storeu_ps(p, v); }
VI void v_stream(float *p, pf_vf v) { _mm512_stream_ps(p, v); }
VI pf_vf v_add(pf_vf a, pf_vf b) { return _mm512_add_ps(a, b); }
VI pf_vf v_sub(pf_vf a, pf_vf b) { return _mm512_sub_ps(a, b); }
VI pf_vf v_mul(pf_vf a, pf_vf b) { return _mm512_mul_ps(a, b); }
VI pf_vf v_max(pf_vf a, pf_vf b) { return _mm512_max_ps(a, b); } /* b where either is NaN */
VI pf_vf v_min(pf_vf a, pf_vf b) { return _mm512_min_ps(a, b); } /* b where either is NaN */
VI pf_vf v_fmadd(pf_vf a, pf_vf b, pf_vf c) { return _mm512_fmadd_ps(a, b, c); }  /* a b + c */
VI pf_vf v_fnmadd(pf_vf a, pf_vf b, pf_vf c) { return _mm512_fnmadd_ps(a, b, c); } /* c - a b */

/* lanes < n set (n clamped to [0, PF_VL]) */
VI pf_vmask v_mask(int64_t n) {
    return n >= 16 ? (pf_vmask)0xFFFF : (n <= 0 ? (pf_vmask)0 : (pf_vmask)((1u << n) - 1u));
}
/* masked-off lanes read as 0 and are never touched in memory */
VI pf_vf v_load_m(const float *p, pf_vmask k) { return _mm512_maskz_loadu_ps(k, p); }
VI void v_store_m(float *p, pf_vmask k, pf_vf v) { _mm512_mask_storeu_ps(p, k, v); }
VI pf_vf v_select(pf_vmask k, pf_vf a, pf_vf b) { return _mm512_mask_mov_ps(b, k, a); } /* k ? a : b */

VI float v_reduce_add(pf_vf v) { return _mm512_reduce_add_ps(v); }
VI float v_reduce_max(pf_vf v) { return _mm512_reduce_max_ps(v); }

/* p * 2^n (n integer-valued) */
VI pf_vf v_scale2(pf_vf p, pf_vf n) { return _mm512_scalef_ps(p, n); }
VI pf_vf v_round(pf_vf x) {
    return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
VI pf_vmask v_isnan(pf_vf x) { return _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q); }
VI pf_vmask v_lt(pf_vf a, pf_vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }

/* bf16 (round to nearest even, NaN stays a quiet NaN): 16 lanes -> 16 uint16 */
VI __m256i v_bf16(pf_vf v) {
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
VI void v_store_bf16(uint16_t *p, pf_vf v) { _mm256_storeu_si256((__m256i *)p, v_bf16(v)); }
VI void v_stream_bf16(uint16_t *p, pf_vf v) { _mm256_stream_si256((__m256i *)p, v_bf16(v)); }
/* the first n (1..PF_VL) lanes; k = v_mask(n) */
VI void v_store_bf16_m(uint16_t *p, pf_vmask k, int64_t n, pf_vf v) {
    (void)n;
    _mm256_mask_storeu_epi16(p, k, v_bf16(v));
}

VI void v_prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }

/* bf16 pairs (pair tiles): a lane holds two bf16, the even step in its low half */
VI pf_vf v_bcast_pair(const uint16_t *p) { /* the pair at p in every lane */
    uint32_t u;
    memcpy(&u, p, 4);
    return _mm512_castsi512_ps(_mm512_set1_epi32((int)u));
}
VI pf_vf v_pair_hi(pf_vf v) { /* the high (odd-step) bf16 of each lane, as fp32 */
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0xffff0000u)));
}
VI pf_vf v_pair_lo(pf_vf v) { /* the low (even-step) bf16 of each lane, as fp32 */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(v), 16));
}

#endif /* PF_VEC_AVX512_H */
