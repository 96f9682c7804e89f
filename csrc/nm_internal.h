/* nm_internal.h -- private to the C core (the .c files of csrc): the allocator instance behind the opaque
 * nm_allocator_t, the thread's state, and helpers.  Not installed, not part of the API. */
#ifndef NM_INTERNAL_H
#define NM_INTERNAL_H

#include "nativemem.h"
#include "platform.h"

#include <stdarg.h>

/* ---- the allocator instance (opaque in nm_alloc.h) ------------------------------------------ */
/* Instance flags: the backend's (nm_allocator_ops_flags) in the low bits, then the front door's. */
enum nm__alloc_flags {
    NM__F_EXACT_SIZE = NM_OPS_EXACT_SIZE, /* usable_size is the request: no call for statistics  */
    NM__F_STATIC = 1u << 8,       /* never destroyed (the libc singleton)                        */
    NM__F_NO_STATS = 1u << 9,     /* NM_STATS_OFF: nm_malloc & co. count nothing                 */
    NM__F_NO_BYTE_STATS = 1u << 10, /* NM_STATS_BLOCKS: no usable_size call, no byte counters    */
    NM__F_SELF_STATS = 1u << 11,  /* the backend counts its blocks in the instance's statistics
                                     itself, under its own lock, and defers its own destruction */
    NM__F_REPORTS = 1u << 12,     /* its functions may set errors (arena, debug, test wrappers):
                                     the front door then watches the thread's error            */
    NM__F_OWNS_TABLE = 1u << 13,  /* ops->destroy(ctx) frees the instance too (debug, arena: a
                                     teardown deferred to a last free or to after a fork)       */
    NM__F_BORROWED = 1u << 14     /* ctx is another instance's (a clone): destroy frees only this */
};

/* Block counters, one slot per thread (the front door's statistics).  A thread owns one of the
 * first NM__SLOTS - 1 slots while it lives and bumps its counters with a plain load and store (no
 * locked instruction); threads beyond them, and every thread where no asymmetric barrier exists
 * (platform.h: nm_heavy_barrier_init), share the last slot with atomic adds.  Readers sum the
 * slots.  128 bytes a slot: two slots never share a cache line, whatever the base alignment. */
#define NM__SLOTS 32
typedef struct nm__slot {
    intptr_t allocs, frees;
    char pad[128 - 2 * sizeof(intptr_t)];
} nm__slot_t;

struct nm_allocator {
    /* The backend's operations, copied from its nm_allocator_ops_t at creation so that a call is
     * one load and one indirect call, as with a mutable table.  calloc may be NULL (nm_calloc then
     * uses malloc + memset), usable_size too. */
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t n, size_t size);
    void *(*realloc)(void *ctx, void *p, size_t size);
    void (*free)(void *ctx, void *p);
    void *(*memalign)(void *ctx, size_t alignment, size_t size);
    size_t (*usable_size)(void *ctx, const void *p);
    void (*destroy)(void *ctx);     /* NULL: ctx not owned (or a clone's)                       */
    void *ctx;
    unsigned flags;                 /* nm__alloc_flags                                        */
    size_t alignment;               /* resolved: never 0                                      */
    /* Plain backends (the C library; nm_allocator_from_plain without headers): the backend's own
     * malloc and free, which nm_malloc and nm_free call directly (one indirect call, not two).
     * NULL in every other instance. */
    void *(*plain_malloc)(size_t size);
    void (*plain_free)(void *p);
    /* statistics (nm_allocator_stats): blocks in the per-thread slots, bytes in relaxed atomics;
     * live blocks are allocs - frees.  st_allocs/st_frees: NM__F_SELF_STATS allocators' own
     * counts (kept under their lock), and failures. */
    nm__slot_t *slots;
    intptr_t st_allocs;
    intptr_t st_frees;
    intptr_t st_live_bytes;
    intptr_t st_peak_bytes;
    intptr_t st_failures;
    intptr_t st_dying;              /* destroy requested while blocks were live: 1; done: 2     */
    const nm_allocator_ops_t *ops;  /* the backend's identity (nm_debug_is): compared, never read
                                       after creation (a caller's ops may not outlive it)      */
    const char *name;
};

/* A new instance over `ops` with a zeroed context of `ctx_size` bytes inside the same block (a->ctx;
 * NULL when 0) and `name` copied; flags = ops->flags | extra_flags.  NULL with NM_ERR_NOMEM set.
 * Freed by nm_allocator_destroy (ops->destroy(ctx) first), or by _nm_table_free for NM__F_OWNS_TABLE. */
nm_allocator_t *_nm_allocator_make(const char *name, const nm_allocator_ops_t *ops, size_t ctx_size,
                                   unsigned extra_flags);
void _nm_table_free(nm_allocator_t *a);

