/* Budget bindings (SPEC section 3): pf_budget_methods is added to pixelfly._C by module.c.
 * Only the CPython API is used. Every argument is converted by hand so that errors name it:
 * TypeError for a wrong type, OverflowError for an int that does not fit int64, ValueError
 * (with the core's own message) for a value out of range. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>

#include "pixelfly.h"

/* Convert an int-like (int, numpy integer; not bool, not float) to int64. */
static int get_i64(PyObject *o, const char *name, int64_t *out)
{
    if (PyBool_Check(o) || PyFloat_Check(o) || !PyIndex_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    PyObject *ix = PyNumber_Index(o);
    if (!ix) return -1;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(ix, &overflow);
    Py_DECREF(ix);
    if (overflow) {
        PyErr_Format(PyExc_OverflowError, "%s is out of the int64 range", name);
        return -1;
    }
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = (int64_t)v;
    return 0;
}

/* Convert a real number (int or float, not bool) to double. */
static int get_f64(PyObject *o, const char *name, double *out)
{
    if (PyBool_Check(o) || !(PyFloat_Check(o) || PyLong_Check(o) || PyNumber_Check(o)) ||
        PyComplex_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a real number, not %.100s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    double v = PyFloat_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_OverflowError, "%s is too large for a float", name);
        } else if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be a real number, not %.100s", name, Py_TYPE(o)->tp_name);
        }
        return -1;
    }
    *out = v;
    return 0;
}

static int get_bool(PyObject *o, const char *name, int *out)
{
    if (!PyBool_Check(o) && !PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a bool, not %.100s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    int v = PyObject_IsTrue(o);
    if (v < 0) return -1;
    *out = v;
    return 0;
}

/* Parses (out_features, in_features, tokens, <extra int>?) plus the cost-model keywords. */
static int parse_cost_args(PyObject *args, PyObject *kwargs, const char *extra, pf_cost_model *cm,
                           pf_layer_shape *s, int64_t *extra_val)
{
    static char *kw3[] = {"out_features", "in_features", "tokens", "cost_mem", "cost_flop", "b1", "b2", NULL};
    static char *kw_nnz[] = {"out_features", "in_features", "tokens", "nnz", "cost_mem", "cost_flop", "b1", "b2", NULL};
    static char *kw_rank[] = {"out_features", "in_features", "tokens", "rank", "cost_mem", "cost_flop", "b1", "b2", NULL};
    PyObject *o_out, *o_in, *o_t, *o_x = NULL, *o_cm = NULL, *o_cf = NULL, *o_b1 = NULL, *o_b2 = NULL;
    int ok;
    if (!extra)
        ok = PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|$OOOO:cost", kw3, &o_out, &o_in, &o_t,
                                         &o_cm, &o_cf, &o_b1, &o_b2);
    else
        ok = PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|$OOOO:cost",
                                         extra[0] == 'n' ? kw_nnz : kw_rank, &o_out, &o_in, &o_t,
                                         &o_x, &o_cm, &o_cf, &o_b1, &o_b2);
    if (!ok) return -1;
    cm->cost_mem = PF_DEFAULT_COST_MEM;
    cm->cost_flop = PF_DEFAULT_COST_FLOP;
    cm->b1 = cm->b2 = PF_DEFAULT_BLOCK;
    if (get_i64(o_out, "out_features", &s->out_features) || get_i64(o_in, "in_features", &s->in_features) ||
        get_i64(o_t, "tokens", &s->tokens))
        return -1;
    if (extra && get_i64(o_x, extra, extra_val)) return -1;
    if ((o_cm && get_f64(o_cm, "cost_mem", &cm->cost_mem)) || (o_cf && get_f64(o_cf, "cost_flop", &cm->cost_flop)) ||
        (o_b1 && get_i64(o_b1, "b1", &cm->b1)) || (o_b2 && get_i64(o_b2, "b2", &cm->b2)))
        return -1;
    return 0;
}

