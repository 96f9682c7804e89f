/* nmhostile.c -- raw access to nativemem's C API capsule for hostile tests. */
#include <Python.h>
#include "nm_capi.h"

static const nm_capi_t *nm;

/* Leases by allocator, as one extension would keep them: acquire(o) keeps its lease here and
 * returns the C allocator's address; release(o) releases and drops the newest lease held on o;
 * release_raw(x) hands x itself to allocator_release (a stray call: x is no lease). */
static PyObject *leases; /* dict: allocator -> list of leases */

static PyObject *acquire(PyObject *self, PyObject *arg) {
    nm_allocator_t *a;
    void *lease = NULL;
    PyObject *lst;
    (void)self;
    a = nm->allocator_acquire(arg == Py_None ? NULL : (void *)arg, &lease);
    if (a == NULL) return NULL;
    lst = PyDict_GetItem(leases, arg);
    if (lst == NULL) {
        lst = PyList_New(0);
        if (lst == NULL || PyDict_SetItem(leases, arg, lst) < 0) { Py_XDECREF(lst); Py_DECREF((PyObject *)lease); return NULL; }
        Py_DECREF(lst);
    }
    if (PyList_Append(lst, (PyObject *)lease) < 0) { Py_DECREF((PyObject *)lease); return NULL; }
    Py_DECREF((PyObject *)lease); /* the list holds it */
    return PyLong_FromVoidPtr(a);
}
static PyObject *lease_of(PyObject *self, PyObject *arg) {
    PyObject *lst = PyDict_GetItem(leases, arg);
    Py_ssize_t n;
    (void)self;
    if (lst == NULL || (n = PyList_Size(lst)) == 0) Py_RETURN_NONE;
    return Py_NewRef(PyList_GetItem(lst, n - 1));
}
static PyObject *release(PyObject *self, PyObject *arg) {
    PyObject *lst = PyDict_GetItem(leases, arg), *lease;
    Py_ssize_t n;
    int rc;
    (void)self;
    if (lst == NULL || (n = PyList_Size(lst)) == 0) {
        PyErr_SetString(PyExc_LookupError, "nmhostile: no lease held on that object");
        return NULL;
    }
    lease = Py_NewRef(PyList_GetItem(lst, n - 1));
    if (PySequence_DelItem(lst, n - 1) < 0) { Py_DECREF(lease); return NULL; }
    rc = nm->allocator_release((void *)lease);
    Py_DECREF(lease);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}
static PyObject *release_raw(PyObject *self, PyObject *arg) {
    (void)self;
    if (nm->allocator_release(arg == Py_None ? NULL : (void *)arg) < 0) return NULL;
    Py_RETURN_NONE;
}
static int conv(PyObject *o, void *out) {
    *(void **)out = PyLong_AsVoidPtr(o);
    return !PyErr_Occurred();
}
static PyObject *m_malloc(PyObject *self, PyObject *args) {
    void *t; Py_ssize_t n; void *p;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&n", conv, &t, &n)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    p = nm->malloc((nm_allocator_t *)t, (size_t)n);
    Py_END_ALLOW_THREADS
    if (p) memset(p, 0xAB, (size_t)n);
    return PyLong_FromVoidPtr(p);
}
static PyObject *m_free(PyObject *self, PyObject *args) {
    void *t, *p;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&O&", conv, &t, conv, &p)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    nm->free((nm_allocator_t *)t, p);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}
static PyObject *m_free_checked(PyObject *self, PyObject *args) {
    void *t, *p; int rc;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&O&", conv, &t, conv, &p)) return NULL;
    rc = nm->free_checked((nm_allocator_t *)t, p);
    return Py_BuildValue("(is)", rc, rc ? nm->last_error_message() : "");
}
static PyObject *m_stats(PyObject *self, PyObject *arg) {
    nm_alloc_stats_t st;
    (void)self;
    nm->allocator_stats((nm_allocator_t *)PyLong_AsVoidPtr(arg), &st);
    return Py_BuildValue("(LLLLLL)", (long long)st.live_blocks, (long long)st.live_bytes, (long long)st.peak_bytes,
                         (long long)st.total_allocs, (long long)st.total_frees, (long long)st.failures);
}
static PyObject *m_name(PyObject *self, PyObject *arg) {
    (void)self;
    return PyUnicode_FromString(nm->allocator_name((nm_allocator_t *)PyLong_AsVoidPtr(arg)));
}
static PyObject *m_pool_create(PyObject *self, PyObject *args) {
    void *t; Py_ssize_t size, n, al; unsigned flags; nm_pool_t *p;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&nnnI", conv, &t, &size, &n, &al, &flags)) return NULL;
    p = nm->pool_create_ex((nm_allocator_t *)t, (size_t)size, (size_t)n, (size_t)al, flags);
    if (!p) return PyErr_Format(PyExc_MemoryError, "%d %s", nm->last_error(), nm->last_error_message());
    return PyLong_FromVoidPtr(p);
}
static PyObject *m_pool_alloc(PyObject *self, PyObject *arg) {
    void *p;
    (void)self;
    p = nm->pool_alloc((nm_pool_t *)PyLong_AsVoidPtr(arg));
    return PyLong_FromVoidPtr(p);
}
static PyObject *m_pool_free(PyObject *self, PyObject *args) {
    void *pl, *p;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&O&", conv, &pl, conv, &p)) return NULL;
    return PyLong_FromLong(nm->pool_free((nm_pool_t *)pl, p));
}
static PyObject *m_pool_destroy(PyObject *self, PyObject *arg) {
    (void)self;
    nm->pool_destroy((nm_pool_t *)PyLong_AsVoidPtr(arg));
    Py_RETURN_NONE;
}
static PyObject *m_pool_stats(PyObject *self, PyObject *arg) {
    nm_pool_stats_t st;
    (void)self;
    nm->pool_stats((nm_pool_t *)PyLong_AsVoidPtr(arg), &st);
    return Py_BuildValue("(LLLLLL)", (long long)st.allocations, (long long)st.frees, (long long)st.live,
                         (long long)st.peak, (long long)st.chunks, (long long)st.reserved_bytes);
}
static PyMethodDef methods[] = {
    {"acquire", acquire, METH_O, NULL}, {"release", release, METH_O, NULL},
    {"release_raw", release_raw, METH_O, NULL}, {"lease_of", lease_of, METH_O, NULL},
    {"malloc", m_malloc, METH_VARARGS, NULL}, {"free", m_free, METH_VARARGS, NULL},
    {"free_checked", m_free_checked, METH_VARARGS, NULL}, {"stats", m_stats, METH_O, NULL},
    {"name", m_name, METH_O, NULL},
    {"pool_create", m_pool_create, METH_VARARGS, NULL}, {"pool_alloc", m_pool_alloc, METH_O, NULL},
    {"pool_free", m_pool_free, METH_VARARGS, NULL}, {"pool_destroy", m_pool_destroy, METH_O, NULL},
    {"pool_stats", m_pool_stats, METH_O, NULL},
    {NULL, NULL, 0, NULL}};
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "nmhostile", NULL, -1, methods, NULL, NULL, NULL, NULL};
PyMODINIT_FUNC PyInit_nmhostile(void) {
    nm = nm_capi_import();
    if (nm == NULL) return NULL;
    leases = PyDict_New();
    if (leases == NULL) return NULL;
    return PyModule_Create(&def);
}
