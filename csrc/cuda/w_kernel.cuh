// w_kernel.cuh - the tiled BWD_W kernel: dw[blk] = dy[:, r-block]^T x[:, c-block].
//
// One CTA owns one nonzero block and reduces over a range of T (stages of BKT rows);
// warps split the block and/or the T rows of a stage (reduced through shared memory at the
// end). When there are few blocks, T is split across CTAs into an fp32 workspace and
// split_reduce_kernel sums the splits (deterministic, no atomics).
#pragma once

#include "pixelfly_cuda_config.h"
#include "tile.cuh"

namespace pf_cuda {

struct WParams {
  const void *dy; int64_t ldy;
  const void *x; int64_t ldx;
  void *out;      // dw [nnz, b, b] (nsplit == 1)
  float *ws;      // [nsplit, nnz, b, b] fp32 (nsplit > 1)
  int64_t T, nnz, nsplit, rows_per_split;
  const int64_t *row_idx, *csc_blk, *col_idx;
};

// Compile-time view of pf_w_config(sizeof(T), B) (pixelfly_cuda_config.h).
template <typename T, int B>
struct WCfg {
  static constexpr int ES = (int)sizeof(T);
  static constexpr pf_w_cfg C = pf_w_config(ES, B);
  static constexpr int WM = C.wm, WN = C.wn, WK = C.wk, BKT = C.bkt, STAGES = C.stages;
  static constexpr int NT = WM * WN * WK * 32;
  static constexpr int LD = pf_w_ld(ES, B);  // both tiles [BKT][LD], m/n-major
  static constexpr int TILE = BKT * LD;
  static constexpr int STAGE_ELEMS = 2 * TILE;
  static constexpr int LDC = pf_epilogue_ld(B);
  static constexpr size_t SMEM = pf_w_smem(ES, B, C);
  static constexpr int WTM = B / WM, WTN = B / WN, MI = WTM / 16, NI = WTN / 8;
  static constexpr int KW = BKT / WK;  // T rows of a stage per warp group
  static constexpr int EPC = 16 / ES, CPR = B / EPC;  // elements per 16-byte chunk, chunks per block row
  static_assert(WTM % 16 == 0 && WTN % 8 == 0 && KW % 16 == 0, "warp tile");
};

// One work item: the block at CSC position kk (block-row r, block-column c, stored block
// blk) over the rows tb .. te of T (split `split`).
struct WTile {
  int64_t split, r, blk, c, tb, te, nsteps;
};

template <int BKT>
__device__ __forceinline__ WTile w_tile(const WParams &p, int64_t tile) {
  WTile t;
  const int64_t kk = tile % p.nnz;  // CSC position
  t.split = tile / p.nnz;
  t.r = __ldg(p.row_idx + kk);
  t.blk = __ldg(p.csc_blk + kk);
  t.c = __ldg(p.col_idx + t.blk);
  t.tb = t.split * p.rows_per_split;
  t.te = t.tb + p.rows_per_split;
  if (t.te > p.T) t.te = p.T;
  t.nsteps = t.te > t.tb ? (t.te - t.tb + BKT - 1) / BKT : 0;
  return t;
}

// Issue the copies of step s: BKT rows of dy's r-block into the A tile and of x's c-block
// into the B tile (rows past te zero-filled).
template <typename T, int B, class Cfg>
__device__ __forceinline__ void w_load_stage(const WParams &p, const WTile &t, int64_t s,
                                             T *As, int tid) {
  constexpr int BKT = Cfg::BKT, NT = Cfg::NT, EPC = Cfg::EPC, CPR = Cfg::CPR;
  const T *dy = static_cast<const T *>(p.dy);
  const T *x = static_cast<const T *>(p.x);
  const T *dsrc = dy + t.r * B, *xsrc = x + t.c * B;
  T *Bs = As + Cfg::TILE;
  const int64_t t0 = t.tb + s * BKT;
  for (int i = tid; i < 2 * BKT * CPR; i += NT) {
    const int which = i / (BKT * CPR), j = i % (BKT * CPR);
    const int row = j / CPR, ch = j % CPR;
    const bool ok = t0 + row < t.te;
    const T *src = which ? xsrc + (t0 + row) * p.ldx : dsrc + (t0 + row) * p.ldy;
    T *dst = (which ? Bs : As) + row * Cfg::LD + ch * EPC;
    cp_async16(dst, ok ? src + ch * EPC : (which ? x : dy), ok ? 16 : 0);
  }
}

// Epilogue: each warp group's partial block into shared memory (Cs aliases the pipeline
// buffers), summed over the WK groups, then written to dw (or to the split's fp32 slice
// of the workspace).
template <typename T, int B, class Cfg>
__device__ __forceinline__ void w_store(const WParams &p, const WTile &t,
                                        const float (&acc)[Cfg::MI][Cfg::NI][4], float *Cs,
                                        int tid, int lane, int wm, int wn, int wk) {
  constexpr int NT = Cfg::NT, WK = Cfg::WK;
  store_acc(Cs + wk * B * Cfg::LDC, Cfg::LDC, acc, wm * Cfg::WTM, wn * Cfg::WTN, lane);
  __syncthreads();
  for (int i = tid; i < B * (B / 4); i += NT) {  // 4 floats per item
    const int row = i / (B / 4), col = (i % (B / 4)) * 4;
    float v[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = Cs[row * Cfg::LDC + col + e];
#pragma unroll
    for (int q = 1; q < WK; ++q)
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] += Cs[q * B * Cfg::LDC + row * Cfg::LDC + col + e];
    if (p.nsplit > 1) {
      *reinterpret_cast<float4 *>(p.ws + ((t.split * p.nnz + t.blk) * B + row) * B + col) =
          make_float4(v[0], v[1], v[2], v[3]);
    } else {
      T *dst = static_cast<T *>(p.out) + (t.blk * B + row) * B + col;
#pragma unroll
      for (int e = 0; e < 4; ++e) dst[e] = from_f<T>(v[e]);
    }
  }
  __syncthreads();
}

template <typename T, int MODE, int B>
__global__ void __launch_bounds__(WCfg<T, B>::NT)
    w_kernel(WParams p) {
  using Cfg = WCfg<T, B>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T *smem = reinterpret_cast<T *>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % Cfg::WM, wn = (warp / Cfg::WM) % Cfg::WN, wk = warp / (Cfg::WM * Cfg::WN);
  const int64_t ntiles = p.nnz * p.nsplit;

  for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    const WTile t = w_tile<Cfg::BKT>(p, tile);
    float acc[Cfg::MI][Cfg::NI][4];
    zero_acc(acc);
    run_pipeline<Cfg::STAGES>(
        t.nsteps,
        [&](int64_t s, int buf) {
          w_load_stage<T, B, Cfg>(p, t, s, smem + buf * Cfg::STAGE_ELEMS, tid);
        },
        [&](int64_t, int buf) {
          const T *As = smem + buf * Cfg::STAGE_ELEMS;
          const T *Bs = As + Cfg::TILE;
          // Rows past te were zero-filled, so every warp runs its full k range.
          warp_tile<T, MODE, Cfg::MI, Cfg::NI, false, false, Cfg::BKT>(
              acc, As, Cfg::LD, Bs, Cfg::LD, wm * Cfg::WTM, wn * Cfg::WTN, wk * Cfg::KW,
              (wk + 1) * Cfg::KW, lane);
        });
    w_store<T, B, Cfg>(p, t, acc, reinterpret_cast<float *>(smem_raw), tid, lane, wm, wn, wk);
  }
}

// Sum the nsplit fp32 partial results into dw.
template <typename T>
__global__ void split_reduce_kernel(const float *ws, int64_t nsplit, int64_t n, T *out) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int64_t q = 0; q < nsplit; ++q) s += ws[q * n + i];
    out[i] = from_f<T>(s);
  }
}

}  // namespace pf_cuda
