/* strtab.c (Python layer) -- StringTable and Interned as C types.  An Interned holds one
 * reference on its entry and a strong reference on its table: the C table is destroyed in
 * the table's deallocation (or by close() once its last Interned is released), never under a
 * live handle, whatever order a garbage-collected cycle is torn down in. */
#include "nmpy.h"

#include <stdio.h>
#include <string.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    nm_strtab_t *t;
    PyObject *allocator;  /* the Allocator the entries come from, or None */
    Py_ssize_t live;      /* Interned handles not yet released            */
    int closed;
    PyObject *weakreflist;
} NmStrtab;

typedef struct {
    PyObject_HEAD
    NmStrtab *table;      /* strong */
    const char *s;        /* NULL once released */
    uintptr_t addr;
    Py_ssize_t len;
    PyObject *weakreflist;
} NmInterned;

static void nmpy__strtab_destroy(NmStrtab *t) {
    nm_strtab_t *c = t->t;
    t->t = NULL;
    if (c) {
        nm_strtab_destroy(c);
        nmpy_alloc_unuse(t->allocator);
    }
}

static PyObject *nmpy__strtab_closed(void) {
    return PyErr_Format(nmpy.ClosedError, "string table is closed");
}

/* A handle not yet holding a reference (allocated before the C call: allocating may run Python). */
static NmInterned *nmpy__interned_alloc(void) {
    NmInterned *o = PyObject_GC_New(NmInterned, nmpy.Interned);
    if (o == NULL) return NULL;
    o->table = NULL;
    o->s = NULL;
    o->addr = 0;
    o->len = 0;
    o->weakreflist = NULL;
    return o;
}

static PyObject *nmpy__interned_fill(NmInterned *o, NmStrtab *t, const char *s, Py_ssize_t len) {
    Py_INCREF((PyObject *)t);
    o->table = t;
    o->s = s;
    o->addr = (uintptr_t)s;
    o->len = len;
    t->live++;
    PyObject_GC_Track((PyObject *)o);
    return (PyObject *)o;
}

/* Give back one reference (the handle is marked released first). */
static int nmpy__interned_release(NmInterned *o) {
    NmStrtab *t = o->table;
    const char *s = o->s;
    int rc;
    o->s = NULL;
    rc = nm_strtab_release(t->t, s);
    t->live--;
    if (t->closed && t->live == 0) nmpy__strtab_destroy(t);
    return rc;
}

/* ---- StringTable ---------------------------------------------------------------------------- */
static PyObject *Strtab_intern(PyObject *self, PyObject *arg) {
    NmStrtab *t = (NmStrtab *)self;
    const char *data, *s;
    Py_ssize_t len;
    Py_buffer view;
    int have_view = 0;
    PyObject *res;
    if (PyUnicode_Check(arg)) {
        data = PyUnicode_AsUTF8AndSize(arg, &len);
        if (data == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                PyErr_Clear();
                return PyErr_Format(nmpy.InvalidArgumentError,
                                    "cannot intern a str that is not valid Unicode text (lone surrogate)");
            }
            return NULL;
        }
    } else if (PyBytes_Check(arg)) {
        char *d;
        if (PyBytes_AsStringAndSize(arg, &d, &len) < 0) return NULL;
        data = d;
    } else if (PyObject_CheckBuffer(arg)) {
        if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
            if (PyErr_ExceptionMatches(PyExc_BufferError) || PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                return PyErr_Format(nmpy.InvalidTypeError, "intern needs str, bytes or contiguous bytes-like data");
            }
            return NULL;
        }
        have_view = 1;
        data = (const char *)view.buf;
        len = view.len;
    } else {
        PyObject *tn = PyObject_GetAttrString((PyObject *)Py_TYPE(arg), "__name__");
        PyErr_Format(nmpy.InvalidTypeError, "intern expects str or bytes, not %S", tn ? tn : Py_None);
        Py_XDECREF(tn);
        return NULL;
    }
    {
        NmInterned *o = nmpy__interned_alloc();
        if (o == NULL) {
            if (have_view) PyBuffer_Release(&view);
            return NULL;
        }
        if (t->t == NULL || t->closed) {
            if (have_view) PyBuffer_Release(&view);
            Py_DECREF((PyObject *)o);
            return nmpy__strtab_closed();
        }
        s = nm_strtab_intern(t->t, data, (size_t)len);
        if (have_view) PyBuffer_Release(&view);
        if (s == NULL) {
            Py_DECREF((PyObject *)o);
            return nmpy_raise_last("intern failed", 0, len);
        }
        res = nmpy__interned_fill(o, t, s, len);
    }
    return res;
}

