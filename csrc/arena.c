/* arena.c -- the bounded arena: one fixed region, reserved once, managed by TLSF.
 *
 * Movian's PS3 build replaces libc's heap with TLSF over one reserved region; this is the same
 * idea as an ordinary nm_allocator_t.  Two-level segregated fit: a first-level index by power of
 * two and 16 linear second-level classes per power, bitmaps to find a fitting non-empty list
 * with two bit scans, boundary tags (each header points to its physical predecessor) for O(1)
 * coalescing.  Every header carries a magic word derived from its address, so frees of foreign
 * pointers and double frees are reported instead of corrupting the heap.  One lock serialises
 * the heap's operations (as Movian's lwmutex does): a spinlock, the critical sections being
 * short (the full-heap walks of nm_arena_stats/check excepted, which are rare).
 *
 * Caches.  Small blocks (up to NM__QMAX bytes) that are freed are kept whole, up to NM__QDEPTH
 * per size in the cache's own arrays (never linked through the blocks, where an overflow could
 * forge a link), and handed to the next request of their size without a search, a split or a
 * merge.
 * An arena used by one thread at a time has one such cache, the quick cache, under the heap's
 * lock.  Once two threads have met on that lock (a try-lock failed), the arena is `mt` for good
 * and its small blocks also go through NM__ATC striped caches, a thread using the one of its
 * front-door counter slot (alloc.c; distinct for the first NM__ATC threads), each under its own
 * spinlock: two threads then no longer meet on one lock, and touch the heap only when their
 * cache is empty or full.  A cached block stays "used" for TLSF (NM__ACACHED set in its size
 * word with a compare-and-swap, which is also what makes a racing double free lose); every cache
 * is emptied into the heap when a search fails and before a walk (nm_arena_stats,
 * nm_arena_check), so the arena's bound and its statistics are unchanged.  Lock order: the
 * heap's lock, then a stripe's; no path holds a stripe's lock while it takes the heap's.  Header
 * words that paths touch without the heap's lock (size, magic) are read and written with relaxed
 * atomics everywhere.
 */
#include "nm_internal.h"
#include "nm_testing.h"

#include <stdio.h>

/* ---- block layout ------------------------------------------------------------------------ */
typedef struct nm__ablk {
    struct nm__ablk *prev_phys; /* physical predecessor (NULL for the first block)          */
    size_t size;                /* whole block incl. header, multiple of 16; bit 0 = free */
    size_t magic;               /* NM__AMAGIC ^ address: identifies a header              */
    size_t req;                 /* requested bytes (used blocks)                          */
    /* free blocks only, stored in the payload: */
    struct nm__ablk *next_free;
    struct nm__ablk *prev_free;
} nm__ablk_t;

#define NM__AHDR       ((size_t)32)          /* header bytes before the payload             */
#define NM__AALIGN     ((size_t)16)
#define NM__AMIN       ((size_t)64)          /* smallest block: header + free-list links    */
#define NM__AFREE      ((size_t)1)
#define NM__ACACHED    ((size_t)2)           /* freed, kept whole in a thread cache            */
#define NM__QMAX       ((size_t)512)         /* largest cached block (header included)          */
#define NM__QCLASSES   (NM__QMAX / NM__AALIGN + 1) /* cached sizes, by size / 16              */
#define NM__QDEPTH     8                     /* blocks of one size in one cache                 */
#define NM__AMAGIC     ((size_t)0x6e6d4152454e4121ull)
#define NM__SL_LOG2    4
#define NM__SL_COUNT   (1 << NM__SL_LOG2)
#define NM__FL_SHIFT   8                     /* sizes below 256 share first-level index 0    */
#define NM__FL_COUNT   32                    /* classes up to 2^38 bytes: bitmaps fit 32 bits */

#define NM__ATC        8                     /* striped caches of an `mt` arena                 */

/* A cache (see the top of the file).  `blocks` is also read by flushers, without the lock, as a
 * hint that the cache holds something. */
typedef struct nm__atc {
    nm_spin_t lock;         /* a stripe's (the quick cache is under the heap's lock)        */
    nm_atomic_t blocks;
    unsigned char n[NM__QCLASSES];
    nm__ablk_t *b[NM__QCLASSES][NM__QDEPTH];
    char pad[64];           /* two stripes (two threads) never share a line                  */
} nm__atc_t;

typedef struct nm__arena {
    nm_spin_t lock; /* short critical sections: a spinlock (platform.h) */
    nm_allocator_t *base;   /* where the region came from (NULL: the OS)              */
    char *region;           /* as obtained                                              */
    size_t region_size;
    char *start, *end;      /* blocks live in [start, end); a sentinel header at end     */
    size_t capacity;
    uint32_t fl_bitmap;
    uint32_t sl_bitmap[NM__FL_COUNT];
    nm__ablk_t *heads[NM__FL_COUNT][NM__SL_COUNT];
    nm_atfork_t fork;       /* fork safety: the lock above (platform.h) */
    nm__atc_t quick;        /* the quick cache (the heap's lock)                        */
    nm_atomic_t mt;         /* two threads have met on the lock: the stripes are in use  */
    nm__atc_t tc[NM__ATC];  /* the stripes: slot s uses tc[(s - 1) % NM__ATC]            */
    nm_allocator_t *self;   /* its instance (the destroy frees both)                     */
} nm__arena_t;

