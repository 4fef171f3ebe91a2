// Block-sparse attention ops (CPU): schemas + CPU implementations calling the torch-free
// kernels of csrc/cpu/attn.c (see pixelfly_attn.h). ops.cpp owns TORCH_LIBRARY(pixelfly);
// this file adds a fragment. Fake kernels and autograd live in pixelfly/attention_ops.py.
#include <ATen/Parallel.h>
#include <algorithm>
#include <atomic>
#include <torch/library.h>
#include <torch/types.h>

#include "pixelfly_attn.h"

namespace {

#define PFA_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, "pixelfly.bsattn: ", __VA_ARGS__)
#define PFA_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "pixelfly.bsattn: ", __VA_ARGS__)

std::atomic<int64_t> g_attn_isa{PF_ISA_AUTO};
std::atomic<int64_t> g_attn_bwd_mode{0};  // 0 auto, 1 per problem, 2 rows/columns

pf_dtype attn_dtype(const at::Tensor &t) {
  if (t.scalar_type() == at::kFloat) return PF_FLOAT32;
  if (t.scalar_type() == at::kBFloat16) return PF_BFLOAT16;
  if (t.scalar_type() == at::kDouble) return PF_FLOAT64;
  PFA_CHECK_TYPE(false, "q must be float32, bfloat16 or float64 on the CPU, got ", t.scalar_type());
  return PF_FLOAT32;
}

at::ScalarType lse_dtype(const at::Tensor &q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// q-like operand: 3-D [N, L, d] or 4-D [B, H, L, d], CPU, same dtype/shape as q.
at::Tensor dense_operand(const char *name, const at::Tensor &t, const at::Tensor &q) {
  PFA_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  PFA_CHECK(t.dim() == 3 || t.dim() == 4, name, " must be 3-D [N, L, d] or 4-D [B, H, L, d], got ",
            t.dim(), "-D");
  PFA_CHECK_TYPE(t.scalar_type() == q.scalar_type(), name, " (", t.scalar_type(),
                 ") must have q's dtype (", q.scalar_type(), ")");
  PFA_CHECK(t.sizes() == q.sizes(), name, " must have q's shape ", q.sizes(), ", got ", t.sizes());
  return t.stride(-1) == 1 ? t : t.contiguous();
}

pf_attn_tensor view(const at::Tensor &t) {
  if (t.dim() == 4) return pf_attn_tensor{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
  return pf_attn_tensor{t.data_ptr(), t.stride(0), 0, t.stride(1)};
}

void check_index(const char *name, const at::Tensor &t, int64_t numel, const char *what) {
  PFA_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  PFA_CHECK(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
  PFA_CHECK(t.dim() == 1, name, " must be 1-D, got ", t.dim(), "-D");
  PFA_CHECK(numel < 0 || t.numel() == numel, name, " must have ", numel, " entries (", what,
            "), got ", t.numel());
}

struct Setup {
  pf_attn_args a{};
  at::Tensor q, k, v, row_ptr, col_idx, col_ptr, row_idx;
  Setup(const at::Tensor &q_, const at::Tensor &k_, const at::Tensor &v_, const at::Tensor &rp,
        const at::Tensor &ci, const at::Tensor &cp, const at::Tensor &ri, int64_t block,
        double scale, bool causal) {
    PFA_CHECK(q_.device().is_cpu(), "q must be a CPU tensor, got ", q_.device());
    PFA_CHECK(q_.dim() == 3 || q_.dim() == 4, "q must be 3-D [N, L, d] or 4-D [B, H, L, d], got ",
              q_.dim(), "-D");
    a.dtype = attn_dtype(q_);
    q = dense_operand("q", q_, q_);
    k = dense_operand("k", k_, q_);
    v = dense_operand("v", v_, q_);
    const int64_t L = q.size(-2), d = q.size(-1);
    PFA_CHECK(block > 0, "block must be positive, got ", block);
    PFA_CHECK(L > 0 && L % block == 0, "the sequence length L = q.size(-2) = ", L,
              " must be a positive multiple of block = ", block);
    PFA_CHECK(d > 0, "the head dim d = q.size(-1) must be positive");
    PFA_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
    const int64_t R = L / block;
    check_index("row_ptr", rp, R + 1, "L/block + 1");
    check_index("col_idx", ci, -1, "");
    check_index("col_ptr", cp, R + 1, "L/block + 1");
    check_index("row_idx", ri, ci.numel(), "nnz = col_idx.numel()");
    row_ptr = rp.contiguous(); col_idx = ci.contiguous();
    col_ptr = cp.contiguous(); row_idx = ri.contiguous();
    if (q.dim() == 4) { a.batch = q.size(0); a.heads = q.size(1); }
    else { a.batch = q.size(0); a.heads = 1; }
    a.L = L; a.d = d; a.block = block; a.nnz = col_idx.numel();
    a.row_ptr = row_ptr.data_ptr<int64_t>(); a.col_idx = col_idx.data_ptr<int64_t>();
    a.col_ptr = col_ptr.data_ptr<int64_t>(); a.row_idx = row_idx.data_ptr<int64_t>();
    a.scale = scale; a.causal = causal ? 1 : 0;
    a.q = view(q); a.k = view(k); a.v = view(v);
    a.isa = static_cast<int>(g_attn_isa.load());
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    a.max_tasks = 4 * threads;
    // Backward schedule: one task per (batch, head) (5 GEMMs per block instead of 7) when
    // the problems alone keep every thread evenly busy; otherwise row/column tasks.
    const int64_t N = a.batch * a.heads;
    a.bwd_per_problem = g_attn_bwd_mode.load() == 1 ||
        (g_attn_bwd_mode.load() == 0 && N >= threads && (N % threads == 0 || N >= 4 * threads));
  }
};

void run(int op, pf_attn_args &a) {
  pf_err err = pf_attn_check(op, &a);
  PFA_CHECK(err == nullptr, err ? err : "");
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
                                              double scale, bool causal) {
  Setup s(q, k, v, row_ptr, col_idx, col_ptr, row_idx, block, scale, causal);
  at::Tensor out = at::empty(s.q.sizes(), s.q.options().memory_format(at::MemoryFormat::Contiguous));
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
    const at::Tensor &row_idx, int64_t block, double scale, bool causal) {
  Setup s(q, k, v, row_ptr, col_idx, col_ptr, row_idx, block, scale, causal);
  at::Tensor dO = dense_operand("dout", dout, s.q);
  at::Tensor O = dense_operand("out", out, s.q);
  const auto lse_shape = s.q.sizes().slice(0, s.q.dim() - 1);
  const auto ld = lse_dtype(s.q);
  PFA_CHECK(lse.device().is_cpu(), "lse must be a CPU tensor, got ", lse.device());
  PFA_CHECK_TYPE(lse.scalar_type() == ld, "lse must be ", ld, " for q of dtype ", s.q.scalar_type(),
                 ", got ", lse.scalar_type());
  PFA_CHECK(lse.sizes() == lse_shape, "lse must have shape ", lse_shape, ", got ", lse.sizes());
  at::Tensor L = lse.contiguous();
  at::Tensor dL;
  if (dlse.has_value() && dlse->defined()) {
    PFA_CHECK(dlse->device().is_cpu(), "dlse must be a CPU tensor, got ", dlse->device());
    PFA_CHECK_TYPE(dlse->scalar_type() == ld, "dlse must be ", ld, ", got ", dlse->scalar_type());
    PFA_CHECK(dlse->sizes() == lse_shape, "dlse must have shape ", lse_shape, ", got ", dlse->sizes());
    dL = dlse->contiguous();
  }
  auto opts = s.q.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor dq = at::empty(s.q.sizes(), opts), dk = at::empty(s.q.sizes(), opts),
             dv = at::empty(s.q.sizes(), opts);
  s.a.out = view(O);
  s.a.dout = view(dO);
  s.a.lse = L.data_ptr();
  s.a.dlse = dL.defined() ? dL.data_ptr() : nullptr;
  s.a.dq = view(dq); s.a.dk = view(dk); s.a.dv = view(dv);
  run(PF_ATTN_BWD, s.a);
  return {dq, dk, dv};
}

// Force the attention kernels' ISA (0 auto, 1 portable, 2 AVX2+FMA, 3 AVX-512); returns the
// previous one.
int64_t bsattn_set_cpu_isa(int64_t isa) {
  PFA_CHECK(isa >= PF_ISA_AUTO && isa <= PF_ISA_AVX512,
            "isa must be 0 (auto), 1 (portable), 2 (AVX2+FMA) or 3 (AVX-512), got ", isa);
  PFA_CHECK(isa != PF_ISA_AVX2 || pf_cpu_has_avx2_fma(), "isa 2 (AVX2+FMA) is not supported by this CPU");
  PFA_CHECK(isa != PF_ISA_AVX512 || pf_cpu_has_avx512(), "isa 3 (AVX-512) is not supported by this CPU");
  return g_attn_isa.exchange(isa);
}

// Backward schedule (0 auto, 1 one task per (batch, head), 2 row/column tasks); returns the
// previous setting. For tests and benchmarks.
int64_t bsattn_set_bwd_mode(int64_t mode) {
  PFA_CHECK(mode >= 0 && mode <= 2, "mode must be 0 (auto), 1 (per problem) or 2 (rows/columns), got ", mode);
  return g_attn_bwd_mode.exchange(mode);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pixelfly, m) {
  m.def("bsattn_fwd(Tensor q, Tensor k, Tensor v, Tensor row_ptr, Tensor col_idx, Tensor col_ptr, "
        "Tensor row_idx, int block, float scale, bool causal) -> (Tensor out, Tensor lse)");
  m.def("bsattn_bwd(Tensor dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, Tensor out, "
        "Tensor lse, Tensor row_ptr, Tensor col_idx, Tensor col_ptr, Tensor row_idx, int block, "
        "float scale, bool causal) -> (Tensor dq, Tensor dk, Tensor dv)");
  m.def("bsattn_set_cpu_isa(int isa) -> int", &bsattn_set_cpu_isa);
  m.def("bsattn_set_bwd_mode(int mode) -> int", &bsattn_set_bwd_mode);
}

TORCH_LIBRARY_IMPL(pixelfly, CPU, m) {
  m.impl("bsattn_fwd", &bsattn_fwd);
  m.impl("bsattn_bwd", &bsattn_bwd);
}
