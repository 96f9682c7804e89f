/* alloc.c -- the allocator table's front door: nm_malloc & co., size and alignment checks,
 * statistics, the thread's error state, the allocation site and the out-of-memory policy.
 * Backends live in backends.c, the arena in arena.c. */
#include "nm_internal.h"

#include <stdio.h>
#include <stdlib.h>

/* ---- error state -------------------------------------------------------------------- */
NM_THREAD_LOCAL NM_TLS_FAST nm_tstate_t _nm_ts;
static NM_THREAD_LOCAL char nm__err_msg[512];
#define nm__err_code (_nm_ts.err_code)
#define nm__err_seq (_nm_ts.err_seq) /* bumped by every error: did a callee report one? */

unsigned _nm_error_seq(void) { return nm__err_seq; }

int _nm_set_error(int code, const char *fmt, ...) {
    va_list ap;
    nm__err_code = code;
    nm__err_seq++;
    va_start(ap, fmt);
    vsnprintf(nm__err_msg, sizeof nm__err_msg, fmt, ap);
    va_end(ap);
    return code;
}

int nm_last_error(void) { return nm__err_code; }
const char *nm_last_error_message(void) { return nm__err_code ? nm__err_msg : ""; }
void nm_clear_error(void) { nm__err_code = NM_OK; nm__err_msg[0] = '\0'; }

/* ---- reports nobody can return ------------------------------------------------------ */
static nm_atomic_t nm__report_hook;                /* nm_report_fn as a word; 0: stderr */
static NM_THREAD_LOCAL unsigned nm__reported_seq;  /* err_seq of the last error handed on */

NM_THREAD_LOCAL NM_TLS_FAST void *_nm_checked_ctx; /* nm_internal.h */

void nm_set_report_hook(nm_report_fn fn) { nm_atomic_store_release(&nm__report_hook, (intptr_t)fn); }
nm_report_fn nm_get_report_hook(void) { return (nm_report_fn)nm_atomic_load_acquire(&nm__report_hook); }

/* Hand the thread's error, reported by allocator `name` on a path with no caller to return it
 * to, to the hook (or stderr).  Once per error: a wrapper's nm_free (faulty.c) sees the error its
 * base's nm_free already handed on.  Also called by debug.c (declared there), which hands on its
 * own reports: see nm__free. */
NM_NOINLINE void _nm_report(const char *name) {
    char msg[sizeof nm__err_msg];
    int code = nm__err_code;
    nm_report_fn fn;
    if (code == NM_OK || nm__err_seq == nm__reported_seq) return;
    nm__reported_seq = nm__err_seq;
    memcpy(msg, nm__err_msg, sizeof msg); /* the hook may call into nativemem, which may set errors */
    fn = nm_get_report_hook();
    if (fn != NULL) {
        fn(name ? name : "?", code, msg);
    } else {
        fprintf(stderr, "nativemem: %s\n", msg);
        fflush(stderr);
    }
}

const char *nm_strerror(int code) {
    switch (code) {
    case NM_OK: return "no error";
    case NM_ERR_NOMEM: return "out of memory";
    case NM_ERR_INVALID: return "invalid argument";
    case NM_ERR_OVERFLOW: return "size overflow";
    case NM_ERR_DOUBLE_FREE: return "double free";
    case NM_ERR_INVALID_FREE: return "invalid free";
    case NM_ERR_USE_AFTER_FREE: return "write after free";
    case NM_ERR_BUFFER_OVERFLOW: return "buffer overflow";
    case NM_ERR_BUFFER_UNDERFLOW: return "buffer underflow";
    case NM_ERR_REFCOUNT: return "reference count error";
    case NM_ERR_CORRUPT: return "allocator metadata corrupt";
    case NM_ERR_CLOSED: return "object already closed";
    case NM_ERR_UNSUPPORTED: return "operation not supported";
    case NM_ERR_BUSY: return "object busy";
    case NM_ERR_REALLOC_FREED: return "realloc of a freed block";
    default: return "unknown error";
    }
}

/* ---- out-of-memory policy ------------------------------------------------------------ */
static nm_atomic_t nm__oom_policy = NM_OOM_RAISE;

void nm_set_oom_policy(int policy) {
    if (policy != NM_OOM_RAISE && policy != NM_OOM_ABORT) {
        _nm_set_error(NM_ERR_INVALID, "unknown OOM policy %d", policy);
        return;
    }
    nm_atomic_store_relaxed(&nm__oom_policy, policy);
}
int nm_get_oom_policy(void) { return (int)nm_atomic_load_relaxed(&nm__oom_policy); }

void *_nm_oom(const char *name, size_t size) {
    if (nm_atomic_load_relaxed(&nm__oom_policy) == NM_OOM_ABORT) {
        fprintf(stderr, "nativemem: out of memory allocating %zu bytes from %s; aborting (oom policy 'abort')\n",
                size, name ? name : "?");
        fflush(stderr);
        abort();
    }
    _nm_set_error(NM_ERR_NOMEM, "out of memory: %zu bytes from allocator '%s'", size, name ? name : "?");
    return NULL;
}