static int nmpy__key(PyObject *arg, const char **data, Py_ssize_t *len, PyObject **keep) {
    *keep = NULL;
    if (PyUnicode_Check(arg)) {
        *data = PyUnicode_AsUTF8AndSize(arg, len);
        if (*data == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                PyErr_Clear();
                PyErr_Format(nmpy.InvalidArgumentError, "not valid Unicode text (lone surrogate)");
            }
            return 0;
        }
        return 1;
    }
    if (PyBytes_Check(arg)) {
        char *d;
        if (PyBytes_AsStringAndSize(arg, &d, len) < 0) return 0;
        *data = d;
        return 1;
    }
    if (PyObject_CheckBuffer(arg)) {
        *keep = PyBytes_FromObject(arg);
        if (*keep == NULL) return 0;
        *data = PyBytes_AsString(*keep);
        *len = PyBytes_Size(*keep);
        return 1;
    }
    PyErr_Format(nmpy.InvalidTypeError, "expected str or bytes");
    return 0;
}

static PyObject *Strtab_refcount(PyObject *self, PyObject *arg) {
    NmStrtab *t = (NmStrtab *)self;
    const char *data;
    Py_ssize_t len;
    PyObject *keep;
    intptr_t r;
    if (!nmpy__key(arg, &data, &len, &keep)) return NULL;
    if (t->t == NULL || t->closed) { Py_XDECREF(keep); return nmpy__strtab_closed(); }
    r = nm_strtab_lookup_refs(t->t, data, (size_t)len);
    Py_XDECREF(keep);
    return PyLong_FromSsize_t((Py_ssize_t)r);
}

static int Strtab_contains(PyObject *self, PyObject *arg) {
    PyObject *r = Strtab_refcount(self, arg);
    long v;
    if (r == NULL) return -1;
    v = PyLong_AsLong(r);
    Py_DECREF(r);
    return v > 0;
}

static Py_ssize_t Strtab_len(PyObject *self) {
    NmStrtab *t = (NmStrtab *)self;
    if (t->t == NULL || t->closed) { nmpy__strtab_closed(); return -1; }
    return (Py_ssize_t)nm_strtab_count(t->t);
}

static PyObject *Strtab_bind(PyObject *self, PyObject *args) {
    NmStrtab *t = (NmStrtab *)self;
    unsigned long long addr;
    PyObject *alloc;
    if (!PyArg_ParseTuple(args, "KO", &addr, &alloc)) return NULL;
    if (t->t || t->closed) return nmpy_raisef(nmpy.InvalidArgumentError, "string table is already bound");
    t->t = (nm_strtab_t *)(uintptr_t)addr;
    NMPY_XSETREF(t->allocator, Py_NewRef(alloc));
    nmpy_alloc_use(alloc);
    Py_RETURN_NONE;
}

static PyObject *Strtab_close(PyObject *self, PyObject *unused) {
    NmStrtab *t = (NmStrtab *)self;
    (void)unused;
    if (t->closed) Py_RETURN_NONE;
    t->closed = 1;
    if (t->live == 0) nmpy__strtab_destroy(t);
    Py_RETURN_NONE;
}

static PyObject *Strtab_enter(PyObject *self, PyObject *unused) {
    (void)unused;
    if (((NmStrtab *)self)->closed) return nmpy__strtab_closed();
    return Py_NewRef(self);
}
static PyObject *Strtab_exit(PyObject *self, PyObject *args) {
    (void)args;
    return Strtab_close(self, NULL);
}