/* The size word, flags included (relaxed atomics: cache paths CAS it without the heap's lock). */
NM_INLINE size_t nm__bword(const nm__ablk_t *b) { return (size_t)nm_atomic_load_relaxed((nm_atomic_t *)&b->size); }
NM_INLINE void nm__bset(nm__ablk_t *b, size_t word) { nm_atomic_store_relaxed((nm_atomic_t *)&b->size, (intptr_t)word); }
NM_INLINE size_t nm__bsize(const nm__ablk_t *b) { return nm__bword(b) & ~(NM__AFREE | NM__ACACHED); }
NM_INLINE int nm__bfree(const nm__ablk_t *b) { return (int)(nm__bword(b) & NM__AFREE); }
/* free or in a thread cache: not a block its owner may use */
NM_INLINE int nm__bgone(const nm__ablk_t *b) { return (nm__bword(b) & (NM__AFREE | NM__ACACHED)) != 0; }
NM_INLINE size_t nm__bmagic(const nm__ablk_t *b) { return NM__AMAGIC ^ (size_t)(uintptr_t)b; }
/* The magic word (read by the lock-free free path). */
NM_INLINE size_t nm__bmagic_word(const nm__ablk_t *b) { return (size_t)nm_atomic_load_relaxed((nm_atomic_t *)&b->magic); }
NM_INLINE void nm__bset_magic(nm__ablk_t *b, size_t m) { nm_atomic_store_relaxed((nm_atomic_t *)&b->magic, (intptr_t)m); }
NM_INLINE nm__ablk_t *nm__bnext(const nm__ablk_t *b) { return (nm__ablk_t *)((char *)b + nm__bsize(b)); }
NM_INLINE void *nm__bpayload(nm__ablk_t *b) { return (char *)b + NM__AHDR; }
NM_INLINE nm__ablk_t *nm__bof(const void *p) { return (nm__ablk_t *)((char *)p - NM__AHDR); }

/* ---- size classes ------------------------------------------------------------------------- */
static void nm__mapping(size_t size, int *fl, int *sl) {
    if (size < ((size_t)1 << NM__FL_SHIFT)) {
        *fl = 0;
        *sl = (int)(size / (((size_t)1 << NM__FL_SHIFT) / NM__SL_COUNT));
    } else {
        int f = nm_fls_size(size);
        *sl = (int)((size >> (f - NM__SL_LOG2)) ^ ((size_t)1 << NM__SL_LOG2));
        *fl = f - (NM__FL_SHIFT - 1);
    }
}

/* Round a request up so that any block in its class fits it. */
static size_t nm__round_for_search(size_t size) {
    if (size >= ((size_t)1 << NM__FL_SHIFT)) {
        size_t round = ((size_t)1 << (nm_fls_size(size) - NM__SL_LOG2)) - 1;
        if (size > SIZE_MAX - round) return SIZE_MAX;
        size += round;
    }
    return size;
}

static void nm__list_insert(nm__arena_t *ar, nm__ablk_t *b) {
    int fl, sl;
    nm__mapping(nm__bsize(b), &fl, &sl);
    b->prev_free = NULL;
    b->next_free = ar->heads[fl][sl];
    if (b->next_free) b->next_free->prev_free = b;
    ar->heads[fl][sl] = b;
    ar->fl_bitmap |= 1u << fl;
    ar->sl_bitmap[fl] |= 1u << sl;
}

static void nm__list_remove(nm__arena_t *ar, nm__ablk_t *b) {
    int fl, sl;
    nm__mapping(nm__bsize(b), &fl, &sl);
    if (b->prev_free) b->prev_free->next_free = b->next_free;
    else ar->heads[fl][sl] = b->next_free;
    if (b->next_free) b->next_free->prev_free = b->prev_free;
    if (ar->heads[fl][sl] == NULL) {
        ar->sl_bitmap[fl] &= ~(1u << sl);
        if (ar->sl_bitmap[fl] == 0) ar->fl_bitmap &= ~(1u << fl);
    }
}

/* Slow path when no class above the request has a block: the request's own class may still
 * hold one big enough (TLSF rounds up to guarantee a fit in O(1); near-full arenas need this). */
static NM_NOINLINE nm__ablk_t *nm__find_exact(nm__arena_t *ar, size_t size) {
    int fl, sl;
    nm__ablk_t *b;
    nm__mapping(size, &fl, &sl);
    if (fl >= NM__FL_COUNT) return NULL;
    for (b = ar->heads[fl][sl]; b; b = b->next_free)
        if (nm__bsize(b) >= size) return b;
    return NULL;
}

