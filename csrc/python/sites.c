/* sites.c -- allocation sites taken in C from the caller's frames.
 *
 * A site is the innermost `depth` Python frames outside nativemem, as text "file:line in func"
 * lines prefixed with "py:".  Sites are looked up by (code object, instruction offset) of each
 * frame, so a site seen before costs two hash probes and no string work.  Both caches hold
 * their code objects (so a pointer in a key never names another object) and are bounded: when
 * one fills it is emptied, releasing the code objects.  The site strings themselves are
 * interned by content and live for the process (C records of live blocks point at them): their
 * number is bounded by the distinct (file, line, function) texts, not by code objects, so code
 * made by exec() over and over adds nothing once its text was seen; and at most 65536 texts are
 * kept: past that a new site is recorded as "<site not recorded: ...>", so memory stays bounded
 * (about 13 MB at most) even for a program that compiles code under a new file name each time.
 */
#include "nmpy.h"

#include <string.h>

#define NMPY_SITE_MAX_FRAMES 64
#define NMPY_SITE_SLOTS 8192u /* power of two; emptied at 3/4 */
#define NMPY_PKG_SLOTS 1024u
#define NMPY_SITE_TEXTS_MAX 65536 /* distinct site texts kept (about 200 bytes each) */
#define NMPY_SITE_OVERFLOW "py:<site not recorded: more than 65536 distinct Python sites seen>"

typedef int (*nmpy_lasti_fn)(PyFrameObject *);
static nmpy_lasti_fn nmpy__lasti_fn; /* PyFrame_GetLasti, found at run time (not in the limited API) */

void nmpy_sites_set_lasti(void *fn);
void nmpy_sites_set_lasti(void *fn) { nmpy__lasti_fn = (nmpy_lasti_fn)fn; }

typedef struct {
    uint64_t hash;
    int nframes;
    const char *text;
    PyObject *codes[]; /* nframes codes, then nframes int offsets (ENTRY_LASTIS) */
} site_entry;

typedef struct {
    PyObject *code;
    int inside;
} pkg_entry;

static site_entry **nmpy__sites;
static size_t nmpy__nsites;
static pkg_entry nmpy__pkg[NMPY_PKG_SLOTS];
static size_t nmpy__npkg;
static PyObject *nmpy__texts; /* dict: str -> bytes (kept for the process) */

#define ENTRY_LASTIS(e) ((int *)((e)->codes + (e)->nframes))

static uint64_t nmpy__mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    return h * 0xBF58476D1CE4E5B9ull;
}

void nmpy_sites_clear(void) {
    size_t i;
    for (i = 0; nmpy__sites && i < NMPY_SITE_SLOTS; i++) {
        site_entry *e = nmpy__sites[i];
        if (e) {
            int k;
            nmpy__sites[i] = NULL;
            for (k = 0; k < e->nframes; k++) Py_DECREF(e->codes[k]);
            PyMem_Free(e);
        }
    }
    nmpy__nsites = 0;
    for (i = 0; i < NMPY_PKG_SLOTS; i++) {
        if (nmpy__pkg[i].code) {
            PyObject *c = nmpy__pkg[i].code;
            nmpy__pkg[i].code = NULL;
            Py_DECREF(c);
        }
    }
    nmpy__npkg = 0;
}

static int nmpy__lasti(PyObject *frame) {
    PyObject *o;
    long v;
    if (nmpy__lasti_fn) return nmpy__lasti_fn((PyFrameObject *)frame);
    o = PyObject_GetAttrString(frame, "f_lasti");
    if (o == NULL) { PyErr_Clear(); return -1; }
    v = PyLong_AsLong(o);
    Py_DECREF(o);
    if (v == -1 && PyErr_Occurred()) PyErr_Clear();
    return (int)v;
}

