// checks.h - the bindings' argument checks (flash-attention style CHECK_* macros) and the
// row layout the kernels read. The user-facing validation, with the caller's argument names
// and what a size means, is done once in Python (pixelfly/op_checks.py) before a kernel is
// called; these are the cheap invariants that keep a direct torch.ops.pixelfly call from
// handing the kernels memory its tensors do not own. ValueError / TypeError, like the
// Python checks.
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <string>
#include <c10/util/Exception.h>

#include "pixelfly.h"

#define PF_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, "pixelfly: ", __VA_ARGS__)
#define PF_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "pixelfly: ", __VA_ARGS__)

// `name` (a tensor) lives on `dev`.
#define CHECK_DEVICE(t, name, dev) \
  PF_CHECK((t).device() == (dev), name, " must be on ", (dev), ", got ", (t).device())
// `name` has exactly these sizes.
#define CHECK_SHAPE(t, name, ...)                                                     \
  PF_CHECK((t).sizes() == at::IntArrayRef({__VA_ARGS__}), name, " must have shape ", \
           at::IntArrayRef({__VA_ARGS__}), ", got ", (t).sizes())
// `name` is a [rows, cols] matrix (any rows).
#define CHECK_COLS(t, name, cols)                                                           \
  PF_CHECK((t).dim() == 2 && (t).size(1) == (cols), name, " must have shape [T, ", (cols), \
           "], got ", (t).sizes())
#define CHECK_SAME_DTYPE(a, aname, b, bname)                                                \
  PF_CHECK_TYPE((a).scalar_type() == (b).scalar_type(), aname, " (", (a).scalar_type(),   \
                ") and ", bname, " (", (b).scalar_type(), ") must share a dtype")
// An index array: contiguous 1-D int64 on `dev` with `n` entries.
#define CHECK_INDEX(t, name, n, dev)                                                        \
  do {                                                                                      \
    PF_CHECK_TYPE((t).scalar_type() == at::kLong, name, " must be int64, got ",            \
                  (t).scalar_type());                                                       \
    CHECK_DEVICE(t, name, dev);                                                             \
    PF_CHECK((t).dim() == 1 && (t).is_contiguous() && (t).numel() == (n), name,            \
             " must be a contiguous 1-D tensor of ", (n), " entries, got shape ", (t).sizes()); \
  } while (0)

namespace pixelfly {

// a * b, or an error naming `what` when it does not fit in 64 bits.
inline int64_t mul_checked(int64_t a, int64_t b, const char *what) {
  int64_t r;
  PF_CHECK(!__builtin_mul_overflow(a, b, &r), what, " (", a, " x ", b, ") does not fit in 64 bits");
  return r;
}

// The kernels' dtype of a floating-point scalar type (float32 for anything else).
inline pf_dtype pf_dtype_of(at::ScalarType s) {
  return s == at::kBFloat16 ? PF_BFLOAT16 : s == at::kHalf ? PF_FLOAT16
       : s == at::kDouble   ? PF_FLOAT64  : PF_FLOAT32;
}

// The kernels' dtype of `name`, which must be one of `backend`'s `supported` dtypes.
inline pf_dtype kernel_dtype(const char *name, const at::Tensor &t,
                             std::initializer_list<at::ScalarType> supported, const char *backend) {
  const at::ScalarType s = t.scalar_type();
  bool ok = false;
  for (at::ScalarType d : supported) ok = ok || d == s;
  if (!ok) {
    static const char *const names[] = {"float32", "bfloat16", "float16", "float64"};
    std::string list;
    size_t i = 0;
    for (at::ScalarType d : supported) {
      list += i == 0 ? "" : i + 1 == supported.size() ? " or " : ", ";
      list += names[pf_dtype_of(d)];
      ++i;
    }
    PF_CHECK_TYPE(false, name, " must be ", list, " for the ", backend, " kernels, got ", s);
  }
  return pf_dtype_of(s);
}

// The kernels read a [T, n] matrix row by row: unit stride inside a row, rows at least n
// apart (any stride when there is a single row or column). Other views (an expand()ed or a
// transposed x) are copied once.
inline bool rows_ok(const at::Tensor &t) {
  const bool unit = t.size(1) <= 1 || t.stride(1) == 1;
  return t.size(0) == 0 || t.size(1) == 0 || (unit && (t.size(0) == 1 || t.stride(0) >= t.size(1)));
}
inline at::Tensor rows_contiguous(const at::Tensor &t) { return rows_ok(t) ? t : t.contiguous(); }

// The row stride handed to the kernels (any value >= n when there is one row).
inline int64_t row_stride(const at::Tensor &t) { return t.size(0) > 1 ? t.stride(0) : t.size(1); }

}  // namespace pixelfly