/* A free block of at least `size` bytes (already a multiple of 16), or NULL. */
static nm__ablk_t *nm__find_free(nm__arena_t *ar, size_t size) {
    int fl, sl;
    uint32_t slmap, flmap;
    size_t rounded = nm__round_for_search(size);
    if (rounded == SIZE_MAX) return NULL;
    nm__mapping(rounded, &fl, &sl);
    if (fl >= NM__FL_COUNT) return nm__find_exact(ar, size);
    slmap = ar->sl_bitmap[fl] & (~0u << sl);
    if (slmap == 0) {
        flmap = fl + 1 < 32 ? ar->fl_bitmap & (~0u << (fl + 1)) : 0;
        if (flmap == 0) return nm__find_exact(ar, size);
        fl = nm_ctz32(flmap);
        slmap = ar->sl_bitmap[fl];
    }
    sl = nm_ctz32(slmap);
    return ar->heads[fl][sl];
}

/* Write a header for a block at `b` of `size` bytes after `prev`, and fix its successor. */
static void nm__set_block(nm__ablk_t *b, nm__ablk_t *prev, size_t size, int free_) {
    b->prev_phys = prev;
    nm__bset(b, size | (free_ ? NM__AFREE : 0));
    nm__bset_magic(b, nm__bmagic(b));
    b->req = 0;
}

/* Give the tail of used block `b` beyond `keep` bytes back to the free lists (merging with a
 * free successor) when it is large enough to be a block. */
static void nm__trim(nm__arena_t *ar, nm__ablk_t *b, size_t keep) {
    size_t have = nm__bsize(b);
    nm__ablk_t *rest, *next;
    if (have < keep + NM__AMIN) return;
    rest = (nm__ablk_t *)((char *)b + keep);
    next = nm__bnext(b);
    nm__bset(b, keep);
    nm__set_block(rest, b, have - keep, 1);
    if (nm__bfree(next)) {
        nm__list_remove(ar, next);
        nm__bset(rest, (nm__bsize(rest) + nm__bsize(next)) | NM__AFREE);
        nm__bset_magic(next, 0); /* no longer a header */
        next = nm__bnext(rest);
    }
    next->prev_phys = rest;
    nm__list_insert(ar, rest);
}

/* Block size needed for `req` payload bytes; 0 on overflow. */
static size_t nm__need(size_t req) {
    size_t n;
    if (req > NM_MAX_ALLOC - NM__AHDR - NM__AALIGN) return 0;
    n = (size_t)_nm_align_up(req + NM__AHDR, NM__AALIGN);
    return n < NM__AMIN ? NM__AMIN : n;
}

static void nm__free_locked(nm__arena_t *ar, nm__ablk_t *b);

/* ---- caches (see the top of the file) ------------------------------------------------------ */
/* Takes a block of class `c` from cache `tc` (its lock held), still marked cached; NULL when it
 * has none. */
NM_INLINE nm__ablk_t *nm__cache_pop(nm__atc_t *tc, size_t c) {
    if (tc->n[c] == 0) return NULL;
    nm_atomic_store_relaxed(&tc->blocks, nm_atomic_load_relaxed(&tc->blocks) - 1);
    return tc->b[c][--tc->n[c]];
}

/* Puts claimed block `b` (marked cached) of class `c` on cache `tc` (its lock held); 0 when that
 * size is full. */
NM_INLINE int nm__cache_push(nm__atc_t *tc, nm__ablk_t *b, size_t c) {
    if (tc->n[c] >= NM__QDEPTH) return 0;
    tc->b[c][tc->n[c]++] = b;
    nm_atomic_store_relaxed(&tc->blocks, nm_atomic_load_relaxed(&tc->blocks) + 1);
    return 1;
}

/* A popped block handed out for `req` bytes. */
NM_INLINE void *nm__cache_hand_out(nm__ablk_t *b, size_t c, size_t req) {
    nm__bset(b, c * NM__AALIGN); /* ours alone now: no CAS needed */
    b->req = req;
    return nm__bpayload(b);
}

/* Empties cache `tc` into the heap (the heap's lock held, and the cache's); 1 when it held
 * anything. */
static int nm__cache_drain(nm__arena_t *ar, nm__atc_t *tc) {
    size_t c;
    if (nm_atomic_load_relaxed(&tc->blocks) == 0) return 0;
    for (c = 0; c < NM__QCLASSES; c++) {
        nm__ablk_t *b;
        while ((b = nm__cache_pop(tc, c)) != NULL) nm__free_locked(ar, b); /* cached -> free in one store */
    }
    return 1;
}

