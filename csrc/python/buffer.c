/* buffer.c -- Allocator (the handle on an nm_allocator_t) and Buffer (one block it made).
 *
 * Ownership is structural: a Buffer holds a strong reference on its Allocator, every export of a
 * Buffer (memoryview, NumPy array, ctypes object) holds one on the Buffer, and the block is
 * freed in free() (refused while exported) or when the Buffer is deallocated, which cannot
 * happen while an export is alive.  The table is destroyed when the Allocator is deallocated
 * (or closed; the C core then defers the destruction until its last block is freed). */
#include "nmpy.h"

#include <stdio.h>
#include <string.h>
#include <structmember.h>

#define NMPY_PTR_ALIGN ((Py_ssize_t)sizeof(void *))

static PyObject *nmpy__closed(NmAllocator *a) {
    if (a->table == NULL && !a->closed)
        return nmpy_raisef(nmpy.ClosedError, "this allocator was never bound to a C table");
    return nmpy_raisef(nmpy.ClosedError, "allocator '%s' is closed",
                       a->name ? PyUnicode_AsUTF8AndSize(a->name, NULL) : "?");
}

/* ---- Buffer ----------------------------------------------------------------------------- */
static void nmpy__destroy_table(NmAllocator *a);

/* A closed allocator's table goes when nothing uses it any more: no Buffer, and no C-level user
 * (a debug allocator or arena on it, a pool, a string table, a NumPy handler). */
static void nmpy__maybe_destroy(NmAllocator *a) {
    if (a->closed && a->buffers == 0 && a->users == 0 && a->capi_users == 0) nmpy__destroy_table(a);
}

void nmpy_alloc_use(PyObject *o) {
    if (o && PyObject_TypeCheck(o, nmpy.Allocator)) ((NmAllocator *)o)->users++;
}
void nmpy_alloc_capi_use(PyObject *o) { ((NmAllocator *)o)->capi_users++; }
int nmpy_alloc_capi_unuse(PyObject *o) {
    NmAllocator *a = (NmAllocator *)o;
    if (a->capi_users <= 0) {
        PyErr_Format(PyExc_RuntimeError, "nativemem C API: a lease on %R released with no use outstanding", o);
        return -1;
    }
    a->capi_users--;
    nmpy__maybe_destroy(a);
    return 0;
}
void nmpy_alloc_unuse(PyObject *o) {
    if (o && PyObject_TypeCheck(o, nmpy.Allocator)) {
        NmAllocator *a = (NmAllocator *)o;
        a->users--;
        nmpy__maybe_destroy(a);
    }
}

/* A recorded site for a message: the innermost frame without the "py:" marker. */
static const char *nmpy__site_text(const char *site) {
    static char buf[2][512];
    static int k;
    char *out, *nl;
    if (site == NULL) return "<unknown>";
    if (strncmp(site, "py:", 3) == 0) site += 3;
    out = buf[k ^= 1];
    snprintf(out, sizeof buf[0], "%s", site);
    nl = strchr(out, '\n');
    if (nl) *nl = '\0';
    return out;
}

static PyObject *nmpy__freed(NmBuffer *b) {
    return PyErr_Format(nmpy.UseAfterFreeError, "Buffer at %p (%zd bytes) was already freed", (void *)b->addr,
                        b->size);
}

/* Free b's block (no Python code runs here); status returned (0 ok).  The Buffer is marked freed
 * first, so whatever runs afterwards (a warning's Python code) sees a consistent state. */
static int nmpy__release_block(NmBuffer *b, const char *site, int with_site) {
    NmAllocator *a = b->alloc;
    char *p = b->ptr;
    int rc;
    b->ptr = NULL;
    a->buffers--;
    nmpy_untrace((uintptr_t)p);
    if (with_site < 0) { /* a finalizer: nothing can raise, so the C core reports (hook: CorruptionWarning) */
        nm_free(a->table, p);
        rc = NM_OK;
    } else {
        rc = with_site ? nm_free_checked_at(a->table, p, site, 0) : nm_free_checked(a->table, p);
    }
    nmpy__maybe_destroy(a); /* a closed allocator's table goes with its last Buffer */
    return rc;
}

