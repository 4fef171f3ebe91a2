// The pixelfly._ops Python module: importing it loads this library, whose static
// registrations define the ops (schemas.cpp) and their CPU kernels; its functions are the
// process-wide settings of the CPU kernels (plain functions, not dispatcher ops): the ISA
// of the bsmm and attention kernels, the attention backward schedule and the CPU output
// cache. pixelfly/ops.py and attention_ops.py wrap them for users.
#include <Python.h>

#include <atomic>
#include <exception>

#include <c10/util/Exception.h>

#include "cpu_cache.h"
#include "pixelfly.h"
#include "pixelfly_attn.h"
#include "settings.h"

namespace pixelfly {
namespace {

std::atomic<int> g_bsmm_isa{PF_ISA_AUTO};
std::atomic<int> g_attn_isa{PF_ISA_AUTO};
std::atomic<int> g_attn_bwd_mode{0};

int best_cpu_isa() {
  if (pf_cpu_has_avx512_bf16()) return PF_ISA_AVX512BF16;
  if (pf_cpu_has_avx512()) return PF_ISA_AVX512;
  return pf_cpu_has_avx2_fma() ? PF_ISA_AVX2 : PF_ISA_PORTABLE;
}

// `fn(value)` for a Python int argument; a C++ exception becomes ValueError (c10's
// ValueError) or RuntimeError.
template <class F>
PyObject *call_with_int(PyObject *arg, F fn) {
  const long long v = PyLong_AsLongLong(arg);
  if (v == -1 && PyErr_Occurred()) return nullptr;
  try {
    return PyLong_FromLongLong(fn(v));
  } catch (const c10::ValueError &e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
  } catch (const c10::Error &e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
  } catch (const std::exception &e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

PyObject *py_cpu_isa(PyObject *, PyObject *) { return PyLong_FromLong(best_cpu_isa()); }

// Installs `isa` in `slot` after checking it names an ISA this CPU runs; returns the old one.
long long exchange_isa(std::atomic<int> &slot, long long isa) {
  TORCH_CHECK_VALUE(isa >= PF_ISA_AUTO && isa <= PF_ISA_AVX512BF16, "isa must be 0 (auto), 1 "
                    "(portable), 2 (AVX2+FMA), 3 (AVX-512) or 4 (AVX-512 + AVX512_BF16), got ", isa);
  TORCH_CHECK_VALUE(isa <= best_cpu_isa(), "isa ", isa, " is not supported by this CPU (best: ",
                    best_cpu_isa(), ")");
  return slot.exchange(static_cast<int>(isa));
}

PyObject *py_set_cpu_isa(PyObject *, PyObject *arg) {
  return call_with_int(arg, [](long long isa) { return exchange_isa(g_bsmm_isa, isa); });
}

PyObject *py_set_attention_isa(PyObject *, PyObject *arg) {
  return call_with_int(arg, [](long long isa) { return exchange_isa(g_attn_isa, isa); });
}

PyObject *py_set_attention_bwd_mode(PyObject *, PyObject *arg) {
  return call_with_int(arg, [](long long mode) -> long long {
    TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, "mode must be 0 (auto), 1 (per problem) or 2 "
                      "(rows/columns), got ", mode);
    return g_attn_bwd_mode.exchange(static_cast<int>(mode));
  });
}

PyObject *py_cache_clear(PyObject *, PyObject *) { return PyLong_FromLongLong(cache_clear()); }
PyObject *py_cache_held(PyObject *, PyObject *) { return PyLong_FromLongLong(cache_held()); }
PyObject *py_cache_set_limit(PyObject *, PyObject *arg) {
  return call_with_int(arg, [](long long n) -> long long { return cache_set_limit(n); });
}

PyMethodDef methods[] = {
    {"cpu_isa", py_cpu_isa, METH_NOARGS,
     "The best ISA of this CPU for the bsmm kernels: 1 portable, 2 AVX2+FMA, 3 AVX-512."},
    {"set_cpu_isa", py_set_cpu_isa, METH_O,
     "Force the bsmm kernels' ISA (0 auto); returns the previous setting."},
    {"set_attention_isa", py_set_attention_isa, METH_O,
     "Force the attention kernels' ISA (0 auto, 1 portable, 2 AVX2+FMA, 3 AVX-512); returns the previous."},
    {"set_attention_bwd_mode", py_set_attention_bwd_mode, METH_O,
     "Attention backward schedule (0 auto, 1 per problem, 2 rows/columns); returns the previous."},
    {"cache_clear", py_cache_clear, METH_NOARGS,
     "Free the CPU output cache's buffers; returns the bytes released."},
    {"cache_set_limit", py_cache_set_limit, METH_O,
     "Set the CPU output cache's limit in bytes (0: off); returns the previous limit."},
    {"cache_held", py_cache_held, METH_NOARGS, "Bytes of free buffers the CPU output cache holds."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef ops_module = {PyModuleDef_HEAD_INIT, "_ops",
                          "pixelfly CPU ops (see torch.ops.pixelfly) and their settings", -1,
                          methods};

}  // namespace

int bsmm_isa() { return g_bsmm_isa.load(); }
int attention_isa() { return g_attn_isa.load(); }
int attention_bwd_mode() { return g_attn_bwd_mode.load(); }

}  // namespace pixelfly

PyMODINIT_FUNC PyInit__ops(void) { return PyModule_Create(&pixelfly::ops_module); }