/* Empty every cache into the heap (the heap's lock held); 1 when they held anything. */
static NM_NOINLINE int nm__caches_flush(nm__arena_t *ar) {
    int any = nm__cache_drain(ar, &ar->quick);
    size_t i;
    for (i = 0; i < NM__ATC; i++) {
        nm__atc_t *tc = &ar->tc[i];
        if (nm_atomic_load_relaxed(&tc->blocks) == 0) continue;
        nm_spin_lock(&tc->lock);
        any |= nm__cache_drain(ar, tc);
        nm_spin_unlock(&tc->lock);
    }
    return any;
}

/* A free block of at least `need` bytes, the caches emptied first if that is what it takes. */
static nm__ablk_t *nm__find_or_flush(nm__arena_t *ar, size_t need) {
    nm__ablk_t *b = nm__find_free(ar, need);
    if (NM_UNLIKELY(b == NULL) && nm__caches_flush(ar)) b = nm__find_free(ar, need);
    return b;
}

/* The calling thread's stripe, locked. */
NM_INLINE nm__atc_t *nm__stripe_lock(nm__arena_t *ar) {
    unsigned s = _nm_ts.slot;
    nm__atc_t *tc;
    if (NM_UNLIKELY(s == 0)) s = _nm_slot_claim();
    tc = &ar->tc[(s - 1) % NM__ATC];
    nm_spin_lock(&tc->lock);
    return tc;
}

/* The heap's lock if nobody holds it; else the arena becomes `mt` (0 returned). */
NM_INLINE int nm__heap_trylock(nm__arena_t *ar) {
    if (NM_LIKELY(nm_atomic_exchange(&ar->lock, 1) == 0)) return 1;
    nm_atomic_store_relaxed(&ar->mt, 1);
    return 0;
}

static void *nm__alloc_locked(nm__arena_t *ar, size_t req) {
    size_t need = nm__need(req);
    nm__ablk_t *b;
    if (need == 0) return NULL;
    if (need <= NM__QMAX && (b = nm__cache_pop(&ar->quick, need / NM__AALIGN)) != NULL) /* the quick cache */
        return nm__cache_hand_out(b, need / NM__AALIGN, req);
    b = nm__find_or_flush(ar, need);
    if (b == NULL) return NULL;
    nm__list_remove(ar, b);
    nm__bset(b, nm__bsize(b));
    nm__trim(ar, b, need);
    b->req = req;
    return nm__bpayload(b);
}

/* Why a pointer handed to free/realloc is not a live block of this arena: the error set. */
static NM_NOINLINE nm__ablk_t *nm__invalid(nm__arena_t *ar, const void *p, const char *what, int freed_code) {
    const char *c = (const char *)p;
    nm__ablk_t *b;
    if (c < ar->start + NM__AHDR || c >= ar->end || ((uintptr_t)(c - ar->start) % NM__AALIGN) != 0) {
        _nm_set_error(NM_ERR_INVALID_FREE, "%s of %p: not a block of this arena [%p, %p)", what, p,
                      (void *)ar->start, (void *)ar->end);
        return NULL;
    }
    b = nm__bof(p);
    if (nm__bmagic_word(b) != nm__bmagic(b))
        _nm_set_error(NM_ERR_INVALID_FREE, "%s of %p: not the start of a block of this arena", what, p);
    else if (nm__bgone(b))
        _nm_set_error(freed_code, "%s of %p: block is already free", what, p);
    else
        _nm_set_error(NM_ERR_CORRUPT, "%s of %p: the block's header is damaged (size word %#zx; a write before "
                      "the block or past the one before it?)", what, p, nm__bword(b));
    return NULL;
}

/* Validate a pointer handed to free/realloc; returns its header or NULL with the error set. */
/* Its header must be whole too: a size that is a block's and ends at a header that points back
 * (the boundary tags), so a damaged size word is reported, never followed. */
NM_INLINE nm__ablk_t *nm__validate(nm__arena_t *ar, const void *p, const char *what, int freed_code) {
    const char *c = (const char *)p;
    nm__ablk_t *b = nm__bof(p);
    if (NM_LIKELY(c >= ar->start + NM__AHDR && c < ar->end && ((uintptr_t)(c - ar->start) % NM__AALIGN) == 0 &&
                  nm__bmagic_word(b) == nm__bmagic(b))) {
        size_t w = nm__bword(b);
        if (NM_LIKELY(!(w & (NM__AFREE | NM__ACACHED)) && w >= NM__AMIN && (w % NM__AALIGN) == 0 &&
                      w <= (size_t)(ar->end - (const char *)b) && ((nm__ablk_t *)((char *)b + w))->prev_phys == b))
            return b;
    }
    return nm__invalid(ar, p, what, freed_code);
}

/* Frees used or cached block `b` into the heap (lock held).  A cached block turns free in one
 * store, never looking used in between: a free racing with a flush must not claim it. */
