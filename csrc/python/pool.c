/* pool.c (Python layer) -- the C half of nativemem.Pool: alloc/free (int addresses), batches of
 * packed addresses, lifetime.  A bound method holds the Pool, so the C pool lives as long as
 * anything can call it; it is destroyed by close() or in deallocation, never earlier. */
#include "nmpy.h"

#include <stdio.h>
#include <string.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    nm_pool_t *pool;         /* NULL until bound and after close()                      */
    PyObject *allocator;     /* the Allocator its chunks come from (strong)             */
    PyObject *name;          /* str                                                     */
    PyObject *views;         /* list of Views on objects (pool.view()), or NULL         */
    Py_ssize_t view_exports; /* exports alive through those views                       */
    Py_ssize_t object_size;
    int checked;             /* record Python sites                                     */
    int closed;
    PyObject *weakreflist;
} NmPool;

static PyObject *array_type; /* array.array */

static PyObject *nmpy__pool_closed(NmPool *p) {
    if (p->name) return PyErr_Format(nmpy.ClosedError, "pool %R is closed", p->name);
    return PyErr_Format(nmpy.ClosedError, "pool is closed");
}

#define POOL_LIVE(p)                                               \
    do {                                                           \
        if ((p)->pool == NULL) return nmpy__pool_closed(p);        \
    } while (0)

static PyObject *Pool_alloc(PyObject *self, PyObject *unused) {
    NmPool *p = (NmPool *)self;
    void *r;
    (void)unused;
    if (p->checked) { /* the site first: taking it may run Python code (which may close us) */
        int failed = 0;
        const char *site = nmpy_site(1, &failed);
        if (failed) return NULL;
        POOL_LIVE(p);
        r = nm_pool_alloc_at(p->pool, site, 0);
    } else {
        POOL_LIVE(p);
        r = nm_pool_alloc(p->pool);
    }
    if (r == NULL) return nmpy_raise_last("pool allocation failed", 0, p->object_size);
    return PyLong_FromSize_t((size_t)(uintptr_t)r);
}

/* Objects with views: refuse the free while one is exported, and forget the views of this object
 * (so none of them exports freed memory later).  Pure C: no Python code runs in here. */
static int nmpy__pool_views_allow_free(NmPool *p, uintptr_t addr) {
    Py_ssize_t i, n;
    if (p->views == NULL || (n = PyList_Size(p->views)) == 0) return 1;
    for (i = 0; i < n; i++) {
        NmView *v = (NmView *)PyList_GetItem(p->views, i);
        if ((uintptr_t)v->ptr == addr && v->exports > 0) {
            PyErr_Format(nmpy.BufferInUseError,
                         "object %p of pool %R has %zd live view(s); release them before free()", (void *)addr,
                         p->name, v->exports);
            return 0;
        }
    }
    for (i = n - 1; i >= 0; i--) {
        NmView *v = (NmView *)PyList_GetItem(p->views, i);
        if ((uintptr_t)v->ptr == addr || v->ptr == NULL) {
            v->ptr = NULL;
            if (PyList_SetSlice(p->views, i, i + 1, NULL) < 0) return 0;
        }
    }
    return 1;
}

static PyObject *Pool_free(PyObject *self, PyObject *arg) {
    NmPool *p = (NmPool *)self;
    uintptr_t addr;
    int rc;
    if (PyLong_CheckExact(arg)) {
        unsigned long long v = PyLong_AsUnsignedLongLong(arg);
        if (v == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return PyErr_Format(nmpy.InvalidFreeError, "pointer %R is not a valid address", arg);
        }
        addr = (uintptr_t)v;
        if (addr == 0) return PyErr_Format(nmpy.InvalidFreeError, "pointer 0 (NULL) is not an object of this pool");
    } else if (!nmpy_address_arg(arg, "pointer", &addr)) {
        return NULL;
    }
    POOL_LIVE(p);
    if (p->views && !nmpy__pool_views_allow_free(p, addr)) return NULL;
    rc = nm_pool_free(p->pool, (void *)addr);
    if (rc) return nmpy_raise(rc, NULL, addr, p->object_size);
    Py_RETURN_NONE;
}

