/*
 * kernels_avx2.c - kernels_simd.h compiled for AVX2 + FMA: pf_tile_avx2, pf_attn_ops_avx2.
 * Reached only when the CPU has avx2 and fma (isa.c, checked at run time).
 */
#define PF_TARGET "avx2,fma"
#define PF_VEC_HEADER "vec_avx2.h"
#define PF_SIMD(name) name##_avx2
#include "kernels_simd.h"