static void nm__free_locked(nm__arena_t *ar, nm__ablk_t *b) {
    nm__ablk_t *prev = b->prev_phys, *next = nm__bnext(b);
    nm__bset(b, nm__bsize(b) | NM__AFREE);
    if (prev && nm__bfree(prev)) {
        nm__list_remove(ar, prev);
        nm__bset(prev, (nm__bsize(prev) + nm__bsize(b)) | NM__AFREE);
        b = prev;
    }
    if (nm__bfree(next)) {
        nm__list_remove(ar, next);
        nm__bset(b, (nm__bsize(b) + nm__bsize(next)) | NM__AFREE);
        nm__bset_magic(next, 0);
    }
    nm__bnext(b)->prev_phys = b;
    nm__list_insert(ar, b);
}

/* ---- the allocator table's functions -------------------------------------------------------- */
/* An `mt` arena's malloc: the thread's stripe for small sizes, else (or empty) the heap. */
static NM_NOINLINE void *nm__arena_malloc_mt(nm__arena_t *ar, size_t n) {
    size_t need = nm__need(n);
    void *p;
    if (need - 1 < NM__QMAX) {
        size_t c = need / NM__AALIGN;
        nm__atc_t *tc = nm__stripe_lock(ar);
        nm__ablk_t *b = nm__cache_pop(tc, c);
        nm_spin_unlock(&tc->lock);
        if (b != NULL) return nm__cache_hand_out(b, c, n);
    }
    nm_spin_lock(&ar->lock);
    p = nm__alloc_locked(ar, n);
    nm_spin_unlock(&ar->lock);
    return p;
}

static void *nm__arena_malloc(void *ctx, size_t n) {
    nm__arena_t *ar = (nm__arena_t *)ctx;
    void *p;
    /* one thread at a time: the heap's lock (the quick cache, then the heap), as before any
     * contention; the first try-lock that fails makes the arena `mt` */
    if (NM_LIKELY(nm_atomic_load_relaxed(&ar->mt) == 0)) {
        if (NM_LIKELY(nm__heap_trylock(ar))) {
            p = nm__alloc_locked(ar, n);
            nm_spin_unlock(&ar->lock);
            return p;
        }
    }
    return nm__arena_malloc_mt(ar, n);
}

static void *nm__arena_calloc(void *ctx, size_t n, size_t s) {
    void *p = nm__arena_malloc(ctx, n * s); /* product checked by nm_calloc */
    if (p) memset(p, 0, n * s);
    return p;
}

/* Marks small block `b` cached (its size word read as `word`), with a CAS: of two racing frees
 * one loses.  0 (the error set) when it was free or cached already. */
NM_INLINE int nm__claim(nm__ablk_t *b, size_t word, const void *p) {
    intptr_t expected = (intptr_t)word;
    if (NM_LIKELY(!(word & (NM__AFREE | NM__ACACHED))) &&
        NM_LIKELY(nm_atomic_cas((nm_atomic_t *)&b->size, &expected, (intptr_t)(word | NM__ACACHED))))
        return 1;
    _nm_set_error(NM_ERR_DOUBLE_FREE, "free of %p: block is already free", p);
    return 0;
}

/* An `mt` arena's free: small blocks to the thread's stripe (the heap when it is full), others to
 * the heap.  The header is checked without the heap's lock: it lies inside the region (always
 * mapped), and the claim's CAS settles a race with another free of the block. */
static NM_NOINLINE void nm__arena_free_mt(nm__arena_t *ar, void *p) {
    nm__ablk_t *b = nm__validate(ar, p, "free", NM_ERR_DOUBLE_FREE);
    size_t word, c;
    if (b == NULL) return;
    word = nm__bword(b);
    c = (word & ~(NM__AFREE | NM__ACACHED)) / NM__AALIGN;
    if (c * NM__AALIGN <= NM__QMAX) {
        nm__atc_t *tc;
        int kept;
        if (!nm__claim(b, word, p)) return;
        tc = nm__stripe_lock(ar);
        kept = nm__cache_push(tc, b, c);
        nm_spin_unlock(&tc->lock);
        if (kept) return;
        nm_spin_lock(&ar->lock); /* the stripe is full: to the heap (claimed: still ours) */
        nm__free_locked(ar, b);
        nm_spin_unlock(&ar->lock);
        return;
    }
    nm_spin_lock(&ar->lock);
    b = nm__validate(ar, p, "free", NM_ERR_DOUBLE_FREE); /* again, under the lock that rules it */
    if (b) nm__free_locked(ar, b);
    nm_spin_unlock(&ar->lock);
}

