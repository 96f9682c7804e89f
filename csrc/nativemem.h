/* nativemem.h -- the public C API of nativemem's core.
 *
 * One idea carries the design: an allocator is a table of function pointers with a context
 * (nm_allocator_t).  Backends (libc, jemalloc, mimalloc, Windows heaps, macOS zones), the
 * bounded arena and the debug allocator all *are* such tables; pools, interning and
 * copy-on-write buffers *use* one.
 *
 * This header is read verbatim by build_ffi.py into cffi's cdef(), so it holds only
 * declarations: no conditionals, no macros with bodies.  Area headers (nm_*.h) that it
 * includes follow the same rule; build_ffi.py inlines them.
 */
#ifndef NATIVEMEM_H
#define NATIVEMEM_H

#include <stddef.h>
#include <stdint.h>

/* ---- status codes: every failing call returns one (or NULL) and sets the thread's error */
enum nm_status {
    NM_OK = 0,
    NM_ERR_NOMEM = -1,            /* out of memory (backend returned NULL, arena full)        */
    NM_ERR_INVALID = -2,          /* bad argument (alignment, NULL where not allowed, ...)     */
    NM_ERR_OVERFLOW = -3,         /* a size computation overflowed, or size > PTRDIFF_MAX      */
    NM_ERR_DOUBLE_FREE = -4,
    NM_ERR_INVALID_FREE = -5,     /* pointer not from this allocator / not a block start       */
    NM_ERR_USE_AFTER_FREE = -6,   /* write after free detected (poison damaged)                */
    NM_ERR_BUFFER_OVERFLOW = -7,  /* tail canary damaged                                       */
    NM_ERR_BUFFER_UNDERFLOW = -8, /* head canary damaged                                       */
    NM_ERR_REFCOUNT = -9,         /* refcount underflow / overflow / increment from zero       */
    NM_ERR_CORRUPT = -10,         /* allocator metadata corrupt (free list, header magic)      */
    NM_ERR_CLOSED = -11,          /* object already destroyed                                  */
    NM_ERR_UNSUPPORTED = -12,     /* operation not available for this allocator / platform    */
    NM_ERR_BUSY = -13,            /* object in use (e.g. destroy with live references)         */
    NM_ERR_REALLOC_FREED = -14    /* realloc of a freed block                                  */
};

/* The calling thread's last error (NM_OK if none) and a human-readable message naming the
 * address, size and site where known.  Cleared by nm_clear_error(). */
int nm_last_error(void);
const char *nm_last_error_message(void);
void nm_clear_error(void);
/* Text for a status code ("double free", ...). */
const char *nm_strerror(int code);

/* ---- reports nobody can return: a free that finds corruption but cannot return an error ---- */
/* Called (on the freeing thread, after the allocator's lock is dropped) when an allocator reports
 * an error during nm_free, during a successful nm_realloc (corruption found while releasing the
 * old block) or during nm_allocator_destroy: paths with no caller to hand the error to.
 * nm_free_checked never calls it: its caller gets the code.  `message` is the thread's error
 * message (a copy, valid during the call); the thread's error stays set.  With no hook (NULL, the
 * default) the message goes to stderr as "nativemem: <message>".  Process-wide; thread-safe. */
typedef void (*nm_report_fn)(const char *allocator_name, int code, const char *message);
void nm_set_report_hook(nm_report_fn fn);
/* The hook now installed (NULL: none), e.g. to chain to it or restore it. */
nm_report_fn nm_get_report_hook(void);

/* ---- out-of-memory policy (Movian's mymalloc aborts; nativemem raises by default) ------ */
enum nm_oom_policy { NM_OOM_RAISE = 0, NM_OOM_ABORT = 1 };
void nm_set_oom_policy(int policy);
int nm_get_oom_policy(void);

/* ---- build information (1 when compiled with Valgrind client requests / ASan) ---------- */
int nm_build_has_valgrind(void);
int nm_build_has_asan(void);

/* ---- allocation site: C file:line, or an interned Python traceback string (line 0) ----- */
/* Sets the calling thread's current allocation site; allocators that record sites (the debug
 * allocator, checked pools) read it.  `file` must outlive every block allocated with it. */
void nm_site_set(const char *file, int line);
void nm_site_get(const char **file, int *line);

/* ---- the allocator table -------------------------------------------------------------- */
typedef struct nm_allocator nm_allocator_t;

