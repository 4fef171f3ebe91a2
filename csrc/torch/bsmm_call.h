// bsmm_call.h - the one argument builder of the block-sparse matmul bindings (CPU: ops.cpp,
// CUDA: ops_cuda.cu): checks the invariants the kernels rely on (checks.h) and fills the
// pf_bsr_index / pf_bsmm_args structs of pixelfly.h for one call.
//
//   FWD   : bsmm_fwd(x, blocks, idx...)       -> y  [T, R*b1]
//   BWD_X : bsmm_bwd_x(dy, blocks, idx...)    -> dx [T, C*b2]
//   BWD_W : bsmm_bwd_w(dy, x, idx..., b1, b2) -> dB [nnz, b1, b2]
//   FWD / BWD_X with set_epilogue: bsmm_fwd_lowrank / bsmm_bwd_x_lowrank (CPU)
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "checks.h"
#include "pixelfly.h"

namespace pixelfly {

// The five index tensors, in schema order.
struct IndexTensors {
  const at::Tensor &row_ptr, &col_idx, &col_ptr, &row_idx, &csc_blk;
};

// Maps an activation's dtype to the kernels' (or fails naming `name`): one per backend.
using DtypeFn = pf_dtype (*)(const char *name, const at::Tensor &t);

class BsmmCall {
 public:
  // op: PF_OP_*; (act, other) = (x, blocks), (dy, blocks) or (dy, x); b1, b2: BWD_W only
  // (FWD / BWD_X take them from blocks).
  BsmmCall(int op, const at::Tensor &act, const at::Tensor &other, const IndexTensors &idx,
           int64_t b1, int64_t b2, DtypeFn dtype)
      : op_(op), act_name_(op == PF_OP_FWD ? "x" : "dy") {
    check_index(idx, act.device());
    if (op == PF_OP_BWD_W) {
      PF_CHECK(b1 > 0 && b2 > 0, "b1 and b2 must be positive, got ", b1, " and ", b2);
    } else {
      check_blocks(other, act);
      b1 = other.size(1);
      b2 = other.size(2);
    }
    ix_.b1 = b1;
    ix_.b2 = b2;
    const int64_t out_f = mul_checked(ix_.R, b1, "out_features = block-rows x b1");
    const int64_t in_f = mul_checked(ix_.C, b2, "in_features = block-columns x b2");
    a_.dtype = dtype(act_name_, act);
    a_.ix = &ix_;
    if (op == PF_OP_BWD_W) {
      set_bwd_w_operands(act, other, out_f, in_f);
    } else {
      CHECK_COLS(act, act_name_, op == PF_OP_FWD ? in_f : out_f);
      (op == PF_OP_FWD ? x_ : dy_) = rows_contiguous(act);
      w_ = other.contiguous();
      a_.w = w_.data_ptr();
      set_activation_pointers();
    }
    out_sizes_ = op == PF_OP_FWD     ? std::vector<int64_t>{a_.T, out_f}
                 : op == PF_OP_BWD_X ? std::vector<int64_t>{a_.T, in_f}
                                     : std::vector<int64_t>{ix_.nnz, b1, b2};
  }

  BsmmCall(const BsmmCall &) = delete;  // a_.ix points into this object
  BsmmCall &operator=(const BsmmCall &) = delete;

  // Sizes of the output tensor the caller allocates (with options()) and hands to set_out.
  const std::vector<int64_t> &out_sizes() const { return out_sizes_; }
  at::TensorOptions options() const { return (x_.defined() ? x_ : dy_).options(); }

  // FWD / BWD_X: the low-rank term lr_a [T, rank] lr_b^T (lr_b [width, rank]) and the
  // bias [width] added in the kernel's output tile (pf_bsmm_args rank, lr_a, lr_b, bias).
  void set_epilogue(const at::Tensor &lr_a, const at::Tensor &lr_b,
                    const std::optional<at::Tensor> &bias) {
    const at::Tensor &act = x_.defined() ? x_ : dy_;
    const int64_t width = out_sizes_[1];
    CHECK_DEVICE(lr_a, "lr_a", act.device());
    CHECK_DEVICE(lr_b, "lr_b", act.device());
    PF_CHECK(lr_a.dim() == 2 && lr_a.size(0) == a_.T, "lr_a must have shape [T = ", a_.T,
             ", rank], got ", lr_a.sizes());
    CHECK_SHAPE(lr_b, "lr_b", width, lr_a.size(1));
    CHECK_SAME_DTYPE(lr_a, "lr_a", act, act_name_);
    CHECK_SAME_DTYPE(lr_b, "lr_b", act, act_name_);
    lr_a_ = rows_contiguous(lr_a);
    lr_b_ = lr_b.contiguous();
    a_.rank = lr_a.size(1);
    a_.lr_a = lr_a_.data_ptr();
    a_.ld_lr_a = row_stride(lr_a_);
    a_.lr_b = lr_b_.data_ptr();
    if (bias.has_value()) {
      CHECK_DEVICE(*bias, "bias", act.device());
      CHECK_SHAPE(*bias, "bias", width);
      CHECK_SAME_DTYPE(*bias, "bias", act, act_name_);
      bias_ = bias->contiguous();
      a_.bias = bias_.data_ptr();
    }
  }

  // The filled arguments, writing into `out` (contiguous, out_sizes()).
  pf_bsmm_args &args(const at::Tensor &out) {
    a_.out = out.data_ptr();
    a_.ldo = op_ == PF_OP_BWD_W ? ix_.b2 : out.size(1);
    return a_;
  }

