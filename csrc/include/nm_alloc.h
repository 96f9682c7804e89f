/* nm_alloc.h -- allocators and the front door: status codes and the thread's error, the report
 * hook, the out-of-memory policy, allocation sites, nm_allocator_ops_t and the opaque
 * nm_allocator_t, nm_malloc & co., statistics and lifetime (alloc.c).
 *
 * One idea carries the design: an allocator is a backend's table of operations with a context,
 * behind one front door.  Backends (libc, jemalloc, mimalloc, Windows heaps, macOS zones), the
 * bounded arena and the debug allocator all *are* allocators; pools, interning, copy-on-write
 * buffers and props *draw from* one.
 *
 * The public headers (csrc/include/, one per area; nativemem.h includes them all) are read by
 * build_ffi.py into cffi's cdef(), so they hold only declarations: no conditionals, no macros
 * with bodies, integer #defines only.
 */
#ifndef NM_ALLOC_H
#define NM_ALLOC_H

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

/* ---- allocators: a backend's operations and the front door's instance ------------------- */
/* An allocator is an instance owned by the front door (name, statistics, lifetime) over a
 * backend: a `static const nm_allocator_ops_t` and its context.  Writing a backend in C is one
 * such table and its functions (tests/c/example_backend.c):
 *
 *     static const nm_allocator_ops_t my_ops = { my_malloc, NULL, my_realloc, my_free,
 *                                                my_memalign, NULL, my_destroy, 0, 0 };
 *     nm_allocator_t *a = nm_allocator_new("mine", &my_ops, my_ctx);
 *
 * The front door checks sizes (overflow, size 0, alignment) before a backend function runs, so a
 * backend sees 1 <= size <= PTRDIFF_MAX and valid power-of-two alignments only. */
typedef struct nm_allocator nm_allocator_t; /* opaque */

typedef struct nm_allocator_ops {
    void *(*malloc)(void *ctx, size_t size);                   /* required                    */
    void *(*calloc)(void *ctx, size_t n, size_t size);         /* NULL: malloc + memset       */
    void *(*realloc)(void *ctx, void *p, size_t size);         /* required                    */
    void (*free)(void *ctx, void *p);                          /* required                    */
    void *(*memalign)(void *ctx, size_t alignment, size_t size); /* required                  */
    size_t (*usable_size)(void *ctx, const void *p);           /* NULL: block statistics only
                                                                  (NM_STATS_BYTES refused)     */
    void (*destroy)(void *ctx);                                /* NULL: ctx is not owned      */
    /* The alignment every malloc/calloc/realloc block is guaranteed to have (a power of two);
     * 0 means what the platform's malloc promises, alignof(max_align_t).  Anything built on an
     * allocator (the debug allocator, pools, arenas) assumes no more than this of its blocks. */
    size_t alignment;
    unsigned flags;                                            /* nm_allocator_ops_flags      */
} nm_allocator_ops_t;

enum nm_allocator_ops_flags {
    NM_OPS_EXACT_SIZE = 1 /* usable_size returns exactly the requested size: the front door
                             counts the request and never calls usable_size for statistics */
};

/* A new allocator over `ops` (which must outlive it: a static const table) and `ctx`, its
 * statistics starting at zero, `name` copied.  NULL with the error set (NM_ERR_INVALID when a
 * required function is missing or the alignment is not a power of two; NM_ERR_NOMEM).  When it
 * is destroyed, ops->destroy(ctx) runs (if not NULL) once the last counted block is freed. */
nm_allocator_t *nm_allocator_new(const char *name, const nm_allocator_ops_t *ops, void *ctx);
/* The name given at creation ("libc", "debug", ...); valid until the allocator is destroyed. */
const char *nm_allocator_name(nm_allocator_t *a);
/* Its context (what nm_allocator_new was given). */
void *nm_allocator_context(nm_allocator_t *a);

/* What the statistics count.  Blocks (allocations, frees, live blocks, failures; the default)
 * cost a plain load and store in the calling thread's own counter slot per operation (no locked
 * instruction while the process has at most 31 threads using allocators and the OS offers an
 * asymmetric barrier; an atomic add otherwise).  Exact bytes (live and peak bytes) cost two
 * locked atomics more and, for a backend that is not NM_OPS_EXACT_SIZE, a usable_size call per
 * operation (malloc_usable_size: about 5 ns): about 1.5x the blocks-only cost of a glibc
 * malloc+free pair.  The Python face asks for bytes.  Set the mode on a fresh allocator (a
 * clone) before its first allocation.  The libc singleton counts blocks. */
enum nm_stats_mode {
    NM_STATS_OFF = 0,     /* nothing counted; destroy is not deferred for live blocks;
                             final: no other mode can be set afterwards                   */
    NM_STATS_BLOCKS = 1,  /* block counts only (the default): live_bytes, peak_bytes 0    */
    NM_STATS_BYTES = 2    /* blocks and exact bytes                                       */
};
/* NM_OK, NM_ERR_INVALID (unknown mode), NM_ERR_BUSY (it has allocated already), or
 * NM_ERR_UNSUPPORTED (allocators that keep their own statistics: debug, the libc singleton; bytes
 * from a backend without usable_size). */
int nm_allocator_set_stats(nm_allocator_t *a, int mode);
int nm_allocator_get_stats_mode(nm_allocator_t *a);

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

#endif /* NM_ALLOC_H */
