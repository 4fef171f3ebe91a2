/* Binding of the authors' layout rule (csrc/core/fly_layout.c): pf_fly_methods is added to
 * pixelfly._C by module.c. Arguments are validated by the core before anything is
 * allocated; its message becomes a ValueError. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define PY_ARRAY_UNIQUE_SYMBOL pixelfly_C_ARRAY_API
#define NO_IMPORT_ARRAY
#include <numpy/arrayobject.h>

#include "pixelfly.h"

static PyObject *py_fly_config_layout(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"out_features", "in_features", "butterfly_size", "n_factors", "b1", "b2",
                          "global_size", "shuffle", NULL};
    long long out_f, in_f, n, m, b1, b2, g = 0;
    int shuffle = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLLLLL|Lp:fly_config_layout", kwl, &out_f, &in_f, &n, &m,
                                     &b1, &b2, &g, &shuffle))
        return NULL;
    pf_err e = pf_fly_config_check(out_f, in_f, n, m, b1, b2, g, shuffle);
    if (e) {
        PyErr_SetString(PyExc_ValueError, e);
        return NULL;
    }
    npy_intp dims[2] = {(npy_intp)(out_f / b1), (npy_intp)(in_f / b2)}; /* <= PF_MAX_CELLS cells */
    PyArrayObject *out = (PyArrayObject *)PyArray_ZEROS(2, dims, NPY_BOOL, 0);
    if (!out) return NULL;
    Py_BEGIN_ALLOW_THREADS
    e = pf_fly_config_layout(out_f, in_f, n, m, b1, b2, g, shuffle, (uint8_t *)PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    if (e) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, e);
        return NULL;
    }
    return (PyObject *)out;
}

PyMethodDef pf_fly_methods[] = {
    {"fly_config_layout", (PyCFunction)(void (*)(void))py_fly_config_layout, METH_VARARGS | METH_KEYWORDS,
     "fly_config_layout(out_features, in_features, butterfly_size, n_factors, b1, b2, global_size=0,\n"
     "                  shuffle=False) -> bool (out_features/b1, in_features/b2): the authors' rule."},
    {NULL, NULL, 0, NULL}};