/* 1 when code's file is a module of the nativemem package, 0 if not, -1 on error. */
static int nmpy__inside(PyObject *code) {
    size_t i = ((uintptr_t)code >> 4) & (NMPY_PKG_SLOTS - 1);
    PyObject *pred, *fn, *r;
    int inside;
    for (;;) {
        if (nmpy__pkg[i].code == code) return nmpy__pkg[i].inside;
        if (nmpy__pkg[i].code == NULL) break;
        i = (i + 1) & (NMPY_PKG_SLOTS - 1);
    }
    pred = PyObject_GetAttrString(nmpy.module, "_in_package");
    if (pred == NULL) { PyErr_Clear(); return 0; }
    fn = PyObject_GetAttrString(code, "co_filename");
    if (fn == NULL) { Py_DECREF(pred); return -1; }
    r = PyObject_CallFunctionObjArgs(pred, fn, NULL);
    Py_DECREF(pred);
    Py_DECREF(fn);
    if (r == NULL) return -1;
    inside = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (inside < 0) return -1;
    if (nmpy__npkg >= NMPY_PKG_SLOTS * 3 / 4) { /* full: start again (rare) */
        size_t k;
        for (k = 0; k < NMPY_PKG_SLOTS; k++) Py_CLEAR(nmpy__pkg[k].code);
        nmpy__npkg = 0;
        i = ((uintptr_t)code >> 4) & (NMPY_PKG_SLOTS - 1);
    }
    while (nmpy__pkg[i].code) i = (i + 1) & (NMPY_PKG_SLOTS - 1);
    nmpy__pkg[i].code = Py_NewRef(code);
    nmpy__pkg[i].inside = inside;
    nmpy__npkg++;
    return inside;
}

static PyObject *nmpy__frame_line(PyObject *frame, PyObject *code) {
    PyObject *file = PyObject_GetAttrString(code, "co_filename");
    PyObject *name = file ? PyObject_GetAttrString(code, "co_name") : NULL;
    PyObject *s = NULL;
    if (name) s = PyUnicode_FromFormat("%U:%d in %U", file, PyFrame_GetLineNumber((PyFrameObject *)frame), name);
    Py_XDECREF(file);
    Py_XDECREF(name);
    return s;
}

/* The interned C string for `text` (a str); NULL on error.  At most NMPY_SITE_TEXTS_MAX distinct
 * texts are kept (a C record may point at any of them for as long as it lives, so none can be
 * freed); past that bound a new site is recorded as NMPY_SITE_OVERFLOW. */
static const char *nmpy__intern_text(PyObject *text) {
    PyObject *b = PyDict_GetItemWithError(nmpy__texts, text); /* borrowed */
    if (b == NULL) {
        if (PyErr_Occurred()) return NULL;
        if (PyDict_Size(nmpy__texts) >= NMPY_SITE_TEXTS_MAX) return NMPY_SITE_OVERFLOW;
        b = PyUnicode_AsEncodedString(text, "utf-8", "replace");
        if (b == NULL) return NULL;
        if (PyDict_SetItem(nmpy__texts, text, b) < 0) { Py_DECREF(b); return NULL; }
        Py_DECREF(b); /* the dict holds it for the process */
    }
    return PyBytes_AsString(b);
}

