// Block-sparse matmul on CUDA (torch-free). See pixelfly_cuda.h for the contract.
//
// Ops (weight B: out x in = (R*b1) x (C*b2), blocks w[nnz][b1][b2] in block-CSR order):
//   FWD   : y [T, out] = x [T, in] B^T
//   BWD_X : dx[T, in]  = dy[T, out] B
//   BWD_W : dw[blk]    = dy[:, r-block]^T x[:, c-block]      (layout blocks only)
//
// Fast path (square blocks 16/32/64, 16-byte aligned operands):
//   FWD / BWD_X: one CTA owns a BM x b tile of the output (BM rows of T, one output
//     block-row r for FWD, one block-column c for BWD_X) and loops over the nonzero
//     blocks of that block-row (CSR) or block-column (CSC). Each pipeline stage holds
//     KB blocks: the activation tile [BM, KB*b] and the KB weight blocks, staged through
//     shared memory by cp.async (multi-stage ring). Warps split BM; the accumulator
//     stays in registers; the epilogue goes through shared memory for 16-byte
//     coalesced stores. Empty rows/columns write zeros.
//   BWD_W: one CTA owns one nonzero block and reduces over a range of T (stages of BKT
//     rows); warps split the block and/or the T rows of a stage (reduced through shared
//     memory at the end). When there are few blocks, T is split across CTAs into an fp32
//     workspace and a second kernel sums the splits (deterministic, no atomics).
//   Math: mma.sync m16n8k16 (fp16/bf16, ldmatrix fragments), m16n8k8 TF32, or exact fp32
//   FFMA with the same fragment-shaped accumulator layout. All fp32 accumulation.
// Generic path: one thread per output element, fp32 accumulation, any block shape/stride.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "pixelfly_cuda.h"
#include "pixelfly_cuda_config.h"

namespace pf_cuda {

// ------------------------------------------------------------------ element helpers
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Math modes.
enum { MODE_MMA16 = 0, MODE_TF32 = 1, MODE_FFMA = 2 };

// ------------------------------------------------------------------ PTX wrappers
__device__ __forceinline__ uint32_t smem_u32(const void *p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; src_bytes = 0 zero-fills the destination.
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)),
               "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

template <typename T> struct Mma16;
template <> struct Mma16<__half> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4],
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct Mma16<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4],
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t to_tf32(float f) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(f));
  return r;
}

// Tile configurations and their shared memory: pixelfly_cuda_config.h (testable on a host).

// ------------------------------------------------------------------ warp tile compute
// acc[MI][NI][4] += A(m0.., k0..k1) * B(k0..k1, n0..) for the warp's MI*16 x NI*8 tile.
// A(m,k) is As[m*lda+k] (A_KMAJ) or As[k*lda+m]; B(k,n) is Bs[n*ldb+k] (B_KMAJ) or
// Bs[k*ldb+n]. The k range [kb, ke) is a multiple of 16 (MMA16) or 8, within [0, KMAX).
template <typename T, int MODE, int MI, int NI, bool A_KMAJ, bool B_KMAJ, int KMAX>
__device__ __forceinline__ void warp_tile(float (&acc)[MI][NI][4], const T *As, int lda,
                                          const T *Bs, int ldb, int m0, int n0, int kb,
                                          int ke, int lane) {
  const int g = lane >> 2, tig = lane & 3;
  if constexpr (MODE == MODE_MMA16) {
    static_assert(NI % 2 == 0, "NI must be even for x4 B loads");
    const int r8 = lane & 7, j = lane >> 3;
#pragma unroll
    for (int k = 0; k < KMAX; k += 16) {
      if (k < kb || k >= ke) continue;
      uint32_t a[MI][4];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        const int mb = m0 + mi * 16;
        if constexpr (A_KMAJ)
          ldsm_x4(a[mi], As + (mb + r8 + (j & 1) * 8) * lda + k + (j >> 1) * 8);
        else
          ldsm_x4_t(a[mi], As + (k + r8 + (j >> 1) * 8) * lda + mb + (j & 1) * 8);
      }
      uint32_t b[NI][2];
#pragma unroll
      for (int ni = 0; ni < NI; ni += 2) {
        const int nb = n0 + ni * 8;
        uint32_t r[4];
        if constexpr (B_KMAJ)
          ldsm_x4(r, Bs + (nb + r8 + (j >> 1) * 8) * ldb + k + (j & 1) * 8);
        else
          ldsm_x4_t(r, Bs + (k + r8 + (j & 1) * 8) * ldb + nb + (j >> 1) * 8);
        b[ni][0] = r[0]; b[ni][1] = r[1]; b[ni + 1][0] = r[2]; b[ni + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) Mma16<T>::run(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
    }
  } else if constexpr (MODE == MODE_TF32) {
    auto A = [&](int m, int k) -> float { return A_KMAJ ? As[m * lda + k] : As[k * lda + m]; };
    auto B = [&](int k, int n) -> float { return B_KMAJ ? Bs[n * ldb + k] : Bs[k * ldb + n]; };
#pragma unroll
    for (int k = 0; k < KMAX; k += 8) {
      if (k < kb || k >= ke) continue;
      uint32_t a[MI][4], b[NI][2];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        const int m = m0 + mi * 16 + g;
        a[mi][0] = to_tf32(A(m, k + tig));
        a[mi][1] = to_tf32(A(m + 8, k + tig));
        a[mi][2] = to_tf32(A(m, k + tig + 4));
        a[mi][3] = to_tf32(A(m + 8, k + tig + 4));
      }
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        const int n = n0 + ni * 8 + g;
        b[ni][0] = to_tf32(B(k + tig, n));
        b[ni][1] = to_tf32(B(k + tig + 4, n));
      }
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) mma_tf32(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
    }
  } else {  // exact fp32 FFMA, same accumulator layout as the mma fragments
    auto A = [&](int m, int k) -> float { return A_KMAJ ? As[m * lda + k] : As[k * lda + m]; };
    auto B = [&](int k, int n) -> float { return B_KMAJ ? Bs[n * ldb + k] : Bs[k * ldb + n]; };
#pragma unroll 4
    for (int k = kb; k < ke; ++k) {
      float av[MI][2], bv[NI][2];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        av[mi][0] = A(m0 + mi * 16 + g, k);
        av[mi][1] = A(m0 + mi * 16 + g + 8, k);
      }
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        bv[ni][0] = B(k, n0 + ni * 8 + 2 * tig);
        bv[ni][1] = B(k, n0 + ni * 8 + 2 * tig + 1);
      }
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              acc[mi][ni][h * 2 + e] = fmaf(av[mi][h], bv[ni][e], acc[mi][ni][h * 2 + e]);
    }
  }
}

