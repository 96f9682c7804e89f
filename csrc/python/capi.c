/* capi.c -- the C API capsule (nm_capi.h) other extensions import: nativemem._core._C_API. */
#include "nmpy.h"

#include "nm_capi.h"

/* A lease: one use of an Allocator through the capsule, held by whoever holds the object. */
typedef struct {
    PyObject_HEAD
    PyObject *alloc;  /* strong */
    int released;
} NmLease;
static PyTypeObject *nmpy__lease_type;

static void Lease_dealloc(PyObject *self) {
    NmLease *l = (NmLease *)self;
    PyTypeObject *tp = Py_TYPE(self);
    if (!l->released && l->alloc != NULL) { /* dropped unreleased: the use goes back now */
        l->released = 1;
        if (nmpy_alloc_capi_unuse(l->alloc) < 0) PyErr_Clear();
    }
    Py_CLEAR(l->alloc);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}
static PyObject *Lease_repr(PyObject *self) {
    NmLease *l = (NmLease *)self;
    return PyUnicode_FromFormat("<nativemem C API lease on %R%s>", l->alloc ? l->alloc : Py_None,
                                l->released ? " (released)" : "");
}
static PyType_Slot Lease_slots[] = {
    {Py_tp_dealloc, (void *)Lease_dealloc},
    {Py_tp_repr, (void *)Lease_repr},
    {Py_tp_doc, (void *)"A use of a nativemem.Allocator held by C code through the C API capsule (nm_capi.h)."},
    {0, NULL}};
static PyType_Spec Lease_spec = {"nativemem._core.CapiLease", sizeof(NmLease), 0, Py_TPFLAGS_DEFAULT, Lease_slots};

static nm_allocator_t *capi_allocator_acquire(void *obj, void **lease) {
    PyObject *o = (PyObject *)obj;
    NmAllocator *a;
    NmLease *l;
    if (lease == NULL) {
        PyErr_SetString(PyExc_TypeError, "nativemem C API: allocator_acquire needs somewhere to put the lease");
        return NULL;
    }
    *lease = NULL;
    if (o == NULL) {
        PyErr_SetString(PyExc_TypeError, "expected a nativemem.Allocator, not NULL");
        return NULL;
    }
    if (!PyObject_TypeCheck(o, nmpy.Allocator)) {
        PyErr_Format(PyExc_TypeError, "expected a nativemem.Allocator, not %R", (PyObject *)Py_TYPE(o));
        return NULL;
    }
    /* the lease first: making it may run Python code (a collection) */
    l = (NmLease *)((allocfunc)PyType_GetSlot(nmpy__lease_type, Py_tp_alloc))(nmpy__lease_type, 0);
    if (l == NULL) return NULL;
    a = (NmAllocator *)o;
    if (a->closed || a->table == NULL) {
        l->released = 1;
        Py_DECREF((PyObject *)l);
        PyErr_Format(nmpy.ClosedError, "allocator %R is closed", a->name ? a->name : Py_None);
        return NULL;
    }
    l->alloc = Py_NewRef(o);
    nmpy_alloc_capi_use(o);
    *lease = (void *)l;
    return a->table;
}

static int capi_allocator_release(void *lease) {
    PyObject *o = (PyObject *)lease;
    NmLease *l;
    if (o == NULL || !PyObject_TypeCheck(o, nmpy__lease_type)) {
        PyErr_Format(PyExc_TypeError, "nativemem C API: allocator_release expects the lease allocator_acquire "
                     "gave, not %R", o ? (PyObject *)Py_TYPE(o) : Py_None);
        return -1;
    }
    l = (NmLease *)o;
    if (l->released) {
        PyErr_Format(PyExc_RuntimeError, "nativemem C API: lease on %R released twice", l->alloc ? l->alloc : Py_None);
        return -1;
    }
    l->released = 1;
    return nmpy_alloc_capi_unuse(l->alloc);
}

static const nm_capi_t nmpy__capi = {
    NM_CAPI_VERSION, sizeof(nm_capi_t), capi_allocator_acquire, capi_allocator_release,
    nm_malloc, nm_calloc, nm_realloc, nm_free, nm_free_checked, nm_memalign, nm_usable_size,
    nm_allocator_alignment, nm_allocator_name, nm_allocator_stats, nm_last_error, nm_last_error_message,
    nm_clear_error, nm_pool_create_ex, nm_pool_alloc, nm_pool_free, nm_pool_destroy, nm_pool_stats};

int nmpy_capi_init(PyObject *module) {
    PyObject *cap;
    nmpy__lease_type = (PyTypeObject *)PyType_FromSpec(&Lease_spec);
    if (nmpy__lease_type == NULL) return -1;
    if (PyModule_AddObject(module, "CapiLease", Py_NewRef((PyObject *)nmpy__lease_type)) < 0) return -1;
    cap = PyCapsule_New((void *)&nmpy__capi, NM_CAPI_CAPSULE, NULL);
    if (cap == NULL) return -1;
    if (PyModule_AddObject(module, "_C_API", cap) < 0) {
        Py_DECREF(cap);
        return -1;
    }
    return 0;
}
