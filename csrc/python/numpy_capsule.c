/* numpy_capsule.c -- NumPy's data-memory handler (NEP 49) as a capsule that owns its handler
 * struct and one reference on its Allocator, both dropped by the capsule's destructor when
 * NumPy drops the handler (its last array). */
#include "nmpy.h"

static const char nmpy__capsule_name[] = "mem_handler";

static void nmpy__capsule_free(PyObject *cap) {
    void *h = PyCapsule_GetPointer(cap, nmpy__capsule_name);
    PyObject *owner = (PyObject *)PyCapsule_GetContext(cap);
    if (h == NULL) PyErr_Clear();
    PyMem_Free(h);
    nmpy_alloc_unuse(owner);
    Py_XDECREF(owner);
}

/* numpy_handler_capsule(allocator, table_address, name) -> capsule */
static PyObject *core_numpy_capsule(PyObject *self, PyObject *args) {
    PyObject *owner, *cap;
    unsigned long long addr;
    const char *name;
    nm_numpy_handler_t *h;
    (void)self;
    if (!PyArg_ParseTuple(args, "OKs", &owner, &addr, &name)) return NULL;
    if (addr == 0) return nmpy_raisef(nmpy.InvalidArgumentError, "NULL allocator table");
    h = (nm_numpy_handler_t *)PyMem_Calloc(1, sizeof *h);
    if (h == NULL) return PyErr_NoMemory();
    nm_numpy_handler_init(h, (nm_allocator_t *)(uintptr_t)addr, name);
    cap = PyCapsule_New(h, nmpy__capsule_name, nmpy__capsule_free);
    if (cap == NULL) { PyMem_Free(h); return NULL; }
    if (PyCapsule_SetContext(cap, Py_NewRef(owner)) < 0) { Py_DECREF(owner); Py_DECREF(cap); return NULL; }
    nmpy_alloc_use(owner); /* arrays allocate through it until the capsule goes */
    return cap;
}

static PyMethodDef numpy_methods[] = {
    {"numpy_handler_capsule", core_numpy_capsule, METH_VARARGS,
     "numpy_handler_capsule(allocator, table_address, name): a NEP 49 handler capsule owning a reference on "
     "allocator."},
    {NULL, NULL, 0, NULL}};

int nmpy_numpy_init(PyObject *m) {
    PyObject *fn = PyCFunction_NewEx(&numpy_methods[0], NULL, NULL);
    if (fn == NULL) return -1;
    return PyModule_AddObject(m, "numpy_handler_capsule", fn);
}