// Write a warp's accumulator (fragment layout) into a float tile Cs[m*ldc + n].
template <int MI, int NI>
__device__ __forceinline__ void store_acc(float *Cs, int ldc, const float (&acc)[MI][NI][4],
                                          int m0, int n0, int lane) {
  const int g = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) {
      const int m = m0 + mi * 16 + g, n = n0 + ni * 8 + 2 * tig;
      *reinterpret_cast<float2 *>(Cs + m * ldc + n) = make_float2(acc[mi][ni][0], acc[mi][ni][1]);
      *reinterpret_cast<float2 *>(Cs + (m + 8) * ldc + n) =
          make_float2(acc[mi][ni][2], acc[mi][ni][3]);
    }
}

// Convert EPC = 16 / sizeof(T) floats to T and store them as one 16-byte vector.
template <typename T>
__device__ __forceinline__ void store16(T *dst, const float *v) {
  constexpr int EPC = 16 / sizeof(T);
  union {
    uint4 u;
    T e[EPC];
  } pack;
#pragma unroll
  for (int i = 0; i < EPC; ++i) pack.e[i] = from_f<T>(v[i]);
  *reinterpret_cast<uint4 *>(dst) = pack.u;
}

// ------------------------------------------------------------------ FWD / BWD_X kernel
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
  static_assert(WTM % 16 == 0 && WTN % 8 == 0, "warp tile");
  static_assert((B * sizeof(T)) % 16 == 0, "block row must be whole 16-byte chunks");
};