/* ---- allocation site ----------------------------------------------------------------- */

void nm_site_set(const char *file, int line) { _nm_site_file = file; _nm_site_line = line; }
void nm_site_get(const char **file, int *line) {
    if (file) *file = _nm_site_file;
    if (line) *line = _nm_site_line;
}

/* ---- statistics ---------------------------------------------------------------------- */
NM_INLINE size_t nm__block_bytes(nm_allocator_t *a, const void *p, size_t requested) {
    /* blocks only: no bytes counted, no call */
    if (a->flags & NM__F_NO_BYTE_STATS) return 0;
    /* an EXACT_SIZE allocator's usable size is the request: no call (the arena's takes its lock) */
    if (a->flags & NM__F_EXACT_SIZE) return requested;
    return a->usable_size ? a->usable_size(a->ctx, p) : requested;
}

/* ---- per-thread block counters (nm_internal.h: nm__slot_t) ------------------------------ */
static nm_atomic_t nm__slot_taken[NM__SLOTS - 1]; /* 1 while a live thread owns the slot */
static nm_atomic_t nm__slots_state;               /* 0 not set up, 1 owned slots, 2 shared only */
static nm_mutex_t nm__slots_lock = NM_MUTEX_INIT;
static nm_tls_key_t nm__slot_key;

static void NM_TLS_DTOR_CALL nm__slot_release(void *v) { /* thread exit */
    uintptr_t s = (uintptr_t)v;
    /* Other thread-exit destructors may still allocate and free on this thread (a pool's frees its
     * records through nm_free) after this one: from here they count in the shared slot, with
     * atomic adds, never in the slot handed back (its next owner bumps it with plain stores). */
    _nm_ts.slot = NM__SLOTS;
    /* release: the next owner's plain increments start from this thread's last ones */
    if (s >= 1 && s < NM__SLOTS) nm_atomic_store_release(&nm__slot_taken[s - 1], 0);
}

/* The set-up lock is registered for fork safety (a child forked while another thread sets up the
 * slots, which takes a slow syscall, would otherwise inherit it held). */
static nm_atfork_t nm__slots_fork = {.lock = nm_atfork_mutex_lock, .unlock = nm_atfork_mutex_unlock,
                                     .arg = &nm__slots_lock, .rank = NM_ATFORK_LAST};

NM_NOINLINE unsigned _nm_slot_claim(void) {
    intptr_t st = nm_atomic_load_acquire(&nm__slots_state);
    unsigned i;
    if (st == 0) {
        nm_atfork_register(&nm__slots_fork); /* once; before taking the lock it protects */
        nm_mutex_lock(&nm__slots_lock);
        st = nm_atomic_load_relaxed(&nm__slots_state);
        if (st == 0) {
            st = (nm_heavy_barrier_init() && nm_tls_key_create(&nm__slot_key, nm__slot_release) == 0) ? 1 : 2;
            nm_atomic_store_release(&nm__slots_state, st);
        }
        nm_mutex_unlock(&nm__slots_lock);
    }
    _nm_ts.slot = NM__SLOTS; /* the shared slot, unless one is free below */
    if (st == 1) {
        for (i = 0; i < NM__SLOTS - 1; i++) {
            intptr_t expected = 0;
            if (nm_atomic_load_relaxed(&nm__slot_taken[i]) == 0 && nm_atomic_cas(&nm__slot_taken[i], &expected, 1)) {
                if (nm_tls_key_set(nm__slot_key, (void *)(uintptr_t)(i + 1)) != 0) {
                    nm_atomic_store_release(&nm__slot_taken[i], 0);
                    break;
                }
                _nm_ts.slot = i + 1;
                break;
            }
        }
    }
    return _nm_ts.slot;
}

NM_INLINE unsigned nm__my_slot(void) {
    unsigned s = _nm_ts.slot;
    return NM_LIKELY(s != 0) ? s : _nm_slot_claim();
}

/* Bump a counter of slot `s` (1-based): a plain load and store in an owned slot, an atomic add in
 * the shared one. */
NM_INLINE void nm__bump(intptr_t *c, unsigned s) {
    if (NM_LIKELY(s < NM__SLOTS)) nm_atomic_store_relaxed(c, nm_atomic_load_relaxed(c) + 1);
    else nm_atomic_add_acq_rel(c, 1);
}
NM_INLINE void nm__bump_allocs(nm_allocator_t *a) {
    unsigned s = nm__my_slot();
    nm__bump(&a->slots[s - 1].allocs, s);
}

/* Allocations and frees counted so far, and for NM__F_SELF_STATS allocators their own.  Frees are
 * read first: each free counted was preceded by its allocation, whose count is then read too, so
 * the difference is never below the blocks live when the reads began. */
