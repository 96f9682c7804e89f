/* module.c -- the Python layer's module (nativemem._core): registration, configuration, errors,
 * argument parsing, corruption reports, tracemalloc, and View (a counted export of memory that
 * another object owns). */
#include "nmpy.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <structmember.h>

nmpy_state_t nmpy;
static PyObject *nmpy__as_address; /* nativemem._ffi.as_address (cffi pointers and the like) */

/* ---- errors ------------------------------------------------------------------------------- */
PyObject *nmpy_raise(int code, const char *message, uintptr_t address, Py_ssize_t size) {
    PyObject *msg = NULL, *args = NULL, *kw = NULL, *exc = NULL;
    if (message == NULL) message = nm_last_error() ? nm_last_error_message() : nm_strerror(code);
    msg = PyUnicode_DecodeUTF8(message, (Py_ssize_t)strlen(message), "replace");
    nm_clear_error();
    if (msg == NULL) return NULL;
    if (nmpy.make_error == NULL) { /* not configured: a plain error still says what happened */
        PyErr_SetObject(PyExc_RuntimeError, msg);
        Py_DECREF(msg);
        return NULL;
    }
    args = Py_BuildValue("(iO)", code, msg);
    kw = PyDict_New();
    if (args == NULL || kw == NULL) goto done;
    if (address) {
        PyObject *a = PyLong_FromSize_t((size_t)address);
        if (a == NULL || PyDict_SetItemString(kw, "address", a) < 0) { Py_XDECREF(a); goto done; }
        Py_DECREF(a);
    }
    if (size >= 0) {
        PyObject *s = PyLong_FromSsize_t(size);
        if (s == NULL || PyDict_SetItemString(kw, "size", s) < 0) { Py_XDECREF(s); goto done; }
        Py_DECREF(s);
    }
    exc = PyObject_Call(nmpy.make_error, args, kw);
    if (exc != NULL) PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
done:
    Py_XDECREF(msg);
    Py_XDECREF(args);
    Py_XDECREF(kw);
    Py_XDECREF(exc);
    return NULL;
}

PyObject *nmpy_raise_last(const char *fallback, uintptr_t address, Py_ssize_t size) {
    int code = nm_last_error();
    if (code == NM_OK) return nmpy_raise(NM_ERR_NOMEM, fallback, address, size);
    return nmpy_raise(code, NULL, address, size);
}

PyObject *nmpy_raisef(PyObject *cls, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    PyErr_SetString(cls ? cls : PyExc_RuntimeError, buf);
    return NULL;
}

/* ---- arguments ----------------------------------------------------------------------------- */
static PyObject *nmpy__typename(PyObject *o) {
    return PyObject_GetAttrString((PyObject *)Py_TYPE(o), "__name__");
}

Py_ssize_t nmpy_size_arg(PyObject *o, const char *what) {
    Py_ssize_t n;
    PyObject *idx;
    if (PyLong_CheckExact(o)) {
        n = PyLong_AsSsize_t(o);
        if (n >= 0) return n;
        if (n == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            if (PyObject_RichCompareBool(o, Py_False, Py_LT) == 1) goto negative;
            PyErr_Format(nmpy.SizeOverflowError, "%s %R exceeds the largest allocation (%zd bytes)", what, o,
                         PY_SSIZE_T_MAX);
            return -1;
        }
        goto negative;
    }
    if (PyBool_Check(o)) {
        PyErr_Format(nmpy.InvalidTypeError, "%s must be an integer, not bool", what);
        return -1;
    }
    idx = PyNumber_Index(o);
    if (idx == NULL) {
        PyObject *tn;
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) return -1;
        PyErr_Clear();
        tn = nmpy__typename(o);
        PyErr_Format(nmpy.InvalidTypeError, "%s must be an integer, not %S", what, tn ? tn : Py_None);
        Py_XDECREF(tn);
        return -1;
    }
    n = nmpy_size_arg(idx, what);
    Py_DECREF(idx);
    return n;
negative:
    PyErr_Format(nmpy.InvalidSizeError, "%s must not be negative (got %R)", what, o);
    return -1;
}