template <typename T, int MODE, bool FWD, int B, int STAGES>
__global__ void __launch_bounds__(XwCfg<T, FWD, B, STAGES>::NT)
    xw_kernel(XwParams p) {
  using Cfg = XwCfg<T, FWD, B, STAGES>;
  constexpr int BM = Cfg::BM, WM = Cfg::WM, KB = Cfg::KB;
  constexpr int NT = Cfg::NT, EPC = 16 / sizeof(T), CPR = B / EPC;  // 16-byte chunks per block row
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T *smem = reinterpret_cast<T *>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % WM, wn = warp / WM;
  const T *act = static_cast<const T *>(p.act);
  const T *w = static_cast<const T *>(p.w);
  T *out = static_cast<T *>(p.out);

  for (int64_t tile = blockIdx.x; tile < p.ntiles; tile += gridDim.x) {
    const int64_t ob = tile % p.nb;          // output block-row (FWD) / block-column (BWD_X)
    const int64_t t0 = (tile / p.nb) * BM;   // first row of T
    const int64_t beg = __ldg(p.ptr + ob), end = __ldg(p.ptr + ob + 1);
    const int64_t nblk = end - beg;
    const int64_t nsteps = (nblk + KB - 1) / KB;
    const int64_t rows_left = p.T - t0;
    const int valid_rows = rows_left < BM ? (int)rows_left : BM;

    auto load_stage = [&](int64_t s, int buf) {
      T *As = smem + buf * Cfg::STAGE_ELEMS;
      T *Bs = As + Cfg::A_ELEMS;
#pragma unroll
      for (int q = 0; q < KB; ++q) {
        const int64_t pos = beg + s * KB + q;
        if (pos >= end) break;
        const int64_t kidx = __ldg(p.idx + pos);  // input block-col (FWD) / block-row (BWD_X)
        const int64_t wb = FWD ? pos : __ldg(p.blk + pos);
        const T *asrc = act + kidx * B;
        for (int i = tid; i < BM * CPR; i += NT) {
          const int row = i / CPR, ch = i % CPR;
          const bool ok = row < valid_rows;
          const T *src = ok ? asrc + (t0 + row) * p.lda + ch * EPC : act;
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
    };

    float acc[Cfg::MI][Cfg::NI][4];
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < nsteps) load_stage(s, s);
      cp_async_commit();
    }
    for (int64_t s = 0; s < nsteps; ++s) {
      cp_async_wait<STAGES - 2>();
      __syncthreads();
      const int64_t sn = s + STAGES - 1;
      if (sn < nsteps) load_stage(sn, (int)(sn % STAGES));
      cp_async_commit();
      const int buf = (int)(s % STAGES);
      const T *As = smem + buf * Cfg::STAGE_ELEMS;
      const T *Bs = As + Cfg::A_ELEMS;
      const int64_t left = nblk - s * KB;
      const int ke = (left < KB ? (int)left : KB) * B;
      warp_tile<T, MODE, Cfg::MI, Cfg::NI, true, FWD, Cfg::BKS>(
          acc, As, Cfg::LDA, Bs, Cfg::LDB, wm * Cfg::WTM, wn * Cfg::WTN, 0, ke, lane);
    }
    cp_async_wait<0>();
    __syncthreads();

    // Epilogue through shared memory: 16-byte coalesced stores, rows < T only.
    float *Cs = reinterpret_cast<float *>(smem_raw);
    store_acc(Cs, Cfg::LDC, acc, wm * Cfg::WTM, wn * Cfg::WTN, lane);
    __syncthreads();
    T *obase = out + ob * B;
    for (int i = tid; i < valid_rows * CPR; i += NT) {
      const int row = i / CPR, ch = i % CPR;
      store16<T>(obase + (t0 + row) * p.ldo + ch * EPC, Cs + row * Cfg::LDC + ch * EPC);
    }
    __syncthreads();  // Cs aliases the pipeline buffers of the next tile
  }
}

// ------------------------------------------------------------------ BWD_W kernel
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
  static_assert(WTM % 16 == 0 && WTN % 8 == 0 && KW % 16 == 0, "warp tile");
};