static void nm__sums(nm_allocator_t *a, intptr_t *allocs, intptr_t *frees) {
    intptr_t al = 0, fr = 0;
    unsigned i;
    fr = nm_atomic_load_acquire(&a->st_frees);
    for (i = 0; i < NM__SLOTS; i++) fr += nm_atomic_load_acquire(&a->slots[i].frees);
    al = nm_atomic_load_acquire(&a->st_allocs);
    for (i = 0; i < NM__SLOTS; i++) al += nm_atomic_load_acquire(&a->slots[i].allocs);
    *allocs = al;
    *frees = fr;
}

/* Byte counts (NM_STATS_BYTES): two locked adds per allocation and per free. */
NM_INLINE void nm__count_alloc(nm_allocator_t *a, size_t bytes) {
    intptr_t live, peak;
    nm__bump_allocs(a);
    if (a->flags & NM__F_NO_BYTE_STATS) return;
    live = nm_atomic_add_relaxed(&a->st_live_bytes, (intptr_t)bytes);
    peak = nm_atomic_load_relaxed(&a->st_peak_bytes);
    while (live > peak && !nm_atomic_cas_weak_relaxed(&a->st_peak_bytes, &peak, live)) {
    }
}

static void nm__destroy_now(nm_allocator_t *a);

NM_INLINE intptr_t nm__live_blocks(nm_allocator_t *a) {
    intptr_t al, fr;
    nm__sums(a, &al, &fr);
    return al - fr;
}

/* ---- deferred destruction (nm_allocator_destroy with blocks live) ----------------------------
 * The free that makes the counts balance destroys the allocator.  A free must not read the
 * instance once its own count is in (the instance may be gone the next instant), so it looks at a
 * global word instead: nm__dying_n, the number of allocators waiting for their last free.  When
 * it is not 0 the free looks for its allocator in nm__dying (addresses, read without a lock) and
 * only then, under nm__dying_lock, reads the instance: an allocator leaves nm__dying under that
 * lock before it is destroyed.  Ordering: a free bumps its slot, then (compiler barrier only)
 * reads nm__dying_n; the destroyer registers, calls nm_heavy_barrier, then sums: either the free
 * sees the registration or the sum sees the free. */
#define NM__DYING_MAX 256
static nm_atomic_t nm__dying_n;
static nm_atomic_t nm__dying[NM__DYING_MAX];
static nm_mutex_t nm__dying_lock = NM_MUTEX_INIT;
static nm_atfork_t nm__dying_fork = {.lock = nm_atfork_mutex_lock, .unlock = nm_atfork_mutex_unlock,
                                     .arg = &nm__dying_lock, .rank = NM_ATFORK_LAST};

/* Destroy `a` if it is registered and its counts balance (takes the lock; a leaf lock). */
static NM_NOINLINE void nm__finish_destroy(nm_allocator_t *a) {
    size_t i;
    nm_mutex_lock(&nm__dying_lock);
    for (i = 0; i < NM__DYING_MAX; i++)
        if ((nm_allocator_t *)nm_atomic_load_ptr_acquire(&nm__dying[i]) == a) break;
    if (i == NM__DYING_MAX) { /* not (or no longer) waiting: another free finished it */
        nm_mutex_unlock(&nm__dying_lock);
        return;
    }
    nm_atomic_fence_seq_cst(); /* two frees that both got here see each other's count */
    if (nm__live_blocks(a) != 0) {
        nm_mutex_unlock(&nm__dying_lock);
        return;
    }
    nm_atomic_store_relaxed(&nm__dying[i], 0);
    nm_atomic_add_relaxed(&nm__dying_n, -1);
    nm_atomic_store_relaxed(&a->st_dying, 2);
    nm_mutex_unlock(&nm__dying_lock);
    nm__destroy_now(a);
}

/* A free saw an allocator waiting: is it this one?  (Only addresses are read here.) */
static NM_NOINLINE void nm__dying_check(nm_allocator_t *a) {
    size_t i;
    for (i = 0; i < NM__DYING_MAX; i++)
        if ((nm_allocator_t *)nm_atomic_load_ptr_acquire(&nm__dying[i]) == a) {
            nm__finish_destroy(a);
            return;
        }
}

/* The free counted (the last touch of `a` but for a deferred destroy's registry). */
NM_INLINE void nm__count_free_block(nm_allocator_t *a) {
    unsigned s = nm__my_slot();
    nm__bump(&a->slots[s - 1].frees, s);
    nm_compiler_barrier();
    /* from here on `a` may be gone: only the global word, and the registry, are read */
    if (NM_UNLIKELY(nm_atomic_load_relaxed(&nm__dying_n) != 0)) nm__dying_check(a);
}

NM_INLINE void nm__count_free(nm_allocator_t *a, size_t bytes) {
    if (!(a->flags & NM__F_NO_BYTE_STATS)) nm_atomic_add_relaxed(&a->st_live_bytes, -(intptr_t)bytes);
    nm__count_free_block(a);
}