int nmpy_address_arg(PyObject *o, const char *what, uintptr_t *out) {
    PyObject *conv = NULL;
    int rc = 0;
    if (!PyLong_CheckExact(o)) {
        if (PyBool_Check(o)) {
            PyErr_Format(nmpy.InvalidTypeError, "%s must be a cffi pointer or an int address, not bool", what);
            return 0;
        }
        if (nmpy__as_address == NULL) {
            PyErr_Format(nmpy.InvalidTypeError, "%s must be an int address", what);
            return 0;
        }
        conv = PyObject_CallFunction(nmpy__as_address, "Os", o, what);
        if (conv == NULL) return 0;
        o = conv;
    }
    {
        unsigned long long v = PyLong_AsUnsignedLongLong(o);
        if (v == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(nmpy.InvalidFreeError, "%s %R is not a valid address", what, o);
        } else if (v == 0 || v > (unsigned long long)UINTPTR_MAX) {
            PyErr_Format(nmpy.InvalidFreeError, "%s %R is not a valid address", what, o);
        } else {
            *out = (uintptr_t)v;
            rc = 1;
        }
    }
    Py_XDECREF(conv);
    return rc;
}

/* ---- corruption found where nothing can raise --------------------------------------------- */
void nmpy_report(int code, const char *message) {
    PyObject *et, *ev, *tb;
    char buf[1200];
    PyErr_Fetch(&et, &ev, &tb);
    snprintf(buf, sizeof buf, "nativemem: %s", message && *message ? message : nm_strerror(code));
    if (nmpy.warn_category == NULL || PyErr_WarnEx(nmpy.warn_category, buf, 1) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, buf);
        PyErr_WriteUnraisable(nmpy.module);
    }
    PyErr_Restore(et, ev, tb);
}

/* The C core's report hook: corruption found by a free that cannot return it (NumPy's handler,
 * a C caller's nm_free).  Any thread; takes the GIL to warn.  Unhooked at interpreter exit. */
static void nmpy__report_hook(const char *allocator_name, int code, const char *message) {
    char buf[1100];
    PyGILState_STATE g;
    if (!Py_IsInitialized()) {
        fprintf(stderr, "nativemem: %s\n", message ? message : "");
        return;
    }
    g = PyGILState_Ensure();
    snprintf(buf, sizeof buf, "%s (found by a free that could not raise, allocator '%s')", message ? message : "",
             allocator_name ? allocator_name : "?");
    nmpy_report(code, buf);
    PyGILState_Release(g);
}

static PyObject *core_hook_reports(PyObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    (void)self;
    if (on < 0) return NULL;
    nm_set_report_hook(on ? nmpy__report_hook : NULL);
    Py_RETURN_NONE;
}

/* ---- tracemalloc ------------------------------------------------------------------------------ */
typedef int (*nmpy_track_fn)(unsigned int domain, uintptr_t ptr, size_t size);
typedef int (*nmpy_untrack_fn)(unsigned int domain, uintptr_t ptr);
static nmpy_track_fn nmpy__track;
static nmpy_untrack_fn nmpy__untrack;

/* Both return at once (a flag test) unless tracemalloc is tracing. */
void nmpy_trace(uintptr_t address, size_t size) {
    if (nmpy__track && nmpy__track(NM_TRACEMALLOC_DOMAIN, address, size) == -1) PyErr_Clear();
}
void nmpy_untrace(uintptr_t address) {
    if (nmpy__untrack) nmpy__untrack(NM_TRACEMALLOC_DOMAIN, address);
}

/* ---- View: a counted export of memory owned by another object ------------------------------ */
PyObject *nmpy_view_new(PyObject *owner, void *ptr, Py_ssize_t size, int readonly, Py_ssize_t *counter) {
    NmView *v = PyObject_GC_New(NmView, nmpy.View);
    if (v == NULL) return NULL;
    Py_INCREF(owner);
    v->owner = owner;
    v->ptr = (char *)ptr;
    v->size = size;
    v->exports = 0;
    v->counter = counter;
    v->readonly = readonly;
    PyObject_GC_Track((PyObject *)v);
    return (PyObject *)v;
}

static int View_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    NmView *v = (NmView *)self;
    if (v->ptr == NULL) {
        PyErr_SetString(nmpy.UseAfterFreeError, "the memory behind this view was freed");
        return -1;
    }
    if (PyBuffer_FillInfo(view, self, v->ptr, v->size, v->readonly, flags) < 0) return -1;
    v->exports++;
    if (v->counter) (*v->counter)++;
    return 0;
}

static void View_releasebuffer(PyObject *self, Py_buffer *view) {
    NmView *v = (NmView *)self;
    (void)view;
    v->exports--;
    if (v->counter) (*v->counter)--;
}

