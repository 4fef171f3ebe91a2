// The CPU block-sparse attention binding: registers the CPU implementations of bsattn_fwd
// and bsattn_bwd (schemas in schemas.cpp), which run the torch-free kernels of
// csrc/cpu/attn.c (pixelfly_attn.h) with at::parallel_for. The user-facing checks are in
// Python (pixelfly/op_checks.py); fake kernels and autograd: pixelfly/attention_ops.py.
#include <ATen/Parallel.h>
#include <algorithm>
#include <torch/library.h>
#include <torch/types.h>

#include "checks.h"
#include "cpu_cache.h"
#include "pixelfly_attn.h"
#include "settings.h"

namespace {

pf_dtype attn_dtype(const at::Tensor &q) {
  return pixelfly::kernel_dtype("q", q, {at::kFloat, at::kBFloat16, at::kDouble}, "CPU");
}

at::ScalarType lse_dtype(const at::Tensor &q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A q-like operand (same shape, dtype, device as q) with a unit-stride last dimension.
at::Tensor like_q(const at::Tensor &t, const char *name, const at::Tensor &q) {
  CHECK_DEVICE(t, name, q.device());
  CHECK_SAME_DTYPE(t, name, q, "q");
  CHECK_SHAPE(t, name, q.sizes());
  return t.stride(-1) == 1 ? t : t.contiguous();
}

// lse / dlse: [q.shape[:-1]] in lse_dtype(q), on q's device.
at::Tensor lse_like(const at::Tensor &t, const char *name, const at::Tensor &q) {
  CHECK_DEVICE(t, name, q.device());
  PF_CHECK_TYPE(t.scalar_type() == lse_dtype(q), name, " must be ", lse_dtype(q), ", got ",
                t.scalar_type());
  CHECK_SHAPE(t, name, q.sizes().slice(0, q.dim() - 1));
  return t.contiguous();
}

pf_attn_tensor view(const at::Tensor &t) {
  if (t.dim() == 4) return pf_attn_tensor{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
  return pf_attn_tensor{t.data_ptr(), t.stride(0), 0, t.stride(1)};
}

// The schedule: one task per (batch, head) (backward: 5 GEMMs per block instead of 7; buffers
// per task) when the problems alone keep every thread evenly busy; otherwise row/column tasks.
bool per_problem(int64_t problems, int64_t threads) {
  const int mode = pixelfly::attention_bwd_mode();
  return mode == 1 || (mode == 0 && problems >= threads &&
                       (problems % threads == 0 || problems >= 4 * threads));
}

using OptTensor = std::optional<at::Tensor>;

bool given(const OptTensor &t) { return t.has_value() && t->defined(); }

// The checked arguments of one call (what a's pointers point into is kept alive here).
struct Setup {
  pf_attn_args a{};
  at::Tensor q, k, v, row_ptr, col_idx, col_ptr, row_idx, features, key_mask;
  Setup(const at::Tensor &q_, const at::Tensor &k_, const at::Tensor &v_, const at::Tensor &rp,
        const at::Tensor &ci, const at::Tensor &cp, const at::Tensor &ri, int64_t block,
        double scale, bool causal, const OptTensor &feats, const OptTensor &kmask) {
    PF_CHECK(q_.dim() == 3 || q_.dim() == 4, "q must be 3-D [N, L, d] or 4-D [B, H, L, d], got ",
             q_.sizes());
    a.dtype = attn_dtype(q_);
    q = like_q(q_, "q", q_);
    k = like_q(k_, "k", q_);
    v = like_q(v_, "v", q_);
    const int64_t L = q.size(-2), d = q.size(-1);
    PF_CHECK(block > 0 && L > 0 && L % block == 0 && d > 0, "q [..., L, d] = ", q.sizes(),
             " needs d > 0 and L a positive multiple of block = ", block);
    const int64_t R = L / block;
    row_ptr = rp.contiguous(); col_idx = ci.contiguous();
    col_ptr = cp.contiguous(); row_idx = ri.contiguous();
    CHECK_INDEX(row_ptr, "row_ptr", R + 1, q.device());
    CHECK_INDEX(col_idx, "col_idx", col_idx.numel(), q.device());
    CHECK_INDEX(col_ptr, "col_ptr", R + 1, q.device());
    CHECK_INDEX(row_idx, "row_idx", col_idx.numel(), q.device());
    a.batch = q.size(0);
    a.heads = q.dim() == 4 ? q.size(1) : 1;
    a.L = L; a.d = d; a.block = block; a.nnz = col_idx.numel();
    a.row_ptr = row_ptr.data_ptr<int64_t>(); a.col_idx = col_idx.data_ptr<int64_t>();
    a.col_ptr = col_ptr.data_ptr<int64_t>(); a.row_idx = row_idx.data_ptr<int64_t>();
    a.scale = scale; a.causal = causal ? 1 : 0;
    a.q = view(q); a.k = view(k); a.v = view(v);
    a.isa = pixelfly::attention_isa();
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    a.max_tasks = 4 * threads;
    a.per_problem = per_problem(a.batch * a.heads, threads);
    // one task per thread when each owns whole problems: its buffers (packed operands, low-rank
    // sums) serve its problems in turn, so the workspace scales with threads, not batch * heads
    if (a.per_problem) a.max_tasks = threads;
    if (given(feats)) {  // the low-rank part's projection [r, d], in the accumulator dtype
      CHECK_DEVICE((*feats), "features", q.device());
      PF_CHECK(feats->dim() == 2 && feats->size(1) == d, "features must be [r, d = ", d, "], got ",
               feats->sizes());
      PF_CHECK_TYPE(feats->is_floating_point(), "features must be floating point, got ",
                    feats->scalar_type());
      features = feats->to(lse_dtype(q)).contiguous();
      a.rank = features.size(0);
      a.features = a.rank > 0 ? features.data_ptr() : nullptr;
    }
    if (given(kmask)) {  // [batch, L] bool: false excludes the key from every row
      CHECK_DEVICE((*kmask), "key_mask", q.device());
      PF_CHECK_TYPE(kmask->scalar_type() == at::kBool, "key_mask must be bool, got ",
                    kmask->scalar_type());
      CHECK_SHAPE((*kmask), "key_mask", a.batch, L);
      key_mask = kmask->contiguous();
      a.key_mask = reinterpret_cast<const uint8_t *>(key_mask.data_ptr());
    }
  }
};

void run(int op, pf_attn_args &a) {
  pf_err err = pf_attn_check(op, &a);
  TORCH_CHECK_VALUE(err == nullptr, "pixelfly.bsattn: ", err ? err : "");
  if (a.batch * a.heads == 0) return;
  const int64_t ws = pf_attn_workspace(op, &a);
  at::Tensor work = at::empty({ws > 0 ? ws : 1}, at::TensorOptions().dtype(at::kByte));
  a.work = work.data_ptr();
  for (int phase = 0; phase < PF_ATTN_PHASES; ++phase) {
    const int64_t n = pf_attn_num_tasks(op, phase, &a);
    if (n > 0)
      at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) { pf_attn_run(op, phase, &a, b, e); });
  }
}

std::tuple<at::Tensor, at::Tensor> bsattn_fwd(const at::Tensor &q, const at::Tensor &k,
                                              const at::Tensor &v, const at::Tensor &row_ptr,
                                              const at::Tensor &col_idx, const at::Tensor &col_ptr,
                                              const at::Tensor &row_idx, int64_t block,
                                              double scale, bool causal, const OptTensor &features,
                                              const OptTensor &key_mask) {
  Setup s(q, k, v, row_ptr, col_idx, col_ptr, row_idx, block, scale, causal, features, key_mask);
  // outputs from the CPU cache (cpu_cache.h): large ones keep their pages between calls
  at::Tensor out = pixelfly::cached_empty(s.q.sizes(), s.q.options());
  at::Tensor lse = at::empty(s.q.sizes().slice(0, s.q.dim() - 1), s.q.options().dtype(lse_dtype(s.q)));
  s.a.out = view(out);
  s.a.lse = lse.data_ptr();
  run(PF_ATTN_FWD, s.a);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bsattn_bwd(
    const at::Tensor &dout, const std::optional<at::Tensor> &dlse, const at::Tensor &q,
    const at::Tensor &k, const at::Tensor &v, const at::Tensor &out, const at::Tensor &lse,
    const at::Tensor &row_ptr, const at::Tensor &col_idx, const at::Tensor &col_ptr,
    const at::Tensor &row_idx, int64_t block, double scale, bool causal, const OptTensor &features,
    const OptTensor &key_mask) {
  Setup s(q, k, v, row_ptr, col_idx, col_ptr, row_idx, block, scale, causal, features, key_mask);
  const at::Tensor dO = like_q(dout, "dout", s.q), O = like_q(out, "out", s.q);
  const at::Tensor L = lse_like(lse, "lse", s.q);
  at::Tensor dL;
  if (dlse.has_value() && dlse->defined()) dL = lse_like(*dlse, "dlse", s.q);
  auto opts = s.q.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor dq = pixelfly::cached_empty(s.q.sizes(), opts), dk = pixelfly::cached_empty(s.q.sizes(), opts),
             dv = pixelfly::cached_empty(s.q.sizes(), opts);
  s.a.out = view(O);
  s.a.dout = view(dO);
  s.a.lse = L.data_ptr();
  s.a.dlse = dL.defined() ? dL.data_ptr() : nullptr;
  s.a.dq = view(dq); s.a.dk = view(dk); s.a.dv = view(dv);
  run(PF_ATTN_BWD, s.a);
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(pixelfly, CPU, m) {
  m.impl("bsattn_fwd", &bsattn_fwd);
  m.impl("bsattn_bwd", &bsattn_bwd);
}