static NM_NOINLINE void *nm__fail(nm_allocator_t *a, size_t size, unsigned seq) {
    nm_atomic_add_relaxed(&a->st_failures, 1);
    /* An allocator that reported a more specific error during the call keeps it. */
    if ((a->flags & NM__F_REPORTS) && nm__err_seq != seq && nm__err_code != NM_ERR_NOMEM) return NULL;
    return _nm_oom(a->name, size);
}

/* nm__fail for memalign: the message names the alignment and the size. */
static NM_NOINLINE void *nm__fail_aligned(nm_allocator_t *a, size_t alignment, size_t size, unsigned seq) {
    const char *name = a->name ? a->name : "?";
    nm_atomic_add_relaxed(&a->st_failures, 1);
    if ((a->flags & NM__F_REPORTS) && nm__err_seq != seq && nm__err_code != NM_ERR_NOMEM) return NULL;
    if (nm_atomic_load_relaxed(&nm__oom_policy) == NM_OOM_ABORT) {
        fprintf(stderr, "nativemem: out of memory in memalign(alignment=%zu, size=%zu) from %s; aborting "
                "(oom policy 'abort')\n", alignment, size, name);
        fflush(stderr);
        abort();
    }
    _nm_set_error(NM_ERR_NOMEM, "out of memory: memalign(alignment=%zu, size=%zu) from allocator '%s'", alignment,
                  size, name);
    return NULL;
}

static NM_NOINLINE void *nm__too_big(nm_allocator_t *a, size_t n, size_t size) {
    nm_atomic_add_relaxed(&a->st_failures, 1);
    if (size == (size_t)-1)
        _nm_set_error(NM_ERR_OVERFLOW, "allocation of %zu bytes from '%s' exceeds the maximum (%zu)", n,
                      a->name, (size_t)NM_MAX_ALLOC);
    else
        _nm_set_error(NM_ERR_OVERFLOW, "calloc(%zu, %zu) from '%s': element count times size overflows", n,
                      size, a->name);
    return NULL;
}

/* ---- the front door ------------------------------------------------------------------ */
static NM_NOINLINE void *nm__malloc(nm_allocator_t *a, size_t size) {
    void *p;
    unsigned seq;
    if (NM_UNLIKELY(size > NM_MAX_ALLOC)) return nm__too_big(a, size, (size_t)-1);
    if (size == 0) size = 1;
    if (a->plain_malloc != NULL) { /* a plain backend: called directly, reports nothing */
        p = a->plain_malloc(size);
        if (NM_UNLIKELY(p == NULL)) return nm__fail(a, size, 0);
        if (!(a->flags & NM__F_NO_STATS)) nm__count_alloc(a, nm__block_bytes(a, p, size));
        return p;
    }
    seq = (a->flags & NM__F_REPORTS) ? nm__err_seq : 0;
    p = a->malloc(a->ctx, size);
    if (NM_UNLIKELY(p == NULL)) return nm__fail(a, size, seq);
    if (!(a->flags & (NM__F_NO_STATS | NM__F_SELF_STATS))) nm__count_alloc(a, nm__block_bytes(a, p, size));
    return p;
}

void *nm_malloc(nm_allocator_t *a, size_t size) {
    void *(*plain_malloc)(size_t) = a->plain_malloc;
    /* a plain backend counting blocks only: its malloc and one counter, nothing else */
    if (plain_malloc != NULL && (a->flags & (NM__F_NO_STATS | NM__F_NO_BYTE_STATS)) == NM__F_NO_BYTE_STATS &&
        size - 1 < NM_MAX_ALLOC) { /* 1..NM_MAX_ALLOC: 0 and too big go the long way */
        void *p = plain_malloc(size);
        if (NM_LIKELY(p != NULL)) {
            nm__bump_allocs(a);
            return p;
        }
        return nm__fail(a, size, 0);
    }
    return nm__malloc(a, size);
}

void *nm_calloc(nm_allocator_t *a, size_t n, size_t size) {
    size_t total;
    void *p;
    unsigned seq;
    if (NM_UNLIKELY(nm_mul_overflow(n, size, &total) || total > NM_MAX_ALLOC)) return nm__too_big(a, n, size);
    if (total == 0) { n = 1; size = 1; total = 1; }
    seq = (a->flags & NM__F_REPORTS) ? nm__err_seq : 0;
    if (a->calloc != NULL) {
        p = a->calloc(a->ctx, n, size);
    } else { /* a backend without calloc */
        p = a->malloc(a->ctx, total);
        if (p != NULL) memset(p, 0, total);
    }
    if (NM_UNLIKELY(p == NULL)) return nm__fail(a, total, seq);
    if (!(a->flags & (NM__F_NO_STATS | NM__F_SELF_STATS))) nm__count_alloc(a, nm__block_bytes(a, p, total));
    return p;
}