template <typename T, int MODE, int B>
__global__ void __launch_bounds__(WCfg<T, B>::NT)
    w_kernel(WParams p) {
  using Cfg = WCfg<T, B>;
  constexpr int WM = Cfg::WM, WN = Cfg::WN, WK = Cfg::WK, BKT = Cfg::BKT, STAGES = Cfg::STAGES;
  constexpr int NT = Cfg::NT, EPC = 16 / sizeof(T), CPR = B / EPC;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T *smem = reinterpret_cast<T *>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % WM, wn = (warp / WM) % WN, wk = warp / (WM * WN);
  const T *dy = static_cast<const T *>(p.dy);
  const T *x = static_cast<const T *>(p.x);
  const int64_t ntiles = p.nnz * p.nsplit;

  for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    const int64_t kk = tile % p.nnz, split = tile / p.nnz;  // kk: CSC position
    const int64_t r = __ldg(p.row_idx + kk), blk = __ldg(p.csc_blk + kk);
    const int64_t c = __ldg(p.col_idx + blk);
    const int64_t tb = split * p.rows_per_split;
    int64_t te = tb + p.rows_per_split;
    if (te > p.T) te = p.T;
    const int64_t nsteps = te > tb ? (te - tb + BKT - 1) / BKT : 0;
    const T *dsrc = dy + r * B, *xsrc = x + c * B;

    auto load_stage = [&](int64_t s, int buf) {
      T *As = smem + buf * Cfg::STAGE_ELEMS;
      T *Bs = As + Cfg::TILE;
      const int64_t t0 = tb + s * BKT;
      for (int i = tid; i < 2 * BKT * CPR; i += NT) {
        const int which = i / (BKT * CPR), j = i % (BKT * CPR);
        const int row = j / CPR, ch = j % CPR;
        const bool ok = t0 + row < te;
        const T *src = which ? xsrc + (t0 + row) * p.ldx : dsrc + (t0 + row) * p.ldy;
        T *dst = (which ? Bs : As) + row * Cfg::LD + ch * EPC;
        cp_async16(dst, ok ? src + ch * EPC : (which ? x : dy), ok ? 16 : 0);
      }
    };

    float acc[Cfg::MI][Cfg::NI][4];
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < nsteps) load_stage(s, s);
      cp_async_commit();
    }
    for (int64_t s = 0; s < nsteps; ++s) {
      cp_async_wait<STAGES - 2>();
      __syncthreads();
      const int64_t sn = s + STAGES - 1;
      if (sn < nsteps) load_stage(sn, (int)(sn % STAGES));
      cp_async_commit();
      const int buf = (int)(s % STAGES);
      const T *As = smem + buf * Cfg::STAGE_ELEMS;
      const T *Bs = As + Cfg::TILE;
      // Rows past te were zero-filled, so every warp runs its full k range.
      warp_tile<T, MODE, Cfg::MI, Cfg::NI, false, false, BKT>(
          acc, As, Cfg::LD, Bs, Cfg::LD, wm * Cfg::WTM, wn * Cfg::WTN, wk * Cfg::KW,
          (wk + 1) * Cfg::KW, lane);
    }
    cp_async_wait<0>();
    __syncthreads();

    float *Cs = reinterpret_cast<float *>(smem_raw);
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
        *reinterpret_cast<float4 *>(p.ws + ((split * p.nnz + blk) * B + row) * B + col) =
            make_float4(v[0], v[1], v[2], v[3]);
      } else {
        T *dst = static_cast<T *>(p.out) + (blk * B + row) * B + col;
#pragma unroll
        for (int e = 0; e < 4; ++e) dst[e] = from_f<T>(v[e]);
      }
    }
    __syncthreads();
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

// ------------------------------------------------------------------ generic kernels
struct GParams {
  const void *x; int64_t ldx;
  const void *dy; int64_t ldy;
  const void *w;
  void *out; int64_t ldo;
  int64_t T, R, C, b1, b2, nnz;
  const int64_t *row_ptr, *col_idx, *col_ptr, *row_idx, *csc_blk;
};

template <typename T>
__global__ void generic_fwd_kernel(GParams p) {
  const T *x = static_cast<const T *>(p.x), *w = static_cast<const T *>(p.w);
  T *y = static_cast<T *>(p.out);
  const int64_t outf = p.R * p.b1, n = p.T * outf;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = e / outf, o = e % outf, r = o / p.b1, i = o % p.b1;
    float acc = 0.f;
    for (int64_t k = p.row_ptr[r]; k < p.row_ptr[r + 1]; ++k) {
      const T *xr = x + t * p.ldx + p.col_idx[k] * p.b2;
      const T *wr = w + (k * p.b1 + i) * p.b2;
      for (int64_t j = 0; j < p.b2; ++j) acc = fmaf(to_f(xr[j]), to_f(wr[j]), acc);
    }
    y[t * p.ldo + o] = from_f<T>(acc);
  }
}

template <typename T>
__global__ void generic_bwd_x_kernel(GParams p) {
  const T *dy = static_cast<const T *>(p.dy), *w = static_cast<const T *>(p.w);
  T *dx = static_cast<T *>(p.out);
  const int64_t inf = p.C * p.b2, n = p.T * inf;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = e / inf, o = e % inf, c = o / p.b2, j = o % p.b2;
    float acc = 0.f;
    for (int64_t kk = p.col_ptr[c]; kk < p.col_ptr[c + 1]; ++kk) {
      const T *dr = dy + t * p.ldy + p.row_idx[kk] * p.b1;
      const T *wc = w + p.csc_blk[kk] * p.b1 * p.b2 + j;
      for (int64_t i = 0; i < p.b1; ++i) acc = fmaf(to_f(dr[i]), to_f(wc[i * p.b2]), acc);
    }
    dx[t * p.ldo + o] = from_f<T>(acc);
  }
}

