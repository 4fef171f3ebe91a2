// Block-sparse matmul on CUDA (torch-free): the host side (checks, tile choice, launches)
// of the kernels in the headers beside it. See pixelfly_cuda.h for the contract.
//
// Ops (weight B: out x in = (R*b1) x (C*b2), blocks w[nnz][b1][b2] in block-CSR order):
//   FWD   : y [T, out] = x [T, in] B^T
//   BWD_X : dx[T, in]  = dy[T, out] B
//   BWD_W : dw[blk]    = dy[:, r-block]^T x[:, c-block]      (layout blocks only)
//
// Tiled path (square blocks 16/32/64, 16-byte aligned operands), fed by the multi-stage
// cp.async pipeline of tile.cuh:
//   FWD / BWD_X: xw_kernel.cuh (a CTA per BM x b output tile, looping over the nonzero
//     blocks of its block-row (CSR) or block-column (CSC)).
//   BWD_W: w_kernel.cuh (a CTA per nonzero block, reducing over T; T split across CTAs
//     into an fp32 workspace when there are few blocks).
//   Math: mma.sync m16n8k16 (fp16/bf16, ldmatrix fragments), m16n8k8 TF32, or exact fp32
//   FFMA with the same fragment-shaped accumulator layout. All fp32 accumulation.
// Generic path (generic_kernels.cuh): one thread per output element, any block shape/stride.
#include <cuda_runtime.h>
#include <stdint.h>

#include "generic_kernels.cuh"
#include "pixelfly_cuda.h"
#include "pixelfly_cuda_config.h"
#include "w_kernel.cuh"
#include "xw_kernel.cuh"

