// The one CPU binding file: defines the pixelfly op schemas and registers the CPU
// implementations, which call the torch-free C kernels of csrc/cpu/bsmm.c.
// Autograd and fake (meta) implementations are attached in Python (pixelfly/ops.py).
#include <ATen/Parallel.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <torch/library.h>
#include <torch/types.h>

#include <Python.h>

#include "pixelfly.h"
#include "cpu_cache.h"

namespace {

#define PF_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, "pixelfly: ", __VA_ARGS__)
#define PF_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "pixelfly: ", __VA_ARGS__)

void check_index(const char *name, const at::Tensor &t, int64_t numel) {
  PF_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  PF_CHECK(t.device().is_cpu(), name, " must be on the CPU for the CPU kernel, got ", t.device());
  PF_CHECK(t.dim() == 1 && t.is_contiguous(), name, " must be a contiguous 1-D tensor");
  PF_CHECK(t.numel() == numel, name, " must have ", numel, " entries, got ", t.numel());
}

// a * b, or an error naming `what` when it does not fit int64.
int64_t mul_checked(int64_t a, int64_t b, const char *what) {
  int64_t r;
  PF_CHECK(!__builtin_mul_overflow(a, b, &r), what, " (", a, " x ", b, ") does not fit in 64 bits");
  return r;
}

// An activation [T, cols]: 2-D, CPU, `cols` columns (`what` says where that number comes from).
void check_dense(const char *name, const at::Tensor &t, int64_t cols, const std::string &what) {
  PF_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  PF_CHECK(t.dim() == 2, name, " must be 2-D [T, features], got ", t.dim(), "-D");
  PF_CHECK(t.size(1) == cols, name, " must have ", cols, " columns (", what, "), got ", t.size(1));
}

// Rows are read with a stride >= the row length: other layouts (an expand()ed x, a
// transposed view) are copied once.
bool rows_ok(const at::Tensor &t) {
  return t.size(0) <= 1 || t.size(1) == 0 || (t.stride(1) == 1 && t.stride(0) >= t.size(1));
}
at::Tensor rows_contiguous(const at::Tensor &t) { return rows_ok(t) ? t : t.contiguous(); }

std::string human_bytes(double b) {
  const char *unit[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int i = 0;
  while (b >= 1024 && i < 6) { b /= 1024; ++i; }
  char buf[64];
  snprintf(buf, sizeof buf, i ? "%.1f %s" : "%.0f %s", b, unit[i]);
  return buf;
}

// Before allocating the [rows, cols] output `out` of an op (and a copy of the input when
// it must be made contiguous): an error naming the input `name` when that cannot fit in
// this machine's memory.
void check_fits(const char *name, const at::Tensor &in, const char *out, int64_t rows, int64_t cols,
                const at::Tensor &like) {
  const double elem = double(like.element_size());
  double need = double(rows) * double(cols) * elem;
  if (!rows_ok(in)) need += double(in.numel()) * elem;
  const double phys = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  PF_CHECK(phys <= 0 || need <= phys, name, " has ", in.size(0), " rows: the output ", out, " [",
           rows, ", ", cols, "] (", like.scalar_type(), ") needs ", human_bytes(need),
           ", more than this machine's ", human_bytes(phys), " of memory");
}

pf_dtype to_pf_dtype(const char *name, const at::Tensor &t) {
  if (t.scalar_type() == at::kFloat) return PF_FLOAT32;
  if (t.scalar_type() == at::kBFloat16) return PF_BFLOAT16;
  if (t.scalar_type() == at::kDouble) return PF_FLOAT64;
  PF_CHECK_TYPE(false, name, " must be float32, bfloat16 or float64 on the CPU, got ", t.scalar_type());
  return PF_FLOAT32;
}

// Owns the index view handed to the C kernels for one call.
struct Index {
  pf_bsr_index ix;
  Index(const at::Tensor &row_ptr, const at::Tensor &col_idx, const at::Tensor &col_ptr,
        const at::Tensor &row_idx, const at::Tensor &csc_blk, int64_t b1, int64_t b2) {
    PF_CHECK(row_ptr.dim() == 1 && row_ptr.numel() >= 1, "row_ptr must be 1-D with R+1 entries");
    PF_CHECK(col_ptr.dim() == 1 && col_ptr.numel() >= 1, "col_ptr must be 1-D with C+1 entries");
    const int64_t nnz = col_idx.numel();
    check_index("row_ptr", row_ptr, row_ptr.numel());
    check_index("col_idx", col_idx, nnz);
    check_index("col_ptr", col_ptr, col_ptr.numel());
    check_index("row_idx", row_idx, nnz);
    check_index("csc_blk", csc_blk, nnz);
    mul_checked(row_ptr.numel() - 1, b1, "out_features = block-rows x b1");
    mul_checked(col_ptr.numel() - 1, b2, "in_features = block-columns x b2");
    ix = pf_bsr_index{row_ptr.numel() - 1, col_ptr.numel() - 1, b1, b2, nnz,
                      row_ptr.data_ptr<int64_t>(), col_idx.data_ptr<int64_t>(),
                      col_ptr.data_ptr<int64_t>(), row_idx.data_ptr<int64_t>(),
                      csc_blk.data_ptr<int64_t>()};
  }
};

// ISA forced for tests/benchmarks (PF_ISA_AUTO = best available); see set_cpu_isa.
std::atomic<int64_t> g_isa{PF_ISA_AUTO};

// Runs the op's phases with at::parallel_for (honours torch.set_num_threads).
void run(int op, pf_bsmm_args &a) {
  a.isa = static_cast<int>(g_isa.load());
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

void check_blocks(const at::Tensor &blocks, const at::Tensor &other, int64_t nnz) {
  PF_CHECK(blocks.device().is_cpu(), "blocks must be a CPU tensor, got ", blocks.device());
  PF_CHECK(blocks.dim() == 3, "blocks must be 3-D [nnz, b1, b2], got ", blocks.dim(), "-D");
  PF_CHECK(blocks.size(0) == nnz, "blocks has ", blocks.size(0), " blocks but the index has ", nnz);
  PF_CHECK(blocks.size(1) > 0 && blocks.size(2) > 0, "block sizes must be positive");
  PF_CHECK_TYPE(blocks.scalar_type() == other.scalar_type(), "blocks (", blocks.scalar_type(),
                ") and the activations (", other.scalar_type(), ") must share a dtype");
}

// "in_features = 4 block-columns x 8" (where a number of columns comes from)
std::string features(const char *what, int64_t n, const char *grid, const char *bname, int64_t b) {
  return std::string(what) + " = " + std::to_string(n) + " " + grid + " x " + bname + " = " +
         std::to_string(b);
}

at::Tensor bsmm_fwd(const at::Tensor &x_, const at::Tensor &blocks, const at::Tensor &row_ptr,
                    const at::Tensor &col_idx, const at::Tensor &col_ptr,
                    const at::Tensor &row_idx, const at::Tensor &csc_blk) {
  to_pf_dtype("x", x_);
  check_blocks(blocks, x_, col_idx.numel());
  Index I(row_ptr, col_idx, col_ptr, row_idx, csc_blk, blocks.size(1), blocks.size(2));
  check_dense("x", x_, I.ix.C * I.ix.b2, features("in_features", I.ix.C, "block-columns", "b2", I.ix.b2));
  check_fits("x", x_, "y", x_.size(0), I.ix.R * I.ix.b1, x_);
  const at::Tensor x = rows_contiguous(x_);
  at::Tensor w = blocks.contiguous();
  bool fresh = true;
  at::Tensor y = pixelfly::cached_empty({x.size(0), I.ix.R * I.ix.b1}, x.options(), &fresh);
  pf_bsmm_args a{};
  a.out_fresh = fresh;
  a.dtype = to_pf_dtype("x", x);
  a.T = x.size(0);
  a.ix = &I.ix;
  a.x = x.data_ptr(); a.ldx = x.size(0) ? x.stride(0) : x.size(1);
  a.w = w.data_ptr();
  a.out = y.data_ptr(); a.ldo = y.size(1);
  run(PF_OP_FWD, a);
  return y;
}

at::Tensor bsmm_bwd_x(const at::Tensor &dy_, const at::Tensor &blocks, const at::Tensor &row_ptr,
                      const at::Tensor &col_idx, const at::Tensor &col_ptr,
                      const at::Tensor &row_idx, const at::Tensor &csc_blk) {
  to_pf_dtype("dy", dy_);
  check_blocks(blocks, dy_, col_idx.numel());
  Index I(row_ptr, col_idx, col_ptr, row_idx, csc_blk, blocks.size(1), blocks.size(2));
  check_dense("dy", dy_, I.ix.R * I.ix.b1, features("out_features", I.ix.R, "block-rows", "b1", I.ix.b1));
  check_fits("dy", dy_, "dx", dy_.size(0), I.ix.C * I.ix.b2, dy_);
  const at::Tensor dy = rows_contiguous(dy_);
  at::Tensor w = blocks.contiguous();
  bool fresh = true;
  at::Tensor dx = pixelfly::cached_empty({dy.size(0), I.ix.C * I.ix.b2}, dy.options(), &fresh);
  pf_bsmm_args a{};
  a.out_fresh = fresh;
  a.dtype = to_pf_dtype("dy", dy);
  a.T = dy.size(0);
  a.ix = &I.ix;
  a.dy = dy.data_ptr(); a.ldy = dy.size(0) ? dy.stride(0) : dy.size(1);
  a.w = w.data_ptr();
  a.out = dx.data_ptr(); a.ldo = dx.size(1);
  run(PF_OP_BWD_X, a);
  return dx;
}

at::Tensor bsmm_bwd_w(const at::Tensor &dy_, const at::Tensor &x_, const at::Tensor &row_ptr,
                      const at::Tensor &col_idx, const at::Tensor &col_ptr,
                      const at::Tensor &row_idx, const at::Tensor &csc_blk, int64_t b1,
                      int64_t b2) {
  to_pf_dtype("dy", dy_);
  to_pf_dtype("x", x_);
  PF_CHECK(b1 > 0 && b2 > 0, "the block size b1 x b2 must be positive, got b1 = ", b1, " and b2 = ", b2);
  const int64_t R = row_ptr.numel() - 1, C = col_ptr.numel() - 1;
  // b1, b2 against the activations first (R * b1 may not even fit in 64 bits)
  PF_CHECK(dy_.dim() != 2 || R < 1 || (dy_.size(1) % R == 0 && dy_.size(1) / R == b1), "b1 = ", b1,
           " does not match dy: dy has ", dy_.size(1), " columns for the index's ", R,
           " block-rows (b1 must be dy.size(1) / ", R, ")");
  PF_CHECK(x_.dim() != 2 || C < 1 || (x_.size(1) % C == 0 && x_.size(1) / C == b2), "b2 = ", b2,
           " does not match x: x has ", x_.size(1), " columns for the index's ", C,
           " block-columns (b2 must be x.size(1) / ", C, ")");
  Index I(row_ptr, col_idx, col_ptr, row_idx, csc_blk, b1, b2);
  check_dense("dy", dy_, R * b1, features("out_features", R, "block-rows", "b1", b1));
  check_dense("x", x_, C * b2, features("in_features", C, "block-columns", "b2", b2));
  PF_CHECK(dy_.size(0) == x_.size(0), "dy and x must have the same number of rows, got ",
           dy_.size(0), " and ", x_.size(0));
  PF_CHECK_TYPE(dy_.scalar_type() == x_.scalar_type(), "dy (", dy_.scalar_type(), ") and x (",
                x_.scalar_type(), ") must share a dtype");
  check_fits("dy", dy_, "dB", I.ix.nnz, b1 * b2, dy_);
  check_fits("x", x_, "dB", I.ix.nnz, b1 * b2, x_);
  const at::Tensor dy = rows_contiguous(dy_), x = rows_contiguous(x_);
  at::Tensor dw = at::empty({I.ix.nnz, b1, b2}, x.options());
  pf_bsmm_args a{};
  a.dtype = to_pf_dtype("x", x);
  a.T = x.size(0);
  a.ix = &I.ix;
  a.x = x.data_ptr(); a.ldx = x.size(0) ? x.stride(0) : x.size(1);
  a.dy = dy.data_ptr(); a.ldy = dy.size(0) ? dy.stride(0) : dy.size(1);
  a.out = dw.data_ptr(); a.ldo = b2;
  run(PF_OP_BWD_W, a);
  return dw;
}

int64_t cpu_cache_clear() { return pixelfly::cache_clear(); }
int64_t cpu_cache_set_limit(int64_t bytes) { return pixelfly::cache_set_limit(bytes); }
int64_t cpu_cache_held() { return pixelfly::cache_held(); }

int64_t cpu_isa() {
  if (pf_cpu_has_avx512()) return PF_ISA_AVX512;
  return pf_cpu_has_avx2_fma() ? PF_ISA_AVX2 : PF_ISA_PORTABLE;
}

// Force an ISA (0 auto, 1 portable, 2 AVX2+FMA, 3 AVX-512); returns the previous setting.
int64_t set_cpu_isa(int64_t isa) {
  PF_CHECK(isa >= PF_ISA_AUTO && isa <= PF_ISA_AVX512, "isa must be 0 (auto), 1 (portable), "
           "2 (AVX2+FMA) or 3 (AVX-512), got ", isa);
  PF_CHECK(isa <= cpu_isa(), "isa ", isa, " is not supported by this CPU (best: ", cpu_isa(), ")");
  return g_isa.exchange(isa);
}

}  // namespace

TORCH_LIBRARY(pixelfly, m) {
  m.def("bsmm_fwd(Tensor x, Tensor blocks, Tensor row_ptr, Tensor col_idx, Tensor col_ptr, "
        "Tensor row_idx, Tensor csc_blk) -> Tensor");
  m.def("bsmm_bwd_x(Tensor dy, Tensor blocks, Tensor row_ptr, Tensor col_idx, Tensor col_ptr, "
        "Tensor row_idx, Tensor csc_blk) -> Tensor");
  m.def("bsmm_bwd_w(Tensor dy, Tensor x, Tensor row_ptr, Tensor col_idx, Tensor col_ptr, "
        "Tensor row_idx, Tensor csc_blk, int b1, int b2) -> Tensor");
  m.def("cpu_isa() -> int", &cpu_isa);
  m.def("set_cpu_isa(int isa) -> int", &set_cpu_isa);
  m.def("cpu_cache_clear() -> int", &cpu_cache_clear);
  m.def("cpu_cache_set_limit(int bytes) -> int", &cpu_cache_set_limit);
  m.def("cpu_cache_held() -> int", &cpu_cache_held);
}

TORCH_LIBRARY_IMPL(pixelfly, CPU, m) {
  m.impl("bsmm_fwd", &bsmm_fwd);
  m.impl("bsmm_bwd_x", &bsmm_bwd_x);
  m.impl("bsmm_bwd_w", &bsmm_bwd_w);
}

// An importable module so `import pixelfly._ops` loads the library and runs the
// registrations above (the ops then live under torch.ops.pixelfly).
static struct PyModuleDef ops_module = {PyModuleDef_HEAD_INIT, "_ops",
                                        "pixelfly CPU ops (see torch.ops.pixelfly)", -1,
                                        nullptr};
PyMODINIT_FUNC PyInit__ops(void) { return PyModule_Create(&ops_module); }