typedef void *(*nm_malloc_fn)(void *ctx, size_t size);
typedef void *(*nm_calloc_fn)(void *ctx, size_t n, size_t size);
typedef void *(*nm_realloc_fn)(void *ctx, void *p, size_t size);
typedef void (*nm_free_fn)(void *ctx, void *p);
typedef void *(*nm_memalign_fn)(void *ctx, size_t alignment, size_t size);
typedef size_t (*nm_usable_size_fn)(void *ctx, const void *p);
typedef void (*nm_destroy_fn)(nm_allocator_t *a);

/* Allocator flags. */
enum nm_allocator_flags {
    NM_ALLOC_NO_STATS = 1,     /* nm_malloc & co. skip the statistics counters           */
    NM_ALLOC_STATIC = 2,       /* never destroyed (the libc singleton)                   */
    NM_ALLOC_EXACT_SIZE = 4,   /* usable_size returns exactly the requested size        */
    NM_ALLOC_SELF_STATS = 8,   /* the allocator keeps the statistics fields itself, and
                                  defers its own destruction while blocks are live      */
    NM_ALLOC_REPORTS = 16,     /* its functions may report errors (arena, debug, ...):
                                  the front door then watches the thread's error         */
    NM_ALLOC_NO_BYTE_STATS = 32 /* count blocks only: total_allocs, total_frees and
                                  live_blocks stay exact (and so does the deferred
                                  destroy), but no usable_size call per operation:
                                  live_bytes and peak_bytes stay 0.  Set it on a fresh
                                  table (a clone) before its first allocation. */
};

struct nm_allocator {
    nm_malloc_fn malloc;
    nm_calloc_fn calloc;
    nm_realloc_fn realloc;
    nm_free_fn free;
    nm_memalign_fn memalign;
    nm_usable_size_fn usable_size; /* may be NULL: byte statistics then count requests   */
    nm_destroy_fn destroy;         /* releases ctx and the table; NULL for static tables */
    void *ctx;
    const char *name;
    unsigned flags;
    /* The alignment every block of malloc, calloc and realloc is guaranteed to have (a power of
     * two); 0 means what the platform's malloc promises, alignof(max_align_t).  Read it with
     * nm_allocator_alignment.  Anything built on a table (the debug allocator, pools, arenas)
     * assumes no more than this of the blocks it gets. */
    size_t alignment;
    /* statistics, maintained by nm_malloc & co. with relaxed atomics (read with
     * nm_allocator_stats) */
    intptr_t st_live_blocks;       /* unused: live blocks are st_allocs - st_frees          */
    intptr_t st_live_bytes;
    intptr_t st_peak_bytes;
    intptr_t st_allocs;
    intptr_t st_frees;
    intptr_t st_failures;
    intptr_t st_dying;             /* destroy requested while blocks were live: 1; done: 2 */
    /* Plain backends (the C library; nm_allocator_from_plain without headers): the backend's
     * own malloc and free, which nm_malloc and nm_free call directly instead of through the
     * adapters above (one indirect call instead of two).  NULL in every other table. */
    void *(*plain_malloc)(size_t size);
    void (*plain_free)(void *p);
};

typedef struct nm_alloc_stats {
    int64_t live_blocks;
    int64_t live_bytes;
    int64_t peak_bytes;
    int64_t total_allocs;
    int64_t total_frees;
    int64_t failures;
} nm_alloc_stats_t;

/* The calls everything in nativemem allocates through.  Sizes are overflow-checked
 * (n*size for calloc; size <= PTRDIFF_MAX); alignment must be a power of two and a multiple
 * of sizeof(void*).  A size of 0 yields a unique minimal block.  On failure: NULL, the
 * thread's error is set, and under NM_OOM_ABORT an out-of-memory aborts the process. */
void *nm_malloc(nm_allocator_t *a, size_t size);
void *nm_calloc(nm_allocator_t *a, size_t n, size_t size);
void *nm_realloc(nm_allocator_t *a, void *p, size_t size);
void nm_free(nm_allocator_t *a, void *p);
/* nm_free that returns NM_OK, or the error an allocator that checks frees (debug, arena, ...)
 * reported; one call instead of free + error query, for bindings. */
int nm_free_checked(nm_allocator_t *a, void *p);
void *nm_memalign(nm_allocator_t *a, size_t alignment, size_t size);
/* Same, recording `file`/`line` as the allocation site for allocators that keep sites. */
void *nm_malloc_at(nm_allocator_t *a, size_t size, const char *file, int line);
void *nm_calloc_at(nm_allocator_t *a, size_t n, size_t size, const char *file, int line);
void *nm_realloc_at(nm_allocator_t *a, void *p, size_t size, const char *file, int line);
void *nm_memalign_at(nm_allocator_t *a, size_t alignment, size_t size, const char *file, int line);
/* nm_free_checked recording `file`/`line` as the free site (named by write-after-free reports). */
int nm_free_checked_at(nm_allocator_t *a, void *p, const char *file, int line);
/* Usable size of a live block (0 when the allocator cannot tell). */
size_t nm_usable_size(nm_allocator_t *a, const void *p);
/* The alignment `a` guarantees for malloc/calloc/realloc blocks: its table's `alignment`, or
 * alignof(max_align_t) when that is 0 (8 on 32-bit x86 with musl or MSVC, 16 on x86-64). */