template <typename T>
__global__ void generic_bwd_w_kernel(GParams p) {
  const T *dy = static_cast<const T *>(p.dy), *x = static_cast<const T *>(p.x);
  T *dw = static_cast<T *>(p.out);
  const int64_t bsz = p.b1 * p.b2, n = p.nnz * bsz;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t blk = e / bsz, i = (e % bsz) / p.b2, j = e % p.b2;
    int64_t lo = 0, hi = p.R;  // block-row r: row_ptr[r] <= blk < row_ptr[r+1]
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (p.row_ptr[mid] <= blk) lo = mid; else hi = mid;
    }
    const T *dc = dy + lo * p.b1 + i, *xc = x + p.col_idx[blk] * p.b2 + j;
    float acc = 0.f;
    for (int64_t t = 0; t < p.T; ++t) acc = fmaf(to_f(dc[t * p.ldy]), to_f(xc[t * p.ldx]), acc);
    dw[e] = from_f<T>(acc);
  }
}

// ------------------------------------------------------------------ host side
static int current_device() {
  int dev = 0;
  return cudaGetDevice(&dev) == cudaSuccess ? dev : -1;
}

// A per-device integer attribute, cached (devices 0..63); `fallback` when the query fails.
static int device_attr(cudaDeviceAttr attr, int *cache, int fallback) {
  const int dev = current_device();
  if (dev >= 0 && dev < 64 && cache[dev] > 0) return cache[dev];
  int n = 0;
  if (dev < 0 || cudaDeviceGetAttribute(&n, attr, dev) != cudaSuccess || n <= 0) {
    (void)cudaGetLastError();  // a failed query must not surface as a later launch error
    return fallback;
  }
  if (dev < 64) cache[dev] = n;
  return n;
}

static int num_sms() {
  static int cache[64] = {0};
  return device_attr(cudaDevAttrMultiProcessorCount, cache, 108);
}

// Largest dynamic shared memory a block may opt into on the current device (99 KiB on
// sm_86/89/120, 163 KiB on sm_80/87, 227 KiB on sm_90/100); 48 KiB if the query fails.
static size_t smem_optin() {
  static int cache[64] = {0};
  return (size_t)device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, cache, 48 * 1024);
}

static unsigned grid_for(int64_t ntiles, int64_t cap = ((int64_t)1 << 31) - 1) {
  return (unsigned)(ntiles < cap ? ntiles : cap);
}

// Opt a kernel into > 48 KiB of dynamic shared memory (once per device and kernel). On
// failure the error is cleared, so that no later launch check reports it.
template <typename K>
static pf_err set_smem(K kernel, size_t bytes, unsigned long long *done_mask) {
  if (bytes <= 48 * 1024) return nullptr;
  const int dev = current_device();
  if (dev < 0) {
    (void)cudaGetLastError();
    return "cudaGetDevice failed";
  }
  const unsigned long long bit = dev < 64 ? (1ull << dev) : 0;
  if (bit && (__atomic_load_n(done_mask, __ATOMIC_ACQUIRE) & bit)) return nullptr;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return cudaGetErrorString(e);
  }
  if (bit) __atomic_fetch_or(done_mask, bit, __ATOMIC_ACQ_REL);
  return nullptr;
}

template <typename T, int MODE, bool FWD, int B, int STAGES>
static pf_err launch_xw(const pf_bsmm_args *a, cudaStream_t st) {
  using Cfg = XwCfg<T, FWD, B, STAGES>;
  auto kern = xw_kernel<T, MODE, FWD, B, STAGES>;
  static unsigned long long mask = 0;
  if (pf_err e = set_smem(kern, Cfg::SMEM, &mask)) return e;
  const pf_bsr_index *ix = a->ix;
  XwParams p;
  p.act = FWD ? a->x : a->dy;
  p.lda = FWD ? a->ldx : a->ldy;
  p.w = a->w; p.out = a->out; p.ldo = a->ldo; p.T = a->T;
  p.ptr = FWD ? ix->row_ptr : ix->col_ptr;
  p.idx = FWD ? ix->col_idx : ix->row_idx;
  p.blk = FWD ? nullptr : ix->csc_blk;
  p.nb = FWD ? ix->R : ix->C;
  p.ntiles = p.nb * ((a->T + Cfg::BM - 1) / Cfg::BM);
  if (p.ntiles == 0) return nullptr;
  kern<<<grid_for(p.ntiles), Cfg::NT, Cfg::SMEM, st>>>(p);
  return nullptr;
}

