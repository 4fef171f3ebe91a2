/*
 * module.c - pixelfly._C: thin CPython + NumPy C-API bindings of the torch-free core.
 *
 * Layouts and masks come back as C-contiguous NumPy bool arrays, CSR/CSC indices as
 * int64. Inputs accept any array-like; a wrong kind raises TypeError naming the argument,
 * a wrong ndim or length raises ValueError, and every C error message becomes a
 * ValueError. Sizes are checked here before anything is allocated, so a huge request
 * reaches the C validation with a dummy buffer (which it never writes) instead of
 * allocating it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define PY_ARRAY_UNIQUE_SYMBOL pixelfly_C_ARRAY_API
#include <numpy/arrayobject.h>

#include "pixelfly.h"

extern PyMethodDef pf_budget_methods[];
extern PyMethodDef pf_fly_methods[];
extern PyMethodDef pf_peak_methods[];

/* ------------------------------------------------------------ helpers */

static PyObject *raise_pf(pf_err e) {
    PyErr_SetString(PyExc_ValueError, e);
    return NULL;
}

/* True when an R x C (or any two-factor) buffer is small enough to allocate. */
static int cells_ok(int64_t a, int64_t b) {
    return a >= 0 && b >= 0 && a <= PF_MAX_CELLS && b <= PF_MAX_CELLS &&
           (a == 0 || b <= PF_MAX_CELLS / a);
}

/* New C-contiguous bool array of shape (R, C), or NULL with an exception set. */
static PyArrayObject *new_bool2(int64_t R, int64_t C) {
    npy_intp dims[2] = {(npy_intp)R, (npy_intp)C};
    return (PyArrayObject *)PyArray_ZEROS(2, dims, NPY_BOOL, 0);
}

static PyArrayObject *new_i64(int64_t n) {
    npy_intp dims[1] = {(npy_intp)n};
    return (PyArrayObject *)PyArray_ZEROS(1, dims, NPY_INT64, 0);
}

/* Any array-like -> contiguous aligned bool array of ndim 2; `name` for messages. */
static PyArrayObject *as_bool2(PyObject *obj, const char *name) {
    if (obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s must be a 2-D boolean array, got None", name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!a) {
        if (PyErr_ExceptionMatches(PyExc_ValueError) || PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be a 2-D boolean array-like", name);
        }
        return NULL;
    }
    if (PyArray_TYPE(a) != NPY_BOOL) {
        PyObject *d = PyObject_Str((PyObject *)PyArray_DESCR(a));
        PyErr_Format(PyExc_TypeError, "%s must be a boolean array, got dtype %s", name,
                     d ? PyUnicode_AsUTF8(d) : "?");
        Py_XDECREF(d);
        Py_DECREF(a);
        return NULL;
    }
    if (PyArray_NDIM(a) != 2) {
        PyErr_Format(PyExc_ValueError, "%s must be 2-D, got %d dimension(s)", name, PyArray_NDIM(a));
        Py_DECREF(a);
        return NULL;
    }
    PyArrayObject *c = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)a, NPY_BOOL, NPY_ARRAY_IN_ARRAY);
    Py_DECREF(a);
    return c;
}

/* Any array-like of integers -> contiguous aligned int64 array of ndim 1. An empty input
 * of any non-object dtype is accepted (np.asarray([]) is float64). */
static PyArrayObject *as_i64_1(PyObject *obj, const char *name) {
    if (obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s must be a 1-D integer array, got None", name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!a) {
        if (PyErr_ExceptionMatches(PyExc_ValueError) || PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be a 1-D integer array-like", name);
        }
        return NULL;
    }
    int t = PyArray_TYPE(a);
    int is_int = PyTypeNum_ISINTEGER(t) && t != NPY_BOOL;
    if (!is_int && !(PyArray_SIZE(a) == 0 && t != NPY_OBJECT && PyTypeNum_ISNUMBER(t))) {
        PyObject *d = PyObject_Str((PyObject *)PyArray_DESCR(a));
        PyErr_Format(PyExc_TypeError, "%s must be an integer array, got dtype %s", name,
                     d ? PyUnicode_AsUTF8(d) : "?");
        Py_XDECREF(d);
        Py_DECREF(a);
        return NULL;
    }
    if (PyArray_NDIM(a) != 1) {
        PyErr_Format(PyExc_ValueError, "%s must be 1-D, got %d dimension(s)", name, PyArray_NDIM(a));
        Py_DECREF(a);
        return NULL;
    }
    /* uint64 entries >= 2^63 wrap negative under the cast and the core rejects them. */
    PyArrayObject *c = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)a, NPY_INT64,
                                                         NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(a);
    return c;
}

