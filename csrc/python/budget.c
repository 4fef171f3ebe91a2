/* Budget bindings: filled in by the budget work (pf_budget_methods is added to pixelfly._C). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyMethodDef pf_budget_methods[] = {
    {NULL, NULL, 0, NULL}
};