// BWD_W split of T across CTAs (same answer for the workspace query and the launch).
static void w_split(const pf_bsmm_args *a, int bkt, int64_t *nsplit, int64_t *rows) {
  const int64_t T = a->T, nnz = a->ix->nnz;
  const int64_t target = 4 * (int64_t)num_sms();
  int64_t s = 1;
  if (nnz > 0 && nnz < target && T > 0) {
    s = (target + nnz - 1) / nnz;
    const int64_t maxs = (T + 8 * bkt - 1) / (8 * bkt);  // at least ~8 stages per split
    if (s > maxs) s = maxs;
    if (s < 1) s = 1;
  }
  int64_t rps = (T + s - 1) / s;
  rps = (rps + bkt - 1) / bkt * bkt;
  if (rps < bkt) rps = bkt;
  *nsplit = (T + rps - 1) / rps;
  if (*nsplit < 1) *nsplit = 1;
  *rows = rps;
}

template <typename T, int MODE, int B>
static pf_err launch_w(const pf_bsmm_args *a, cudaStream_t st) {
  using Cfg = WCfg<T, B>;
  auto kern = w_kernel<T, MODE, B>;
  static unsigned long long mask = 0;
  if (pf_err e = set_smem(kern, Cfg::SMEM, &mask)) return e;
  const pf_bsr_index *ix = a->ix;
  WParams p;
  p.dy = a->dy; p.ldy = a->ldy; p.x = a->x; p.ldx = a->ldx; p.out = a->out;
  p.T = a->T; p.nnz = ix->nnz;
  p.row_idx = ix->row_idx; p.csc_blk = ix->csc_blk; p.col_idx = ix->col_idx;
  w_split(a, Cfg::BKT, &p.nsplit, &p.rows_per_split);
  if (a->work == nullptr) { p.nsplit = 1; p.rows_per_split = a->T > 0 ? a->T : 1; }
  p.ws = static_cast<float *>(a->work);
  if (p.nnz == 0) return nullptr;
  kern<<<grid_for(p.nnz * p.nsplit), Cfg::NT, Cfg::SMEM, st>>>(p);
  if (p.nsplit > 1) {
    const int64_t n = p.nnz * B * B;
    const int64_t blocks = (n + 255) / 256;
    split_reduce_kernel<T><<<grid_for(blocks, 65535), 256, 0, st>>>(p.ws, p.nsplit, n,
                                                                     static_cast<T *>(a->out));
  }
  return nullptr;
}

template <typename T>
static pf_err launch_generic(int op, const pf_bsmm_args *a, cudaStream_t st) {
  const pf_bsr_index *ix = a->ix;
  GParams p;
  p.x = a->x; p.ldx = a->ldx; p.dy = a->dy; p.ldy = a->ldy; p.w = a->w;
  p.out = a->out; p.ldo = a->ldo; p.T = a->T;
  p.R = ix->R; p.C = ix->C; p.b1 = ix->b1; p.b2 = ix->b2; p.nnz = ix->nnz;
  p.row_ptr = ix->row_ptr; p.col_idx = ix->col_idx; p.col_ptr = ix->col_ptr;
  p.row_idx = ix->row_idx; p.csc_blk = ix->csc_blk;
  int64_t n = op == PF_OP_FWD ? a->T * ix->R * ix->b1
            : op == PF_OP_BWD_X ? a->T * ix->C * ix->b2 : ix->nnz * ix->b1 * ix->b2;
  if (n == 0) return nullptr;
  const unsigned blocks = grid_for((n + 255) / 256, (int64_t)1 << 20);
  if (op == PF_OP_FWD) generic_fwd_kernel<T><<<blocks, 256, 0, st>>>(p);
  else if (op == PF_OP_BWD_X) generic_bwd_x_kernel<T><<<blocks, 256, 0, st>>>(p);
  else generic_bwd_w_kernel<T><<<blocks, 256, 0, st>>>(p);
  return nullptr;
}

// Tiled kernels: the configuration of pixelfly_cuda_config.h with as many stages as the
// device's shared memory allows. A 2-stage variant is compiled only where 3 stages may not
// fit (above PF_SMEM_OPTIN_MIN: fp32, b = 64); 0 stages means "no tiled kernel fits".
template <typename T, bool FWD, int B>
static constexpr bool has_2_stages() {
  return pf_xw_smem(sizeof(T), FWD, B, pf_xw_config(sizeof(T), B, 3)) > PF_SMEM_OPTIN_MIN;
}

template <typename T, bool FWD, int B>
static int xw_stages_here() {
  const int s = pf_xw_stages(sizeof(T), FWD, B, smem_optin());
  return s == 3 || (s == 2 && has_2_stages<T, FWD, B>()) ? s : 0;
}

template <typename T, int MODE, bool FWD, int B>
static pf_err launch_xw_fit(const pf_bsmm_args *a, cudaStream_t s) {
  if (xw_stages_here<T, FWD, B>() == 3) return launch_xw<T, MODE, FWD, B, 3>(a, s);
  if constexpr (has_2_stages<T, FWD, B>()) return launch_xw<T, MODE, FWD, B, 2>(a, s);
  return "no tiled configuration fits this device's shared memory";
}

