/*
 * pixelfly_cuda_config.h - tile configurations of the CUDA kernels (csrc/cuda/bsmm.cu) and
 * the shared memory each one needs, as plain host functions (C11 and C++17 constexpr), so
 * that the choice of a configuration is testable without a GPU (csrc/tests/test_cuda_config.c
 * checks it against each architecture's opt-in shared-memory limit).
 *
 * FWD / BWD_X ("xw") kernel: a CTA computes a BM x b output tile with WM x WN warps; each
 * pipeline stage holds KB weight blocks and the matching [BM, KB*b] activation tile;
 * `stages` stages are in flight. BWD_W ("w") kernel: WM x WN x WK warps, BKT rows of T per
 * stage. Element sizes: 2 (fp16/bf16) or 4 (fp32); square blocks b = 16, 32 or 64.
 */
#ifndef PIXELFLY_CUDA_CONFIG_H
#define PIXELFLY_CUDA_CONFIG_H

#include <stddef.h>

#ifdef __cplusplus
#define PF_CFG_FN constexpr inline
#else
#define PF_CFG_FN static inline
#endif

/* Most stages the xw kernels are built with; fewer are used where shared memory is short. */
#define PF_XW_MAX_STAGES 3
/* Smallest opt-in shared memory per block of the architectures the kernels target (sm_86,
 * sm_89, sm_120: 99 KiB). Configurations above it also get a 2-stage variant. */
#define PF_SMEM_OPTIN_MIN (99 * 1024)

typedef struct { int bm, wm, wn, kb, stages; } pf_xw_cfg;
typedef struct { int wm, wn, wk, bkt, stages; } pf_w_cfg;

/* Shared-memory row padding in elements: 16-bit tiles +16 bytes (conflict-free ldmatrix);
 * fp32 k-major tiles 4 (ld = 4 mod 32), m/n-major tiles 8 (ld = 8 mod 32). */
PF_CFG_FN int pf_smem_pad(int elem_bytes, int kmajor) {
  return elem_bytes == 4 && kmajor ? 4 : 8;
}

/* The xw tile configuration for (element size, block) with `stages` stages. */
PF_CFG_FN pf_xw_cfg pf_xw_config(int elem_bytes, int b, int stages) {
  pf_xw_cfg c = {128, 4, 1, 1, 3};
  c.stages = stages;
  if (elem_bytes == 2) {
    c.kb = 64 / b;                          /* 64 k per stage */
  } else if (b == 64) {
    c.bm = 64; c.wm = 2; c.wn = 2; c.kb = 1;
  } else {
    c.kb = 32 / b;                          /* 32 k per stage */
  }
  return c;
}

PF_CFG_FN int pf_xw_lda(int elem_bytes, int b, pf_xw_cfg c) {
  return c.kb * b + pf_smem_pad(elem_bytes, 1);
}
/* FWD: weight tile [b (n)][KB*b + pad], k-major; BWD_X: [KB*b (k)][b + pad], n-major. */
PF_CFG_FN int pf_xw_ldb(int elem_bytes, int fwd, int b, pf_xw_cfg c) {
  return fwd ? c.kb * b + pf_smem_pad(elem_bytes, 1) : b + pf_smem_pad(elem_bytes, 0);
}
PF_CFG_FN int pf_xw_stage_elems(int elem_bytes, int fwd, int b, pf_xw_cfg c) {
  return c.bm * pf_xw_lda(elem_bytes, b, c) + (fwd ? b : c.kb * b) * pf_xw_ldb(elem_bytes, fwd, b, c);
}
/* Epilogue tile [BM][b + 4] floats (aliases the pipeline buffers). */
PF_CFG_FN int pf_epilogue_ld(int b) { return b + 4; }

/* Dynamic shared memory (bytes) of an xw configuration: the larger of pipeline and epilogue. */
PF_CFG_FN size_t pf_xw_smem(int elem_bytes, int fwd, int b, pf_xw_cfg c) {
  const size_t pipe = (size_t)c.stages * (size_t)pf_xw_stage_elems(elem_bytes, fwd, b, c) *
                      (size_t)elem_bytes;
  const size_t epi = (size_t)c.bm * (size_t)pf_epilogue_ld(b) * 4u;
  return pipe > epi ? pipe : epi;
}

/* Stages to run the xw kernel with on a device whose opt-in limit per block is
 * `smem_limit` bytes: the most (<= PF_XW_MAX_STAGES, >= 2) that fit, or 0 if none does
 * (the op then takes the generic kernel). */
PF_CFG_FN int pf_xw_stages(int elem_bytes, int fwd, int b, size_t smem_limit) {
  for (int s = PF_XW_MAX_STAGES; s >= 2; --s)
    if (pf_xw_smem(elem_bytes, fwd, b, pf_xw_config(elem_bytes, b, s)) <= smem_limit) return s;
  return 0;
}

/* The BWD_W tile configuration for (element size, block). */
PF_CFG_FN pf_w_cfg pf_w_config(int elem_bytes, int b) {
  pf_w_cfg c = {1, 1, 4, 64, 3};
  if (elem_bytes == 2) {
    if (b == 16) { c.bkt = 128; c.stages = 4; }
    else if (b == 32) { c.bkt = 128; }
    else { c.wm = 2; c.wn = 2; c.wk = 1; c.bkt = 64; }
  } else if (b == 64) {
    c.wm = 2; c.wn = 2; c.wk = 1; c.bkt = 32;
  }
  return c;
}

PF_CFG_FN int pf_w_ld(int elem_bytes, int b) { return b + pf_smem_pad(elem_bytes, 0); }

PF_CFG_FN size_t pf_w_smem(int elem_bytes, int b, pf_w_cfg c) {
  const size_t pipe = (size_t)c.stages * 2u * (size_t)c.bkt * (size_t)pf_w_ld(elem_bytes, b) *
                      (size_t)elem_bytes;
  const size_t epi = (size_t)c.wk * (size_t)b * (size_t)pf_epilogue_ld(b) * 4u;
  return pipe > epi ? pipe : epi;
}

#undef PF_CFG_FN
#endif /* PIXELFLY_CUDA_CONFIG_H */