/* Record `code` and a printf-style message as the calling thread's error; returns code. */
int _nm_set_error(int code, const char *fmt, ...)
#if defined(__MINGW32__)
    __attribute__((format(gnu_printf, 2, 3)))
#elif defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Out of memory for a request of `size` bytes from allocator `name`: aborts under
 * NM_OOM_ABORT, else sets NM_ERR_NOMEM.  Always returns NULL. */
void *_nm_oom(const char *name, size_t size);

/* The context of the allocator nm_free_checked is freeing through on this thread (NULL outside
 * it): an allocator that keeps errors nobody was told of (debug.c's pending error) leaves those
 * the caller gets alone. */
extern NM_THREAD_LOCAL NM_TLS_FAST void *_nm_checked_ctx;
/* Hand the thread's error, reported by allocator `name` on a path with no caller to return it
 * to, to the report hook (or stderr); once per error. */
void _nm_report(const char *name);

/* Counter bumped by every _nm_set_error on this thread: compare before/after a call to learn
 * whether the callee reported an error. */
unsigned _nm_error_seq(void);

/* The calling thread's state in ONE thread-local, so a function touching several fields pays
 * one thread-local lookup (a __tls_get_addr call in a shared object), not one per field. */
typedef struct nm_tstate {
    const char *site_file; /* current allocation site (nm_site_set / nm_*_at) */
    int site_line;
    int err_code;          /* last error                                      */
    unsigned err_seq;      /* bumped by every error                           */
    unsigned slot;         /* this thread's counter slot + 1 (0: not yet claimed) */
} nm_tstate_t;
extern NM_THREAD_LOCAL NM_TLS_FAST nm_tstate_t _nm_ts;
/* Claims the calling thread's counter slot (alloc.c) and returns it: 1..NM__SLOTS - 1 owned,
 * NM__SLOTS shared.  Read _nm_ts.slot first: 0 means not claimed yet. */
unsigned _nm_slot_claim(void);
#define _nm_site_file (_nm_ts.site_file)
#define _nm_site_line (_nm_ts.site_line)

/* Largest size any allocation may request (as glibc: PTRDIFF_MAX). */
#define NM_MAX_ALLOC ((size_t)PTRDIFF_MAX)

/* What the platform's malloc promises: alignof(max_align_t), as the compiler sees it (8 on
 * 32-bit x86 with musl or MSVC, 16 on x86-64 and arm64 Linux/macOS).  The default of a table
 * whose `alignment` is 0; nothing may assume more of a block than its table's alignment. */
#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(_MSC_VER)
#  define NM_MALLOC_ALIGN ((size_t)_Alignof(max_align_t))
#else /* MSVC: max_align_t is double, which the union below covers */
typedef struct nm__align_probe { char c; union { long double ld; double d; long long ll; void *p; } u; } nm__align_probe_t;
#  define NM_MALLOC_ALIGN ((size_t)offsetof(nm__align_probe_t, u))
#endif

/* The alignment `a`'s malloc blocks are guaranteed to have. */
NM_INLINE size_t _nm_alignment(const nm_allocator_t *a) { return a->alignment; }

NM_INLINE int _nm_is_pow2(size_t x) { return x != 0 && (x & (x - 1)) == 0; }
NM_INLINE uintptr_t _nm_align_up(uintptr_t x, size_t a) { return (x + (a - 1)) & ~(uintptr_t)(a - 1); }

/* For NM__F_SELF_STATS allocators, which count their blocks in the table's statistics under
 * their own lock (every update of the table serialised by it), and defer their destruction
 * themselves (nm_allocator_destroy calls their destroy at once; see debug.c). */
NM_INLINE void _nm_table_count_alloc_serial(nm_allocator_t *a, size_t bytes) {
    /* plain relaxed loads and stores, no locked read-modify-write (readers see whole values) */
    intptr_t live = nm_atomic_load_relaxed(&a->st_live_bytes) + (intptr_t)bytes;
    nm_atomic_store_relaxed(&a->st_allocs, nm_atomic_load_relaxed(&a->st_allocs) + 1);
    nm_atomic_store_relaxed(&a->st_live_bytes, live);
    if (live > nm_atomic_load_relaxed(&a->st_peak_bytes)) nm_atomic_store_relaxed(&a->st_peak_bytes, live);
}
NM_INLINE void _nm_table_count_free_serial(nm_allocator_t *a, size_t bytes) {
    nm_atomic_store_relaxed(&a->st_live_bytes, nm_atomic_load_relaxed(&a->st_live_bytes) - (intptr_t)bytes);
    nm_atomic_store_release(&a->st_frees, nm_atomic_load_relaxed(&a->st_frees) + 1);
}


#endif /* NM_INTERNAL_H */