template <typename T, int MODE, bool FWD>
static pf_err dispatch_xw(int64_t b, const pf_bsmm_args *a, cudaStream_t s) {
  if (b == 16) return launch_xw_fit<T, MODE, FWD, 16>(a, s);
  if (b == 32) return launch_xw_fit<T, MODE, FWD, 32>(a, s);
  return launch_xw_fit<T, MODE, FWD, 64>(a, s);
}

template <typename T, int MODE>
static pf_err dispatch_w(int64_t b, const pf_bsmm_args *a, cudaStream_t s) {
  if (b == 16) return launch_w<T, MODE, 16>(a, s);
  if (b == 32) return launch_w<T, MODE, 32>(a, s);
  return launch_w<T, MODE, 64>(a, s);
}

template <typename T, int MODE>
static pf_err dispatch(int op, const pf_bsmm_args *a, bool fast, cudaStream_t s) {
  if (!fast) return launch_generic<T>(op, a, s);
  const int64_t b = a->ix->b1;
  if (op == PF_OP_FWD) return dispatch_xw<T, MODE, true>(b, a, s);
  if (op == PF_OP_BWD_X) return dispatch_xw<T, MODE, false>(b, a, s);
  return dispatch_w<T, MODE>(b, a, s);
}

// Does a tiled kernel fit the current device's shared memory for (op, element size, b)?
template <typename T>
static bool tiled_fits(int op, int64_t b) {
  if (op == PF_OP_BWD_W) return pf_w_smem(sizeof(T), (int)b, pf_w_config(sizeof(T), (int)b)) <= smem_optin();
  const bool fwd = op == PF_OP_FWD;
  if (b == 16) return fwd ? xw_stages_here<T, true, 16>() : xw_stages_here<T, false, 16>();
  if (b == 32) return fwd ? xw_stages_here<T, true, 32>() : xw_stages_here<T, false, 32>();
  return fwd ? xw_stages_here<T, true, 64>() : xw_stages_here<T, false, 64>();
}

static bool aligned16(const void *p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

static int is_fast(int op, const pf_bsmm_args *a) {
  const pf_bsr_index *ix = a->ix;
  const int64_t b = ix->b1;
  if (ix->b2 != b || (b != 16 && b != 32 && b != 64)) return 0;
  const int64_t es = a->dtype == PF_FLOAT32 ? 4 : 2;
  if (!(es == 4 ? tiled_fits<float>(op, b) : tiled_fits<uint16_t>(op, b))) return 0;
  auto ok = [&](const void *p, int64_t ld) { return aligned16(p) && (ld * es) % 16 == 0; };
  if (op == PF_OP_FWD) return ok(a->x, a->ldx) && ok(a->w, 0) && ok(a->out, a->ldo);
  if (op == PF_OP_BWD_X) return ok(a->dy, a->ldy) && ok(a->w, 0) && ok(a->out, a->ldo);
  return ok(a->dy, a->ldy) && ok(a->x, a->ldx) && ok(a->out, 0) && aligned16(a->work);
}

}  // namespace pf_cuda

using namespace pf_cuda;

