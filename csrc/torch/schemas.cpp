// The schemas of every pixelfly op, in one place. The implementations are registered per
// backend: CPU in ops.cpp (bsmm) and attn.cpp (attention), CUDA in ops_cuda.cu (the
// pixelfly._ops_cuda extension), the composite ops for every other device by
// pixelfly/backends.py. Fake kernels and autograd: pixelfly/ops.py, attention_ops.py.
#include <torch/library.h>

TORCH_LIBRARY(pixelfly, m) {
  m.def("bsmm_fwd(Tensor x, Tensor blocks, Tensor row_ptr, Tensor col_idx, Tensor col_ptr, "
        "Tensor row_idx, Tensor csc_blk) -> Tensor");
  m.def("bsmm_bwd_x(Tensor dy, Tensor blocks, Tensor row_ptr, Tensor col_idx, Tensor col_ptr, "
        "Tensor row_idx, Tensor csc_blk) -> Tensor");
  m.def("bsmm_bwd_w(Tensor dy, Tensor x, Tensor row_ptr, Tensor col_idx, Tensor col_ptr, "
        "Tensor row_idx, Tensor csc_blk, int b1, int b2) -> Tensor");
  // bsmm_fwd / bsmm_bwd_x plus lr_a lr_b^T + bias, added in the kernel's output tile (the
  // output written once): PixelflyLinear's low-rank term (lr_a = x V, lr_b = U; in backward
  // dy U and V) and bias.
  m.def("bsmm_fwd_lowrank(Tensor x, Tensor blocks, Tensor row_ptr, Tensor col_idx, "
        "Tensor col_ptr, Tensor row_idx, Tensor csc_blk, Tensor lr_a, Tensor lr_b, "
        "Tensor? bias=None) -> Tensor");
  m.def("bsmm_bwd_x_lowrank(Tensor dy, Tensor blocks, Tensor row_ptr, Tensor col_idx, "
        "Tensor col_ptr, Tensor row_idx, Tensor csc_blk, Tensor lr_a, Tensor lr_b, "
        "Tensor? bias=None) -> Tensor");
  m.def("bsattn_fwd(Tensor q, Tensor k, Tensor v, Tensor row_ptr, Tensor col_idx, Tensor col_ptr, "
        "Tensor row_idx, int block, float scale, bool causal, Tensor? features=None, "
        "Tensor? key_mask=None) -> (Tensor out, Tensor lse)");
  m.def("bsattn_bwd(Tensor dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, Tensor out, "
        "Tensor lse, Tensor row_ptr, Tensor col_idx, Tensor col_ptr, Tensor row_idx, int block, "
        "float scale, bool causal, Tensor? features=None, Tensor? key_mask=None) -> "
        "(Tensor dq, Tensor dk, Tensor dv)");
}