static void nm__arena_free(void *ctx, void *p) {
    nm__arena_t *ar = (nm__arena_t *)ctx;
    if (NM_LIKELY(nm_atomic_load_relaxed(&ar->mt) == 0)) {
        if (NM_LIKELY(nm__heap_trylock(ar))) { /* one thread at a time (see nm__arena_malloc) */
            nm__ablk_t *b = nm__validate(ar, p, "free", NM_ERR_DOUBLE_FREE);
            if (b != NULL) {
                size_t word = nm__bword(b), c = (word & ~(NM__AFREE | NM__ACACHED)) / NM__AALIGN;
                if (c * NM__AALIGN > NM__QMAX) {
                    nm__free_locked(ar, b);
                } else if (nm__claim(b, word, p) && !nm__cache_push(&ar->quick, b, c)) {
                    nm__free_locked(ar, b); /* claimed (cached) -> free */
                }
            }
            nm_spin_unlock(&ar->lock);
            return;
        }
    }
    nm__arena_free_mt(ar, p);
}

static void *nm__arena_realloc(void *ctx, void *p, size_t n) {
    nm__arena_t *ar = (nm__arena_t *)ctx;
    nm__ablk_t *b, *next;
    size_t need = nm__need(n), have;
    void *q = NULL;
    nm_spin_lock(&ar->lock);
    b = nm__validate(ar, p, "realloc", NM_ERR_REALLOC_FREED);
    if (b == NULL || need == 0) goto out;
    have = nm__bsize(b);
    next = nm__bnext(b);
    if (need > have && (nm__bword(next) & NM__ACACHED) && nm__caches_flush(ar))
        next = nm__bnext(b); /* a cached neighbour is free space: merged back, it may hold the growth */
    if (need <= have) { /* shrink in place */
        nm__trim(ar, b, need);
        b->req = n;
        q = p;
    } else if (nm__bfree(next) && have + nm__bsize(next) >= need) { /* grow into the free neighbour */
        nm__list_remove(ar, next);
        nm__bset(b, have + nm__bsize(next));
        nm__bset_magic(next, 0);
        nm__bnext(b)->prev_phys = b;
        nm__trim(ar, b, need);
        b->req = n;
        q = p;
    } else {
        size_t keep = b->req < n ? b->req : n;
        q = nm__alloc_locked(ar, n);
        if (q) {
            memcpy(q, p, keep);
            nm__free_locked(ar, b);
        }
    }
out:
    nm_spin_unlock(&ar->lock);
    return q;
}

static void *nm__arena_memalign(void *ctx, size_t align, size_t n) {
    nm__arena_t *ar = (nm__arena_t *)ctx;
    nm__ablk_t *b, *ab;
    size_t need = nm__need(n), gap;
    char *user, *aligned;
    if (align <= NM__AALIGN) return nm__arena_malloc(ctx, n);
    if (need == 0 || need > NM_MAX_ALLOC - align - NM__AMIN) return NULL;
    nm_spin_lock(&ar->lock);
    b = nm__find_or_flush(ar, need + align + NM__AMIN);
    if (b == NULL) {
        nm_spin_unlock(&ar->lock);
        return NULL;
    }
    nm__list_remove(ar, b);
    nm__bset(b, nm__bsize(b));
    user = (char *)nm__bpayload(b);
    aligned = (char *)_nm_align_up((uintptr_t)user, align);
    while (aligned != user && (size_t)(aligned - user) < NM__AMIN) aligned += align;
    gap = (size_t)(aligned - user);
    ab = b;
    if (gap) { /* split off the leading gap as a free block */
        size_t total = nm__bsize(b);
        ab = nm__bof(aligned);
        nm__set_block(ab, b, total - gap, 0);
        nm__bnext(ab)->prev_phys = ab;
        nm__bset(b, gap);
        nm__free_locked(ar, b); /* may merge b backwards; it re-points ab->prev_phys */
    }
    nm__trim(ar, ab, need);
    ab->req = n;
    nm_spin_unlock(&ar->lock);
    return nm__bpayload(ab);
}

static size_t nm__arena_usable(void *ctx, const void *p) {
    nm__arena_t *ar = (nm__arena_t *)ctx;
    const char *c = (const char *)p;
    const nm__ablk_t *b;
    size_t r = 0;
    /* Safe on any pointer: nm_free asks before freeing, and a bad pointer must not fault here. */
    if (c < ar->start + NM__AHDR || c >= ar->end || ((uintptr_t)(c - ar->start) % NM__AALIGN) != 0) return 0;
    /* No lock: the header lies in the region; the caller owns a live block's req. */
    b = nm__bof(p);
    if (nm__bmagic_word(b) == nm__bmagic(b) && !nm__bgone(b)) r = b->req;
    return r;
}

static void nm__arena_release(void *arg) {
    nm_allocator_t *a = (nm_allocator_t *)arg;
    nm__arena_t *ar = (nm__arena_t *)a->ctx;
    if (ar->base) nm_free(ar->base, ar->region);
    else nm_os_unmap(ar->region, ar->region_size);
    _nm_table_free(a);
}

/* May run inside another object's locked section (a destroy deferred to the last nm_free, which
 * a pool or debug allocator over this arena may make under its lock): retire, not unregister. */
static void nm__arena_destroy(void *ctx) {
    nm__arena_t *ar = (nm__arena_t *)ctx;
    nm_atfork_retire(&ar->fork, nm__arena_release, ar->self);
}