static PyObject *Buffer_free(PyObject *self, PyObject *unused) {
    NmBuffer *b = (NmBuffer *)self;
    const char *site = NULL;
    int rc, with_site = 0;
    (void)unused;
    /* the site first: taking it may run Python code (a collection, another thread) */
    if (b->ptr != NULL && b->alloc->sites) {
        int failed = 0;
        site = nmpy_site(b->alloc->depth, &failed);
        if (failed) return NULL;
        with_site = 1;
    }
    if (b->ptr == NULL) {
        if (b->alloc_site || b->free_site)
            return PyErr_Format(nmpy.DoubleFreeError,
                                "double free of Buffer at %p (%zd bytes); allocated at %s, first freed at %s",
                                (void *)b->addr, b->size, nmpy__site_text(b->alloc_site),
                                nmpy__site_text(b->free_site));
        return PyErr_Format(nmpy.DoubleFreeError, "double free of Buffer at %p (%zd bytes): freed before",
                            (void *)b->addr, b->size);
    }
    if (b->exports > 0)
        return PyErr_Format(nmpy.BufferInUseError,
                            "Buffer at %p has %zd live export(s) (memoryview, array, ctypes object); release "
                            "them before free()",
                            (void *)b->addr, b->exports);
    b->free_site = site;
    rc = nmpy__release_block(b, site, with_site);
    if (rc) return nmpy_raise(rc, NULL, b->addr, b->size);
    Py_RETURN_NONE;
}

static int Buffer_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    NmBuffer *b = (NmBuffer *)self;
    if (b->ptr == NULL) {
        PyErr_Format(nmpy.UseAfterFreeError, "Buffer at %p (%zd bytes) was already freed", (void *)b->addr,
                     b->size);
        return -1;
    }
    if (PyBuffer_FillInfo(view, self, b->ptr, b->size, 0, flags) < 0) return -1;
    b->exports++;
    return 0;
}

static void Buffer_releasebuffer(PyObject *self, Py_buffer *view) {
    (void)view;
    ((NmBuffer *)self)->exports--;
}

static int Buffer_traverse(PyObject *self, visitproc visit, void *arg) {
    Py_VISIT(((NmBuffer *)self)->alloc);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void Buffer_dealloc(PyObject *self) {
    NmBuffer *b = (NmBuffer *)self;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (b->weakreflist) PyObject_ClearWeakRefs(self);
    if (b->ptr) { /* forgotten: freed here (no export can be alive: each holds a reference); what
                   * the free finds is reported by the C core's hook (a CorruptionWarning) and kept
                   * for the debug allocator's next check() */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        nmpy__release_block(b, NULL, -1);
        PyErr_Restore(et, ev, tb);
    }
    Py_CLEAR(b->alloc);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyObject *Buffer_view(PyObject *self, PyObject *unused) {
    (void)unused;
    return PyMemoryView_FromObject(self);
}

static PyObject *Buffer_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NmBuffer *b = (NmBuffer *)self;
    Py_ssize_t off = 0, n = -1;
    if (nargs > 2) return PyErr_Format(PyExc_TypeError, "read() takes at most 2 arguments (%zd given)", nargs);
    if (nargs >= 1 && (off = nmpy_size_arg(args[0], "offset")) < 0) return NULL;
    if (nargs == 2 && args[1] != Py_None && (n = nmpy_size_arg(args[1], "size")) < 0) return NULL;
    if (b->ptr == NULL) return nmpy__freed(b);
    if (off > b->size)
        return PyErr_Format(nmpy.InvalidArgumentError, "offset %zd is past the end of the %zd-byte buffer", off,
                            b->size);
    if (n < 0) n = b->size - off;
    if (n > b->size - off)
        return PyErr_Format(nmpy.InvalidArgumentError, "read of %zd bytes at offset %zd exceeds the %zd-byte buffer",
                            n, off, b->size);
    return PyBytes_FromStringAndSize(b->ptr + off, n);
}

static PyObject *Buffer_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NmBuffer *b = (NmBuffer *)self;
    Py_ssize_t off = 0;
    Py_buffer src;
    PyObject *res = NULL;
    if (nargs < 1 || nargs > 2)
        return PyErr_Format(PyExc_TypeError, "write(data, offset=0) takes 1 or 2 arguments (%zd given)", nargs);
    if (nargs == 2 && (off = nmpy_size_arg(args[1], "offset")) < 0) return NULL;
    /* the source first: getting its buffer may run Python code (which may free this Buffer) */
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyObject *tn = PyObject_GetAttrString((PyObject *)Py_TYPE(args[0]), "__name__");
            PyErr_Clear();
            PyErr_Format(nmpy.InvalidTypeError, "write expects a contiguous bytes-like object, not %S",
                         tn ? tn : Py_None);
            Py_XDECREF(tn);
        }
        return NULL;
    }
    if (b->ptr == NULL) {
        nmpy__freed(b);
    } else if (off > b->size || src.len > b->size - off) {
        PyErr_Format(nmpy.InvalidArgumentError, "write of %zd bytes at offset %zd exceeds the %zd-byte buffer",
                     src.len, off, b->size);
    } else {
        memmove(b->ptr + off, src.buf, (size_t)src.len);
        res = PyLong_FromSsize_t(src.len);
    }
    PyBuffer_Release(&src);
    return res;
}

