/* The peak probe (csrc/cpu/peak.c): FLOP counts per ISA, refusals, every lane finite. */
#include <math.h>
#include <stdio.h>

#include "check.h"
#include "pixelfly.h"

int main(void) {
    const int best = pf_cpu_has_avx512_bf16() ? PF_ISA_AVX512BF16
                     : pf_cpu_has_avx512()    ? PF_ISA_AVX512
                     : pf_cpu_has_avx2_fma()  ? PF_ISA_AVX2
                                              : PF_ISA_PORTABLE;
    const int64_t lanes[] = {0, 1, 8, 16, 16}; /* AVX512BF16: AVX-512's fp32 FMA */
    for (int isa = PF_ISA_PORTABLE; isa <= PF_ISA_AVX512BF16; ++isa) {
        double sink = NAN;
        const int64_t flops = pf_peak_fma(isa, 1000, &sink);
        if (isa <= best) {
            CHECK(flops == 1000 * 12 * lanes[isa] * 2, "isa %d: %lld flops", isa, (long long)flops);
            CHECK(isfinite(sink) && sink > 0, "isa %d: sink %g", isa, sink);
            CHECK(pf_peak_fma(isa, 0, NULL) == 0, "isa %d: zero iterations", isa);
        } else {
            CHECK(flops == -1, "isa %d beyond this CPU: %lld", isa, (long long)flops);
        }
    }
    CHECK(pf_peak_fma(PF_ISA_AUTO, 10, NULL) == 10 * 12 * lanes[best] * 2, "auto = the best ISA");
    CHECK(pf_peak_fma(-1, 10, NULL) == -1 && pf_peak_fma(5, 10, NULL) == -1, "bad isa refused");
    CHECK(pf_peak_fma(PF_ISA_PORTABLE, -1, NULL) == -1, "negative iterations refused");
    double sink = NAN;
    const int64_t bf = pf_peak_dpbf16(100, &sink);
    if (pf_cpu_has_avx512_bf16())
        CHECK(bf == 100 * 12 * 32 * 2 && isfinite(sink), "dpbf16: %lld flops, sink %g", (long long)bf, sink);
    else
        CHECK(bf == -1, "dpbf16 without AVX512_BF16: %lld", (long long)bf);
    CHECK(pf_peak_dpbf16(-1, NULL) == -1, "dpbf16: negative iterations refused");
    printf("test_peak: %d passed, %d failed (best isa %d, avx512_bf16 %d)\n", n_pass, n_fail, best,
           pf_cpu_has_avx512_bf16());
    return n_fail != 0;
}