/* fork: the heap's lock, then every stripe's (the lock order) */
static void nm__arena_fork_lock(void *arg) {
    nm__arena_t *ar = (nm__arena_t *)arg;
    size_t i;
    nm_spin_lock(&ar->lock);
    for (i = 0; i < NM__ATC; i++) nm_spin_lock(&ar->tc[i].lock);
}
static void nm__arena_fork_unlock(void *arg) {
    nm__arena_t *ar = (nm__arena_t *)arg;
    size_t i;
    for (i = NM__ATC; i-- > 0;) nm_spin_unlock(&ar->tc[i].lock);
    nm_spin_unlock(&ar->lock);
}

/* payloads: a 32-byte header into 16-byte blocks of a 16-aligned start */
static const nm_allocator_ops_t nm__arena_ops = {nm__arena_malloc, nm__arena_calloc, nm__arena_realloc,
                                                 nm__arena_free, nm__arena_memalign, nm__arena_usable,
                                                 nm__arena_destroy, NM__AALIGN, NM_OPS_EXACT_SIZE};

/* ---- public API ----------------------------------------------------------------------------- */
nm_allocator_t *nm_arena_create(nm_allocator_t *base, size_t size) {
    nm_allocator_t *a;
    nm__arena_t *ar;
    nm__ablk_t *first, *sentinel;
    size_t usable;
    if (size < 4096) {
        _nm_set_error(NM_ERR_INVALID, "arena size %zu is too small (minimum 4096 bytes)", size);
        return NULL;
    }
    if (size > NM_MAX_ALLOC || (uint64_t)size >= ((uint64_t)1 << 38)) {
        _nm_set_error(NM_ERR_OVERFLOW, "arena size %zu is too large", size);
        return NULL;
    }
    a = _nm_allocator_make("arena", &nm__arena_ops, sizeof(nm__arena_t), NM__F_REPORTS | NM__F_OWNS_TABLE);
    if (a == NULL) return NULL;
    ar = (nm__arena_t *)a->ctx;
    ar->self = a;
    ar->base = base;
    ar->region_size = size;
    /* the region's start is aligned to NM__AALIGN below, whatever base returns: no assumption */
    ar->region = base ? (char *)nm_memalign(base, 64, size) : (char *)nm_os_map(size);
    if (ar->region == NULL) {
        _nm_table_free(a);
        if (!base) _nm_oom("arena region", size);
        return NULL;
    }
    ar->start = (char *)_nm_align_up((uintptr_t)ar->region, NM__AALIGN);
    usable = (size_t)((ar->region + size - ar->start) & ~(ptrdiff_t)(NM__AALIGN - 1)) - NM__AHDR;
    ar->end = ar->start + usable;
    ar->capacity = usable;
    first = (nm__ablk_t *)ar->start;
    nm__set_block(first, NULL, usable, 1);
    sentinel = (nm__ablk_t *)ar->end; /* a used, zero-size block: never merged */
    sentinel->prev_phys = first;
    nm__bset(sentinel, 0);
    sentinel->magic = nm__bmagic(sentinel);
    sentinel->req = 0;
    nm__list_insert(ar, first);
    nm_atfork_init(&ar->fork, nm__arena_fork_lock, nm__arena_fork_unlock, NULL, ar, NM_ATFORK_OBJECT);
    nm_atfork_register(&ar->fork);
    return a;
}

static nm__arena_t *nm__as_arena(nm_allocator_t *a) {
    if (a == NULL || a->ops != &nm__arena_ops) {
        _nm_set_error(NM_ERR_INVALID, "allocator '%s' is not an arena", a ? a->name : "(null)");
        return NULL;
    }
    return (nm__arena_t *)a->ctx;
}

int nm_arena_stats(nm_allocator_t *a, nm_arena_stats_t *out) {
    nm__arena_t *ar = nm__as_arena(a);
    nm__ablk_t *b;
    if (ar == NULL) return NM_ERR_INVALID;
    memset(out, 0, sizeof *out);
    out->capacity = ar->capacity;
    nm_spin_lock(&ar->lock);
    nm__caches_flush(ar); /* cached blocks are free space: the walk sees them merged */
    for (b = (nm__ablk_t *)ar->start; (char *)b < ar->end; b = nm__bnext(b)) {
        size_t sz = nm__bsize(b);
        int bin;
        if (nm__bmagic_word(b) != nm__bmagic(b) || sz < NM__AMIN || sz % NM__AALIGN ||
            sz > (size_t)(ar->end - (char *)b)) { /* a damaged header: stop, never loop or run off */
            nm_spin_unlock(&ar->lock);
            memset(out, 0, sizeof *out);
            out->capacity = ar->capacity;
            return _nm_set_error(NM_ERR_CORRUPT, "arena block header at %p is damaged (size %zu)", (void *)b, sz);
        }
        bin = nm_fls_size(sz);
        if (bin > 31) bin = 31;
        if (nm__bfree(b)) {
            out->free_bytes += sz;
            out->free_blocks++;
            out->free_hist[bin]++;
            if (sz > out->largest_free) out->largest_free = sz;
        } else {
            out->used_bytes += sz;
            out->used_blocks++;
            out->used_hist[bin]++;
        }
    }
    nm_spin_unlock(&ar->lock);
    return NM_OK;
}