void *nm_realloc(nm_allocator_t *a, void *p, size_t size) {
    size_t old_bytes = 0;
    void *q;
    unsigned seq;
    if (p == NULL) return nm_malloc(a, size);
    if (NM_UNLIKELY(size > NM_MAX_ALLOC)) return nm__too_big(a, size, (size_t)-1);
    if (size == 0) size = 1;
    if (!(a->flags & (NM__F_NO_STATS | NM__F_SELF_STATS | NM__F_NO_BYTE_STATS)) && a->usable_size)
        old_bytes = a->usable_size(a->ctx, p);
    seq = (a->flags & NM__F_REPORTS) ? nm__err_seq : 0;
    q = a->realloc(a->ctx, p, size);
    if (NM_UNLIKELY(q == NULL)) return nm__fail(a, size, seq);
    /* it succeeded, yet reported (corruption found releasing the old block): nobody else hears it */
    if (NM_UNLIKELY((a->flags & NM__F_REPORTS) && nm__err_seq != seq)) _nm_report(a->name);
    if (!(a->flags & (NM__F_NO_STATS | NM__F_SELF_STATS | NM__F_NO_BYTE_STATS)) && a->usable_size) {
        intptr_t live, peak;
        size_t new_bytes = (a->flags & NM__F_EXACT_SIZE) ? size : a->usable_size(a->ctx, q);
        live = nm_atomic_add_relaxed(&a->st_live_bytes, (intptr_t)new_bytes - (intptr_t)old_bytes);
        peak = nm_atomic_load_relaxed(&a->st_peak_bytes);
        while (live > peak && !nm_atomic_cas_weak_relaxed(&a->st_peak_bytes, &peak, live)) {
        }
    }
    return q;
}

/* nm_free and nm_free_checked: free p (not NULL) and return NM_OK or the error the allocator
 * reported meanwhile; `report`: hand that error on (_nm_report), as no caller will get it. */
NM_INLINE int nm__free(nm_allocator_t *a, void *p, int report) {
    unsigned flags = a->flags, seq;
    size_t bytes = 0;
    if (flags & NM__F_SELF_STATS) {
        /* It may tear its table down in this very free (the last block after a deferred destroy),
         * so it hands on what it reports itself, before that (debug.c: when _nm_checked_ctx is
         * not its context); nm_free stays one tail call. */
        if (report) {
            a->free(a->ctx, p);
            return NM_OK;
        }
        seq = nm__err_seq;
        a->free(a->ctx, p);
        return nm__err_seq != seq ? nm__err_code : NM_OK;
    }
    if (a->plain_free != NULL) {
        /* A plain backend (reports nothing): counted out first, so that the backend's free is a
         * tail call.  The table may go (a deferred destroy finished by this very free): the
         * function is read before, and the block is the backend's, not the table's. */
        void (*plain_free)(void *) = a->plain_free;
        if (!(flags & NM__F_NO_STATS)) {
            if (!(flags & NM__F_NO_BYTE_STATS) && a->usable_size) bytes = a->usable_size(a->ctx, p);
            nm__count_free(a, bytes);
        }
        plain_free(p);
        return NM_OK;
    }
    if (!(flags & (NM__F_NO_STATS | NM__F_NO_BYTE_STATS))) bytes = a->usable_size ? a->usable_size(a->ctx, p) : 0;
    if (!(flags & NM__F_REPORTS)) { /* plain backends report nothing: no TLS access */
        a->free(a->ctx, p);
        if (!(flags & NM__F_NO_STATS)) nm__count_free(a, bytes);
        return NM_OK;
    }
    seq = nm__err_seq;
    a->free(a->ctx, p);
    if (NM_UNLIKELY(nm__err_seq != seq)) {
        int code = nm__err_code;
        /* reported before the block is counted out: a deferred destroy cannot finish (and free
         * the name) in between */
        if (report) _nm_report(a->name);
        /* An allocator that detects a bad free (debug, arena) sets an error and frees nothing;
         * corruption found while freeing (a damaged canary) is reported but the block is freed. */
        if (!(flags & NM__F_NO_STATS) && code != NM_ERR_INVALID_FREE && code != NM_ERR_DOUBLE_FREE)
            nm__count_free(a, bytes);
        return code;
    }
    if (!(flags & NM__F_NO_STATS)) nm__count_free(a, bytes);
    return NM_OK;
}

static NM_NOINLINE void nm__free_reporting(nm_allocator_t *a, void *p) { (void)nm__free(a, p, 1); }

void nm_free(nm_allocator_t *a, void *p) {
    void (*plain_free)(void *);
    if (p == NULL) return;
    plain_free = a->plain_free;
    /* a plain backend counting blocks only (or nothing): no call but the backend's free, a tail
     * call, unless this free finishes a deferred destroy (counted out first, as in nm__free) */
    if (plain_free != NULL && (a->flags & (NM__F_NO_STATS | NM__F_NO_BYTE_STATS))) {
        if (!(a->flags & NM__F_NO_STATS)) nm__count_free_block(a); /* blocks only: no bytes to count */
        plain_free(p);
        return;
    }
    nm__free_reporting(a, p);
}