 private:
  void check_index(const IndexTensors &idx, const at::Device &dev) {
    PF_CHECK(idx.row_ptr.dim() == 1 && idx.row_ptr.numel() >= 1, "row_ptr must be 1-D with R+1 entries");
    PF_CHECK(idx.col_ptr.dim() == 1 && idx.col_ptr.numel() >= 1, "col_ptr must be 1-D with C+1 entries");
    const int64_t nnz = idx.col_idx.numel();
    CHECK_INDEX(idx.row_ptr, "row_ptr", idx.row_ptr.numel(), dev);
    CHECK_INDEX(idx.col_idx, "col_idx", nnz, dev);
    CHECK_INDEX(idx.col_ptr, "col_ptr", idx.col_ptr.numel(), dev);
    CHECK_INDEX(idx.row_idx, "row_idx", nnz, dev);
    CHECK_INDEX(idx.csc_blk, "csc_blk", nnz, dev);
    ix_ = pf_bsr_index{idx.row_ptr.numel() - 1, idx.col_ptr.numel() - 1, 0, 0, nnz,
                       idx.row_ptr.data_ptr<int64_t>(), idx.col_idx.data_ptr<int64_t>(),
                       idx.col_ptr.data_ptr<int64_t>(), idx.row_idx.data_ptr<int64_t>(),
                       idx.csc_blk.data_ptr<int64_t>()};
  }

  void check_blocks(const at::Tensor &blocks, const at::Tensor &act) {
    CHECK_DEVICE(blocks, "blocks", act.device());
    PF_CHECK(blocks.dim() == 3 && blocks.size(0) == ix_.nnz && blocks.size(1) > 0 &&
                 blocks.size(2) > 0,
             "blocks must have shape [nnz = ", ix_.nnz, ", b1 > 0, b2 > 0], got ", blocks.sizes());
    CHECK_SAME_DTYPE(blocks, "blocks", act, act_name_);
  }

  void set_bwd_w_operands(const at::Tensor &dy, const at::Tensor &x, int64_t out_f, int64_t in_f) {
    CHECK_DEVICE(x, "x", dy.device());
    CHECK_COLS(dy, "dy", out_f);
    CHECK_COLS(x, "x", in_f);
    PF_CHECK(dy.size(0) == x.size(0), "dy and x must have the same number of rows, got ",
             dy.size(0), " and ", x.size(0));
    CHECK_SAME_DTYPE(dy, "dy", x, "x");
    dy_ = rows_contiguous(dy);
    x_ = rows_contiguous(x);
    set_activation_pointers();
  }

  void set_activation_pointers() {
    if (x_.defined()) { a_.T = x_.size(0); a_.x = x_.data_ptr(); a_.ldx = row_stride(x_); }
    if (dy_.defined()) { a_.T = dy_.size(0); a_.dy = dy_.data_ptr(); a_.ldy = row_stride(dy_); }
  }

  int op_;
  const char *act_name_;
  pf_bsr_index ix_{};
  pf_bsmm_args a_{};
  at::Tensor x_, dy_, w_, lr_a_, lr_b_, bias_;  // what a_'s pointers point into
  std::vector<int64_t> out_sizes_;
};

// The three ops with their schemas' signatures over one backend function
// run(op, act, other, idx, b1, b2): what TORCH_LIBRARY_IMPL registers.
using BsmmRun = at::Tensor (*)(int op, const at::Tensor &act, const at::Tensor &other,
                               const IndexTensors &idx, int64_t b1, int64_t b2);

template <BsmmRun run>
struct BsmmOps {
  static at::Tensor fwd(const at::Tensor &x, const at::Tensor &blocks, const at::Tensor &row_ptr,
                        const at::Tensor &col_idx, const at::Tensor &col_ptr,
                        const at::Tensor &row_idx, const at::Tensor &csc_blk) {
    return run(PF_OP_FWD, x, blocks, {row_ptr, col_idx, col_ptr, row_idx, csc_blk}, 0, 0);
  }
  static at::Tensor bwd_x(const at::Tensor &dy, const at::Tensor &blocks,
                          const at::Tensor &row_ptr, const at::Tensor &col_idx,
                          const at::Tensor &col_ptr, const at::Tensor &row_idx,
                          const at::Tensor &csc_blk) {
    return run(PF_OP_BWD_X, dy, blocks, {row_ptr, col_idx, col_ptr, row_idx, csc_blk}, 0, 0);
  }
  static at::Tensor bwd_w(const at::Tensor &dy, const at::Tensor &x, const at::Tensor &row_ptr,
                          const at::Tensor &col_idx, const at::Tensor &col_ptr,
                          const at::Tensor &row_idx, const at::Tensor &csc_blk, int64_t b1,
                          int64_t b2) {
    return run(PF_OP_BWD_W, dy, x, {row_ptr, col_idx, col_ptr, row_idx, csc_blk}, b1, b2);
  }
};

}  // namespace pixelfly

// Registers BsmmOps<run> as the three ops' implementations in a TORCH_LIBRARY_IMPL block.
#define PF_REGISTER_BSMM(m, run)                            \
  do {                                                      \
    (m).impl("bsmm_fwd", &pixelfly::BsmmOps<run>::fwd);     \
    (m).impl("bsmm_bwd_x", &pixelfly::BsmmOps<run>::bwd_x); \
    (m).impl("bsmm_bwd_w", &pixelfly::BsmmOps<run>::bwd_w); \
  } while (0)