static PyObject *nmpy__new_array(PyObject *bytes) {
    static const char code[] = {'Q', 0};
    const char *tc = sizeof(void *) == 8 ? code : "L";
    if (array_type == NULL) {
        PyObject *mod = PyImport_ImportModule("array");
        if (mod == NULL) return NULL;
        array_type = PyObject_GetAttrString(mod, "array");
        Py_DECREF(mod);
        if (array_type == NULL) return NULL;
    }
    return PyObject_CallFunction(array_type, "sO", tc, bytes);
}

/* alloc_many(n) -> array('Q'): n object addresses, packed. */
static PyObject *Pool_alloc_many(PyObject *self, PyObject *arg) {
    NmPool *p = (NmPool *)self;
    Py_ssize_t n = nmpy_size_arg(arg, "n");
    PyObject *bytes, *arr;
    size_t got;
    const char *site = NULL;
    if (n < 0) return NULL;
    if (n > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(void *))
        return PyErr_Format(nmpy.SizeOverflowError, "alloc_many(%zd): too many objects", n);
    bytes = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(void *));
    if (bytes == NULL) return NULL;
    if (p->checked) { /* may run Python code: the state is checked after it */
        int failed = 0;
        site = nmpy_site(1, &failed);
        if (failed) { Py_DECREF(bytes); return NULL; }
    }
    if (p->pool == NULL) { Py_DECREF(bytes); return nmpy__pool_closed(p); }
    if (p->checked) nm_site_set(site, 0);
    got = nm_pool_alloc_many(p->pool, (void **)PyBytes_AsString(bytes), (size_t)n);
    if (p->checked) nm_site_set(NULL, 0);
    if (got != (size_t)n) {
        int code = nm_last_error();
        char msg[600];
        snprintf(msg, sizeof msg, "alloc_many(%zd) failed after %zu objects: %s", n, got,
                 code ? nm_last_error_message() : "out of memory");
        nm_clear_error();
        if (got) nm_pool_free_many(p->pool, (void **)PyBytes_AsString(bytes), got);
        nm_clear_error();
        Py_DECREF(bytes);
        return nmpy_raise(code ? code : NM_ERR_NOMEM, msg, 0, -1);
    }
    arr = nmpy__new_array(bytes);
    if (arr == NULL && p->pool != NULL) { /* give them back rather than leak them */
        nm_pool_free_many(p->pool, (void **)PyBytes_AsString(bytes), (size_t)n);
        nm_clear_error();
    }
    Py_DECREF(bytes);
    return arr;
}

/* free_many(addresses): a buffer of pointer-sized items (array('Q'), memoryview, numpy uint64),
 * or any iterable of int addresses / cffi pointers.  Every valid one is freed; the first bad
 * one is raised, its index in the message. */