int nm_free_checked(nm_allocator_t *a, void *p) {
    void *outer;
    int rc;
    if (p == NULL) return NM_OK;
    if (!(a->flags & NM__F_REPORTS)) return nm__free(a, p, 0);
    outer = _nm_checked_ctx; /* a free inside a free (a wrapper's base) restores the outer one */
    _nm_checked_ctx = a->ctx;
    rc = nm__free(a, p, 0);
    _nm_checked_ctx = outer;
    return rc;
}

/* The largest alignment a block can have.  A block aligned to A starts at a nonzero multiple of
 * A, so at an address >= A: on 64-bit targets no mainstream platform gives a process addresses
 * of 2^56 and more (x86-64 with 5-level paging and RISC-V Sv57 stop below 2^56, arm64 and POWER
 * below 2^53).  On 32-bit targets the size limit below is the tighter one. */
#if UINTPTR_MAX > 0xFFFFFFFFu
#define NM__MAX_ALIGN ((size_t)1 << 55)
#else
#define NM__MAX_ALIGN NM_MAX_ALLOC
#endif

static NM_NOINLINE void *nm__bad_align(nm_allocator_t *a, size_t alignment, size_t size) {
    const char *name = a->name ? a->name : "?";
    nm_atomic_add_relaxed(&a->st_failures, 1);
    if (!_nm_is_pow2(alignment) || alignment % sizeof(void *) != 0)
        _nm_set_error(NM_ERR_INVALID,
                      "memalign(alignment=%zu, size=%zu) from '%s': the alignment is not a power of two multiple "
                      "of sizeof(void *) (%zu)", alignment, size, name, sizeof(void *));
    else if (alignment > NM__MAX_ALIGN)
        _nm_set_error(NM_ERR_INVALID,
                      "memalign(alignment=%zu, size=%zu) from '%s': no block can be aligned to more than %zu bytes "
                      "(it would start beyond the address space a process gets)", alignment, size, name,
                      (size_t)NM__MAX_ALIGN);
    else
        _nm_set_error(NM_ERR_OVERFLOW,
                      "memalign(alignment=%zu, size=%zu) from '%s': size plus alignment exceeds the maximum "
                      "allocation (%zu)", alignment, size, name, (size_t)NM_MAX_ALLOC);
    return NULL;
}

void *nm_memalign(nm_allocator_t *a, size_t alignment, size_t size) {
    void *p;
    unsigned seq;
    if (NM_UNLIKELY(!_nm_is_pow2(alignment) || alignment % sizeof(void *) != 0 || alignment > NM__MAX_ALIGN ||
                    size > NM_MAX_ALLOC || alignment > NM_MAX_ALLOC - size))
        return nm__bad_align(a, alignment, size);
    if (size == 0) size = 1;
    seq = (a->flags & NM__F_REPORTS) ? nm__err_seq : 0;
    p = a->memalign(a->ctx, alignment, size);
    if (NM_UNLIKELY(p == NULL)) return nm__fail_aligned(a, alignment, size, seq);
    if (!(a->flags & (NM__F_NO_STATS | NM__F_SELF_STATS))) nm__count_alloc(a, nm__block_bytes(a, p, size));
    return p;
}

/* The *_at variants set the site for the duration of the call only. */
#define NM__WITH_SITE(type, expr)                                                        \
    do {                                                                                 \
        const char *of = _nm_site_file;                                                  \
        int ol = _nm_site_line;                                                          \
        type r;                                                                          \
        _nm_site_file = file;                                                            \
        _nm_site_line = line;                                                            \
        r = (expr);                                                                      \
        _nm_site_file = of;                                                              \
        _nm_site_line = ol;                                                              \
        return r;                                                                        \
    } while (0)

void *nm_malloc_at(nm_allocator_t *a, size_t size, const char *file, int line) {
    NM__WITH_SITE(void *, nm_malloc(a, size));
}
void *nm_calloc_at(nm_allocator_t *a, size_t n, size_t size, const char *file, int line) {
    NM__WITH_SITE(void *, nm_calloc(a, n, size));
}
void *nm_realloc_at(nm_allocator_t *a, void *p, size_t size, const char *file, int line) {
    NM__WITH_SITE(void *, nm_realloc(a, p, size));
}
void *nm_memalign_at(nm_allocator_t *a, size_t alignment, size_t size, const char *file, int line) {
    NM__WITH_SITE(void *, nm_memalign(a, alignment, size));
}
int nm_free_checked_at(nm_allocator_t *a, void *p, const char *file, int line) {
    NM__WITH_SITE(int, nm_free_checked(a, p));
}

size_t nm_allocator_alignment(nm_allocator_t *a) { return _nm_alignment(a); }

size_t nm_usable_size(nm_allocator_t *a, const void *p) {
    return (p && a->usable_size) ? a->usable_size(a->ctx, p) : 0;
}