static PyObject *Buffer_bytes(PyObject *self, PyObject *unused) {
    NmBuffer *b = (NmBuffer *)self;
    (void)unused;
    if (b->ptr == NULL) return nmpy__freed(b);
    return PyBytes_FromStringAndSize(b->ptr, b->size);
}

static PyObject *Buffer_enter(PyObject *self, PyObject *unused) {
    NmBuffer *b = (NmBuffer *)self;
    (void)unused;
    if (b->ptr == NULL) return nmpy__freed(b);
    return Py_NewRef(self);
}

static PyObject *Buffer_exit(PyObject *self, PyObject *args) {
    (void)args;
    if (((NmBuffer *)self)->ptr == NULL) Py_RETURN_NONE;
    return Buffer_free(self, NULL);
}

/* copy.copy / copy.deepcopy: a new block from the same allocator with the same bytes. */
enum { NMPY_MALLOC, NMPY_CALLOC, NMPY_MEMALIGN };
static PyObject *nmpy__allocate(NmAllocator *a, int op, size_t x, size_t y, Py_ssize_t size);
static PyObject *Buffer_copy(PyObject *self, PyObject *unused) {
    NmBuffer *b = (NmBuffer *)self, *c;
    (void)unused;
    if (b->ptr == NULL) return nmpy__freed(b);
    c = (NmBuffer *)nmpy__allocate(b->alloc, NMPY_MALLOC, (size_t)b->size, 0, b->size);
    if (c == NULL) return NULL;
    if (b->ptr == NULL || b->size < c->size) { /* freed or shrunk while the copy was made */
        Py_DECREF((PyObject *)c);
        return nmpy__freed(b);
    }
    memcpy(c->ptr, b->ptr, (size_t)c->size);
    return (PyObject *)c;
}
static PyObject *Buffer_deepcopy(PyObject *self, PyObject *memo) {
    (void)memo;
    return Buffer_copy(self, NULL);
}
static PyObject *nmpy__refuse_pickle(PyObject *self, PyObject *arg) {
    PyObject *tn = PyObject_GetAttrString((PyObject *)Py_TYPE(self), "__name__");
    (void)arg;
    PyErr_Format(PyExc_TypeError, "cannot pickle a nativemem %S: it owns native memory", tn ? tn : Py_None);
    Py_XDECREF(tn);
    return NULL;
}