/* uint64 seed from a Python int (TypeError for non-integers, OverflowError if < 0 or >= 2^64). */
static int parse_seed(PyObject *obj, uint64_t *seed) {
    if (!PyLong_Check(obj) && !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "seed must be an integer, got %s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    PyObject *i = PyNumber_Index(obj);
    if (!i) return 0;
    unsigned long long v = PyLong_AsUnsignedLongLong(i);
    Py_DECREF(i);
    if (PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_OverflowError, "seed must be in [0, 2^64)");
        }
        return 0;
    }
    *seed = (uint64_t)v;
    return 1;
}

/* Run a generator into a fresh (R, C) bool array. `fill` gets the output buffer. */
typedef pf_err (*fill_fn)(void *ctx, uint8_t *out);

static PyObject *run_layout(int64_t R, int64_t C, fill_fn fill, void *ctx) {
    if (!(R >= 1 && C >= 1 && R <= PF_MAX_GRID && C <= PF_MAX_GRID && cells_ok(R, C))) {
        uint8_t dummy[1] = {0}; /* the C validation rejects this grid before writing */
        pf_err e = fill(ctx, dummy);
        if (e) return raise_pf(e);
        PyErr_SetString(PyExc_SystemError, "pixelfly: invalid grid accepted by the core");
        return NULL;
    }
    PyArrayObject *out = new_bool2(R, C);
    if (!out) return NULL;
    pf_err e;
    Py_BEGIN_ALLOW_THREADS
    e = fill(ctx, (uint8_t *)PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    if (e) {
        Py_DECREF(out);
        return raise_pf(e);
    }
    return (PyObject *)out;
}

/* ------------------------------------------------------------ layouts */

typedef struct {
    long long R, C, a, b, c;
    double d;
    uint64_t seed;
} lay_args;

static pf_err fill_factor(void *p, uint8_t *o) { lay_args *a = p; return pf_factor_layout(a->R, a->a, o); }
static pf_err fill_flat(void *p, uint8_t *o) { lay_args *a = p; return pf_flat_butterfly_layout(a->R, a->C, a->a, a->b, o); }
static pf_err fill_prod(void *p, uint8_t *o) { lay_args *a = p; return pf_butterfly_product_layout(a->R, a->C, a->a, a->b, o); }
static pf_err fill_local(void *p, uint8_t *o) { lay_args *a = p; return pf_local_layout(a->R, a->C, a->a, o); }
static pf_err fill_bigbird(void *p, uint8_t *o) { lay_args *a = p; return pf_bigbird_layout(a->R, a->C, a->a, a->b, a->c, a->seed, o); }
static pf_err fill_st(void *p, uint8_t *o) { lay_args *a = p; return pf_sparse_transformer_layout(a->R, a->C, a->a, o); }
static pf_err fill_random(void *p, uint8_t *o) { lay_args *a = p; return pf_random_layout(a->R, a->C, a->d, a->seed, o); }

static PyObject *py_factor_layout(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"n", "k", NULL};
    lay_args a = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LL:factor_layout", kwl, &a.R, &a.a)) return NULL;
    return run_layout(a.R, a.R, fill_factor, &a);
}

static PyObject *py_default_butterfly_size(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"rows", "cols", NULL};
    long long R, C;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LL:default_butterfly_size", kwl, &R, &C)) return NULL;
    return PyLong_FromLongLong(pf_default_butterfly_size(R, C));
}

static PyObject *butterfly_common(PyObject *args, PyObject *kw, const char *fmt, fill_fn fill) {
    static char *kwl[] = {"rows", "cols", "n_factors", "butterfly_size", NULL};
    lay_args a = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, kwl, &a.R, &a.C, &a.a, &a.b)) return NULL;
    return run_layout(a.R, a.C, fill, &a);
}

static PyObject *py_flat_butterfly_layout(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return butterfly_common(args, kw, "LLL|L:flat_butterfly_layout", fill_flat);
}

static PyObject *py_butterfly_product_layout(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return butterfly_common(args, kw, "LLL|L:butterfly_product_layout", fill_prod);
}

static PyObject *py_local_layout(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"rows", "cols", "window", NULL};
    lay_args a = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLL:local_layout", kwl, &a.R, &a.C, &a.a)) return NULL;
    return run_layout(a.R, a.C, fill_local, &a);
}