void nm_allocator_stats(nm_allocator_t *a, nm_alloc_stats_t *out) {
    intptr_t al, fr;
    nm__sums(a, &al, &fr);
    out->live_blocks = al - fr;
    out->live_bytes = nm_atomic_load_relaxed(&a->st_live_bytes);
    out->peak_bytes = nm_atomic_load_relaxed(&a->st_peak_bytes);
    out->total_allocs = al;
    out->total_frees = fr;
    out->failures = nm_atomic_load_relaxed(&a->st_failures);
}

void nm_allocator_reset_peak(nm_allocator_t *a) {
    nm_atomic_store_relaxed(&a->st_peak_bytes, nm_atomic_load_relaxed(&a->st_live_bytes));
}

/* ---- instances and their lifetime ---------------------------------------------------- */
/* The context starts at a multiple of NM_MALLOC_ALIGN, as calloc's block does: sizeof the instance
 * need not be one (on 32-bit targets it is a multiple of 4 only as far as the C standard goes),
 * and a context right after it could misalign its 8-byte fields (MSVC x86 aligns uint64_t to 8). */
#define NM__CTX_OFFSET ((size_t)_nm_align_up(sizeof(nm_allocator_t), NM_MALLOC_ALIGN))

static int nm__ops_valid(const nm_allocator_ops_t *ops, const char *name) {
    if (ops == NULL || !ops->malloc || !ops->realloc || !ops->free || !ops->memalign)
        return _nm_set_error(NM_ERR_INVALID, "allocator '%s': its ops need malloc, realloc, free and memalign",
                             name ? name : "?");
    if (ops->alignment != 0 && !_nm_is_pow2(ops->alignment))
        return _nm_set_error(NM_ERR_INVALID, "allocator '%s': alignment %zu is not a power of two",
                             name ? name : "?", ops->alignment);
    if (ops->flags & ~(unsigned)NM_OPS_EXACT_SIZE)
        return _nm_set_error(NM_ERR_INVALID, "allocator '%s': unknown ops flags %#x", name ? name : "?",
                             ops->flags);
    return NM_OK;
}

/* The instance comes from the C library directly: nativemem's own allocators are built on it. */
nm_allocator_t *_nm_allocator_make(const char *name, const nm_allocator_ops_t *ops, size_t ctx_size,
                                   unsigned extra_flags) {
    size_t nlen = strlen(name ? name : "") + 1;
    size_t slots_at = NM__CTX_OFFSET + _nm_align_up(ctx_size, 16);
    size_t total = slots_at + sizeof(nm__slot_t) * NM__SLOTS + nlen;
    char *mem = (char *)calloc(1, total);
    nm_allocator_t *a;
    if (mem == NULL) return (nm_allocator_t *)_nm_oom("allocator instance", total);
    a = (nm_allocator_t *)mem;
    a->malloc = ops->malloc;
    a->calloc = ops->calloc;
    a->realloc = ops->realloc;
    a->free = ops->free;
    a->memalign = ops->memalign;
    a->usable_size = ops->usable_size;
    a->destroy = ops->destroy;
    a->ops = ops;
    /* block counts only by default (NM_STATS_BLOCKS): exact bytes are asked for (nm_allocator_set_stats) */
    a->flags = ops->flags | extra_flags | NM__F_NO_BYTE_STATS;
    a->alignment = ops->alignment ? ops->alignment : NM_MALLOC_ALIGN;
    a->ctx = ctx_size ? mem + NM__CTX_OFFSET : NULL;
    a->slots = (nm__slot_t *)(mem + slots_at);
    a->name = mem + slots_at + sizeof(nm__slot_t) * NM__SLOTS;
    memcpy((char *)a->name, name ? name : "", nlen);
    return a;
}

void _nm_table_free(nm_allocator_t *a) { free(a); }

nm_allocator_t *nm_allocator_new(const char *name, const nm_allocator_ops_t *ops, void *ctx) {
    nm_allocator_t *a;
    if (nm__ops_valid(ops, name) != NM_OK) return NULL;
    a = _nm_allocator_make(name, ops, 0, 0);
    if (a != NULL) a->ctx = ctx;
    return a;
}

const char *nm_allocator_name(nm_allocator_t *a) { return a->name; }
void *nm_allocator_context(nm_allocator_t *a) { return a->ctx; }

int nm_allocator_set_stats(nm_allocator_t *a, int mode) {
    intptr_t al, fr;
    unsigned f;
    if (mode != NM_STATS_OFF && mode != NM_STATS_BLOCKS && mode != NM_STATS_BYTES)
        return _nm_set_error(NM_ERR_INVALID, "allocator '%s': unknown statistics mode %d", a->name, mode);
    if (a->flags & (NM__F_SELF_STATS | NM__F_STATIC))
        return _nm_set_error(NM_ERR_UNSUPPORTED, "allocator '%s' keeps its own statistics", a->name);
    if ((a->flags & NM__F_NO_STATS) && mode != NM_STATS_OFF) /* its blocks so far were never counted */
        return _nm_set_error(NM_ERR_BUSY, "allocator '%s': NM_STATS_OFF is final (what it allocated was not "
                             "counted, so no later mode could count it)", a->name);
    if (mode == NM_STATS_BYTES && a->usable_size == NULL) /* a free could not tell how many bytes go */
        return _nm_set_error(NM_ERR_UNSUPPORTED, "allocator '%s' has no usable_size: it cannot count bytes",
                             a->name);
    nm__sums(a, &al, &fr);
    if (al != 0)
        return _nm_set_error(NM_ERR_BUSY, "allocator '%s' has allocated already: set its statistics mode first",
                             a->name);
    f = a->flags & ~(unsigned)(NM__F_NO_STATS | NM__F_NO_BYTE_STATS);
    if (mode == NM_STATS_OFF) f |= NM__F_NO_STATS;
    else if (mode == NM_STATS_BLOCKS) f |= NM__F_NO_BYTE_STATS;
    a->flags = f;
    return NM_OK;
}

