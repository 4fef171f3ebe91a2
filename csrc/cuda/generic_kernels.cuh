// generic_kernels.cuh - the generic CUDA path: one thread per output element, fp32
// accumulation, any block shape, stride or alignment (correct, much slower than the tiled
// kernels; taken when no tiled kernel applies).
#pragma once

#include "ptx.cuh"

namespace pf_cuda {

struct GParams {
  const void *x; int64_t ldx;
  const void *dy; int64_t ldy;
  const void *w;
  void *out; int64_t ldo;
  int64_t T, R, C, b1, b2, nnz;
  const int64_t *row_ptr, *col_idx, *col_ptr, *row_idx, *csc_blk;
};

// FWD  : y [t, r*b1 + i] = sum over the blocks k of block-row r: x[t, col_idx[k] block] . w[k][i][:]
// BWD_X: dx[t, c*b2 + j] = sum over the blocks of block-column c (CSC position kk):
//        dy[t, row_idx[kk] block] . w[csc_blk[kk]][:][j]
template <typename T, bool FWD>
__global__ void generic_xw_kernel(GParams p) {
  const T *act = static_cast<const T *>(FWD ? p.x : p.dy), *w = static_cast<const T *>(p.w);
  T *out = static_cast<T *>(p.out);
  const int64_t lda = FWD ? p.ldx : p.ldy;
  const int64_t bo = FWD ? p.b1 : p.b2, bi = FWD ? p.b2 : p.b1;  // output / input block size
  const int64_t *ptr = FWD ? p.row_ptr : p.col_ptr, *idx = FWD ? p.col_idx : p.row_idx;
  const int64_t wstep = FWD ? 1 : p.b2;  // stride of w along the reduction
  const int64_t outf = (FWD ? p.R : p.C) * bo, n = p.T * outf;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = e / outf, o = e % outf, ob = o / bo, i = o % bo;
    float acc = 0.f;
    for (int64_t k = ptr[ob]; k < ptr[ob + 1]; ++k) {
      const T *ar = act + t * lda + idx[k] * bi;
      const int64_t blk = FWD ? k : p.csc_blk[k];
      const T *wr = w + blk * p.b1 * p.b2 + (FWD ? i * p.b2 : i);
      for (int64_t j = 0; j < bi; ++j) acc = fmaf(to_f(ar[j]), to_f(wr[j * wstep]), acc);
    }
    out[t * p.ldo + o] = from_f<T>(acc);
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

}  // namespace pf_cuda