static int View_traverse(PyObject *self, visitproc visit, void *arg) {
    Py_VISIT(((NmView *)self)->owner);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void View_dealloc(PyObject *self) {
    NmView *v = (NmView *)self;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_CLEAR(v->owner);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyObject *View_get_exports(PyObject *self, void *c) {
    (void)c;
    return PyLong_FromSsize_t(((NmView *)self)->exports);
}
static PyObject *View_get_owner(PyObject *self, void *c) {
    (void)c;
    return Py_NewRef(((NmView *)self)->owner);
}
static PyObject *View_get_address(PyObject *self, void *c) {
    (void)c;
    return PyLong_FromSize_t((size_t)(uintptr_t)((NmView *)self)->ptr);
}
static PyObject *View_get_valid(PyObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(((NmView *)self)->ptr != NULL);
}

/* invalidate(): the memory is going away; refused (BufferInUseError) while exported. */
static PyObject *View_invalidate(PyObject *self, PyObject *unused) {
    NmView *v = (NmView *)self;
    (void)unused;
    if (v->exports > 0)
        return nmpy_raisef(nmpy.BufferInUseError, "memory at %p is exported (%zd live views)", (void *)v->ptr,
                           v->exports);
    v->ptr = NULL;
    Py_RETURN_NONE;
}

static PyObject *View_refuse_copy(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    PyErr_SetString(PyExc_TypeError, "nativemem views cannot be copied or pickled; copy the bytes instead");
    return NULL;
}

static PyMethodDef View_methods[] = {
    {"invalidate", View_invalidate, METH_NOARGS, "Forget the memory (refused while exported)."},
    {"__copy__", View_refuse_copy, METH_NOARGS, NULL},
    {"__deepcopy__", View_refuse_copy, METH_O, NULL},
    {"__reduce_ex__", View_refuse_copy, METH_O, NULL},
    {NULL, NULL, 0, NULL}};
static PyGetSetDef View_getset[] = {
    {"exports", View_get_exports, NULL, "Live buffer-protocol exports (memoryviews, arrays).", NULL},
    {"owner", View_get_owner, NULL, "The object that owns the memory.", NULL},
    {"address", View_get_address, NULL, "The memory's address (0 once invalidated).", NULL},
    {"valid", View_get_valid, NULL, "False once the memory was freed.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};
static PyType_Slot View_slots[] = {
    {Py_tp_doc, "Exporter of memory owned by another object: each memoryview, NumPy array or ctypes "
                "object made from it keeps the owner alive, and the owner counts them exactly."},
    {Py_bf_getbuffer, View_getbuffer},
    {Py_bf_releasebuffer, View_releasebuffer},
    {Py_tp_traverse, View_traverse},
    {Py_tp_dealloc, View_dealloc},
    {Py_tp_methods, View_methods},
    {Py_tp_getset, View_getset},
    {0, NULL}};
static PyType_Spec View_spec = {"nativemem._core.View", sizeof(NmView), 0,
                                Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, View_slots};

/* ---- configuration -------------------------------------------------------------------------- */
/* _configure(errors_module, make_error, as_address, pkg_dir, track_addr, untrack_addr, lasti_addr) */
static PyObject *core_configure(PyObject *self, PyObject *args) {
    PyObject *errors, *make_error, *as_address, *pkg_dir;
    unsigned long long track, untrack, lasti;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOUKKK", &errors, &make_error, &as_address, &pkg_dir, &track, &untrack, &lasti))
        return NULL;
#define NMPY_GET(field, name)                                   \
    do {                                                        \
        PyObject *o_ = PyObject_GetAttrString(errors, name);                 \
        if (o_ == NULL) return NULL;                            \
        NMPY_XSETREF(nmpy.field, o_);                             \
    } while (0)
    NMPY_GET(ClosedError, "ClosedError");
    NMPY_GET(UseAfterFreeError, "UseAfterFreeError");
    NMPY_GET(DoubleFreeError, "DoubleFreeError");
    NMPY_GET(BufferInUseError, "BufferInUseError");
    NMPY_GET(InvalidTypeError, "InvalidTypeError");
    NMPY_GET(InvalidSizeError, "InvalidSizeError");
    NMPY_GET(SizeOverflowError, "SizeOverflowError");
    NMPY_GET(InvalidFreeError, "InvalidFreeError");
    NMPY_GET(InvalidArgumentError, "InvalidArgumentError");
    NMPY_GET(InvalidAlignmentError, "InvalidAlignmentError");
    NMPY_GET(RefcountError, "RefcountError");
    NMPY_GET(warn_category, "CorruptionWarning");
#undef NMPY_GET
    NMPY_XSETREF(nmpy.make_error, Py_NewRef(make_error));
    NMPY_XSETREF(nmpy__as_address, Py_NewRef(as_address));
    NMPY_XSETREF(nmpy.pkg_dir, Py_NewRef(pkg_dir));
    nmpy__track = (nmpy_track_fn)(uintptr_t)track;
    nmpy__untrack = (nmpy_untrack_fn)(uintptr_t)untrack;
    {
        extern void nmpy_sites_set_lasti(void *fn);
        nmpy_sites_set_lasti((void *)(uintptr_t)lasti);
    }
    Py_RETURN_NONE;
}

static PyObject *core_site(PyObject *self, PyObject *arg) {
    int failed = 0;
    const char *s;
    Py_ssize_t depth = nmpy_size_arg(arg, "depth");
    (void)self;
    if (depth < 0) return NULL;
    if (depth == 0 || depth > 1000) return nmpy_raisef(nmpy.InvalidArgumentError, "depth must be 1..1000");
    s = nmpy_site((int)depth, &failed);
    if (failed) return NULL;
    return PyLong_FromSize_t((size_t)(uintptr_t)s);
}

static PyObject *core_sites_clear(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    nmpy_sites_clear();
    Py_RETURN_NONE;
}

static PyObject *core_view(PyObject *self, PyObject *args) {
    PyObject *owner;
    unsigned long long addr;
    Py_ssize_t size;
    int readonly = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "OKn|p", &owner, &addr, &size, &readonly)) return NULL;
    if (size < 0) return nmpy_raisef(nmpy.InvalidSizeError, "size must not be negative");
    return nmpy_view_new(owner, (void *)(uintptr_t)addr, size, readonly, NULL);
}

static PyMethodDef core_methods[] = {
    {"_configure", core_configure, METH_VARARGS, NULL},
    {"site_address", core_site, METH_O,
     "Address of the C string naming the caller's innermost `depth` Python frames outside nativemem."},
    {"_sites_clear", core_sites_clear, METH_NOARGS, "Drop the site cache (the site strings stay)."},
    {"_hook_reports", core_hook_reports, METH_O,
     "Route corruption found by frees that cannot raise to CorruptionWarning (True) or stderr (False)."},
    {"View", core_view, METH_VARARGS,
     "View(owner, address, size, readonly=False): a counted exporter of memory that owner keeps alive."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef core_def = {PyModuleDef_HEAD_INIT, "nativemem._core",
                                      "nativemem's Python layer: extension types over the C core.", -1,
                                      core_methods, NULL, NULL, NULL, NULL};

/* On a free-threaded CPython the layer still relies on the GIL (see nmpy.h): refuse to start
 * without it, with the way out, rather than race. */
static int nmpy__check_gil(void) {
#if defined(Py_GIL_DISABLED)
    PyObject *sys = PyImport_ImportModule("sys"), *r;
    int on = 1;
    if (sys == NULL) return -1;
    r = PyObject_CallMethod(sys, "_is_gil_enabled", NULL);
    Py_DECREF(sys);
    if (r == NULL) return -1;
    on = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (on == 0) {
        PyErr_SetString(PyExc_ImportError,
                        "nativemem's Python layer needs the GIL on a free-threaded CPython: run with "
                        "PYTHON_GIL=1 or python -X gil=1");
        return -1;
    }
    return on < 0 ? -1 : 0;
#else
    return 0;
#endif
}

static int nmpy__init_module(void) {
    PyObject *m, *mods;
    if (nmpy.module) return 0;
    if (nmpy__check_gil() < 0) return -1;
    m = PyModule_Create(&core_def);
    if (m == NULL) return -1;
    nmpy.module = m;
    nmpy.View = (PyTypeObject *)PyType_FromSpec(&View_spec);
    if (nmpy.View == NULL) return -1;
    if (PyModule_AddObject(m, "ViewType", Py_NewRef((PyObject *)nmpy.View)) < 0) return -1;
    if (nmpy_alloc_types(m) < 0 || nmpy_pool_types(m) < 0 || nmpy_strtab_types(m) < 0 ||
        nmpy_sites_init(m) < 0 || nmpy_numpy_init(m) < 0 || nmpy_capi_init(m) < 0)
        return -1;
    mods = PyImport_GetModuleDict();
    if (mods == NULL || PyDict_SetItemString(mods, "nativemem._core", m) < 0) return -1;
    return 0;
}

/* Called once from nativemem._ffi through cffi (which calls it without the GIL). */
int nmpy_init(void);
int nmpy_init(void) {
    PyGILState_STATE g = PyGILState_Ensure();
    int rc = nmpy__init_module();
    if (rc < 0) PyErr_Print();
    PyGILState_Release(g);
    return rc;
}
