/*
 * kernels_avx512bf16.c - kernels_simd.h compiled for AVX-512 F/BW/VL + AVX512_BF16: the
 * pair tile pf_tile_pairs_avx512bf16 runs on vdpbf16ps (pairs of bf16 products summed into
 * fp32 lanes), and so does the bf16 peak probe pf_peak_dp_avx512bf16; the fp32 kernels are
 * those of AVX-512. Reached only when the CPU has avx512bf16 (isa.c, checked at run time).
 */
#define PF_TARGET "avx512f,avx512bw,avx512vl,avx512bf16"
#define PF_VEC_HEADER "vec_avx512.h"
#define PF_SIMD(name) name##_avx512bf16
#define PF_DPBF16 1
#include "kernels_simd.h"
