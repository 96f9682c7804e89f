/* capi.c -- the C API capsule (nm_capi.h) other extensions import: nativemem._core._C_API. */
#include "nmpy.h"

#include "nm_capi.h"

static nm_allocator_t *capi_allocator_acquire(void *obj) {
    PyObject *o = (PyObject *)obj;
    NmAllocator *a;
    if (o == NULL) {
        PyErr_SetString(PyExc_TypeError, "expected a nativemem.Allocator, not NULL");
        return NULL;
    }
    if (!PyObject_TypeCheck(o, nmpy.Allocator)) {
        PyErr_Format(PyExc_TypeError, "expected a nativemem.Allocator, not %R", (PyObject *)Py_TYPE(o));
        return NULL;
    }
    a = (NmAllocator *)o;
    if (a->closed || a->table == NULL) {
        PyErr_Format(nmpy.ClosedError, "allocator %R is closed", a->name ? a->name : Py_None);
        return NULL;
    }
    nmpy_alloc_capi_use(o);
    return a->table;
}

static int capi_allocator_release(void *obj) {
    PyObject *o = (PyObject *)obj;
    if (o == NULL || !PyObject_TypeCheck(o, nmpy.Allocator)) {
        PyErr_SetString(PyExc_TypeError, "nativemem C API: allocator_release expects a nativemem.Allocator");
        return -1;
    }
    return nmpy_alloc_capi_unuse(o);
}

static const nm_capi_t nmpy__capi = {
    NM_CAPI_VERSION, sizeof(nm_capi_t), capi_allocator_acquire, capi_allocator_release,
    nm_malloc, nm_calloc, nm_realloc, nm_free, nm_free_checked, nm_memalign, nm_usable_size,
    nm_allocator_alignment, nm_allocator_name, nm_allocator_stats, nm_last_error, nm_last_error_message,
    nm_clear_error, nm_pool_create_ex, nm_pool_alloc, nm_pool_free, nm_pool_destroy, nm_pool_stats};

int nmpy_capi_init(PyObject *module) {
    PyObject *cap = PyCapsule_New((void *)&nmpy__capi, NM_CAPI_CAPSULE, NULL);
    if (cap == NULL) return -1;
    if (PyModule_AddObject(module, "_C_API", cap) < 0) {
        Py_DECREF(cap);
        return -1;
    }
    return 0;
}
