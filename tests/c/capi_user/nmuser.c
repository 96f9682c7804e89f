/* nmuser.c -- a second extension that allocates through nativemem's allocators, as a third-party
 * extension would: it includes nm_capi.h (from nativemem.get_include()), links against nothing of
 * nativemem and takes every function from the capsule (tests/test_capi.py builds and runs it). */
#include <Python.h>

#include "nm_capi.h"

static const nm_capi_t *nm;

/* fill(allocator, n) -> (sum of the bytes written, live blocks while the block was held) */
static PyObject *fill(PyObject *self, PyObject *args) {
    PyObject *alloc;
    Py_ssize_t n, i;
    unsigned char *p;
    long long sum = 0;
    nm_alloc_stats_t st;
    nm_allocator_t *a;
    void *lease;
    (void)self;
    if (!PyArg_ParseTuple(args, "On", &alloc, &n)) return NULL;
    a = nm->allocator_acquire(alloc, &lease);
    if (a == NULL) return NULL;
    p = (unsigned char *)nm->malloc(a, (size_t)n);
    if (p == NULL) {
        PyErr_Format(PyExc_MemoryError, "%s", nm->last_error_message());
        nm->allocator_release(lease);
        Py_DECREF((PyObject *)lease);
        return NULL;
    }
    for (i = 0; i < n; i++) p[i] = (unsigned char)i;
    for (i = 0; i < n; i++) sum += p[i];
    nm->allocator_stats(a, &st);
    nm->free(a, p);
    if (nm->allocator_release(lease) < 0) {
        Py_DECREF((PyObject *)lease);
        return NULL;
    }
    Py_DECREF((PyObject *)lease);
    return Py_BuildValue("(LL)", sum, (long long)st.live_blocks);
}

/* pool_roundtrip(allocator, count) -> objects the pool reported live at the peak */
static PyObject *pool_roundtrip(PyObject *self, PyObject *args) {
    PyObject *alloc;
    Py_ssize_t count, i;
    nm_allocator_t *a;
    nm_pool_t *pool;
    nm_pool_stats_t st;
    void **objs;
    void *lease;
    (void)self;
    if (!PyArg_ParseTuple(args, "On", &alloc, &count) || count < 0) return NULL;
    a = nm->allocator_acquire(alloc, &lease);
    if (a == NULL) return NULL;
    pool = nm->pool_create_ex(a, 48, 64, 64, 0);
    objs = (void **)PyMem_Calloc((size_t)count + 1, sizeof(void *));
    if (pool == NULL || objs == NULL) {
        if (pool) nm->pool_destroy(pool);
        PyMem_Free(objs);
        Py_DECREF((PyObject *)lease); /* a lease dropped unreleased gives its use back */
        return PyErr_NoMemory();
    }
    for (i = 0; i < count; i++) objs[i] = nm->pool_alloc(pool);
    nm->pool_stats(pool, &st);
    for (i = 0; i < count; i++) nm->pool_free(pool, objs[i]);
    PyMem_Free(objs);
    nm->pool_destroy(pool);
    nm->allocator_release(lease);
    Py_DECREF((PyObject *)lease);
    return PyLong_FromLongLong((long long)st.live);
}

static PyMethodDef methods[] = {
    {"fill", fill, METH_VARARGS, NULL},
    {"pool_roundtrip", pool_roundtrip, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}};
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "nmuser", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_nmuser(void) {
    nm = nm_capi_import();
    if (nm == NULL) return NULL;
    return PyModule_Create(&def);
}