static PyObject *check_and_return(const pf_cost_model *cm, const pf_layer_shape *s, int64_t nnz,
                                  int64_t rank, double v)
{
    pf_err e = pf_cost_check(cm, s, nnz, rank);
    if (e) {
        PyErr_SetString(PyExc_ValueError, e);
        return NULL;
    }
    return PyFloat_FromDouble(v);
}

static PyObject *py_cost_dense(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    pf_cost_model cm;
    pf_layer_shape s;
    if (parse_cost_args(args, kwargs, NULL, &cm, &s, NULL)) return NULL;
    return check_and_return(&cm, &s, 0, 0, pf_cost_dense(&cm, &s));
}

static PyObject *py_cost_sparse(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    pf_cost_model cm;
    pf_layer_shape s;
    int64_t nnz = 0;
    if (parse_cost_args(args, kwargs, "nnz", &cm, &s, &nnz)) return NULL;
    return check_and_return(&cm, &s, nnz, 0, pf_cost_sparse(&cm, &s, nnz));
}

static PyObject *py_cost_lowrank(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    pf_cost_model cm;
    pf_layer_shape s;
    int64_t rank = 0;
    if (parse_cost_args(args, kwargs, "rank", &cm, &s, &rank)) return NULL;
    return check_and_return(&cm, &s, 0, rank, pf_cost_lowrank(&cm, &s, rank));
}

static PyObject *py_flat_butterfly_nnz(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kw[] = {"R", "C", "n_factors", "butterfly_size", NULL};
    PyObject *oR, *oC, *om, *on = NULL;
    int64_t R, C, m, n = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O:flat_butterfly_nnz", kw, &oR, &oC, &om, &on))
        return NULL;
    if (get_i64(oR, "R", &R) || get_i64(oC, "C", &C) || get_i64(om, "n_factors", &m) ||
        (on && on != Py_None && get_i64(on, "butterfly_size", &n)))
        return NULL;
    pf_err e = pf_flat_butterfly_check(R, C, m, n);
    if (e) {
        PyErr_SetString(PyExc_ValueError, e);
        return NULL;
    }
    return PyLong_FromLongLong((long long)pf_flat_butterfly_nnz(R, C, m, n));
}

static const char *status_name(int st)
{
    switch (st) {
    case PF_PLAN_SPARSE: return "sparse";
    case PF_PLAN_NOT_DIVISIBLE: return "not_divisible";
    case PF_PLAN_TOO_SMALL: return "too_small";
    case PF_PLAN_OVER_BUDGET: return "over_budget";
    case PF_PLAN_BUDGET_ONE: return "budget_one";
    default: return "unknown";
    }
}

/* d[key] = v (steals v); returns -1 on error. */
static int set_item(PyObject *d, const char *key, PyObject *v)
{
    if (!v) return -1;
    int r = PyDict_SetItemString(d, key, v);
    Py_DECREF(v);
    return r;
}

