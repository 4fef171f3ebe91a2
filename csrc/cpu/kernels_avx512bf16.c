/*
 * kernels_avx512bf16.c - what needs AVX512_BF16 (vdpbf16ps: pairs of bf16 products summed
 * into fp32 lanes): the bf16 peak probe. Reached only when the CPU has avx512bf16 (isa.c,
 * checked at run time).
 */
#include "kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")
#endif

/* PF_PEAK_CHAINS chains of acc += a . b (32 bf16 products per instruction, fp32 accumulation); a = 1,
 * b = 2^-20, so acc grows by 2^-15 per step and stays far from overflow. */
double pf_peak_dpbf16_avx512(int64_t iters) {
    __m512 acc[PF_PEAK_CHAINS];
    const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80); /* bf16 1.0 */
    const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3580); /* bf16 2^-20 */
    for (int j = 0; j < PF_PEAK_CHAINS; ++j) acc[j] = _mm512_set1_ps((float)j);
    for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16 /* >= PF_PEAK_CHAINS: the whole round */
        for (int j = 0; j < PF_PEAK_CHAINS; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
    }
    __m512 sum = acc[0];
    for (int j = 1; j < PF_PEAK_CHAINS; ++j) sum = _mm512_add_ps(sum, acc[j]);
    return (double)_mm512_reduce_add_ps(sum);
}

#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* x86 */