int nm_allocator_get_stats_mode(nm_allocator_t *a) {
    if (a->flags & NM__F_NO_STATS) return NM_STATS_OFF;
    return (a->flags & NM__F_NO_BYTE_STATS) ? NM_STATS_BLOCKS : NM_STATS_BYTES;
}

static void nm__destroy_now(nm_allocator_t *a) {
    void (*destroy)(void *) = (a->flags & NM__F_BORROWED) ? NULL : a->destroy;
    if (a->flags & NM__F_OWNS_TABLE) { /* it frees the instance too, maybe later */
        destroy(a->ctx);
        return;
    }
    if (destroy != NULL) destroy(a->ctx);
    _nm_table_free(a);
}

/* Destroy an instance that may report (debug.c verifies its quarantine while tearing down): what
 * it reports has no caller to go to.  The name is copied first: the instance goes with the call. */
static NM_NOINLINE void nm__destroy_reporting(nm_allocator_t *a) {
    char name[64];
    unsigned seq = nm__err_seq;
    snprintf(name, sizeof name, "%s", a->name ? a->name : "?");
    nm__destroy_now(a);
    if (nm__err_seq != seq) _nm_report(name);
}

void nm_allocator_destroy(nm_allocator_t *a) {
    intptr_t expected = 0;
    size_t i;
    if (a == NULL || (a->flags & NM__F_STATIC)) return;
    if (a->flags & (NM__F_NO_STATS | NM__F_SELF_STATS)) { /* the latter defer by themselves */
        if (a->flags & NM__F_REPORTS) nm__destroy_reporting(a);
        else nm__destroy_now(a);
        return;
    }
    /* Defer while blocks are live; the last nm_free finishes the job (see nm__count_free). */
    if (!nm_atomic_cas(&a->st_dying, &expected, 1)) return; /* already requested */
    nm_atfork_register(&nm__dying_fork); /* once; before taking the lock it protects */
    nm_mutex_lock(&nm__dying_lock);
    for (i = 0; i < NM__DYING_MAX && nm_atomic_load_relaxed(&nm__dying[i]) != 0; i++) {
    }
    if (i == NM__DYING_MAX) { /* never expected: 256 allocators at once waiting for their last block */
        nm_mutex_unlock(&nm__dying_lock);
        _nm_set_error(NM_ERR_BUSY, "allocator '%s' destroyed with blocks live while %d others wait: it is left "
                      "alive (leaked)", a->name ? a->name : "?", NM__DYING_MAX);
        _nm_report(a->name);
        return;
    }
    nm_atomic_store_release(&nm__dying[i], (intptr_t)a);
    nm_atomic_add_relaxed(&nm__dying_n, 1);
    nm_mutex_unlock(&nm__dying_lock);
    if (nm_atomic_load_acquire(&nm__slots_state) == 1) nm_heavy_barrier(); /* plain-store bumps: see above */
    else nm_atomic_fence_seq_cst();
    nm__finish_destroy(a);
}

nm_allocator_t *nm_allocator_clone(nm_allocator_t *base, const char *name) {
    unsigned keep = base->flags & ~(unsigned)(NM__F_STATIC | NM__F_OWNS_TABLE);
    /* the base's functions (its ops may be gone: only instances keep them) */
    nm_allocator_ops_t ops = {base->malloc, base->calloc, base->realloc, base->free, base->memalign,
                              base->usable_size, NULL, base->alignment, base->flags & NM_OPS_EXACT_SIZE};
    nm_allocator_t *a = _nm_allocator_make(name ? name : base->name, &ops, 0, keep | NM__F_BORROWED);
    if (a == NULL) return NULL;
    a->ops = base->ops; /* its identity */
    a->ctx = base->ctx;
    a->alignment = base->alignment;
    a->plain_malloc = base->plain_malloc;
    a->plain_free = base->plain_free;
    return a;
}

/* ---- build information --------------------------------------------------------------- */
int nm_build_has_valgrind(void) {
#if defined(NM_HAVE_VALGRIND)
    return 1;
#else
    return 0;
#endif
}
int nm_build_has_asan(void) {
#if defined(NM_HAVE_ASAN)
    return 1;
#else
    return 0;
#endif
}