static PyObject *py_bigbird_layout(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"rows", "cols", "window", "n_global", "n_random", "seed", NULL};
    lay_args a = {0};
    PyObject *seed = NULL;
    a.a = 1; a.b = 1; a.c = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LL|LLLO:bigbird_layout", kwl, &a.R, &a.C, &a.a,
                                     &a.b, &a.c, &seed))
        return NULL;
    if (seed && !parse_seed(seed, &a.seed)) return NULL;
    return run_layout(a.R, a.C, fill_bigbird, &a);
}

static PyObject *py_sparse_transformer_layout(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"rows", "cols", "stride", NULL};
    lay_args a = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLL:sparse_transformer_layout", kwl, &a.R, &a.C, &a.a))
        return NULL;
    return run_layout(a.R, a.C, fill_st, &a);
}

static PyObject *py_random_layout(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"rows", "cols", "density", "seed", NULL};
    lay_args a = {0};
    PyObject *seed = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLd|O:random_layout", kwl, &a.R, &a.C, &a.d, &seed))
        return NULL;
    if (seed && !parse_seed(seed, &a.seed)) return NULL;
    return run_layout(a.R, a.C, fill_random, &a);
}

/* ------------------------------------------------------------ masks and CSR */

static PyObject *py_layout_to_mask(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"layout", "b1", "b2", NULL};
    PyObject *lo;
    long long b1, b2;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL:layout_to_mask", kwl, &lo, &b1, &b2)) return NULL;
    PyArrayObject *lay = as_bool2(lo, "layout");
    if (!lay) return NULL;
    const int64_t R = PyArray_DIM(lay, 0), C = PyArray_DIM(lay, 1);
    const uint8_t *src = (const uint8_t *)PyArray_DATA(lay);
    PyObject *res = NULL;
    int small = R <= PF_MAX_GRID && C <= PF_MAX_GRID && b1 >= 1 && b2 >= 1 &&
                b1 <= PF_MAX_CELLS && b2 <= PF_MAX_CELLS && cells_ok(R * b1, C * b2);
    if (!small) {
        uint8_t dummy[1] = {0};
        pf_err e = pf_layout_to_mask(src, R, C, b1, b2, dummy);
        if (e) raise_pf(e);
        else PyErr_SetString(PyExc_SystemError, "pixelfly: oversized mask accepted by the core");
        Py_DECREF(lay);
        return NULL;
    }
    PyArrayObject *out = new_bool2(R * b1, C * b2);
    if (out) {
        pf_err e;
        Py_BEGIN_ALLOW_THREADS
        e = pf_layout_to_mask(src, R, C, b1, b2, (uint8_t *)PyArray_DATA(out));
        Py_END_ALLOW_THREADS
        if (e) { Py_DECREF(out); raise_pf(e); }
        else res = (PyObject *)out;
    }
    Py_DECREF(lay);
    return res;
}

static PyObject *py_mask_to_layout(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"mask", "b1", "b2", NULL};
    PyObject *mo;
    long long b1, b2;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL:mask_to_layout", kwl, &mo, &b1, &b2)) return NULL;
    PyArrayObject *mask = as_bool2(mo, "mask");
    if (!mask) return NULL;
    const int64_t M = PyArray_DIM(mask, 0), N = PyArray_DIM(mask, 1);
    const uint8_t *src = (const uint8_t *)PyArray_DATA(mask);
    PyObject *res = NULL;
    if (!(b1 >= 1 && b2 >= 1 && M % b1 == 0 && N % b2 == 0)) {
        uint8_t dummy[1] = {0};
        pf_err e = pf_mask_to_layout(src, M, N, b1, b2, dummy);
        if (e) raise_pf(e);
        else PyErr_SetString(PyExc_SystemError, "pixelfly: bad block size accepted by the core");
        Py_DECREF(mask);
        return NULL;
    }
    PyArrayObject *out = new_bool2(M / b1, N / b2); /* no larger than the mask itself */
    if (out) {
        pf_err e;
        Py_BEGIN_ALLOW_THREADS
        e = pf_mask_to_layout(src, M, N, b1, b2, (uint8_t *)PyArray_DATA(out));
        Py_END_ALLOW_THREADS
        if (e) { Py_DECREF(out); raise_pf(e); }
        else res = (PyObject *)out;
    }
    Py_DECREF(mask);
    return res;
}