static PyObject *Buffer_get_address(PyObject *self, void *c) {
    NmBuffer *b = (NmBuffer *)self;
    (void)c;
    if (b->ptr == NULL) return nmpy__freed(b);
    return PyLong_FromSize_t((size_t)b->addr);
}
static PyObject *Buffer_get_size(PyObject *self, void *c) {
    (void)c;
    return PyLong_FromSsize_t(((NmBuffer *)self)->size);
}
static PyObject *Buffer_get_freed(PyObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(((NmBuffer *)self)->ptr == NULL);
}
static PyObject *Buffer_get_exports(PyObject *self, void *c) {
    (void)c;
    return PyLong_FromSsize_t(((NmBuffer *)self)->exports);
}
static PyObject *Buffer_get_allocator(PyObject *self, void *c) {
    (void)c;
    return Py_NewRef((PyObject *)((NmBuffer *)self)->alloc);
}
static PyObject *Buffer_get_last_address(PyObject *self, void *c) {
    (void)c;
    return PyLong_FromSize_t((size_t)((NmBuffer *)self)->addr);
}
static PyObject *Buffer_get_array_interface(PyObject *self, void *c) {
    /* 'data' is a memoryview of the Buffer: an array made from it holds an export */
    NmBuffer *b = (NmBuffer *)self;
    PyObject *mv;
    (void)c;
    if (b->ptr == NULL) return nmpy__freed(b);
    mv = PyMemoryView_FromObject(self);
    if (mv == NULL) return NULL;
    return Py_BuildValue("{s:(n),s:s,s:i,s:N}", "shape", b->size, "typestr", "|u1", "version", 3, "data", mv);
}

static Py_ssize_t Buffer_len(PyObject *self) { return ((NmBuffer *)self)->size; }

static PyObject *Buffer_repr(PyObject *self) {
    NmBuffer *b = (NmBuffer *)self;
    if (b->ptr == NULL)
        return PyUnicode_FromFormat("<nativemem.Buffer %zd bytes freed from %R>", b->size, b->alloc->name);
    return PyUnicode_FromFormat("<nativemem.Buffer %zd bytes at %p from %R>", b->size, (void *)b->addr,
                                b->alloc->name);
}

