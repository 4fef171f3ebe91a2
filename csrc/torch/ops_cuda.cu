// The CUDA block-sparse matmul binding: registers the CUDA implementations of bsmm_fwd,
// bsmm_bwd_x and bsmm_bwd_w (schemas in schemas.cpp), which call the torch-free launchers
// of csrc/cuda/bsmm.cu (pixelfly_cuda.h). Arguments: bsmm_call.h; autograd and fake
// kernels: pixelfly/ops.py.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <Python.h>

#include "bsmm_call.h"
#include "pixelfly_cuda.h"

namespace {

using pixelfly::BsmmCall;
using pixelfly::IndexTensors;

pf_dtype cuda_dtype(const char *name, const at::Tensor &t) {
  return pixelfly::kernel_dtype(name, t, {at::kFloat, at::kHalf, at::kBFloat16}, "CUDA");
}

bool allow_tf32() {
  auto &ctx = at::globalContext();
  return ctx.allowTF32CuBLAS() ||
         ctx.float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST;
}

const char *op_name(int op) {
  return op == PF_OP_FWD ? "bsmm_fwd" : op == PF_OP_BWD_X ? "bsmm_bwd_x" : "bsmm_bwd_w";
}

void run(int op, pf_bsmm_args &a, const at::TensorOptions &opts) {
  // Argument errors (sizes, strides, null pointers) are ValueError; the messages carry the
  // "pixelfly: " prefix already.
  pf_err bad = pf_cuda_bsmm_check(op, &a);
  TORCH_CHECK_VALUE(bad == nullptr, bad ? bad : "");
  const int64_t ws = pf_cuda_bsmm_workspace(op, &a);
  at::Tensor work;
  if (ws > 0) {
    work = at::empty({ws}, opts.dtype(at::kByte));
    a.work = work.data_ptr();
  }
  // c10::cuda::getCurrentCUDAStream is what at::cuda::getCurrentCUDAStream aliases; the
  // c10 header avoids ATen/cuda/CUDAContext.h, which drags in cuBLAS/cuSPARSE headers.
  pf_cuda_path path = PF_CUDA_NOTHING;
  pf_err err = pf_cuda_bsmm(op, &a, allow_tf32() ? 1 : 0, c10::cuda::getCurrentCUDAStream(), &path);
  // The arguments passed the check: anything now is a CUDA failure (RuntimeError).
  TORCH_CHECK(err == nullptr, "pixelfly: CUDA error in ", op_name(op), ": ", err ? err : "");
  if (path == PF_CUDA_GENERIC)
    TORCH_WARN("pixelfly: ", op_name(op), " runs the generic CUDA kernel (one thread per "
               "output, much slower): the tiled tensor-core kernels need square blocks of "
               "16, 32 or 64, 16-byte aligned operands and row strides (not a column slice "
               "such as x[:, 1:]) and a tile configuration that fits the device's shared "
               "memory.");
  // `work` is freed here; the caching allocator keeps it reserved for the stream.
}

at::Tensor bsmm(int op, const at::Tensor &act, const at::Tensor &other, const IndexTensors &idx,
                int64_t b1, int64_t b2) {
  PF_CHECK(act.is_cuda(), op == PF_OP_FWD ? "x" : "dy", " must be a CUDA tensor, got ", act.device());
  c10::cuda::CUDAGuard guard(act.device());
  BsmmCall call(op, act, other, idx, b1, b2, cuda_dtype);
  const at::Tensor out = at::empty(call.out_sizes(), call.options());
  run(op, call.args(out), call.options());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pixelfly, CUDA, m) {
  PF_REGISTER_BSMM(m, bsmm);
}

// Importable module: `import pixelfly._ops_cuda` loads the library and runs the
// registration above (after pixelfly._ops has defined the schemas).
static struct PyModuleDef ops_cuda_module = {PyModuleDef_HEAD_INIT, "_ops_cuda",
                                             "pixelfly CUDA ops (see torch.ops.pixelfly)", -1,
                                             nullptr};
PyMODINIT_FUNC PyInit__ops_cuda(void) { return PyModule_Create(&ops_cuda_module); }
