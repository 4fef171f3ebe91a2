/* Binding of the peak probe (csrc/cpu/peak.c): pf_peak_methods is added to pixelfly._C by
 * module.c. The loops run with the GIL released, so Python threads run them at once. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "pixelfly.h"

/* (flops, sink) from `run`; ValueError naming what the CPU lacks when it returns -1. */
static PyObject *result(int64_t flops, double sink, const char *what) {
    if (flops < 0) {
        PyErr_Format(PyExc_ValueError, "%s is not available on this CPU (or iters < 0)", what);
        return NULL;
    }
    return Py_BuildValue("(Ld)", (long long)flops, sink);
}

/* A per-ISA probe (pf_peak_fma, pf_peak_tile) called as name(isa, iters); `fmt` is
 * "iL:<name>". */
static PyObject *isa_probe(PyObject *args, PyObject *kw, const char *fmt,
                           int64_t (*probe)(int, int64_t, double *)) {
    static char *kwl[] = {"isa", "iters", NULL};
    int isa;
    long long iters;
    if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, kwl, &isa, &iters)) return NULL;
    double sink = 0;
    int64_t flops;
    Py_BEGIN_ALLOW_THREADS
    flops = probe(isa, iters, &sink);
    Py_END_ALLOW_THREADS
    return result(flops, sink, "isa");
}

static PyObject *py_peak_fma(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return isa_probe(args, kw, "iL:peak_fma", pf_peak_fma);
}

static PyObject *py_peak_tile(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return isa_probe(args, kw, "iL:peak_tile", pf_peak_tile);
}

static PyObject *py_peak_dpbf16(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"iters", NULL};
    long long iters;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "L:peak_dpbf16", kwl, &iters)) return NULL;
    double sink = 0;
    int64_t flops;
    Py_BEGIN_ALLOW_THREADS
    flops = pf_peak_dpbf16(iters, &sink);
    Py_END_ALLOW_THREADS
    return result(flops, sink, "AVX512_BF16");
}

static PyObject *py_has_avx512_bf16(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyBool_FromLong(pf_cpu_has_avx512_bf16());
}

#define KW (PyCFunction)(void (*)(void))
PyMethodDef pf_peak_methods[] = {
    {"peak_fma", KW py_peak_fma, METH_VARARGS | METH_KEYWORDS,
     "peak_fma(isa, iters) -> (flops, sink): one thread's fp32 FMA loop in isa (0 auto, 1 "
     "portable, 2 AVX2, 3 AVX-512); ValueError if this CPU cannot run isa."},
    {"peak_tile", KW py_peak_tile, METH_VARARGS | METH_KEYWORDS,
     "peak_tile(isa, iters) -> (flops, sink): one thread's fp32 tile-kernel register tile "
     "in isa on operands in L1 (the ceiling the load path leaves to a GEMM kernel); "
     "ValueError if this CPU cannot run isa."},
    {"peak_dpbf16", KW py_peak_dpbf16, METH_VARARGS | METH_KEYWORDS,
     "peak_dpbf16(iters) -> (flops, sink): one thread's AVX512_BF16 dot-product loop "
     "(vdpbf16ps, fp32 accumulation); ValueError without AVX512_BF16."},
    {"has_avx512_bf16", py_has_avx512_bf16, METH_NOARGS,
     "has_avx512_bf16() -> bool: the CPU has AVX-512 F/BW/VL and AVX512_BF16."},
    {NULL, NULL, 0, NULL}};
