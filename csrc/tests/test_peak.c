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
    /* the tile probe: the register tile of each ISA (AVX2 6 x 16, AVX-512 8 x 32; portable
     * 8 x 16) over 64 steps a round */
    const int64_t tile[] = {0, 8 * 16, 6 * 16, 8 * 32, 8 * 32};
    for (int isa = PF_ISA_PORTABLE; isa <= PF_ISA_AVX512BF16; ++isa) {
        double sink = NAN;
        const int64_t flops = pf_peak_tile(isa, 3, &sink);
        if (isa <= best) {
            CHECK(flops == 3 * tile[isa] * 64 * 2, "tile isa %d: %lld flops", isa, (long long)flops);
            /* every multiply-add adds 2^-20 to a partial sum that starts at 0 */
            CHECK(sink == 3.0 * tile[isa] * 64 * 0x1p-20, "tile isa %d: sink %g", isa, sink);
            CHECK(pf_peak_tile(isa, 0, NULL) == 0, "tile isa %d: zero iterations", isa);
        } else {
            CHECK(flops == -1, "tile isa %d beyond this CPU: %lld", isa, (long long)flops);
        }
    }
    CHECK(pf_peak_tile(PF_ISA_AUTO, 2, NULL) == 2 * tile[best] * 64 * 2, "tile: auto = the best ISA");
    CHECK(pf_peak_tile(-1, 2, NULL) == -1 && pf_peak_tile(5, 2, NULL) == -1, "tile: bad isa refused");
    CHECK(pf_peak_tile(PF_ISA_PORTABLE, -1, NULL) == -1, "tile: negative iterations refused");
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