static PyObject *Strtab_refuse_copy(PyObject *self, PyObject *arg) {
    (void)self; (void)arg;
    PyErr_SetString(PyExc_TypeError, "a nativemem StringTable cannot be copied or pickled: it owns native memory");
    return NULL;
}

static PyObject *Strtab_get_address(PyObject *self, void *c) {
    NmStrtab *t = (NmStrtab *)self;
    (void)c;
    if (t->t == NULL || t->closed) return nmpy__strtab_closed();
    return PyLong_FromSize_t((size_t)(uintptr_t)t->t);
}
static PyObject *Strtab_get_closed(PyObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(((NmStrtab *)self)->closed);
}
static PyObject *Strtab_get_allocator(PyObject *self, void *c) {
    NmStrtab *t = (NmStrtab *)self;
    (void)c;
    return Py_NewRef(t->allocator ? t->allocator : Py_None);
}
static PyObject *Strtab_get_live(PyObject *self, void *c) {
    (void)c;
    return PyLong_FromSsize_t(((NmStrtab *)self)->live);
}

static PyObject *Strtab_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    (void)args; (void)kw;
    return alloc(type, 0);
}

static int Strtab_traverse(PyObject *self, visitproc visit, void *arg) {
    Py_VISIT(((NmStrtab *)self)->allocator);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void Strtab_dealloc(PyObject *self) {
    NmStrtab *t = (NmStrtab *)self;
    PyTypeObject *tp = Py_TYPE(self);
    freefunc tfree = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    PyObject_GC_UnTrack(self);
    if (t->weakreflist) PyObject_ClearWeakRefs(self);
    nmpy__strtab_destroy(t); /* no Interned is left: each held a reference */
    Py_CLEAR(t->allocator);
    tfree(self);
    Py_DECREF(tp);
}

static PyMethodDef Strtab_methods[] = {
    {"intern", Strtab_intern, METH_O,
     "intern(s) -> Interned: one reference on the one native copy of s (str as UTF-8, or bytes)."},
    {"refcount", Strtab_refcount, METH_O, "refcount(s) -> int: references held on s (0: not interned)."},
    {"close", Strtab_close, METH_NOARGS,
     "No new entries (ClosedError); the C table goes once its last Interned is released."},
    {"_bind", Strtab_bind, METH_VARARGS, NULL},
    {"__enter__", Strtab_enter, METH_NOARGS, NULL},
    {"__exit__", Strtab_exit, METH_VARARGS, NULL},
    {"__copy__", Strtab_refuse_copy, METH_NOARGS, NULL},
    {"__deepcopy__", Strtab_refuse_copy, METH_O, NULL},
    {"__reduce_ex__", Strtab_refuse_copy, METH_O, NULL},
    {NULL, NULL, 0, NULL}};
static PyGetSetDef Strtab_getset[] = {
    {"_table_address", Strtab_get_address, NULL, NULL, NULL},
    {"closed", Strtab_get_closed, NULL, "True after close().", NULL},
    {"allocator", Strtab_get_allocator, NULL, "The Allocator the entries come from (None: libc).", NULL},
    {"live_handles", Strtab_get_live, NULL, "Interned handles not yet released.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};
static PyMemberDef Strtab_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(NmStrtab, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};
static PyType_Slot Strtab_slots[] = {
    {Py_tp_doc, "The C half of nativemem.StringTable."},
    {Py_tp_new, Strtab_new},
    {Py_tp_traverse, Strtab_traverse},
    {Py_tp_dealloc, Strtab_dealloc},
    {Py_tp_methods, Strtab_methods},
    {Py_tp_getset, Strtab_getset},
    {Py_tp_members, Strtab_members},
    {Py_sq_contains, Strtab_contains},
    {Py_sq_length, Strtab_len},
    {0, NULL}};
static PyType_Spec Strtab_spec = {"nativemem._core.StringTable", sizeof(NmStrtab), 0,
                                  Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE, Strtab_slots};

/* ---- Interned ----------------------------------------------------------------------------------- */
static PyObject *nmpy__released(void) {
    return PyErr_Format(nmpy.UseAfterFreeError, "interned string was already released");
}

static PyObject *Interned_release(PyObject *self, PyObject *unused) {
    NmInterned *o = (NmInterned *)self;
    int rc;
    (void)unused;
    if (o->s == NULL) return PyErr_Format(nmpy.RefcountError, "interned string released twice");
    rc = nmpy__interned_release(o);
    if (rc) return nmpy_raise(rc, NULL, o->addr, o->len);
    Py_RETURN_NONE;
}

static PyObject *Interned_bytes(PyObject *self, PyObject *unused) {
    NmInterned *o = (NmInterned *)self;
    (void)unused;
    if (o->s == NULL) return nmpy__released();
    return PyBytes_FromStringAndSize(o->s, o->len);
}

static PyObject *Interned_str(PyObject *self) {
    NmInterned *o = (NmInterned *)self;
    if (o->s == NULL) return nmpy__released();
    return PyUnicode_DecodeUTF8(o->s, o->len, "surrogateescape");
}

static Py_ssize_t Interned_len(PyObject *self) { return ((NmInterned *)self)->len; }

static PyObject *Interned_richcompare(PyObject *a, PyObject *b, int op) {
    int eq;
    if (!PyObject_TypeCheck(b, nmpy.Interned) || (op != Py_EQ && op != Py_NE)) Py_RETURN_NOTIMPLEMENTED;
    eq = ((NmInterned *)a)->s != NULL && ((NmInterned *)a)->s == ((NmInterned *)b)->s;
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

static Py_hash_t Interned_hash(PyObject *self) {
    NmInterned *o = (NmInterned *)self;
    Py_hash_t h;
    if (o->s == NULL) { nmpy__released(); return -1; }
    h = (Py_hash_t)(o->addr >> 4);
    return h == -1 ? -2 : h;
}

static PyObject *Interned_get_address(PyObject *self, void *c) {
    NmInterned *o = (NmInterned *)self;
    (void)c;
    if (o->s == NULL) return nmpy__released();
    return PyLong_FromSize_t((size_t)o->addr);
}
static PyObject *Interned_get_refcount(PyObject *self, void *c) {
    NmInterned *o = (NmInterned *)self;
    (void)c;
    if (o->s == NULL) return nmpy__released();
    return PyLong_FromSsize_t((Py_ssize_t)nm_strtab_refs(o->s));
}
static PyObject *Interned_get_released(PyObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(((NmInterned *)self)->s == NULL);
}
static PyObject *Interned_get_table(PyObject *self, void *c) {
    (void)c;
    return Py_NewRef((PyObject *)((NmInterned *)self)->table);
}

static PyObject *Interned_enter(PyObject *self, PyObject *unused) {
    (void)unused;
    if (((NmInterned *)self)->s == NULL) return nmpy__released();
    return Py_NewRef(self);
}
static PyObject *Interned_exit(PyObject *self, PyObject *args) {
    (void)args;
    if (((NmInterned *)self)->s == NULL) Py_RETURN_NONE;
    return Interned_release(self, NULL);
}

/* copy.copy / deepcopy: another handle with its own reference (a real copy). */
static PyObject *Interned_copy(PyObject *self, PyObject *unused) {
    NmInterned *o = (NmInterned *)self, *c = nmpy__interned_alloc();
    (void)unused;
    if (c == NULL) return NULL;
    if (o->s == NULL) { Py_DECREF((PyObject *)c); return nmpy__released(); }
    nm_strtab_retain(o->table->t, o->s);
    return nmpy__interned_fill(c, o->table, o->s, o->len);
}
static PyObject *Interned_deepcopy(PyObject *self, PyObject *memo) {
    (void)memo;
    return Interned_copy(self, NULL);
}
static PyObject *Interned_refuse_pickle(PyObject *self, PyObject *arg) {
    (void)self; (void)arg;
    PyErr_SetString(PyExc_TypeError, "cannot pickle an Interned handle; pickle str(handle)");
    return NULL;
}

static PyObject *Interned_repr(PyObject *self) {
    NmInterned *o = (NmInterned *)self;
    PyObject *b, *r;
    if (o->s == NULL) return PyUnicode_FromString("<nativemem.Interned (released)>");
    b = PyBytes_FromStringAndSize(o->s, o->len > 40 ? 40 : o->len);
    if (b == NULL) return NULL;
    r = PyUnicode_FromFormat("<nativemem.Interned %R refs=%zd>", b, (Py_ssize_t)nm_strtab_refs(o->s));
    Py_DECREF(b);
    return r;
}

static int Interned_traverse(PyObject *self, visitproc visit, void *arg) {
    Py_VISIT(((NmInterned *)self)->table);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void Interned_dealloc(PyObject *self) {
    NmInterned *o = (NmInterned *)self;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (o->weakreflist) PyObject_ClearWeakRefs(self);
    if (o->s) {
        int rc = nmpy__interned_release(o);
        if (rc) {
            char msg[600];
            snprintf(msg, sizeof msg, "%s (releasing a forgotten Interned)", nm_last_error_message());
            nm_clear_error();
            nmpy_report(rc, msg);
        }
    }
    Py_CLEAR(o->table);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyMethodDef Interned_methods[] = {
    {"retain", Interned_copy, METH_NOARGS, "Another handle holding its own reference (as copy.copy)."},
    {"release", Interned_release, METH_NOARGS, "Give the reference back (RefcountError if released twice)."},
    {"__bytes__", Interned_bytes, METH_NOARGS, NULL},
    {"__enter__", Interned_enter, METH_NOARGS, NULL},
    {"__exit__", Interned_exit, METH_VARARGS, NULL},
    {"__copy__", Interned_copy, METH_NOARGS, "Another handle with its own reference."},
    {"__deepcopy__", Interned_deepcopy, METH_O, "Another handle with its own reference."},
    {"__reduce_ex__", Interned_refuse_pickle, METH_O, NULL},
    {NULL, NULL, 0, NULL}};
static PyGetSetDef Interned_getset[] = {
    {"address", Interned_get_address, NULL, "The interned copy's address (equal strings: equal addresses).", NULL},
    {"refcount", Interned_get_refcount, NULL, "References held on the entry.", NULL},
    {"released", Interned_get_released, NULL, "True once released.", NULL},
    {"table", Interned_get_table, NULL, "The StringTable.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};
static PyMemberDef Interned_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(NmInterned, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};
static PyType_Slot Interned_slots[] = {
    {Py_tp_doc, "Interned: one reference on an interned string.  release() (or a with block) gives it back; "
                "a forgotten handle gives it back when collected."},
    {Py_tp_traverse, Interned_traverse},
    {Py_tp_dealloc, Interned_dealloc},
    {Py_tp_methods, Interned_methods},
    {Py_tp_getset, Interned_getset},
    {Py_tp_members, Interned_members},
    {Py_tp_richcompare, Interned_richcompare},
    {Py_tp_hash, Interned_hash},
    {Py_tp_str, Interned_str},
    {Py_tp_repr, Interned_repr},
    {Py_sq_length, Interned_len},
    {0, NULL}};
static PyType_Spec Interned_spec = {"nativemem.Interned", sizeof(NmInterned), 0,
                                    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
                                    Interned_slots};

int nmpy_strtab_types(PyObject *m) {
    nmpy.StringTable = (PyTypeObject *)PyType_FromSpec(&Strtab_spec);
    nmpy.Interned = (PyTypeObject *)PyType_FromSpec(&Interned_spec);
    if (nmpy.StringTable == NULL || nmpy.Interned == NULL) return -1;
    if (PyModule_AddObject(m, "StringTable", Py_NewRef((PyObject *)nmpy.StringTable)) < 0) return -1;
    return PyModule_AddObject(m, "Interned", Py_NewRef((PyObject *)nmpy.Interned));
}