static PyObject *Pool_free_many(PyObject *self, PyObject *arg) {
    NmPool *p = (NmPool *)self;
    Py_buffer view;
    int rc;
    if (PyObject_CheckBuffer(arg) && !PyBytes_Check(arg) && !PyByteArray_Check(arg) && !PyUnicode_Check(arg)) {
        if (PyObject_GetBuffer(arg, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
            if (PyErr_ExceptionMatches(PyExc_BufferError) || PyErr_ExceptionMatches(PyExc_ValueError) ||
                PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                return PyErr_Format(nmpy.InvalidTypeError,
                                    "free_many needs a C-contiguous buffer of addresses (array('Q')); copy a strided "
                                    "view first");
            }
            return NULL;
        }
        if (view.itemsize != (Py_ssize_t)sizeof(void *) || view.format == NULL ||
            strchr("QqLlPN", view.format[strlen(view.format) ? strlen(view.format) - 1 : 0]) == NULL) {
            PyBuffer_Release(&view);
            return PyErr_Format(nmpy.InvalidTypeError,
                                "free_many expects pointer-sized unsigned items (array('Q')), not format %s",
                                view.format ? view.format : "B");
        }
        if (p->pool == NULL) { PyBuffer_Release(&view); return nmpy__pool_closed(p); }
        if (p->views && PyList_Size(p->views) > 0) { /* slow path: check each against the views */
            Py_ssize_t i, n = view.len / view.itemsize;
            for (i = 0; i < n; i++) {
                if (!nmpy__pool_views_allow_free(p, ((uintptr_t *)view.buf)[i])) {
                    PyBuffer_Release(&view);
                    return NULL;
                }
            }
        }
        rc = nm_pool_free_many(p->pool, (void **)view.buf, (size_t)(view.len / view.itemsize));
        PyBuffer_Release(&view);
        if (rc) return nmpy_raise(rc, NULL, 0, p->object_size);
        Py_RETURN_NONE;
    }
    if (PyUnicode_Check(arg) || PyBytes_Check(arg) || PyByteArray_Check(arg))
        return PyErr_Format(nmpy.InvalidTypeError, "free_many expects a sequence of pointers");
    {
        PyObject *it = PyObject_GetIter(arg), *item;
        PyObject *bytes;
        Py_ssize_t n = 0, cap = 64;
        uintptr_t *tmp;
        if (it == NULL) {
            PyErr_Clear();
            return PyErr_Format(nmpy.InvalidTypeError, "free_many expects a sequence of pointers");
        }
        tmp = (uintptr_t *)PyMem_Malloc((size_t)cap * sizeof *tmp);
        if (tmp == NULL) { Py_DECREF(it); return PyErr_NoMemory(); }
        while ((item = PyIter_Next(it)) != NULL) {
            uintptr_t a;
            int ok = nmpy_address_arg(item, "pointer", &a);
            Py_DECREF(item);
            if (!ok) {
                PyErr_Clear();
                PyErr_Format(nmpy.InvalidFreeError, "free_many: item %zd is not a valid pointer", n);
                PyMem_Free(tmp); Py_DECREF(it); return NULL;
            }
            if (n == cap) {
                uintptr_t *t2 = (uintptr_t *)PyMem_Realloc(tmp, (size_t)cap * 2 * sizeof *tmp);
                if (t2 == NULL) { PyMem_Free(tmp); Py_DECREF(it); return PyErr_NoMemory(); }
                tmp = t2;
                cap *= 2;
            }
            tmp[n++] = a;
        }
        Py_DECREF(it);
        if (PyErr_Occurred()) { PyMem_Free(tmp); return NULL; }
        bytes = PyBytes_FromStringAndSize((const char *)tmp, n * (Py_ssize_t)sizeof *tmp);
        PyMem_Free(tmp);
        if (bytes == NULL) return NULL;
        {
            PyObject *arr = nmpy__new_array(bytes), *r;
            Py_DECREF(bytes);
            if (arr == NULL) return NULL;
            r = Pool_free_many(self, arr);
            Py_DECREF(arr);
            return r;
        }
    }
}

static PyObject *Pool_owns(PyObject *self, PyObject *arg) {
    NmPool *p = (NmPool *)self;
    uintptr_t addr;
    if (!nmpy_address_arg(arg, "pointer", &addr)) {
        if (PyErr_ExceptionMatches(nmpy.InvalidFreeError)) { PyErr_Clear(); Py_RETURN_FALSE; }
        return NULL;
    }
    POOL_LIVE(p);
    return PyBool_FromLong(nm_pool_owns(p->pool, (const void *)addr));
}

/* _view(addr) -> View counted in this pool (the Python side keeps the list). */
static PyObject *Pool_view_of(PyObject *self, PyObject *arg) {
    NmPool *p = (NmPool *)self;
    uintptr_t addr;
    PyObject *v;
    if (!nmpy_address_arg(arg, "pointer", &addr)) return NULL;
    /* the objects first (allocating them may run Python code), the checks after */
    if (p->views == NULL && (p->views = PyList_New(0)) == NULL) return NULL;
    v = nmpy_view_new(self, NULL, p->object_size, 0, &p->view_exports);
    if (v == NULL) return NULL;
    if (p->pool == NULL) { Py_DECREF(v); return nmpy__pool_closed(p); }
    if (!nm_pool_owns(p->pool, (const void *)addr)) {
        Py_DECREF(v);
        return PyErr_Format(nmpy.InvalidArgumentError, "%p is not a live object of pool %R", (void *)addr, p->name);
    }
    if (p->views == NULL || PyList_Append(p->views, v) < 0) {
        Py_DECREF(v);
        if (!PyErr_Occurred()) nmpy__pool_closed(p);
        return NULL;
    }
    ((NmView *)v)->ptr = (char *)addr;
    return v;
}

static PyObject *Pool_bind(PyObject *self, PyObject *args) {
    NmPool *p = (NmPool *)self;
    unsigned long long addr;
    PyObject *alloc, *name;
    Py_ssize_t size;
    int checked;
    if (!PyArg_ParseTuple(args, "KOUnp", &addr, &alloc, &name, &size, &checked)) return NULL;
    if (p->pool || p->closed) return nmpy_raisef(nmpy.InvalidArgumentError, "pool is already bound");
    p->pool = (nm_pool_t *)(uintptr_t)addr;
    NMPY_XSETREF(p->allocator, Py_NewRef(alloc));
    NMPY_XSETREF(p->name, Py_NewRef(name));
    p->object_size = size;
    p->checked = checked;
    nmpy_alloc_use(alloc); /* our chunks come from it: close() must not destroy it under us */
    Py_RETURN_NONE;
}

/* _close(): destroy the C pool now (the Python side listed leaks first).  Refused while a view
 * of one of its objects is exported. */
static PyObject *Pool_close_core(PyObject *self, PyObject *unused) {
    NmPool *p = (NmPool *)self;
    nm_pool_t *c = p->pool;
    (void)unused;
    if (c == NULL) Py_RETURN_FALSE;
    if (p->view_exports > 0)
        return PyErr_Format(nmpy.BufferInUseError, "pool %R has %zd exported view(s) of its objects; release them "
                            "before close()", p->name, p->view_exports);
    if (p->views) { /* no view may export the chunks once they are gone */
        Py_ssize_t i, n = PyList_Size(p->views);
        for (i = 0; i < n; i++) ((NmView *)PyList_GetItem(p->views, i))->ptr = NULL;
        Py_CLEAR(p->views);
    }
    p->pool = NULL;
    p->closed = 1;
    nm_pool_destroy(c);
    nmpy_alloc_unuse(p->allocator);
    Py_RETURN_TRUE;
}

static PyObject *Pool_refuse_copy(PyObject *self, PyObject *arg) {
    (void)self; (void)arg;
    PyErr_SetString(PyExc_TypeError, "a nativemem Pool cannot be copied or pickled: it owns native memory");
    return NULL;
}

static PyObject *Pool_get_address(PyObject *self, void *c) {
    NmPool *p = (NmPool *)self;
    (void)c;
    POOL_LIVE(p);
    return PyLong_FromSize_t((size_t)(uintptr_t)p->pool);
}
static PyObject *Pool_get_closed(PyObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(((NmPool *)self)->pool == NULL);
}
static PyObject *Pool_get_allocator(PyObject *self, void *c) {
    NmPool *p = (NmPool *)self;
    (void)c;
    return Py_NewRef(p->allocator ? p->allocator : Py_None);
}
static PyObject *Pool_get_views(PyObject *self, void *c) {
    NmPool *p = (NmPool *)self;
    (void)c;
    return Py_NewRef(p->views ? p->views : Py_None);
}
static PyObject *Pool_get_view_exports(PyObject *self, void *c) {
    (void)c;
    return PyLong_FromSsize_t(((NmPool *)self)->view_exports);
}

static PyObject *Pool_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    (void)args; (void)kw;
    return alloc(type, 0);
}

