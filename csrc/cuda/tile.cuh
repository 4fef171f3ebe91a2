// tile.cuh - what the two tiled CUDA kernels (xw_kernel.cuh, w_kernel.cuh) share: the warp
// tile product on shared-memory tiles (mma.sync fp16/bf16, TF32, or exact fp32 FFMA), the
// accumulator's zeroing and store, and the multi-stage cp.async pipeline that feeds it.
#pragma once

#include "ptx.cuh"

namespace pf_cuda {

// Math modes.
enum { MODE_MMA16 = 0, MODE_TF32 = 1, MODE_FFMA = 2 };
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

// acc = 0 (the fragment-shaped accumulator of a warp tile).
template <int MI, int NI>
__device__ __forceinline__ void zero_acc(float (&acc)[MI][NI][4]) {
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
}

// The cp.async ring of the tiled kernels over `nsteps` k steps and STAGES buffers:
// load(s, buf) issues the copies of step s into buffer buf; compute(s, buf) consumes them.
// Steps 0..STAGES-2 are prefetched; step s waits for its copies, prefetches step
// s + STAGES - 1 into the buffer step s - 1 used, then computes. On return every copy has
// landed and the CTA is synchronised (the buffers may be reused, e.g. by an epilogue).
template <int STAGES, class Load, class Compute>
__device__ __forceinline__ void run_pipeline(int64_t nsteps, const Load &load,
                                             const Compute &compute) {
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nsteps) load(s, s);
    cp_async_commit();
  }
  for (int64_t s = 0; s < nsteps; ++s) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int64_t sn = s + STAGES - 1;
    if (sn < nsteps) load(sn, (int)(sn % STAGES));
    cp_async_commit();
    compute(s, (int)(s % STAGES));
  }
  cp_async_wait<0>();
  __syncthreads();
}

}  // namespace pf_cuda
