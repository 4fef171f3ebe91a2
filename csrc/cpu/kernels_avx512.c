/*
 * kernels_avx512.c - kernels_simd.h compiled for AVX-512 F/BW/VL: pf_tile_avx512,
 * pf_attn_ops_avx512. Reached only when the CPU has avx512f, avx512bw and avx512vl (isa.c,
 * checked at run time).
 */
#define PF_TARGET "avx512f,avx512bw,avx512vl"
#define PF_VEC_HEADER "vec_avx512.h"
#define PF_SIMD(name) name##_avx512
#include "kernels_simd.h"
