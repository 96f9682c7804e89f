/* nm_capi.h -- nativemem's C API for other Python extensions, handed over at run time as a capsule
 * of function pointers (as NumPy's and datetime's C APIs are): an extension that includes this
 * header links against nothing of nativemem, and allocates through the very allocators a Python
 * program gives it.
 *
 *     #include <Python.h>
 *     #include "nm_capi.h"                        (nativemem.get_include() is the directory)
 *
 *     static const nm_capi_t *nm;                 in PyInit_yourmodule: nm = nm_capi_import();
 *                                                 (NULL with ImportError set)
 *     void *lease;
 *     nm_allocator_t *a = nm->allocator_acquire(py_allocator, &lease);  NULL: TypeError/ClosedError
 *     void *p = nm->malloc(a, 4096);
 *     ...
 *     nm->free(a, p);
 *     nm->allocator_release(lease);
 *     Py_DECREF((PyObject *)lease);
 *
 * allocator_acquire takes a nativemem.Allocator (any: a backend, an Arena, a DebugAllocator) and
 * returns its C allocator, valid until the lease is released, even if the Python program calls
 * close() meanwhile (close() waits for every lease).  The lease is a new reference to a small
 * Python object that holds the use: allocator_release(lease) gives the use back (a second release
 * of the same lease fails with RuntimeError and changes nothing), and a lease dropped unreleased
 * gives it back when it is deallocated.  A caller can release only the uses it holds.  Call acquire and
 * release with the GIL held and a reference on the object; the other functions need no GIL.
 * Fields are only ever added at the end: `size` tells how many a provider has. */
#ifndef NM_CAPI_H
#define NM_CAPI_H

#include "nativemem.h"

#define NM_CAPI_CAPSULE "nativemem._core._C_API"
#define NM_CAPI_VERSION 1

typedef struct nm_capi {
    unsigned version;   /* NM_CAPI_VERSION of the provider                                */
    size_t size;        /* sizeof(nm_capi_t) of the provider                              */
    /* a nativemem.Allocator (a PyObject *) -> its allocator; *lease: a new reference (PyObject *)
     * holding the use                                                                       */
    nm_allocator_t *(*allocator_acquire)(void *py_allocator, void **lease);
    int (*allocator_release)(void *lease); /* 0, or -1 with TypeError / RuntimeError (released) */
    /* the front door (nm_alloc.h) */
    void *(*malloc)(nm_allocator_t *a, size_t size);
    void *(*calloc)(nm_allocator_t *a, size_t n, size_t size);
    void *(*realloc)(nm_allocator_t *a, void *p, size_t size);
    void (*free)(nm_allocator_t *a, void *p);
    int (*free_checked)(nm_allocator_t *a, void *p);
    void *(*memalign)(nm_allocator_t *a, size_t alignment, size_t size);
    size_t (*usable_size)(nm_allocator_t *a, const void *p);
    size_t (*allocator_alignment)(nm_allocator_t *a);
    const char *(*allocator_name)(nm_allocator_t *a);
    void (*allocator_stats)(nm_allocator_t *a, nm_alloc_stats_t *out);
    int (*last_error)(void);
    const char *(*last_error_message)(void);
    void (*clear_error)(void);
    /* pools (nm_pool.h) over an acquired allocator */
    nm_pool_t *(*pool_create_ex)(nm_allocator_t *a, size_t object_size, size_t objects_per_chunk,
                                 size_t alignment, unsigned flags);
    void *(*pool_alloc)(nm_pool_t *pool);
    int (*pool_free)(nm_pool_t *pool, void *p);
    void (*pool_destroy)(nm_pool_t *pool);
    void (*pool_stats)(nm_pool_t *pool, nm_pool_stats_t *out);
} nm_capi_t;

#if defined(Py_PYTHON_H)
/* The provider's table (NULL with ImportError set when nativemem is missing or older). */
static inline const nm_capi_t *nm_capi_import(void) {
    const nm_capi_t *api = (const nm_capi_t *)PyCapsule_Import(NM_CAPI_CAPSULE, 0);
    if (api != NULL && (api->version < NM_CAPI_VERSION || api->size < sizeof(nm_capi_t))) {
        PyErr_Format(PyExc_ImportError, "nativemem's C API is version %u, this extension needs %u",
                     api->version, (unsigned)NM_CAPI_VERSION);
        return NULL;
    }
    return api;
}
#endif

#endif /* NM_CAPI_H */