const char *nmpy_site(int depth, int *failed) {
    PyObject *frames[NMPY_SITE_MAX_FRAMES], *codes[NMPY_SITE_MAX_FRAMES];
    int lastis[NMPY_SITE_MAX_FRAMES];
    int n = 0, k;
    PyObject *f;
    uint64_t h;
    size_t i;
    const char *result = NULL;
    *failed = 0;
    if (depth > NMPY_SITE_MAX_FRAMES) depth = NMPY_SITE_MAX_FRAMES;
    f = (PyObject *)PyEval_GetFrame();
    if (f == NULL) return NULL;
    Py_INCREF(f);
    while (f != NULL && n < depth) {
        PyObject *code = (PyObject *)PyFrame_GetCode((PyFrameObject *)f);
        int in = nmpy__inside(code);
        PyObject *back;
        if (in < 0) { Py_DECREF(code); Py_DECREF(f); goto fail; }
        if (!in) {
            frames[n] = f;
            codes[n] = code;
            lastis[n] = nmpy__lasti(f);
            n++;
            if (n == depth) { f = NULL; break; }
            back = PyObject_GetAttrString(frames[n - 1], "f_back");
        } else {
            Py_DECREF(code);
            back = PyObject_GetAttrString(f, "f_back");
            Py_DECREF(f);
        }
        if (back == NULL) { f = NULL; goto fail; }
        if (back == Py_None) { Py_DECREF(back); f = NULL; break; }
        f = back;
    }
    Py_XDECREF(f);
    if (n == 0) return NULL;
    h = (uint64_t)n;
    for (k = 0; k < n; k++) h = nmpy__mix(nmpy__mix(h, (uint64_t)(uintptr_t)codes[k]), (uint64_t)(unsigned)lastis[k]);
    i = (size_t)(h >> 20) & (NMPY_SITE_SLOTS - 1);
    for (;; i = (i + 1) & (NMPY_SITE_SLOTS - 1)) {
        site_entry *e = nmpy__sites[i];
        if (e == NULL) break;
        if (e->hash == h && e->nframes == n) {
            int *el = ENTRY_LASTIS(e);
            for (k = 0; k < n; k++)
                if (e->codes[k] != codes[k] || el[k] != lastis[k]) break;
            if (k == n) { result = e->text; goto done; }
        }
    }
    { /* a new site: build its text, intern it, remember it */
        PyObject *parts = PyList_New(n), *sep = NULL, *joined = NULL, *text = NULL;
        site_entry *e;
        if (parts == NULL) goto fail;
        for (k = 0; k < n; k++) {
            PyObject *line = nmpy__frame_line(frames[k], codes[k]);
            if (line == NULL) { Py_DECREF(parts); goto fail; }
            PyList_SetItem(parts, k, line);
        }
        sep = PyUnicode_FromString("\n");
        joined = sep ? PyUnicode_Join(sep, parts) : NULL;
        text = joined ? PyUnicode_FromFormat("py:%U", joined) : NULL;
        Py_DECREF(parts);
        Py_XDECREF(sep);
        Py_XDECREF(joined);
        if (text == NULL) goto fail;
        result = nmpy__intern_text(text);
        Py_DECREF(text);
        if (result == NULL) goto fail;
        if (nmpy__nsites >= NMPY_SITE_SLOTS * 3 / 4) {
            nmpy_sites_clear();
            i = (size_t)(h >> 20) & (NMPY_SITE_SLOTS - 1);
        }
        e = (site_entry *)PyMem_Malloc(offsetof(site_entry, codes) + (size_t)n * (sizeof(PyObject *) + sizeof(int)));
        if (e == NULL) goto done; /* the site is right; it just is not cached */
        e->hash = h;
        e->nframes = n;
        e->text = result;
        for (k = 0; k < n; k++) { e->codes[k] = Py_NewRef(codes[k]); ENTRY_LASTIS(e)[k] = lastis[k]; }
        while (nmpy__sites[i]) i = (i + 1) & (NMPY_SITE_SLOTS - 1);
        nmpy__sites[i] = e;
        nmpy__nsites++;
    }
done:
    for (k = 0; k < n; k++) { Py_DECREF(frames[k]); Py_DECREF(codes[k]); }
    return result;
fail:
    for (k = 0; k < n; k++) { Py_DECREF(frames[k]); Py_DECREF(codes[k]); }
    *failed = 1;
    return NULL;
}

static PyObject *core_site_stats(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return Py_BuildValue("{s:n,s:n,s:n}", "cached_sites", (Py_ssize_t)nmpy__nsites, "cached_codes",
                         (Py_ssize_t)nmpy__npkg, "texts", PyDict_Size(nmpy__texts));
}

static PyMethodDef sites_methods[] = {
    {"site_cache_stats", core_site_stats, METH_NOARGS, "Sizes of the site caches (for tests)."},
    {NULL, NULL, 0, NULL}};

int nmpy_sites_init(PyObject *m) {
    PyObject *fn;
    nmpy__sites = (site_entry **)PyMem_Calloc(NMPY_SITE_SLOTS, sizeof(site_entry *));
    nmpy__texts = PyDict_New();
    if (nmpy__sites == NULL || nmpy__texts == NULL) return -1;
    fn = PyCFunction_NewEx(&sites_methods[0], NULL, NULL);
    if (fn == NULL || PyModule_AddObject(m, "site_cache_stats", fn) < 0) return -1;
    return 0;
}