static PyObject *py_layout_nnz(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"layout", NULL};
    PyObject *lo;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:layout_nnz", kwl, &lo)) return NULL;
    PyArrayObject *lay = as_bool2(lo, "layout");
    if (!lay) return NULL;
    int64_t nnz = pf_layout_nnz((const uint8_t *)PyArray_DATA(lay), PyArray_DIM(lay, 0),
                                PyArray_DIM(lay, 1));
    Py_DECREF(lay);
    if (nnz < 0) return raise_pf("layout must have at most PF_MAX_GRID (2^20) rows and cols "
                                 "and PF_MAX_CELLS (2^30) cells");
    return PyLong_FromLongLong(nnz);
}

static PyObject *py_layout_to_csr(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"layout", NULL};
    PyObject *lo;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:layout_to_csr", kwl, &lo)) return NULL;
    PyArrayObject *lay = as_bool2(lo, "layout");
    if (!lay) return NULL;
    const int64_t R = PyArray_DIM(lay, 0), C = PyArray_DIM(lay, 1);
    const uint8_t *src = (const uint8_t *)PyArray_DATA(lay);
    int64_t nnz = pf_layout_nnz(src, R, C);
    if (nnz < 0) {
        int64_t dummy[1];
        pf_err e = pf_layout_to_csr(src, R, C, dummy, dummy);
        Py_DECREF(lay);
        return raise_pf(e ? e : "layout is too large");
    }
    PyArrayObject *rp = new_i64(R + 1), *ci = rp ? new_i64(nnz) : NULL;
    PyObject *res = NULL;
    if (rp && ci) {
        pf_err e = pf_layout_to_csr(src, R, C, (int64_t *)PyArray_DATA(rp), (int64_t *)PyArray_DATA(ci));
        if (e) raise_pf(e);
        else res = Py_BuildValue("(OO)", rp, ci);
    }
    Py_XDECREF(rp);
    Py_XDECREF(ci);
    Py_DECREF(lay);
    return res;
}

static PyObject *py_csr_transpose(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"rows", "cols", "row_ptr", "col_idx", NULL};
    long long R, C;
    PyObject *rpo, *cio;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLOO:csr_transpose", kwl, &R, &C, &rpo, &cio))
        return NULL;
    if (R < 0 || R > PF_MAX_GRID) return raise_pf("rows must be in [0, PF_MAX_GRID (2^20)]");
    if (C < 0 || C > PF_MAX_GRID) return raise_pf("cols must be in [0, PF_MAX_GRID (2^20)]");
    if (R * C > PF_MAX_CELLS) return raise_pf("rows * cols must be <= PF_MAX_CELLS (2^30)");
    PyArrayObject *rp = as_i64_1(rpo, "row_ptr");
    if (!rp) return NULL;
    PyArrayObject *ci = as_i64_1(cio, "col_idx");
    PyObject *res = NULL;
    PyArrayObject *cp = NULL, *ri = NULL, *cb = NULL;
    if (!ci) goto done;
    if (PyArray_DIM(rp, 0) != R + 1) {
        PyErr_Format(PyExc_ValueError, "row_ptr must have rows + 1 = %lld entries, got %lld",
                     R + 1, (long long)PyArray_DIM(rp, 0));
        goto done;
    }
    const int64_t *rpd = (const int64_t *)PyArray_DATA(rp);
    const int64_t nnz = rpd[R];
    if (nnz != PyArray_DIM(ci, 0)) {
        PyErr_Format(PyExc_ValueError, "col_idx must have row_ptr[rows] = %lld entries, got %lld",
                     (long long)nnz, (long long)PyArray_DIM(ci, 0));
        goto done;
    }
    cp = new_i64(C + 1);
    ri = cp ? new_i64(nnz) : NULL;
    cb = ri ? new_i64(nnz) : NULL;
    if (!cb) goto done;
    pf_err e = pf_csr_transpose(R, C, rpd, (const int64_t *)PyArray_DATA(ci), (int64_t *)PyArray_DATA(cp),
                                (int64_t *)PyArray_DATA(ri), (int64_t *)PyArray_DATA(cb));
    if (e) raise_pf(e);
    else res = Py_BuildValue("(OOO)", cp, ri, cb);
done:
    Py_XDECREF(cp);
    Py_XDECREF(ri);
    Py_XDECREF(cb);
    Py_XDECREF(ci);
    Py_DECREF(rp);
    return res;
}

/* ------------------------------------------------------------ module */

