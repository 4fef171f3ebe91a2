/*
 * isa.c - the one CPU feature detection of the C core, and the choice of kernels for a
 * PF_ISA_* request (shared by the block-sparse matmul and attention).
 */
#include "kernels.h"
#include "pixelfly_attn.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define PF_X86 1
#endif

int pf_cpu_has_avx2_fma(void) {
#ifdef PF_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

int pf_cpu_has_avx512(void) {
#ifdef PF_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

int pf_cpu_has_avx512_bf16(void) {
#ifdef PF_X86
    __builtin_cpu_init();
    return pf_cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

int pf_attn_has_avx512(void) { return pf_cpu_has_avx512(); }

pf_err pf_isa_check(int isa) {
    if (isa < PF_ISA_AUTO || isa > PF_ISA_AVX512BF16)
        return "isa must be PF_ISA_AUTO, PF_ISA_PORTABLE, PF_ISA_AVX2, PF_ISA_AVX512 or "
               "PF_ISA_AVX512BF16";
    if (isa == PF_ISA_AVX2 && !pf_cpu_has_avx2_fma())
        return "isa PF_ISA_AVX2 requested but this CPU lacks AVX2/FMA";
    if (isa == PF_ISA_AVX512 && !pf_cpu_has_avx512())
        return "isa PF_ISA_AVX512 requested but this CPU lacks AVX-512 F/BW/VL";
    if (isa == PF_ISA_AVX512BF16 && !pf_cpu_has_avx512_bf16())
        return "isa PF_ISA_AVX512BF16 requested but this CPU lacks AVX512_BF16";
    return NULL;
}

static const pf_kernels k_portable = {PF_ISA_PORTABLE, pf_tile_portable, &pf_attn_ops_portable,
                                      pf_tile_pairs_portable, 0, pf_tile_portable};
#ifdef PF_X86
static const pf_kernels k_avx2 = {PF_ISA_AVX2, pf_tile_avx2, &pf_attn_ops_avx2, pf_tile_pairs_avx2, 0,
                                 pf_tile_narrow_avx2};
static const pf_kernels k_avx512 = {PF_ISA_AVX512, pf_tile_avx512, &pf_attn_ops_avx512,
                                    pf_tile_pairs_avx512, 0, pf_tile_narrow_avx2};
static const pf_kernels k_avx512bf16 = {PF_ISA_AVX512BF16, pf_tile_avx512bf16,
                                        &pf_attn_ops_avx512bf16, pf_tile_pairs_avx512bf16, 1,
                                        pf_tile_narrow_avx2};
#endif

const pf_kernels *pf_kernels_pick(int isa) {
#ifdef PF_X86
    if (isa == PF_ISA_PORTABLE) return &k_portable;
    if ((isa == PF_ISA_AUTO || isa == PF_ISA_AVX512BF16) && pf_cpu_has_avx512_bf16())
        return &k_avx512bf16;
    if ((isa == PF_ISA_AUTO || isa >= PF_ISA_AVX512) && pf_cpu_has_avx512()) return &k_avx512;
    if (pf_cpu_has_avx2_fma()) return &k_avx2;
#else
    (void)isa;
#endif
    return &k_portable;
}