size_t nm_allocator_alignment(nm_allocator_t *a);
void nm_allocator_stats(nm_allocator_t *a, nm_alloc_stats_t *out);
void nm_allocator_reset_peak(nm_allocator_t *a);
/* Free an allocator made by one of the constructors below (no-op for static ones).  While
 * blocks counted by its statistics are still live the destruction is deferred: the table (and
 * an arena's region) goes away when the last of them is freed, so a late free is never a use
 * after free of the table. */
void nm_allocator_destroy(nm_allocator_t *a);
/* A fresh table with the same functions and context, its own statistics and name.  The
 * clone's destroy frees only the clone, so the base must outlive it. */
nm_allocator_t *nm_allocator_clone(nm_allocator_t *base, const char *name);

/* ---- backends ------------------------------------------------------------------------- */
/* The C library's malloc family (posix_memalign where available), a process-wide table. */
nm_allocator_t *nm_allocator_libc(void);

/* Context-free malloc-style functions (jemalloc, mimalloc, a libc found with ctypes).
 * posix_memalign may be NULL: the adapter then keeps a small header before every block so
 * that aligned blocks can be freed with the plain free (as on Windows' CRT).
 * usable_size may be NULL. */
typedef struct nm_plain_fns {
    void *(*malloc)(size_t size);
    void *(*calloc)(size_t n, size_t size);
    void *(*realloc)(void *p, size_t size);
    void (*free)(void *p);
    int (*posix_memalign)(void **out, size_t alignment, size_t size);
    size_t (*usable_size)(void *p);
} nm_plain_fns_t;
nm_allocator_t *nm_allocator_from_plain(const nm_plain_fns_t *fns, const char *name);

/* Windows heap functions resolved from kernel32 with GetProcAddress/ctypes; the heap handle is
 * the context (HeapAlloc(heap, flags, size) and friends).  Every block carries a 16-byte
 * header so that aligned blocks free through HeapFree. */
typedef struct nm_winheap_fns {
    void *heap;          /* HANDLE from HeapCreate or GetProcessHeap             */
    void *heap_alloc;    /* LPVOID WINAPI HeapAlloc(HANDLE, DWORD, SIZE_T)       */
    void *heap_realloc;  /* LPVOID WINAPI HeapReAlloc(HANDLE, DWORD, LPVOID, SIZE_T) */
    void *heap_free;     /* BOOL WINAPI HeapFree(HANDLE, DWORD, LPVOID)          */
    void *heap_size;     /* SIZE_T WINAPI HeapSize(HANDLE, DWORD, LPCVOID)       */
} nm_winheap_fns_t;
nm_allocator_t *nm_allocator_from_winheap(const nm_winheap_fns_t *fns, const char *name);

/* macOS malloc-zone functions resolved from libSystem; the zone is the context.  Usable sizes
 * come from the zone's own `size` function (malloc_zone_t's third field, read from the zone when
 * the table is made): a direct lookup, where malloc_size() asks every zone in turn. */
typedef struct nm_zone_fns {
    void *zone;             /* malloc_zone_t * from malloc_create_zone            */
    void *zone_malloc;      /* void *malloc_zone_malloc(zone, size)               */
    void *zone_calloc;      /* void *malloc_zone_calloc(zone, n, size)            */
    void *zone_realloc;     /* void *malloc_zone_realloc(zone, p, size)           */
    void *zone_free;        /* void malloc_zone_free(zone, p)                     */
    void *zone_memalign;    /* void *malloc_zone_memalign(zone, alignment, size)  */
    void *size;             /* size_t malloc_size(const void *p): used only when the
                               zone has no size function; may then not be NULL   */
} nm_zone_fns_t;
nm_allocator_t *nm_allocator_from_zone(const nm_zone_fns_t *fns, const char *name);

/* ---- area headers (each one file per concern; build_ffi.py inlines them for cdef) ---- */
#include "nm_arena.h"
#include "nm_pool.h"
#include "nm_bench.h"
#include "nm_debug.h"
#include "nm_refcount.h"
#include "nm_faulty.h"
#include "nm_numpy.h"

#endif /* NATIVEMEM_H */