extern "C" pf_err pf_cuda_bsmm_check(int op, const pf_bsmm_args *a) {
  if (a == nullptr) return "pixelfly: args must not be NULL";
  if (op != PF_OP_FWD && op != PF_OP_BWD_X && op != PF_OP_BWD_W)
    return "pixelfly: op must be PF_OP_FWD, PF_OP_BWD_X or PF_OP_BWD_W";
  if (a->dtype != PF_FLOAT32 && a->dtype != PF_BFLOAT16 && a->dtype != PF_FLOAT16)
    return "pixelfly: dtype must be PF_FLOAT32, PF_BFLOAT16 or PF_FLOAT16";
  const pf_bsr_index *ix = a->ix;
  if (ix == nullptr) return "pixelfly: ix must not be NULL";
  if (ix->R < 0 || ix->C < 0 || ix->nnz < 0) return "pixelfly: R, C and nnz must be >= 0";
  if (ix->b1 <= 0 || ix->b2 <= 0) return "pixelfly: block sizes b1 and b2 must be positive";
  if (ix->R > PF_MAX_GRID || ix->C > PF_MAX_GRID) return "pixelfly: block grid is too large";
  if (ix->nnz > ix->R * ix->C) return "pixelfly: nnz exceeds R * C";
  if (ix->b1 > PF_MAX_GRID || ix->b2 > PF_MAX_GRID) return "pixelfly: block size is too large";
  if (ix->row_ptr == nullptr || ix->col_ptr == nullptr)
    return "pixelfly: row_ptr and col_ptr must not be NULL";
  if (ix->nnz > 0 && (ix->col_idx == nullptr || ix->row_idx == nullptr || ix->csc_blk == nullptr))
    return "pixelfly: col_idx, row_idx and csc_blk must not be NULL";
  if (a->T < 0) return "pixelfly: T must be >= 0";
  const int64_t in = ix->C * ix->b2, out = ix->R * ix->b1;
  if (a->T == 0) return nullptr;
  if (op == PF_OP_FWD || op == PF_OP_BWD_W) {
    if (in > 0 && a->x == nullptr) return "pixelfly: x must not be NULL";
    if (a->ldx < in) return "pixelfly: ldx must be >= in (C * b2)";
  }
  if (op == PF_OP_BWD_X || op == PF_OP_BWD_W) {
    if (out > 0 && a->dy == nullptr) return "pixelfly: dy must not be NULL";
    if (a->ldy < out) return "pixelfly: ldy must be >= out (R * b1)";
  }
  if (op != PF_OP_BWD_W && ix->nnz > 0 && a->w == nullptr) return "pixelfly: w must not be NULL";
  if (op == PF_OP_FWD && a->ldo < out) return "pixelfly: ldo must be >= out (R * b1)";
  if (op == PF_OP_BWD_X && a->ldo < in) return "pixelfly: ldo must be >= in (C * b2)";
  const int64_t outn = op == PF_OP_FWD ? out : op == PF_OP_BWD_X ? in : ix->nnz;
  if (outn > 0 && a->out == nullptr) return "pixelfly: out must not be NULL";
  return nullptr;
}

extern "C" int pf_cuda_bsmm_is_fast(int op, const pf_bsmm_args *a) {
  if (pf_cuda_bsmm_check(op, a) != nullptr) return 0;
  return is_fast(op, a);
}

extern "C" int64_t pf_cuda_bsmm_workspace(int op, const pf_bsmm_args *a) {
  if (op != PF_OP_BWD_W || pf_cuda_bsmm_check(op, a) != nullptr) return 0;
  const pf_bsr_index *ix = a->ix;
  const int64_t b = ix->b1;
  if (ix->b2 != b || (b != 16 && b != 32 && b != 64) || a->T == 0 || ix->nnz == 0) return 0;
  const int bkt = pf_w_config(a->dtype == PF_FLOAT32 ? 4 : 2, (int)b).bkt;
  int64_t nsplit = 1, rows = 0;
  w_split(a, bkt, &nsplit, &rows);
  return nsplit > 1 ? nsplit * ix->nnz * b * b * (int64_t)sizeof(float) : 0;
}

extern "C" pf_err pf_cuda_bsmm(int op, const pf_bsmm_args *a, int allow_tf32,
                               cudaStream_t stream) {
  if (pf_err e = pf_cuda_bsmm_check(op, a)) return e;
  // Clear an error left pending by earlier, unrelated CUDA calls, so that the check after
  // our launches reports only our own (a sticky error, e.g. an illegal address, persists).
  (void)cudaGetLastError();
  const pf_bsr_index *ix = a->ix;
  if (op == PF_OP_BWD_W ? ix->nnz == 0
                        : (a->T == 0 || (op == PF_OP_FWD ? ix->R : ix->C) == 0))
    return nullptr;
  if (op == PF_OP_BWD_W && a->T == 0) {  // empty reduction: dw = 0
    const size_t es = a->dtype == PF_FLOAT32 ? 4 : 2;
    cudaError_t e = cudaMemsetAsync(a->out, 0, (size_t)(ix->nnz * ix->b1 * ix->b2) * es, stream);
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
  }
  // The work buffer is only used when BWD_W splits T; is_fast checks its alignment.
  pf_bsmm_args aa = *a;
  if (op == PF_OP_BWD_W && pf_cuda_bsmm_workspace(op, a) == 0) aa.work = nullptr;
  const bool fast = is_fast(op, &aa) != 0;
  pf_err err;
  switch (a->dtype) {
    case PF_BFLOAT16: err = dispatch<__nv_bfloat16, MODE_MMA16>(op, &aa, fast, stream); break;
    case PF_FLOAT16: err = dispatch<__half, MODE_MMA16>(op, &aa, fast, stream); break;
    default:
      err = allow_tf32 ? dispatch<float, MODE_TF32>(op, &aa, fast, stream)
                       : dispatch<float, MODE_FFMA>(op, &aa, fast, stream);
  }
  if (err) return err;
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}
