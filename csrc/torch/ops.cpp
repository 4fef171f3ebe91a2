// The CPU block-sparse matmul binding: registers the CPU implementations of bsmm_fwd,
// bsmm_bwd_x and bsmm_bwd_w (schemas in schemas.cpp), which run the torch-free C kernels
// of csrc/cpu/bsmm.c with at::parallel_for. Arguments: bsmm_call.h; autograd and fake
// kernels: pixelfly/ops.py.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include "bsmm_call.h"
#include "cpu_cache.h"
#include "pixelfly.h"
#include "settings.h"

namespace {

using pixelfly::BsmmCall;
using pixelfly::IndexTensors;

pf_dtype cpu_dtype(const char *name, const at::Tensor &t) {
  return pixelfly::kernel_dtype(name, t, {at::kFloat, at::kBFloat16, at::kDouble}, "CPU");
}

// Runs the op's phases with at::parallel_for (honours torch.set_num_threads).
void run(int op, pf_bsmm_args &a) {
  a.isa = pixelfly::bsmm_isa();
  a.max_tasks = at::get_num_threads(); // about one phase-1 task (and workspace slot) per thread
  pf_err err = pf_bsmm_check(op, &a);
  PF_CHECK(err == nullptr, err ? err : "");
  const int64_t ws = pf_bsmm_workspace(op, &a);
  at::Tensor work = pixelfly::cached_empty({ws > 0 ? ws : 0}, at::TensorOptions().dtype(at::kByte));
  a.work = ws > 0 ? work.data_ptr() : nullptr;
  for (int phase = 0; phase < PF_BSMM_PHASES; ++phase) {
    const int64_t n = pf_bsmm_num_tasks(op, phase, &a);
    if (n > 0)
      at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) { pf_bsmm_run(op, phase, &a, b, e); });
  }
}

// One op: y and dx come from the CPU output cache (cpu_cache.h), dB from at::empty.
at::Tensor bsmm(int op, const at::Tensor &act, const at::Tensor &other, const IndexTensors &idx,
                int64_t b1, int64_t b2) {
  BsmmCall call(op, act, other, idx, b1, b2, cpu_dtype);
  bool fresh = true;
  const at::Tensor out = op == PF_OP_BWD_W
                             ? at::empty(call.out_sizes(), call.options())
                             : pixelfly::cached_empty(call.out_sizes(), call.options(), &fresh);
  pf_bsmm_args &a = call.args(out);
  a.out_fresh = fresh;
  run(op, a);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pixelfly, CPU, m) {
  PF_REGISTER_BSMM(m, bsmm);
}