static PyObject *plan_to_dict(const pf_layer_plan *p)
{
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    if (set_item(d, "status", PyUnicode_FromString(status_name(p->status))) ||
        set_item(d, "status_code", PyLong_FromLong(p->status)) ||
        set_item(d, "R", PyLong_FromLongLong(p->R)) ||
        set_item(d, "C", PyLong_FromLongLong(p->C)) ||
        set_item(d, "butterfly_size", PyLong_FromLongLong(p->butterfly_size)) ||
        set_item(d, "n_factors", PyLong_FromLongLong(p->n_factors)) ||
        set_item(d, "nnz", PyLong_FromLongLong(p->nnz)) ||
        set_item(d, "rank", PyLong_FromLongLong(p->rank)) ||
        set_item(d, "density", PyFloat_FromDouble(p->density)) ||
        set_item(d, "dense_cost", PyFloat_FromDouble(p->dense_cost)) ||
        set_item(d, "budget", PyFloat_FromDouble(p->budget)) ||
        set_item(d, "sparse_cost", PyFloat_FromDouble(p->sparse_cost)) ||
        set_item(d, "lowrank_cost", PyFloat_FromDouble(p->lowrank_cost))) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

static PyObject *py_allocate_budget(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kw[] = {"layers", "rho", "phi", "cost_mem", "cost_flop", "b1", "b2",
                         "redistribute", "max_rank", NULL};
    PyObject *o_layers, *o_rho, *o_phi = NULL, *o_cm = NULL, *o_cf = NULL, *o_b1 = NULL, *o_b2 = NULL,
             *o_red = NULL, *o_mr = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|$OOOOOOO:allocate_budget", kw, &o_layers, &o_rho,
                                     &o_phi, &o_cm, &o_cf, &o_b1, &o_b2, &o_red, &o_mr))
        return NULL;
    pf_budget_opts opts;
    opts.phi = PF_DEFAULT_PHI;
    opts.cm.cost_mem = PF_DEFAULT_COST_MEM;
    opts.cm.cost_flop = PF_DEFAULT_COST_FLOP;
    opts.cm.b1 = opts.cm.b2 = PF_DEFAULT_BLOCK;
    opts.redistribute = 1;
    opts.max_rank = 0;
    if (get_f64(o_rho, "rho", &opts.rho) || (o_phi && get_f64(o_phi, "phi", &opts.phi)) ||
        (o_cm && get_f64(o_cm, "cost_mem", &opts.cm.cost_mem)) ||
        (o_cf && get_f64(o_cf, "cost_flop", &opts.cm.cost_flop)) ||
        (o_b1 && get_i64(o_b1, "b1", &opts.cm.b1)) || (o_b2 && get_i64(o_b2, "b2", &opts.cm.b2)) ||
        (o_red && get_bool(o_red, "redistribute", &opts.redistribute)) ||
        (o_mr && o_mr != Py_None && get_i64(o_mr, "max_rank", &opts.max_rank)))
        return NULL;

    if (PyUnicode_Check(o_layers) || PyBytes_Check(o_layers)) {
        PyErr_SetString(PyExc_TypeError, "layers must be a sequence of (out_features, in_features, tokens) tuples");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(o_layers, "layers must be a sequence of (out_features, in_features, tokens) tuples");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if ((int64_t)n > PF_MAX_LAYERS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "layers: at most 2^20 layers per plan");
        return NULL;
    }
    pf_layer_shape *shapes = (pf_layer_shape *)PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof *shapes);
    pf_layer_plan *plans = (pf_layer_plan *)PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof *plans);
    PyObject *result = NULL;
    if (!shapes || !plans) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(item) && !PyList_Check(item)) {
            PyErr_Format(PyExc_TypeError, "layers[%zd] must be an (out_features, in_features, tokens) tuple, not %.100s",
                         i, Py_TYPE(item)->tp_name);
            goto done;
        }
        PyObject *t = PySequence_Fast(item, "layer");
        if (!t) goto done;
        if (PySequence_Fast_GET_SIZE(t) != 3) {
            PyErr_Format(PyExc_ValueError, "layers[%zd] must have 3 entries (out_features, in_features, tokens), got %zd",
                         i, PySequence_Fast_GET_SIZE(t));
            Py_DECREF(t);
            goto done;
        }
        static const char *names[3] = {"out_features", "in_features", "tokens"};
        int64_t v[3];
        for (int k = 0; k < 3; k++) {
            char buf[64];
            PyOS_snprintf(buf, sizeof buf, "layers[%zd].%s", i, names[k]);
            if (get_i64(PySequence_Fast_GET_ITEM(t, k), buf, &v[k])) {
                Py_DECREF(t);
                goto done;
            }
        }
        Py_DECREF(t);
        shapes[i].out_features = v[0];
        shapes[i].in_features = v[1];
        shapes[i].tokens = v[2];
    }
    pf_err e;
    Py_BEGIN_ALLOW_THREADS
    e = pf_allocate_budget(shapes, (int64_t)n, &opts, plans);
    Py_END_ALLOW_THREADS
    if (e) {
        PyErr_SetString(PyExc_ValueError, e);
        goto done;
    }
    result = PyList_New(n);
    if (!result) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = plan_to_dict(&plans[i]);
        if (!d) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, d);
    }
