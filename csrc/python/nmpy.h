/* nmpy.h -- the Python layer: CPython extension types over the C core, written against the
 * limited API of Python 3.11 (one abi3 build serves 3.11+).  Compiled into the same cffi
 * extension as csrc/ (build_ffi.py); csrc/ itself never includes Python.h.
 *
 * The hot Python objects live here: Allocator (the handle on an nm_allocator_t) and Buffer (a
 * block with the buffer protocol and exact export counting), Pool, StringTable and Interned,
 * View (a counted export of memory owned by another object), the debug allocator's site capture
 * and NumPy's handler capsule.  Their methods run with the GIL held and never release it, so
 * each is atomic with respect to other Python threads; they parse every argument (which may
 * run Python code) before they look at their object's state.
 */
#ifndef NMPY_H
#define NMPY_H

/* The limited API does not exist on a free-threaded CPython (Python.h refuses the combination):
 * there the same code builds on the full API, as a version-specific wheel.  The module does not
 * declare Py_mod_gil, so a free-threaded interpreter re-enables the GIL while nativemem is
 * imported, and "methods run with the GIL held" stays true. */
#include <pyconfig.h>
#if !defined(Py_GIL_DISABLED)
#  define Py_LIMITED_API 0x030B0000
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "nativemem.h"

#define NMPY_XSETREF(dst, src)          \
    do {                                \
        PyObject *old_ = (PyObject *)(dst); \
        (dst) = (src);                  \
        Py_XDECREF(old_);               \
    } while (0)

/* ---- objects ---------------------------------------------------------------------------- */
typedef struct {
    PyObject_HEAD
    nm_allocator_t *table;   /* NULL until bound, and after close() once destroyed       */
    PyObject *keepalive;     /* what the table's code or context lives in (strong)      */
    PyObject *name;          /* str                                                     */
    PyObject *backend;       /* str                                                     */
    Py_ssize_t buffers;      /* live Buffers made here (they hold a reference on us)    */
    Py_ssize_t users;        /* C-level users that may still allocate from the table    */
    Py_ssize_t capi_users;   /* acquisitions through the C API capsule (nm_capi.h)      */
    int owned;               /* destroy the table with us                               */
    int closed;              /* close() was called: no new blocks                       */
    int sites;               /* record Python allocation sites (debug allocator)        */
    int depth;               /* Python frames per site                                  */
    PyObject *weakreflist;
} NmAllocator;

typedef struct {
    PyObject_HEAD
    NmAllocator *alloc;      /* strong: the allocator outlives its blocks              */
    char *ptr;               /* NULL once freed                                        */
    uintptr_t addr;          /* the block's address, kept for messages after free      */
    Py_ssize_t size;
    Py_ssize_t exports;      /* exact: bf_getbuffer/bf_releasebuffer                   */
    const char *alloc_site;  /* where it was allocated and freed, for allocators that   */
    const char *free_site;   /* record sites (process-lifetime strings), else NULL      */
    PyObject *weakreflist;
} NmBuffer;

typedef struct {
    PyObject_HEAD
    PyObject *owner;         /* strong: whatever keeps the memory alive                */
    char *ptr;               /* NULL once invalidated                                  */
    Py_ssize_t size;
    Py_ssize_t exports;
    Py_ssize_t *counter;     /* the owner's count of exports through its views, or NULL */
    int readonly;
} NmView;

/* ---- module state (one interpreter) ------------------------------------------------------ */
typedef struct {
    PyObject *module;
    PyTypeObject *Allocator, *Buffer, *View, *Pool, *StringTable, *Interned;
    PyObject *make_error;        /* nativemem._ffi.make_error(code, message, **info)       */
    PyObject *warn_category;     /* nativemem.CorruptionWarning                            */
    PyObject *pkg_dir;           /* the nativemem package directory (str)                  */
    PyObject *ClosedError, *UseAfterFreeError, *DoubleFreeError, *BufferInUseError,
        *InvalidTypeError, *InvalidSizeError, *SizeOverflowError, *InvalidFreeError,
        *InvalidArgumentError, *InvalidAlignmentError, *RefcountError;
} nmpy_state_t;
extern nmpy_state_t nmpy;

/* ---- helpers (module.c) ----------------------------------------------------------------- */
/* Raise the exception for status `code` with `message` (NULL: the thread's C message), and
 * address/size info (-1/negative: unknown); clears the thread's C error.  Returns NULL. */
PyObject *nmpy_raise(int code, const char *message, uintptr_t address, Py_ssize_t size);
/* Raise from the thread's last C error (fallback text when none). */
PyObject *nmpy_raise_last(const char *fallback, uintptr_t address, Py_ssize_t size);
/* Raise `cls` with a formatted message. */
PyObject *nmpy_raisef(PyObject *cls, const char *fmt, ...);
/* A size argument: int in [0, PTRDIFF_MAX]; -1 with the error set otherwise. */
Py_ssize_t nmpy_size_arg(PyObject *o, const char *what);
/* An address argument: int, a cffi pointer, or an object with .address; 0 with error set
 * (address 0 itself is refused as "not a block"). */
int nmpy_address_arg(PyObject *o, const char *what, uintptr_t *out);
/* Report corruption found where nothing can raise (finalizers): CorruptionWarning, or
 * sys.unraisablehook when the warning itself fails. Keeps any current exception. */
void nmpy_report(int code, const char *message);
/* A C-level user of an Allocator (no-op for other objects): the table is not destroyed by
 * close() while one remains. */
void nmpy_alloc_use(PyObject *o);
void nmpy_alloc_unuse(PyObject *o);
/* The same for the C API capsule's acquisitions (kept apart: a stray release there cannot take
 * away a use of nativemem's own); unuse: -1 with RuntimeError when none is outstanding. */
void nmpy_alloc_capi_use(PyObject *o);
int nmpy_alloc_capi_unuse(PyObject *o);
PyObject *nmpy_view_new(PyObject *owner, void *ptr, Py_ssize_t size, int readonly, Py_ssize_t *counter);

/* ---- sites (sites.c) --------------------------------------------------------------------- */
/* The innermost `depth` Python frames outside nativemem as a "py:..." C string that lives for
 * the process (NULL with no error when there is no Python frame; NULL with an error set on
 * failure). */
const char *nmpy_site(int depth, int *failed);
int nmpy_sites_init(PyObject *module);
void nmpy_sites_clear(void);

/* tracemalloc, reached through addresses found at import (module.c) */
void nmpy_trace(uintptr_t address, size_t size);
void nmpy_untrace(uintptr_t address);

/* ---- type specs -------------------------------------------------------------------------- */
int nmpy_alloc_types(PyObject *module);   /* Allocator, Buffer (buffer.c) */
int nmpy_pool_types(PyObject *module);    /* Pool (pool.c)                */
int nmpy_strtab_types(PyObject *module);  /* StringTable, Interned        */
int nmpy_numpy_init(PyObject *module);    /* numpy_handler_capsule        */
int nmpy_capi_init(PyObject *module);     /* _C_API, the capsule of nm_capi.h (capi.c) */

#endif /* NMPY_H */