namespace pf_cuda {

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

static int64_t elem_size(pf_dtype dtype) { return dtype == PF_FLOAT32 ? 4 : 2; }

// BWD_W split of T across CTAs: the one plan the workspace query and the launch share (the
// tile depth BKT comes from pf_w_config, as in WCfg). Square blocks of 16, 32 or 64 only.
struct WSplit {
  int64_t nsplit, rows_per_split;
};

static WSplit w_split(const pf_bsmm_args *a) {
  const int64_t bkt = pf_w_config((int)elem_size(a->dtype), (int)a->ix->b1).bkt;
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
  WSplit w;
  w.nsplit = (T + rps - 1) / rps;
  if (w.nsplit < 1) w.nsplit = 1;
  w.rows_per_split = rps;
  return w;
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
  const WSplit split = w_split(a);
  p.nsplit = split.nsplit;
  p.rows_per_split = split.rows_per_split;
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
  if (op == PF_OP_FWD) generic_xw_kernel<T, true><<<blocks, 256, 0, st>>>(p);
  else if (op == PF_OP_BWD_X) generic_xw_kernel<T, false><<<blocks, 256, 0, st>>>(p);
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
static pf_err dispatch(int op, const pf_bsmm_args *a, bool tiled, cudaStream_t s) {
  if (!tiled) return launch_generic<T>(op, a, s);
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

static bool square_tiled_block(const pf_bsr_index *ix) {
  return ix->b1 == ix->b2 && (ix->b1 == 16 || ix->b1 == 32 || ix->b1 == 64);
}

// Does (op, a) take the tiled kernels: square blocks of 16/32/64, 16-byte aligned operands
// and row strides, and a tile configuration that fits the device's shared memory?
static bool use_tiled(int op, const pf_bsmm_args *a) {
  const int64_t b = a->ix->b1;
  if (!square_tiled_block(a->ix)) return false;
  const int64_t es = elem_size(a->dtype);
  if (!(es == 4 ? tiled_fits<float>(op, b) : tiled_fits<uint16_t>(op, b))) return false;
  auto ok = [&](const void *p, int64_t ld) { return aligned16(p) && (ld * es) % 16 == 0; };
  if (op == PF_OP_FWD) return ok(a->x, a->ldx) && ok(a->w, 0) && ok(a->out, a->ldo);
  if (op == PF_OP_BWD_X) return ok(a->dy, a->ldy) && ok(a->w, 0) && ok(a->out, a->ldo);
  return ok(a->dy, a->ldy) && ok(a->x, a->ldx) && ok(a->out, 0) && aligned16(a->work);
}

// The index struct: sizes and pointers (contents are trusted, see pixelfly_cuda.h).
static pf_err check_index(const pf_bsr_index *ix) {
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
  return nullptr;
}

// The operands of op for T > 0: pointers and row strides.
static pf_err check_operands(int op, const pf_bsmm_args *a) {
  const pf_bsr_index *ix = a->ix;
  const int64_t in = ix->C * ix->b2, out = ix->R * ix->b1;
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

}  // namespace pf_cuda

using namespace pf_cuda;

extern "C" pf_err pf_cuda_bsmm_check(int op, const pf_bsmm_args *a) {
  if (a == nullptr) return "pixelfly: args must not be NULL";
  if (op != PF_OP_FWD && op != PF_OP_BWD_X && op != PF_OP_BWD_W)
    return "pixelfly: op must be PF_OP_FWD, PF_OP_BWD_X or PF_OP_BWD_W";
  if (a->dtype != PF_FLOAT32 && a->dtype != PF_BFLOAT16 && a->dtype != PF_FLOAT16)
    return "pixelfly: dtype must be PF_FLOAT32, PF_BFLOAT16 or PF_FLOAT16";
  if (pf_err e = check_index(a->ix)) return e;
  if (a->T < 0) return "pixelfly: T must be >= 0";
  return a->T == 0 ? nullptr : check_operands(op, a);
}

extern "C" int64_t pf_cuda_bsmm_workspace(int op, const pf_bsmm_args *a) {
  if (op != PF_OP_BWD_W || pf_cuda_bsmm_check(op, a) != nullptr) return 0;
  const pf_bsr_index *ix = a->ix;
  if (!square_tiled_block(ix) || a->T == 0 || ix->nnz == 0) return 0;
  const int64_t nsplit = w_split(a).nsplit;
  return nsplit > 1 ? nsplit * ix->nnz * ix->b1 * ix->b1 * (int64_t)sizeof(float) : 0;
}

// Launch op on the tiled or the generic kernels (a has passed the check; T > 0 or BWD_W).
static pf_err launch(int op, const pf_bsmm_args *a, bool tiled, int allow_tf32,
                     cudaStream_t stream) {
  switch (a->dtype) {
    case PF_BFLOAT16: return dispatch<__nv_bfloat16, MODE_MMA16>(op, a, tiled, stream);
    case PF_FLOAT16: return dispatch<__half, MODE_MMA16>(op, a, tiled, stream);
    default:
      return allow_tf32 ? dispatch<float, MODE_TF32>(op, a, tiled, stream)
                        : dispatch<float, MODE_FFMA>(op, a, tiled, stream);
  }
}

extern "C" pf_err pf_cuda_bsmm(int op, const pf_bsmm_args *a, int allow_tf32,
                               cudaStream_t stream, pf_cuda_path *path) {
  if (path) *path = PF_CUDA_NOTHING;
  if (pf_err e = pf_cuda_bsmm_check(op, a)) return e;
  // Clear an error left pending by earlier, unrelated CUDA calls, so that the check after
  // our launches reports only our own (a sticky error, e.g. an illegal address, persists).
  (void)cudaGetLastError();
  const pf_bsr_index *ix = a->ix;
  if (op == PF_OP_BWD_W ? ix->nnz == 0
                        : (a->T == 0 || (op == PF_OP_FWD ? ix->R : ix->C) == 0))
    return nullptr;
  if (op == PF_OP_BWD_W && a->T == 0) {  // empty reduction: dw = 0
    const size_t es = (size_t)elem_size(a->dtype);
    cudaError_t e = cudaMemsetAsync(a->out, 0, (size_t)(ix->nnz * ix->b1 * ix->b2) * es, stream);
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
  }
  // The work buffer is only used when BWD_W splits T; use_tiled checks its alignment.
  pf_bsmm_args aa = *a;
  if (op == PF_OP_BWD_W && pf_cuda_bsmm_workspace(op, a) == 0) aa.work = nullptr;
  const bool tiled = use_tiled(op, &aa);
  if (path) *path = tiled ? PF_CUDA_TILED : PF_CUDA_GENERIC;
  if (pf_err err = launch(op, &aa, tiled, allow_tf32, stream)) return err;
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}