done:
    PyMem_Free(shapes);
    PyMem_Free(plans);
    Py_DECREF(seq);
    return result;
}

PyMethodDef pf_budget_methods[] = {
    {"cost_dense", (PyCFunction)(void (*)(void))py_cost_dense, METH_VARARGS | METH_KEYWORDS,
     "cost_dense(out_features, in_features, tokens, *, cost_mem=DEFAULT_COST_MEM, cost_flop=1.0, b1=DEFAULT_BLOCK, b2=DEFAULT_BLOCK)\n--\n\n"
     "Cost of a dense out x in layer on `tokens` rows: cost_mem * blocks touched (weights\n"
     "ceil(out/b1)*ceil(in/b2), activations ceil(T*in/(b1*b2)) + ceil(T*out/(b1*b2))) +\n"
     "cost_flop * 2*T*out*in."},
    {"cost_sparse", (PyCFunction)(void (*)(void))py_cost_sparse, METH_VARARGS | METH_KEYWORDS,
     "cost_sparse(out_features, in_features, tokens, nnz, *, cost_mem=DEFAULT_COST_MEM, cost_flop=1.0, b1=DEFAULT_BLOCK, b2=DEFAULT_BLOCK)\n--\n\n"
     "Cost of the block-sparse part with nnz weight blocks: cost_mem * nnz (stored blocks\n"
     "only; activation traffic is counted in the dense cost only, SPEC 3) + cost_flop * 2*T*nnz*b1*b2."},
    {"cost_lowrank", (PyCFunction)(void (*)(void))py_cost_lowrank, METH_VARARGS | METH_KEYWORDS,
     "cost_lowrank(out_features, in_features, tokens, rank, *, cost_mem=DEFAULT_COST_MEM, cost_flop=1.0, b1=DEFAULT_BLOCK, b2=DEFAULT_BLOCK)\n--\n\n"
     "Cost of the low-rank part U V^T of rank r (0 for r = 0): cost_mem * (blocks of U and V,\n"
     "ceil(out*r/(b1*b2)) + ceil(in*r/(b1*b2))) + cost_flop * 2*T*r*(in+out)."},
    {"flat_butterfly_nnz", (PyCFunction)(void (*)(void))py_flat_butterfly_nnz, METH_VARARGS | METH_KEYWORDS,
     "flat_butterfly_nnz(R, C, n_factors, butterfly_size=0)\n--\n\n"
     "Kept blocks of the flat block butterfly layout on an R x C grid (closed form)."},
    {"allocate_budget", (PyCFunction)(void (*)(void))py_allocate_budget, METH_VARARGS | METH_KEYWORDS,
     "allocate_budget(layers, rho, *, phi=DEFAULT_PHI, cost_mem=DEFAULT_COST_MEM, cost_flop=1.0, b1=DEFAULT_BLOCK, b2=DEFAULT_BLOCK,\n"
     "                redistribute=True, max_rank=0)\n--\n\n"
     "Plan (out_features, in_features, tokens) layers under the global budget rho (SPEC 3).\n"
     "Returns one dict per layer with status, status_code, R, C, butterfly_size, n_factors,\n"
     "nnz, rank, density, dense_cost, budget, sparse_cost, lowrank_cost. Butterfly sizes\n"
     "n >= 4 only (n = 2 is dense): grids below 4 x 4 are 'too_small'. Layers of identical\n"
     "(out_features, in_features, tokens) always get identical plans."},
    {NULL, NULL, 0, NULL}
};