static int Pool_traverse(PyObject *self, visitproc visit, void *arg) {
    NmPool *p = (NmPool *)self;
    Py_VISIT(p->allocator);
    Py_VISIT(p->views);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int Pool_clear(PyObject *self) {
    /* Only the views list (a View holds the pool: a cycle); the allocator must outlive the C pool,
     * which goes in dealloc. */
    NmPool *p = (NmPool *)self;
    if (p->view_exports == 0) Py_CLEAR(p->views);
    return 0;
}

static void Pool_dealloc(PyObject *self) {
    NmPool *p = (NmPool *)self;
    PyTypeObject *tp = Py_TYPE(self);
    freefunc tfree = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    PyObject_GC_UnTrack(self);
    if (p->weakreflist) PyObject_ClearWeakRefs(self);
    Py_CLEAR(p->views);
    if (p->pool) {
        nm_pool_t *c = p->pool;
        p->pool = NULL;
        nm_pool_destroy(c);
        nmpy_alloc_unuse(p->allocator);
    }
    Py_CLEAR(p->allocator);
    Py_CLEAR(p->name);
    tfree(self);
    Py_DECREF(tp);
}

static PyMethodDef Pool_methods[] = {
    {"alloc", Pool_alloc, METH_NOARGS, "alloc() -> int: the address of a new object (zeroed unless zero=False)."},
    {"free", Pool_free, METH_O,
     "free(address): return an object (an int address, a cffi pointer, or a ctypes object's address).  "
     "Foreign, misaligned and double frees raise instead of corrupting memory."},
    {"alloc_many", Pool_alloc_many, METH_O, "alloc_many(n) -> array('Q'): n object addresses in one C call."},
    {"free_many", Pool_free_many, METH_O,
     "free_many(addresses): free every address of an array('Q') (as from alloc_many), memoryview, or iterable "
     "of addresses / cffi pointers in one C call.  Every valid one is freed; the first bad one is then raised, "
     "its index in the message."},
    {"owns", Pool_owns, METH_O, "owns(address) -> bool: the start of a live object of this pool?"},
    {"_view", Pool_view_of, METH_O, NULL},
    {"_bind", Pool_bind, METH_VARARGS, NULL},
    {"_close", Pool_close_core, METH_NOARGS, NULL},
    {"__copy__", Pool_refuse_copy, METH_NOARGS, NULL},
    {"__deepcopy__", Pool_refuse_copy, METH_O, NULL},
    {"__reduce_ex__", Pool_refuse_copy, METH_O, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Pool_getset[] = {
    {"_pool_address", Pool_get_address, NULL, NULL, NULL},
    {"closed", Pool_get_closed, NULL, "True after close().", NULL},
    {"allocator", Pool_get_allocator, NULL, "The Allocator the chunks come from.", NULL},
    {"_views", Pool_get_views, NULL, NULL, NULL},
    {"_view_exports", Pool_get_view_exports, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMemberDef Pool_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(NmPool, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyType_Slot Pool_slots[] = {
    {Py_tp_doc, "The C half of nativemem.Pool."},
    {Py_tp_new, Pool_new},
    {Py_tp_traverse, Pool_traverse},
    {Py_tp_clear, Pool_clear},
    {Py_tp_dealloc, Pool_dealloc},
    {Py_tp_methods, Pool_methods},
    {Py_tp_getset, Pool_getset},
    {Py_tp_members, Pool_members},
    {0, NULL}};
static PyType_Spec Pool_spec = {"nativemem._core.Pool", sizeof(NmPool), 0,
                                Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE, Pool_slots};

int nmpy_pool_types(PyObject *m) {
    nmpy.Pool = (PyTypeObject *)PyType_FromSpec(&Pool_spec);
    if (nmpy.Pool == NULL) return -1;
    return PyModule_AddObject(m, "Pool", Py_NewRef((PyObject *)nmpy.Pool));
}
