// xw_kernel.cuh - the tiled FWD / BWD_X kernel ("xw": activations times weight blocks).
//
// One CTA owns a BM x b tile of the output (BM rows of T, one output block-row r for FWD,
// one block-column c for BWD_X) and loops over the nonzero blocks of that block-row (CSR)
// or block-column (CSC). Each pipeline stage holds KB blocks: the activation tile
// [BM, KB*b] and the KB weight blocks. Warps split BM; the accumulator stays in registers;
// the epilogue goes through shared memory for 16-byte coalesced stores. Empty rows /
// columns write zeros.
#pragma once

#include "pixelfly_cuda_config.h"
#include "tile.cuh"

namespace pf_cuda {

struct XwParams {
  const void *act;  // x (FWD) or dy (BWD_X)
  int64_t lda;      // its row stride
  const void *w;    // blocks [nnz, b, b]
  void *out;        // y or dx
  int64_t ldo;
  int64_t T;
  const int64_t *ptr;  // row_ptr (FWD) or col_ptr (BWD_X)
  const int64_t *idx;  // col_idx (FWD) or row_idx (BWD_X)
  const int64_t *blk;  // nullptr (FWD: block = position) or csc_blk (BWD_X)
  int64_t nb;          // R (FWD) or C (BWD_X): output blocks along the feature dim
  int64_t ntiles;      // nb * ceil(T / BM)
};

// Compile-time view of pf_xw_config(sizeof(T), B, STAGES) (pixelfly_cuda_config.h).
template <typename T, bool FWD, int B, int STAGES>
struct XwCfg {
  static constexpr int ES = (int)sizeof(T);
  static constexpr pf_xw_cfg C = pf_xw_config(ES, B, STAGES);
  static constexpr int BM = C.bm, WM = C.wm, WN = C.wn, KB = C.kb;
  static constexpr int NT = WM * WN * 32;
  static constexpr int BKS = KB * B;                           // k depth of one stage
  static constexpr int LDA = pf_xw_lda(ES, B, C);              // A tile [BM][LDA], k-major
  // B tile: FWD [B (n)][BKS + pad] k-major; BWD_X [BKS (k)][B + pad] n-major.
  static constexpr int LDB = pf_xw_ldb(ES, FWD, B, C);
  static constexpr int A_ELEMS = BM * LDA;
  static constexpr int STAGE_ELEMS = pf_xw_stage_elems(ES, FWD, B, C);
  static constexpr int LDC = pf_epilogue_ld(B);
  static constexpr size_t SMEM = pf_xw_smem(ES, FWD, B, C);
  static constexpr int WTM = BM / WM, WTN = B / WN, MI = WTM / 16, NI = WTN / 8;
  static constexpr int EPC = 16 / ES, CPR = B / EPC;  // elements per 16-byte chunk, chunks per block row
  static_assert(WTM % 16 == 0 && WTN % 8 == 0, "warp tile");
  static_assert((B * sizeof(T)) % 16 == 0, "block row must be whole 16-byte chunks");
};

// One output tile: output block ob (block-row for FWD, block-column for BWD_X), rows
// t0 .. t0 + valid_rows of T, and its nonzero blocks at positions beg .. end.
struct XwTile {
  int64_t ob, t0, beg, end, nblk, nsteps;
  int valid_rows;
};

template <int BM, int KB>
__device__ __forceinline__ XwTile xw_tile(const XwParams &p, int64_t tile) {
  XwTile t;
  t.ob = tile % p.nb;
  t.t0 = (tile / p.nb) * BM;
  t.beg = __ldg(p.ptr + t.ob);
  t.end = __ldg(p.ptr + t.ob + 1);
  t.nblk = t.end - t.beg;
  t.nsteps = (t.nblk + KB - 1) / KB;
  const int64_t rows_left = p.T - t.t0;
  t.valid_rows = rows_left < BM ? (int)rows_left : BM;
  return t;
}

// Issue the copies of step s: KB activation blocks [BM, B] (rows past T zero-filled) into
// the stage's A tile and the matching KB weight blocks into its B tile.
template <typename T, bool FWD, int B, class Cfg>
__device__ __forceinline__ void xw_load_stage(const XwParams &p, const XwTile &t, int64_t s,
                                              T *As, int tid) {
  constexpr int BM = Cfg::BM, KB = Cfg::KB, NT = Cfg::NT, EPC = Cfg::EPC, CPR = Cfg::CPR;
  const T *act = static_cast<const T *>(p.act);
  const T *w = static_cast<const T *>(p.w);
  T *Bs = As + Cfg::A_ELEMS;
#pragma unroll
  for (int q = 0; q < KB; ++q) {
    const int64_t pos = t.beg + s * KB + q;
    if (pos >= t.end) break;
    const int64_t kidx = __ldg(p.idx + pos);  // input block-col (FWD) / block-row (BWD_X)
    const int64_t wb = FWD ? pos : __ldg(p.blk + pos);
    const T *asrc = act + kidx * B;
    for (int i = tid; i < BM * CPR; i += NT) {
      const int row = i / CPR, ch = i % CPR;
      const bool ok = row < t.valid_rows;
      const T *src = ok ? asrc + (t.t0 + row) * p.lda + ch * EPC : act;
      cp_async16(As + row * Cfg::LDA + q * B + ch * EPC, src, ok ? 16 : 0);
    }
    const T *wsrc = w + wb * (int64_t)(B * B);
    for (int i = tid; i < B * CPR; i += NT) {
      const int row = i / CPR, ch = i % CPR;
      T *dst = FWD ? Bs + row * Cfg::LDB + q * B + ch * EPC
                   : Bs + (q * B + row) * Cfg::LDB + ch * EPC;
      cp_async16(dst, wsrc + row * B + ch * EPC, 16);
    }
  }
}

// Epilogue through shared memory (Cs aliases the pipeline buffers): 16-byte coalesced
// stores of the tile's rows < T.
template <typename T, int B, class Cfg>
__device__ __forceinline__ void xw_store(const XwParams &p, const XwTile &t,
                                         const float (&acc)[Cfg::MI][Cfg::NI][4], float *Cs,
                                         int tid, int lane, int wm, int wn) {
  constexpr int NT = Cfg::NT, EPC = Cfg::EPC, CPR = Cfg::CPR;
  store_acc(Cs, Cfg::LDC, acc, wm * Cfg::WTM, wn * Cfg::WTN, lane);
  __syncthreads();
  T *obase = static_cast<T *>(p.out) + t.ob * B;
  for (int i = tid; i < t.valid_rows * CPR; i += NT) {
    const int row = i / CPR, ch = i % CPR;
    store16<T>(obase + (t.t0 + row) * p.ldo + ch * EPC, Cs + row * Cfg::LDC + ch * EPC);
  }
  __syncthreads();  // Cs aliases the pipeline buffers of the next tile
}

template <typename T, int MODE, bool FWD, int B, int STAGES>
__global__ void __launch_bounds__(XwCfg<T, FWD, B, STAGES>::NT)
    xw_kernel(XwParams p) {
  using Cfg = XwCfg<T, FWD, B, STAGES>;
  constexpr int KB = Cfg::KB;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T *smem = reinterpret_cast<T *>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % Cfg::WM, wn = warp / Cfg::WM;

  for (int64_t tile = blockIdx.x; tile < p.ntiles; tile += gridDim.x) {
    const XwTile t = xw_tile<Cfg::BM, KB>(p, tile);
    float acc[Cfg::MI][Cfg::NI][4];
    zero_acc(acc);
    run_pipeline<STAGES>(
        t.nsteps,
        [&](int64_t s, int buf) {
          xw_load_stage<T, FWD, B, Cfg>(p, t, s, smem + buf * Cfg::STAGE_ELEMS, tid);
        },
        [&](int64_t s, int buf) {
          const T *As = smem + buf * Cfg::STAGE_ELEMS;
          const T *Bs = As + Cfg::A_ELEMS;
          const int64_t left = t.nblk - s * KB;
          const int ke = (left < KB ? (int)left : KB) * B;
          warp_tile<T, MODE, Cfg::MI, Cfg::NI, true, FWD, Cfg::BKS>(
              acc, As, Cfg::LDA, Bs, Cfg::LDB, wm * Cfg::WTM, wn * Cfg::WTN, 0, ke, lane);
        });
    xw_store<T, B, Cfg>(p, t, acc, reinterpret_cast<float *>(smem_raw), tid, lane, wm, wn);
  }
}

}  // namespace pf_cuda
