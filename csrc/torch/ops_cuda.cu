// The one CUDA binding file: registers the CUDA implementations of the pixelfly ops
// (schemas defined in csrc/torch/ops.cpp), which call the torch-free launchers of
// csrc/cuda/bsmm.cu (pixelfly_cuda.h). Autograd and fake kernels live in pixelfly/ops.py.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <Python.h>

#include "pixelfly_cuda.h"

namespace {

#define PF_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, "pixelfly: ", __VA_ARGS__)
#define PF_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "pixelfly: ", __VA_ARGS__)

void check_index(const char *name, const at::Tensor &t, int64_t numel, const at::Device &dev) {
  PF_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  PF_CHECK(t.device() == dev, name, " must be on ", dev, ", got ", t.device());
  PF_CHECK(t.dim() == 1 && t.is_contiguous(), name, " must be a contiguous 1-D tensor");
  PF_CHECK(t.numel() == numel, name, " must have ", numel, " entries, got ", t.numel());
}

void check_dense(const char *name, const at::Tensor &t, int64_t cols, const at::Device &dev) {
  PF_CHECK(t.device() == dev, name, " must be on ", dev, ", got ", t.device());
  PF_CHECK(t.dim() == 2, name, " must be 2-D [T, features], got ", t.dim(), "-D");
  PF_CHECK(t.size(1) == cols, name, " must have ", cols, " columns, got ", t.size(1));
  PF_CHECK(t.size(0) == 0 || t.size(1) <= 1 || t.stride(1) == 1, name,
           " must have a contiguous last dimension");
  PF_CHECK(t.size(0) <= 1 || t.stride(0) >= cols, name, " has overlapping rows (stride ",
           t.stride(0), " < ", cols, ")");
}

pf_dtype to_pf_dtype(const char *name, const at::Tensor &t) {
  switch (t.scalar_type()) {
    case at::kFloat: return PF_FLOAT32;
    case at::kBFloat16: return PF_BFLOAT16;
    case at::kHalf: return PF_FLOAT16;
    default:
      PF_CHECK_TYPE(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
  return PF_FLOAT32;
}

int64_t row_stride(const at::Tensor &t) { return t.size(0) > 1 ? t.stride(0) : t.size(1); }

bool allow_tf32() {
  auto &ctx = at::globalContext();
  return ctx.allowTF32CuBLAS() ||
         ctx.float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST;
}

struct Index {
  pf_bsr_index ix;
  Index(const at::Tensor &row_ptr, const at::Tensor &col_idx, const at::Tensor &col_ptr,
        const at::Tensor &row_idx, const at::Tensor &csc_blk, int64_t b1, int64_t b2,
        const at::Device &dev) {
    PF_CHECK(row_ptr.dim() == 1 && row_ptr.numel() >= 1, "row_ptr must be 1-D with R+1 entries");
    PF_CHECK(col_ptr.dim() == 1 && col_ptr.numel() >= 1, "col_ptr must be 1-D with C+1 entries");
    const int64_t nnz = col_idx.numel();
    check_index("row_ptr", row_ptr, row_ptr.numel(), dev);
    check_index("col_idx", col_idx, nnz, dev);
    check_index("col_ptr", col_ptr, col_ptr.numel(), dev);
    check_index("row_idx", row_idx, nnz, dev);
    check_index("csc_blk", csc_blk, nnz, dev);
    ix = pf_bsr_index{row_ptr.numel() - 1, col_ptr.numel() - 1, b1, b2, nnz,
                      row_ptr.data_ptr<int64_t>(), col_idx.data_ptr<int64_t>(),
                      col_ptr.data_ptr<int64_t>(), row_idx.data_ptr<int64_t>(),
                      csc_blk.data_ptr<int64_t>()};
  }
};

void check_blocks(const at::Tensor &blocks, const at::Tensor &other, int64_t nnz) {
  PF_CHECK(blocks.device() == other.device(), "blocks must be on ", other.device(), ", got ",
           blocks.device());
  PF_CHECK(blocks.dim() == 3, "blocks must be 3-D [nnz, b1, b2], got ", blocks.dim(), "-D");
  PF_CHECK(blocks.size(0) == nnz, "blocks has ", blocks.size(0), " blocks but the index has ", nnz);
  PF_CHECK(blocks.size(1) > 0 && blocks.size(2) > 0, "block sizes must be positive");
  PF_CHECK_TYPE(blocks.scalar_type() == other.scalar_type(), "blocks (", blocks.scalar_type(),
                ") and the activations (", other.scalar_type(), ") must share a dtype");
}

const char *op_name(int op) {
  return op == PF_OP_FWD ? "bsmm_fwd" : op == PF_OP_BWD_X ? "bsmm_bwd_x" : "bsmm_bwd_w";
}

void run(int op, pf_bsmm_args &a, const at::Tensor &like) {
  // Argument errors (sizes, strides, null pointers) are ValueError; the messages carry the
  // "pixelfly: " prefix already.
  pf_err bad = pf_cuda_bsmm_check(op, &a);
  TORCH_CHECK_VALUE(bad == nullptr, bad ? bad : "");
  const int64_t ws = pf_cuda_bsmm_workspace(op, &a);
  at::Tensor work;
  if (ws > 0) {
    work = at::empty({ws}, like.options().dtype(at::kByte));
    a.work = work.data_ptr();
  }
  if (a.T > 0 && !pf_cuda_bsmm_is_fast(op, &a))
    TORCH_WARN("pixelfly: ", op_name(op), " runs the generic CUDA kernel (one thread per "
                    "output, much slower): the tiled tensor-core kernels need square blocks of "
                    "16, 32 or 64, 16-byte aligned operands and row strides (not a column slice "
                    "such as x[:, 1:]) and a tile configuration that fits the device's shared "
                    "memory.");
  // c10::cuda::getCurrentCUDAStream is what at::cuda::getCurrentCUDAStream aliases; the
  // c10 header avoids ATen/cuda/CUDAContext.h, which drags in cuBLAS/cuSPARSE headers.
  pf_err err = pf_cuda_bsmm(op, &a, allow_tf32() ? 1 : 0, c10::cuda::getCurrentCUDAStream());
  // The arguments passed the check: anything now is a CUDA failure (RuntimeError).
  TORCH_CHECK(err == nullptr, "pixelfly: CUDA error in ", op_name(op), ": ", err ? err : "");
  // `work` is freed here; the caching allocator keeps it reserved for the stream.
}

at::Tensor bsmm_fwd(const at::Tensor &x, const at::Tensor &blocks, const at::Tensor &row_ptr,
                    const at::Tensor &col_idx, const at::Tensor &col_ptr,
                    const at::Tensor &row_idx, const at::Tensor &csc_blk) {
  PF_CHECK(x.is_cuda(), "x must be a CUDA tensor, got ", x.device());
  c10::cuda::CUDAGuard guard(x.device());
  check_blocks(blocks, x, col_idx.numel());
  Index I(row_ptr, col_idx, col_ptr, row_idx, csc_blk, blocks.size(1), blocks.size(2), x.device());
  check_dense("x", x, I.ix.C * I.ix.b2, x.device());
  at::Tensor w = blocks.contiguous();
  at::Tensor y = at::empty({x.size(0), I.ix.R * I.ix.b1}, x.options());
  pf_bsmm_args a{};
  a.dtype = to_pf_dtype("x", x);
  a.T = x.size(0);
  a.ix = &I.ix;
  a.x = x.data_ptr(); a.ldx = row_stride(x);
  a.w = w.data_ptr();
  a.out = y.data_ptr(); a.ldo = y.size(1);
  run(PF_OP_FWD, a, x);
  return y;
}

at::Tensor bsmm_bwd_x(const at::Tensor &dy, const at::Tensor &blocks, const at::Tensor &row_ptr,
                      const at::Tensor &col_idx, const at::Tensor &col_ptr,
                      const at::Tensor &row_idx, const at::Tensor &csc_blk) {
  PF_CHECK(dy.is_cuda(), "dy must be a CUDA tensor, got ", dy.device());
  c10::cuda::CUDAGuard guard(dy.device());
  check_blocks(blocks, dy, col_idx.numel());
  Index I(row_ptr, col_idx, col_ptr, row_idx, csc_blk, blocks.size(1), blocks.size(2), dy.device());
  check_dense("dy", dy, I.ix.R * I.ix.b1, dy.device());
  at::Tensor w = blocks.contiguous();
  at::Tensor dx = at::empty({dy.size(0), I.ix.C * I.ix.b2}, dy.options());
  pf_bsmm_args a{};
  a.dtype = to_pf_dtype("dy", dy);
  a.T = dy.size(0);
  a.ix = &I.ix;
  a.dy = dy.data_ptr(); a.ldy = row_stride(dy);
  a.w = w.data_ptr();
  a.out = dx.data_ptr(); a.ldo = dx.size(1);
  run(PF_OP_BWD_X, a, dy);
  return dx;
}

at::Tensor bsmm_bwd_w(const at::Tensor &dy, const at::Tensor &x, const at::Tensor &row_ptr,
                      const at::Tensor &col_idx, const at::Tensor &col_ptr,
                      const at::Tensor &row_idx, const at::Tensor &csc_blk, int64_t b1,
                      int64_t b2) {
  PF_CHECK(x.is_cuda(), "x must be a CUDA tensor, got ", x.device());
  c10::cuda::CUDAGuard guard(x.device());
  PF_CHECK(b1 > 0 && b2 > 0, "b1 and b2 must be positive, got ", b1, " and ", b2);
  Index I(row_ptr, col_idx, col_ptr, row_idx, csc_blk, b1, b2, x.device());
  check_dense("dy", dy, I.ix.R * b1, x.device());
  check_dense("x", x, I.ix.C * b2, x.device());
  PF_CHECK(dy.size(0) == x.size(0), "dy and x must have the same number of rows, got ",
           dy.size(0), " and ", x.size(0));
  PF_CHECK_TYPE(dy.scalar_type() == x.scalar_type(), "dy (", dy.scalar_type(), ") and x (",
                x.scalar_type(), ") must share a dtype");
  at::Tensor dw = at::empty({I.ix.nnz, b1, b2}, x.options());
  pf_bsmm_args a{};
  a.dtype = to_pf_dtype("x", x);
  a.T = x.size(0);
  a.ix = &I.ix;
  a.x = x.data_ptr(); a.ldx = row_stride(x);
  a.dy = dy.data_ptr(); a.ldy = row_stride(dy);
  a.out = dw.data_ptr(); a.ldo = b2;
  run(PF_OP_BWD_W, a, x);
  return dw;
}

}  // namespace

TORCH_LIBRARY_IMPL(pixelfly, CUDA, m) {
  m.impl("bsmm_fwd", &bsmm_fwd);
  m.impl("bsmm_bwd_x", &bsmm_bwd_x);
  m.impl("bsmm_bwd_w", &bsmm_bwd_w);
}

// Importable module: `import pixelfly._ops_cuda` loads the library and runs the
// registration above (after pixelfly._ops has defined the schemas).
static struct PyModuleDef ops_cuda_module = {PyModuleDef_HEAD_INIT, "_ops_cuda",
                                             "pixelfly CUDA ops (see torch.ops.pixelfly)", -1,
                                             nullptr};
PyMODINIT_FUNC PyInit__ops_cuda(void) { return PyModule_Create(&ops_cuda_module); }