#define KW (PyCFunction)(void (*)(void))
static PyMethodDef methods[] = {
    {"factor_layout", KW py_factor_layout, METH_VARARGS | METH_KEYWORDS,
     "factor_layout(n, k) -> bool (n, n): butterfly factor B_k, (i ^ j) in {0, k/2}."},
    {"default_butterfly_size", KW py_default_butterfly_size, METH_VARARGS | METH_KEYWORDS,
     "default_butterfly_size(rows, cols) -> int: largest power of two <= min(rows, cols), 0 if < 2."},
    {"flat_butterfly_layout", KW py_flat_butterfly_layout, METH_VARARGS | METH_KEYWORDS,
     "flat_butterfly_layout(rows, cols, n_factors, butterfly_size=0) -> bool (rows, cols)."},
    {"butterfly_product_layout", KW py_butterfly_product_layout, METH_VARARGS | METH_KEYWORDS,
     "butterfly_product_layout(rows, cols, n_factors, butterfly_size=0) -> bool (rows, cols)."},
    {"local_layout", KW py_local_layout, METH_VARARGS | METH_KEYWORDS,
     "local_layout(rows, cols, window) -> bool (rows, cols)."},
    {"bigbird_layout", KW py_bigbird_layout, METH_VARARGS | METH_KEYWORDS,
     "bigbird_layout(rows, cols, window=1, n_global=1, n_random=1, seed=0) -> bool (rows, cols)."},
    {"sparse_transformer_layout", KW py_sparse_transformer_layout, METH_VARARGS | METH_KEYWORDS,
     "sparse_transformer_layout(rows, cols, stride) -> bool (rows, cols)."},
    {"random_layout", KW py_random_layout, METH_VARARGS | METH_KEYWORDS,
     "random_layout(rows, cols, density, seed=0) -> bool (rows, cols)."},
    {"layout_to_mask", KW py_layout_to_mask, METH_VARARGS | METH_KEYWORDS,
     "layout_to_mask(layout, b1, b2) -> bool (rows*b1, cols*b2)."},
    {"mask_to_layout", KW py_mask_to_layout, METH_VARARGS | METH_KEYWORDS,
     "mask_to_layout(mask, b1, b2) -> bool (M/b1, N/b2); ValueError if not block-aligned."},
    {"layout_nnz", KW py_layout_nnz, METH_VARARGS | METH_KEYWORDS,
     "layout_nnz(layout) -> int: number of kept blocks."},
    {"layout_to_csr", KW py_layout_to_csr, METH_VARARGS | METH_KEYWORDS,
     "layout_to_csr(layout) -> (row_ptr int64 (rows+1,), col_idx int64 (nnz,))."},
    {"csr_transpose", KW py_csr_transpose, METH_VARARGS | METH_KEYWORDS,
     "csr_transpose(rows, cols, row_ptr, col_idx) -> (col_ptr (cols+1,), row_idx (nnz,), "
     "csc_blk (nnz,)), all int64."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "pixelfly._C",
    "Torch-free C core of pixelfly: block layouts, masks, block-CSR indices and the budget.",
    -1, methods, NULL, NULL, NULL, NULL};

/* m.name = v (a float constant); -1 with an exception set on failure. */
static int add_float(PyObject *m, const char *name, double v) {
    PyObject *o = PyFloat_FromDouble(v);
    if (!o) return -1;
    int rc = PyModule_AddObjectRef(m, name, o);
    Py_DECREF(o);
    return rc;
}

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    if (PyModule_AddFunctions(m, pf_budget_methods) < 0 ||
        PyModule_AddFunctions(m, pf_fly_methods) < 0 ||
        PyModule_AddFunctions(m, pf_peak_methods) < 0 ||
        PyModule_AddIntConstant(m, "MAX_GRID", (long)PF_MAX_GRID) < 0 ||
        PyModule_AddIntConstant(m, "MAX_CELLS", (long)PF_MAX_CELLS) < 0 ||
        PyModule_AddIntConstant(m, "DEFAULT_BLOCK", PF_DEFAULT_BLOCK) < 0 ||
        PyModule_AddIntConstant(m, "DEFAULT_ELEM_BYTES", PF_DEFAULT_ELEM_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "PLAN_MIN_BUTTERFLY", PF_PLAN_MIN_BUTTERFLY) < 0 ||
        add_float(m, "DEFAULT_MACHINE_BALANCE", PF_DEFAULT_MACHINE_BALANCE) < 0 ||
        add_float(m, "DEFAULT_COST_MEM", PF_DEFAULT_COST_MEM) < 0 ||
        add_float(m, "DEFAULT_PHI", PF_DEFAULT_PHI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