int nm_arena_check(nm_allocator_t *a) {
    nm__arena_t *ar = nm__as_arena(a);
    nm__ablk_t *b, *prev = NULL;
    size_t free_blocks = 0, listed = 0;
    int fl, sl, rc = NM_OK;
    if (ar == NULL) return NM_ERR_INVALID;
    nm_spin_lock(&ar->lock);
    {   /* the thread caches: each entry a cached header of its size, inside the region */
        size_t i, c, k;
        for (i = 0; i <= NM__ATC && rc == NM_OK; i++) {
            nm__atc_t *tc = i < NM__ATC ? &ar->tc[i] : &ar->quick;
            size_t n = 0;
            if (i < NM__ATC) nm_spin_lock(&tc->lock);
            for (c = 0; c < NM__QCLASSES && rc == NM_OK; c++)
                for (k = 0; k < tc->n[c] && rc == NM_OK; k++, n++) {
                    nm__ablk_t *q = tc->b[c][k];
                    if ((char *)q < ar->start || (char *)q >= ar->end || nm__bmagic_word(q) != nm__bmagic(q) ||
                        nm__bword(q) != (c * NM__AALIGN | NM__ACACHED))
                        rc = _nm_set_error(NM_ERR_CORRUPT, "arena cache entry %p is damaged", (void *)q);
                }
            if (rc == NM_OK && n != (size_t)nm_atomic_load_relaxed(&tc->blocks))
                rc = _nm_set_error(NM_ERR_CORRUPT, "arena cache %zu holds %zu blocks, counted %zu", i, n,
                                   (size_t)nm_atomic_load_relaxed(&tc->blocks));
            if (i < NM__ATC) nm_spin_unlock(&tc->lock);
        }
        if (rc != NM_OK) goto out;
    }
    nm__caches_flush(ar);
    for (b = (nm__ablk_t *)ar->start; (char *)b < ar->end; b = nm__bnext(b)) {
        size_t sz = nm__bsize(b);
        if (nm__bmagic_word(b) != nm__bmagic(b) || b->prev_phys != prev || sz < NM__AMIN || sz % NM__AALIGN ||
            sz > (size_t)(ar->end - (char *)b)) {
            rc = _nm_set_error(NM_ERR_CORRUPT, "arena block header at %p is damaged (size %zu)", (void *)b, sz);
            goto out;
        }
        if (nm__bfree(b)) {
            free_blocks++;
            if (prev && nm__bfree(prev)) {
                rc = _nm_set_error(NM_ERR_CORRUPT, "arena blocks %p and %p are both free but not merged",
                                   (void *)prev, (void *)b);
                goto out;
            }
        }
        prev = b;
    }
    if ((char *)b != ar->end || b->prev_phys != prev || nm__bmagic_word(b) != nm__bmagic(b)) {
        rc = _nm_set_error(NM_ERR_CORRUPT, "arena block chain does not end at its sentinel %p", (void *)ar->end);
        goto out;
    }
    for (fl = 0; fl < NM__FL_COUNT; fl++)
        for (sl = 0; sl < NM__SL_COUNT; sl++) {
            nm__ablk_t *f;
            int want_fl, want_sl;
            for (f = ar->heads[fl][sl]; f; f = f->next_free) {
                if ((char *)f < ar->start || (char *)f >= ar->end || nm__bmagic_word(f) != nm__bmagic(f) || !nm__bfree(f) ||
                    ++listed > free_blocks) {
                    rc = _nm_set_error(NM_ERR_CORRUPT, "arena free list [%d][%d] is damaged at %p", fl, sl, (void *)f);
                    goto out;
                }
                nm__mapping(nm__bsize(f), &want_fl, &want_sl);
                if (want_fl != fl || want_sl != sl) {
                    rc = _nm_set_error(NM_ERR_CORRUPT, "arena free block %p is in the wrong list", (void *)f);
                    goto out;
                }
            }
        }
    if (listed != free_blocks)
        rc = _nm_set_error(NM_ERR_CORRUPT, "arena has %zu free blocks but %zu on its free lists", free_blocks, listed);
out:
    nm_spin_unlock(&ar->lock);
    return rc;
}

int nm_arena_testing_mt(nm_allocator_t *a, int set) {
    nm__arena_t *ar = nm__as_arena(a);
    if (ar == NULL) return -1;
    if (set) nm_atomic_store_relaxed(&ar->mt, 1);
    return (int)nm_atomic_load_relaxed(&ar->mt);
}
