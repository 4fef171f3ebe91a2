// The CPU block-sparse matmul binding: registers the CPU implementations of bsmm_fwd,
// bsmm_bwd_x and bsmm_bwd_w, and bsmm_fwd_lowrank / bsmm_bwd_x_lowrank (schemas in schemas.cpp), which run the torch-free C kernels
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

// Allocates the call's output and runs it: y and dx come from the CPU output cache
// (cpu_cache.h), dB from at::empty.
at::Tensor run_call(int op, BsmmCall &call) {
  bool fresh = true;
  const at::Tensor out = op == PF_OP_BWD_W
                             ? at::empty(call.out_sizes(), call.options())
                             : pixelfly::cached_empty(call.out_sizes(), call.options(), &fresh);
  pf_bsmm_args &a = call.args(out);
  a.out_fresh = fresh;
  run(op, a);
  return out;
}

at::Tensor bsmm(int op, const at::Tensor &act, const at::Tensor &other, const IndexTensors &idx,
                int64_t b1, int64_t b2) {
  BsmmCall call(op, act, other, idx, b1, b2, cpu_dtype);
  return run_call(op, call);
}

// bsmm_fwd_lowrank / bsmm_bwd_x_lowrank: the op plus lr_a lr_b^T + bias in its output tile.
template <int op>
at::Tensor bsmm_lowrank(const at::Tensor &act, const at::Tensor &blocks, const at::Tensor &row_ptr,
                        const at::Tensor &col_idx, const at::Tensor &col_ptr,
                        const at::Tensor &row_idx, const at::Tensor &csc_blk,
                        const at::Tensor &lr_a, const at::Tensor &lr_b,
                        const std::optional<at::Tensor> &bias) {
  BsmmCall call(op, act, blocks, {row_ptr, col_idx, col_ptr, row_idx, csc_blk}, 0, 0, cpu_dtype);
  call.set_epilogue(lr_a, lr_b, bias);
  return run_call(op, call);
}

}  // namespace

TORCH_LIBRARY_IMPL(pixelfly, CPU, m) {
  PF_REGISTER_BSMM(m, bsmm);
  m.impl("bsmm_fwd_lowrank", &bsmm_lowrank<PF_OP_FWD>);
  m.impl("bsmm_bwd_x_lowrank", &bsmm_lowrank<PF_OP_BWD_X>);
}