static PyMethodDef Buffer_methods[] = {
    {"free", Buffer_free, METH_NOARGS,
     "Free the block now.  DoubleFreeError if already freed, BufferInUseError while a memoryview, array or "
     "ctypes object made from it is alive, and the debug allocator's corruption errors if it finds any."},
    {"view", Buffer_view, METH_NOARGS, "A writable, zero-copy memoryview of the block (format 'B')."},
    {"read", (PyCFunction)(void (*)(void))Buffer_read, METH_FASTCALL,
     "read(offset=0, size=None) -> bytes: copy bytes out of the block (bounds-checked)."},
    {"write", (PyCFunction)(void (*)(void))Buffer_write, METH_FASTCALL,
     "write(data, offset=0) -> int: copy a bytes-like object into the block (bounds-checked)."},
    {"__bytes__", Buffer_bytes, METH_NOARGS, "The block's bytes."},
    {"__enter__", Buffer_enter, METH_NOARGS, NULL},
    {"__exit__", Buffer_exit, METH_VARARGS, NULL},
    {"__copy__", Buffer_copy, METH_NOARGS, "A new block from the same allocator with the same bytes."},
    {"__deepcopy__", Buffer_deepcopy, METH_O, "A new block from the same allocator with the same bytes."},
    {"__reduce_ex__", nmpy__refuse_pickle, METH_O, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Buffer_getset[] = {
    {"address", Buffer_get_address, NULL, "The block's address (UseAfterFreeError once freed).", NULL},
    {"size", Buffer_get_size, NULL, "Size in bytes.", NULL},
    {"freed", Buffer_get_freed, NULL, "True once the block was freed.", NULL},
    {"exports", Buffer_get_exports, NULL, "Live exports (memoryviews, arrays, ctypes objects).", NULL},
    {"allocator", Buffer_get_allocator, NULL, "The Allocator that made the block.", NULL},
    {"_last_address", Buffer_get_last_address, NULL, NULL, NULL},
    {"__array_interface__", Buffer_get_array_interface, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMemberDef Buffer_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(NmBuffer, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyType_Slot Buffer_slots[] = {
    {Py_tp_doc, "Buffer: a block of native memory owned by an Allocator.\n\n"
                "``address`` hands the memory to C; ``memoryview(buf)``, ``numpy.frombuffer(buf)``, "
                "``ctypes.c_char.from_buffer(buf)`` share it without copying, and each keeps the Buffer "
                "alive and blocks free() while it lives.  Free it with free(), a with block, or let it "
                "go.  After free() every access raises UseAfterFreeError."},
    {Py_bf_getbuffer, Buffer_getbuffer},
    {Py_bf_releasebuffer, Buffer_releasebuffer},
    {Py_tp_traverse, Buffer_traverse},
    {Py_tp_dealloc, Buffer_dealloc},
    {Py_tp_methods, Buffer_methods},
    {Py_tp_getset, Buffer_getset},
    {Py_tp_members, Buffer_members},
    {Py_tp_repr, Buffer_repr},
    {Py_sq_length, Buffer_len},
    {0, NULL}};
static PyType_Spec Buffer_spec = {"nativemem.Buffer", sizeof(NmBuffer), 0,
                                  Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
                                  Buffer_slots};

/* ---- Allocator ------------------------------------------------------------------------------ */
#define NMPY_LIVE(a)                                                            \
    do {                                                                        \
        if (NM_UNLIKELY_PY((a)->table == NULL || (a)->closed)) return nmpy__closed(a); \
    } while (0)
#if defined(__GNUC__)
#define NM_UNLIKELY_PY(x) __builtin_expect(!!(x), 0)
#else
#define NM_UNLIKELY_PY(x) (x)
#endif

static const char *nmpy__site_for(NmAllocator *a, int *failed) {
    *failed = 0;
    return a->sites ? nmpy_site(a->depth, failed) : NULL;
}

/* One allocation from Python.  What may run Python code (a collection, finalizers, another
 * thread: allocating the Buffer object, taking the site) comes first; then the state check and
 * the C call, with nothing between them that can run Python. */
static PyObject *nmpy__allocate(NmAllocator *a, int op, size_t x, size_t y, Py_ssize_t size) {
    NmBuffer *b = PyObject_GC_New(NmBuffer, nmpy.Buffer);
    const char *site = NULL;
    void *p;
    if (b == NULL) return NULL;
    b->alloc = NULL;
    b->ptr = NULL;
    b->addr = 0;
    b->size = size;
    b->exports = 0;
    b->alloc_site = NULL;
    b->free_site = NULL;
    b->weakreflist = NULL;
    if (a->sites) {
        int failed;
        site = nmpy_site(a->depth, &failed);
        if (failed) goto fail;
        b->alloc_site = site;
    }
    if (NM_UNLIKELY_PY(a->table == NULL || a->closed)) { nmpy__closed(a); goto fail; }
    switch (op) {
    case NMPY_MALLOC: p = a->sites ? nm_malloc_at(a->table, x, site, 0) : nm_malloc(a->table, x); break;
    case NMPY_CALLOC: p = nm_calloc_at(a->table, x, y, site, 0); break;
    default: p = nm_memalign_at(a->table, x, y, site, 0); break;
    }
    if (NM_UNLIKELY_PY(p == NULL)) {
        nmpy_raise_last("allocation failed", 0, size);
        goto fail;
    }
    Py_INCREF((PyObject *)a);
    b->alloc = a;
    b->ptr = (char *)p;
    b->addr = (uintptr_t)p;
    a->buffers++;
    PyObject_GC_Track((PyObject *)b);
    nmpy_trace((uintptr_t)p, (size_t)size);
    return (PyObject *)b;
fail:
    Py_DECREF((PyObject *)b);
    return NULL;
}

static PyObject *Allocator_malloc(PyObject *self, PyObject *arg) {
    NmAllocator *a = (NmAllocator *)self;
    Py_ssize_t n;
    if (PyLong_CheckExact(arg)) {
        n = PyLong_AsSsize_t(arg);
        if (n < 0) {
            PyErr_Clear();
            n = nmpy_size_arg(arg, "size");
            if (n < 0) return NULL;
        }
    } else if ((n = nmpy_size_arg(arg, "size")) < 0) {
        return NULL;
    }
    return nmpy__allocate(a, NMPY_MALLOC, (size_t)n, 0, n);
}

static PyObject *Allocator_calloc(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NmAllocator *a = (NmAllocator *)self;
    Py_ssize_t c, n;
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "calloc(count, size) takes 2 arguments (%zd given)", nargs);
    if ((c = nmpy_size_arg(args[0], "count")) < 0 || (n = nmpy_size_arg(args[1], "size")) < 0) return NULL;
    if (c != 0 && n > PY_SSIZE_T_MAX / c)
        return PyErr_Format(nmpy.SizeOverflowError, "calloc(%zd, %zd): element count times size overflows", c, n);
    return nmpy__allocate(a, NMPY_CALLOC, (size_t)c, (size_t)n, c * n);
}

static PyObject *Allocator_memalign(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NmAllocator *a = (NmAllocator *)self;
    Py_ssize_t al, n;
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "memalign(alignment, size) takes 2 arguments (%zd given)", nargs);
    if ((al = nmpy_size_arg(args[0], "alignment")) < 0 || (n = nmpy_size_arg(args[1], "size")) < 0) return NULL;
    if (al == 0 || (al & (al - 1)) || al % NMPY_PTR_ALIGN)
        return PyErr_Format(nmpy.InvalidAlignmentError,
                            "alignment %zd is not a power of two multiple of sizeof(void *) (%zd)", al,
                            NMPY_PTR_ALIGN);
    return nmpy__allocate(a, NMPY_MEMALIGN, (size_t)al, (size_t)n, n);
}

static int nmpy__owned_buffer(NmAllocator *a, PyObject *o, const char *op) {
    NmBuffer *b;
    if (!PyObject_TypeCheck(o, nmpy.Buffer)) {
        PyObject *tn = PyObject_GetAttrString((PyObject *)Py_TYPE(o), "__name__");
        PyErr_Format(nmpy.InvalidTypeError, "%s expects a Buffer, not %S", op, tn ? tn : Py_None);
        Py_XDECREF(tn);
        return 0;
    }
    b = (NmBuffer *)o;
    if (b->alloc != a) {
        PyErr_Format(nmpy.InvalidFreeError, "Buffer at %p belongs to allocator %R, not %R", (void *)b->addr,
                     b->alloc->name, a->name);
        return 0;
    }
    return 1;
}

static PyObject *Allocator_free(PyObject *self, PyObject *arg) {
    if (!nmpy__owned_buffer((NmAllocator *)self, arg, "free")) return NULL;
    return Buffer_free(arg, NULL);
}

static PyObject *Allocator_realloc(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NmAllocator *a = (NmAllocator *)self;
    NmBuffer *b;
    Py_ssize_t n;
    void *q;
    int failed;
    const char *site;
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "realloc(buffer, size) takes 2 arguments (%zd given)", nargs);
    if ((n = nmpy_size_arg(args[1], "size")) < 0) return NULL;
    if (!nmpy__owned_buffer(a, args[0], "realloc")) return NULL;
    b = (NmBuffer *)args[0];
    site = nmpy__site_for(a, &failed); /* may run Python code: every check comes after it */
    if (failed) return NULL;
    if (a->table == NULL || a->closed) return nmpy__closed(a);
    if (b->ptr == NULL)
        return PyErr_Format(nmpy.UseAfterFreeError, "realloc of Buffer at %p (%zd bytes), which was already freed",
                            (void *)b->addr, b->size);
    if (b->exports > 0) { /* it must not move: only a shrink within the block */
        if (n <= b->size) {
            b->size = n;
            return Py_NewRef(args[0]);
        }
        return PyErr_Format(nmpy.BufferInUseError,
                            "Buffer at %p has %zd live export(s); while they live it can only shrink (to at most "
                            "%zd bytes)",
                            (void *)b->addr, b->exports, b->size);
    }
    q = nm_realloc_at(a->table, b->ptr, (size_t)n, site, 0);
    if (q == NULL) return nmpy_raise_last("realloc failed", b->addr, n);
    nmpy_untrace(b->addr);
    b->ptr = (char *)q;
    b->addr = (uintptr_t)q;
    b->size = n;
    nmpy_trace(b->addr, (size_t)n);
    return Py_NewRef(args[0]);
}

/* _bind(table_address, name, owned, keepalive, backend, sites, depth): once, by the Python class. */
static PyObject *Allocator_bind(PyObject *self, PyObject *args) {
    NmAllocator *a = (NmAllocator *)self;
    unsigned long long addr;
    PyObject *name, *keep, *backend;
    int owned, sites, depth;
    if (!PyArg_ParseTuple(args, "KUpOUpi", &addr, &name, &owned, &keep, &backend, &sites, &depth)) return NULL;
    if (a->table != NULL || a->closed) return nmpy_raisef(nmpy.InvalidArgumentError, "allocator is already bound");
    if (addr == 0) return nmpy_raisef(nmpy.InvalidArgumentError, "NULL allocator table");
    if (depth < 1) return nmpy_raisef(nmpy.InvalidArgumentError, "traceback depth must be at least 1");
    a->table = (nm_allocator_t *)(uintptr_t)addr;
    NMPY_XSETREF(a->name, Py_NewRef(name));
    NMPY_XSETREF(a->backend, Py_NewRef(backend));
    NMPY_XSETREF(a->keepalive, Py_NewRef(keep));
    a->owned = owned;
    a->sites = sites;
    a->depth = depth;
    nmpy_alloc_use(keep); /* a debug allocator or arena drawing from another allocator */
    Py_RETURN_NONE;
}

static void nmpy__destroy_table(NmAllocator *a) {
    nm_allocator_t *t = a->table;
    if (t == NULL) return;
    a->table = NULL;
    if (t && a->owned) nm_allocator_destroy(t); /* deferred by the C core while blocks live */
}

static PyObject *Allocator_close(PyObject *self, PyObject *unused) {
    NmAllocator *a = (NmAllocator *)self;
    (void)unused;
    if (a->closed) Py_RETURN_NONE;
    a->closed = 1;
    /* Buffers still alive free through the table, and C-level users may still allocate from it:
     * it goes with the last of them */
    nmpy__maybe_destroy(a);
    Py_RETURN_NONE;
}

static PyObject *Allocator_enter(PyObject *self, PyObject *unused) {
    NmAllocator *a = (NmAllocator *)self;
    (void)unused;
    NMPY_LIVE(a);
    return Py_NewRef(self);
}
static PyObject *Allocator_exit(PyObject *self, PyObject *args) {
    (void)args;
    return Allocator_close(self, NULL);
}

static PyObject *Allocator_refuse_copy(PyObject *self, PyObject *arg) {
    PyObject *tn = PyObject_GetAttrString((PyObject *)Py_TYPE(self), "__name__");
    (void)arg;
    PyErr_Format(PyExc_TypeError,
                 "a nativemem %S cannot be copied: it owns a C allocator (make a new one, or share this one)",
                 tn ? tn : Py_None);
    Py_XDECREF(tn);
    return NULL;
}

static PyObject *Allocator_get_table(PyObject *self, void *c) {
    NmAllocator *a = (NmAllocator *)self;
    (void)c;
    NMPY_LIVE(a);
    return PyLong_FromSize_t((size_t)(uintptr_t)a->table);
}
static PyObject *Allocator_get_name(PyObject *self, void *c) {
    NmAllocator *a = (NmAllocator *)self;
    (void)c;
    return Py_NewRef(a->name ? a->name : Py_None);
}
static PyObject *Allocator_get_backend(PyObject *self, void *c) {
    NmAllocator *a = (NmAllocator *)self;
    (void)c;
    return Py_NewRef(a->backend ? a->backend : Py_None);
}
static PyObject *Allocator_get_closed(PyObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(((NmAllocator *)self)->closed);
}
static PyObject *Allocator_get_buffers(PyObject *self, void *c) {
    (void)c;
    return PyLong_FromSsize_t(((NmAllocator *)self)->buffers);
}
static PyObject *Allocator_get_keepalive(PyObject *self, void *c) {
    NmAllocator *a = (NmAllocator *)self;
    (void)c;
    return Py_NewRef(a->keepalive ? a->keepalive : Py_None);
}
static PyObject *Allocator_get_depth(PyObject *self, void *c) {
    (void)c;
    return PyLong_FromLong(((NmAllocator *)self)->depth);
}

static PyObject *Allocator_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    NmAllocator *a = (NmAllocator *)alloc(type, 0);
    (void)args; (void)kw;
    if (a == NULL) return NULL;
    a->depth = 1;
    return (PyObject *)a;
}

static int Allocator_traverse(PyObject *self, visitproc visit, void *arg) {
    NmAllocator *a = (NmAllocator *)self;
    Py_VISIT(a->keepalive);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void Allocator_dealloc(PyObject *self) {
    NmAllocator *a = (NmAllocator *)self;
    PyTypeObject *tp = Py_TYPE(self);
    freefunc tfree = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    PyObject_GC_UnTrack(self);
    if (a->weakreflist) PyObject_ClearWeakRefs(self);
    /* Nothing can reach us any more, so no Buffer is left (each held a reference). */
    nmpy__destroy_table(a);
    if (a->keepalive) { /* our table drew from it: now it may go */
        PyObject *k = a->keepalive;
        a->keepalive = NULL;
        nmpy_alloc_unuse(k);
        Py_DECREF(k);
    }
    Py_CLEAR(a->name);
    Py_CLEAR(a->backend);
    tfree(self);
    Py_DECREF(tp);
}

static PyMethodDef Allocator_methods[] = {
    {"malloc", Allocator_malloc, METH_O, "malloc(size) -> Buffer: ``size`` uninitialised bytes."},
    {"calloc", (PyCFunction)(void (*)(void))Allocator_calloc, METH_FASTCALL,
     "calloc(count, size) -> Buffer: ``count * size`` zeroed bytes (the product is overflow-checked)."},
    {"memalign", (PyCFunction)(void (*)(void))Allocator_memalign, METH_FASTCALL,
     "memalign(alignment, size) -> Buffer: aligned to ``alignment`` (a power of two multiple of the "
     "pointer size)."},
    {"realloc", (PyCFunction)(void (*)(void))Allocator_realloc, METH_FASTCALL,
     "realloc(buffer, size) -> buffer: resize in place or move (contents kept up to the smaller size); "
     "while exports of it are alive it may only shrink.  On failure the buffer is unchanged."},
    {"free", Allocator_free, METH_O, "free(buffer): same as buffer.free()."},
    {"close", Allocator_close, METH_NOARGS,
     "No new blocks from now on (ClosedError); the C table is destroyed once its last Buffer is freed."},
    {"_bind", Allocator_bind, METH_VARARGS, NULL},
    {"__enter__", Allocator_enter, METH_NOARGS, NULL},
    {"__exit__", Allocator_exit, METH_VARARGS, NULL},
    {"__copy__", Allocator_refuse_copy, METH_NOARGS, NULL},
    {"__deepcopy__", Allocator_refuse_copy, METH_O, NULL},
    {"__reduce_ex__", Allocator_refuse_copy, METH_O, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Allocator_getset[] = {
    {"_table_address", Allocator_get_table, NULL, "Address of the nm_allocator_t (ClosedError once closed).",
     NULL},
    {"name", Allocator_get_name, NULL, "The table's name.", NULL},
    {"backend", Allocator_get_backend, NULL, "The backend the blocks come from.", NULL},
    {"closed", Allocator_get_closed, NULL, "True after close().", NULL},
    {"live_buffers", Allocator_get_buffers, NULL, "Buffers made here and not yet freed.", NULL},
    {"_keepalive", Allocator_get_keepalive, NULL, NULL, NULL},
    {"traceback_depth", Allocator_get_depth, NULL, "Python frames recorded per allocation site.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMemberDef Allocator_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(NmAllocator, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyType_Slot Allocator_slots[] = {
    {Py_tp_doc, "The C half of nativemem.Allocator."},
    {Py_tp_new, Allocator_new},
    {Py_tp_traverse, Allocator_traverse},
    {Py_tp_dealloc, Allocator_dealloc},
    {Py_tp_methods, Allocator_methods},
    {Py_tp_getset, Allocator_getset},
    {Py_tp_members, Allocator_members},
    {0, NULL}};
static PyType_Spec Allocator_spec = {"nativemem._core.Allocator", sizeof(NmAllocator), 0,
                                     Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE, Allocator_slots};

int nmpy_alloc_types(PyObject *m) {
    nmpy.Allocator = (PyTypeObject *)PyType_FromSpec(&Allocator_spec);
    if (nmpy.Allocator == NULL) return -1;
    nmpy.Buffer = (PyTypeObject *)PyType_FromSpec(&Buffer_spec);
    if (nmpy.Buffer == NULL) return -1;
    if (PyModule_AddObject(m, "Allocator", Py_NewRef((PyObject *)nmpy.Allocator)) < 0) return -1;
    if (PyModule_AddObject(m, "Buffer", Py_NewRef((PyObject *)nmpy.Buffer)) < 0) return -1;
    return 0;
}
