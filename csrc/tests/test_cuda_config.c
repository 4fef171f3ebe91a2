/* The CUDA kernels' tile configurations (pixelfly_cuda_config.h, the functions bsmm.cu
 * instantiates and picks with) against each architecture's opt-in shared-memory limit per
 * block: every (op, dtype, block) has a tiled configuration that fits on every target
 * architecture, with the most pipeline stages that fit. No GPU needed. */
#include <stdio.h>
#include <stdlib.h>

#include "pixelfly_cuda_config.h"

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) {                                                \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);      \
            fprintf(stderr, __VA_ARGS__);                             \
            fprintf(stderr, "\n");                                    \
            exit(1);                                                  \
        }                                                             \
    } while (0)

/* cudaDevAttrMaxSharedMemoryPerBlockOptin of each compute capability (CUDA C Programming
 * Guide, "Technical Specifications per Compute Capability"). */
static const struct { const char *arch; size_t optin; } ARCHS[] = {
    {"sm_80", 163 * 1024}, {"sm_86", 99 * 1024}, {"sm_87", 163 * 1024}, {"sm_89", 99 * 1024},
    {"sm_90", 227 * 1024}, {"sm_100", 227 * 1024}, {"sm_120", 99 * 1024},
};

int main(void) {
    const int es[] = {2, 4}, bs[] = {16, 32, 64};
    int checked = 0;
    CHECK(PF_SMEM_OPTIN_MIN == 99 * 1024, "PF_SMEM_OPTIN_MIN changed: update ARCHS");
    for (size_t a = 0; a < sizeof ARCHS / sizeof ARCHS[0]; a++) {
        const size_t lim = ARCHS[a].optin;
        for (int e = 0; e < 2; e++)
            for (int bi = 0; bi < 3; bi++) {
                const int b = bs[bi];
                for (int fwd = 0; fwd <= 1; fwd++) {
                    const int st = pf_xw_stages(es[e], fwd, b, lim);
                    CHECK(st >= 2 && st <= PF_XW_MAX_STAGES, "%s es=%d b=%d fwd=%d: %d stages",
                          ARCHS[a].arch, es[e], b, fwd, st);
                    const size_t need = pf_xw_smem(es[e], fwd, b, pf_xw_config(es[e], b, st));
                    CHECK(need <= lim, "%s es=%d b=%d fwd=%d: %zu > %zu bytes", ARCHS[a].arch,
                          es[e], b, fwd, need, lim);
                    if (st < PF_XW_MAX_STAGES) {  /* one more stage would not have fitted */
                        const size_t more = pf_xw_smem(es[e], fwd, b, pf_xw_config(es[e], b, st + 1));
                        CHECK(more > lim, "%s es=%d b=%d fwd=%d: %d stages chosen, %d fit",
                              ARCHS[a].arch, es[e], b, fwd, st, st + 1);
                        /* bsmm.cu compiles the 2-stage variant only above the minimum. */
                        CHECK(more > PF_SMEM_OPTIN_MIN, "2-stage variant not compiled for it");
                    }
                    checked++;
                }
                const size_t wneed = pf_w_smem(es[e], b, pf_w_config(es[e], b));
                CHECK(wneed <= lim, "%s bwd_w es=%d b=%d: %zu > %zu bytes", ARCHS[a].arch, es[e],
                      b, wneed, lim);
            }
    }
    /* The case the static review found: fp32 b = 64 (3 stages: 102-105 KiB) is above the
     * 99 KiB of sm_86/89 and takes 2 stages there, 3 on sm_80 and sm_90. */
    for (int fwd = 0; fwd <= 1; fwd++) {
        CHECK(pf_xw_smem(4, fwd, 64, pf_xw_config(4, 64, 3)) > 99 * 1024, "fp32 b=64 fits 99 KiB?");
        CHECK(pf_xw_stages(4, fwd, 64, 99 * 1024) == 2, "fp32 b=64 on sm_86: 2 stages");
        CHECK(pf_xw_stages(4, fwd, 64, 163 * 1024) == 3, "fp32 b=64 on sm_80: 3 stages");
        CHECK(pf_xw_stages(2, fwd, 64, 99 * 1024) == 3, "bf16 b=64 on sm_86: 3 stages");
    }
    /* Too little shared memory for any tiled configuration: 0 (generic kernel). */
    CHECK(pf_xw_stages(4, 1, 64, 16 * 1024) == 0, "16 KiB must not fit");
    /* The configurations bsmm.cu was written with (warp tiles must divide evenly). */
    for (int e = 0; e < 2; e++)
        for (int bi = 0; bi < 3; bi++) {
            const pf_xw_cfg c = pf_xw_config(es[e], bs[bi], 3);
            CHECK(c.bm % (16 * c.wm) == 0 && bs[bi] % (8 * c.wn) == 0, "xw warp tile");
            CHECK(c.kb * bs[bi] == (es[e] == 2 ? 64 : (bs[bi] == 64 ? 64 : 32)), "xw stage depth");
            const pf_w_cfg w = pf_w_config(es[e], bs[bi]);
            CHECK(bs[bi] % (16 * w.wm) == 0 && bs[bi] % (8 * w.wn) == 0 && (w.bkt / w.wk) % 16 == 0,
                  "w warp tile");
        }
    printf("test_cuda_config: %d configurations checked against %zu architectures\n", checked,
           sizeof ARCHS / sizeof ARCHS[0]);
    return 0;
}
