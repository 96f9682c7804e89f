/* pool.c -- fixed-size object pools: chunks, per-thread caches, checked frees, debug modes.
 *
 * Layout.  A chunk is one block of a power-of-two size cs from the allocator, aligned only to
 * the pool's object alignment (nm_malloc when the allocator promises that much, else
 * nm_memalign): an allocator that cannot align natively -- the headered adapters of Windows
 * heaps and the CRT -- pays the alignment plus a header per chunk, not another cs (aligning a
 * chunk to its own size cost 2 * cs + 16 there).  Chunks are found from an object's address
 * through the pool's chunk registry (an open-addressing hash read lock-free): the address space
 * is cut into frames of cs bytes, a chunk is registered under the frame where it starts, and as
 * it is cs long, an object lies in the chunk that starts in its own frame at or below it, or
 * else in the one that starts in the frame before; every check is address arithmetic, so a
 * foreign pointer is never followed.  Header, then the allocation bitmap, the remote-free bitmap,
 * the per-slot sites (checked mode), then objects.
 *
 * Threads.  Every thread using a pool gets a cache (nm__tcache_t) that OWNS chunks.  The owner
 * allocates from its chunks' free lists and bump pointers and frees into them without any lock
 * or atomic read-modify-write (the allocation bitmap is written only by the owner).  A thread
 * freeing an object of a chunk it does not own sets the object's bit in the chunk's remote
 * bitmap with an atomic OR (an already set bit is a double free) and flags the chunk; the
 * owner folds remote frees back on its slow path.  Chunks of exited threads are orphaned (via
 * a thread-exit callback) and adopted by the next thread that needs a chunk; the shared slow
 * path (new chunk, adoption, cache creation) takes the pool mutex.
 *
 * Counters are per cache (written by its thread, summed by nm_pool_stats), so they are exact
 * when the pool is quiescent.  Peak live is the highest of: the single-cache peak (exact for a
 * pool used by one thread), and the summed live count sampled on every slow path and stats call.
 *
 * Chunks go back to the allocator only in nm_pool_destroy.
 */
#include "nm_internal.h"
#include "pool_bughunt.h"

#include <stdio.h>

#define NM__WBITS (sizeof(uintptr_t) * 8)
#define NM__TC_SLOTS 32
#define NM__POISON 0xDD
#define NM__ZERO_NONE 0   /* no NM_POOL_ZERO                                            */
#define NM__ZERO_16_64 1  /* 16..64-byte objects: four overlapping stores, no branch on the size */
#define NM__ZERO_OTHER 2  /* nm__zero                                                    */
/* The entry points' and batches' inline paths (pool->fast, chosen at creation).  They issue no
 * Valgrind client request: a pool created under Valgrind takes the full paths, which do. */
#define NM__FAST_NONE 0      /* checked mode, bughunt, or under Valgrind: the full paths only */
#define NM__FAST_UNCHECKED 1 /* NM_POOL_UNCHECKED                                           */
#define NM__FAST_POOL 2      /* the default and NM_POOL_ZERO                                 */

typedef struct nm__chunk nm__chunk_t;
typedef struct nm__tcache nm__tcache_t;

struct nm__chunk {
    uintptr_t magic;            /* (uintptr_t)chunk ^ pool secret                      */
    nm_pool_t *pool;
    nm_atomic_t owner;          /* nm__tcache_t * of the owner; 0 when orphaned         */
    nm__chunk_t *next_owned;    /* owner's list, or the pool's orphan list              */
    nm__chunk_t *next_all;      /* every chunk of the pool                              */
    char *objects;
    size_t nobj;
    size_t bump;                /* slots [bump, nobj) were never handed out             */
    void *free;                 /* owner's free list (encoded links)                    */
    nm_atomic_t remote_pending; /* nonzero when remote_bits may hold bits               */
    nm_atomic_t *alloc_bits;    /* 1 = handed out (owner writes, others read)           */
    nm_atomic_t *remote_bits;   /* 1 = freed by another thread, not yet folded back     */
    const char **site_file;     /* checked mode: last allocation site per slot          */
    int *site_line;
};

struct nm__tcache {
    nm_pool_t *pool;
    nm_atomic_t thread;         /* nm_thread_fast_id() of the user; 0 when free for reuse */
    nm__chunk_t *cur;
    nm__chunk_t *owned;
    nm_atomic_t allocs, frees;  /* written by the owning thread only                    */
    nm_atomic_t peak_net;       /* the highest allocs - frees seen (owner only)          */
    uintptr_t last_chunk;       /* a chunk start this thread already found in the registry */
    uintptr_t mine;             /* one object of this thread's, with its slot and chunk below
                                   (0: none).  Bit 0 clear: the object it allocated last;
                                   freeing it (the alloc-use-free pattern) needs no chunk lookup
                                   or slot division, every other check stays.  Bit 0 set: the
                                   object it freed last into a chunk it owns ("hot"): validated,
                                   its allocation bit clear (a second free is still caught), on
                                   no list; the next allocation takes it as is, and it becomes
                                   the last allocated by one store.  Never hot in checked mode
                                   (poison is verified on hand-out). */
    size_t mine_idx;
    nm__chunk_t *mine_chunk;
    void *ufree;                /* unchecked mode: this thread's free objects (raw links) */
    size_t ucount;
    nm__tcache_t *next;
};

/* tc->mine (above): the hot object or NULL; 1 when p is the object this thread allocated last
 * (an odd p, never an object, cannot match a hot entry). */
#define NM__HOT(tc) (((tc)->mine & 1u) ? (void *)((tc)->mine - 1u) : NULL)
#define NM__IS_LAST(tc, p) ((p) != NULL && (uintptr_t)(p) == (tc)->mine && !((uintptr_t)(p) & 1u))

/* Registry of chunks: open addressing; an entry is a chunk's start address (0: empty), hashed
 * by its frame (start >> chunk_shift), of which at most one chunk starts in each. */
typedef struct nm__reg {
    size_t cap, count;
    struct nm__reg *older;      /* replaced tables stay alive until destroy            */
    nm_atomic_t keys[1];
} nm__reg_t;

struct nm_pool {
    uint64_t id;
    uintptr_t secret;
    nm_allocator_t *a;
    unsigned flags;
    size_t object_size, stride, alignment, want_per_chunk;
    size_t chunk_size, nobj, objects_offset, bits_words;
    unsigned chunk_shift;       /* log2(chunk_size): the registry's frames               */
    int vg;                     /* running under Valgrind: issue client requests */
    unsigned stride_tz;
    uintptr_t stride_inv;
    nm_mutex_t lock;
    nm__chunk_t *all, *orphans;
    nm__tcache_t *tcaches;
    nm_atomic_t reg;            /* nm__reg_t *                                          */
    nm_atomic_t tcs[NM__TC_SLOTS]; /* thread id hash -> nm__tcache_t * (hint, verified)  */
    nm_atomic_t nchunks, reserved, peak_sampled;
    nm__bh_t *bh;               /* bughunt mode (pool_bughunt.c), chosen at creation: NULL
                                   in every other mode                                   */
    nm_pool_t *next_live;
    nm_atfork_t fork;           /* fork safety: pool->lock (platform.h) */
    int unchecked;              /* NM_POOL_UNCHECKED (chosen at creation)                  */
    int zero_mode;              /* NM__ZERO_*: how objects are zeroed (from NM_POOL_ZERO and the size) */
    int fast;                   /* NM__FAST_*: which inline paths the entry points may take      */
    nm_atomic_t notc_frees;     /* frees by threads that could get no cache (out of memory) */
    nm_atomic_t ushared;        /* unchecked mode: objects given back by caches (void *; written
                                   under pool->lock, peeked at without it by nm__ualloc_slow) */
};

/* ---- global registry of live pools (validates thread-exit work against destroy) ------ */
static nm_mutex_t nm__pools_lock = NM_MUTEX_INIT;
static nm_pool_t *nm__pools;
static uint64_t nm__pool_ids;
static int nm__key_made;
static nm_tls_key_t nm__key;

typedef struct nm__tnode {
    nm_pool_t *pool;
    uint64_t id;
    nm__tcache_t *tc;
    struct nm__tnode *next;
} nm__tnode_t;

/* The global lock above is taken before any pool's (thread exit), and inside the prop tree
 * lock (a prop pool's first use on a thread): second in the fork handlers' order. */
static nm_atfork_t nm__pools_fork = {.lock = nm_atfork_mutex_lock, .unlock = nm_atfork_mutex_unlock,
                                     .arg = &nm__pools_lock, .rank = NM_ATFORK_SECOND};

static NM_THREAD_LOCAL nm__tnode_t *nm__tnodes;
static NM_THREAD_LOCAL size_t nm__tnode_count, nm__tnode_prune_at;

/* ---- small helpers ------------------------------------------------------------------- */
/* Multiplicative inverse of an odd number modulo 2^bits (Newton iteration). */
static uintptr_t nm__inverse(uintptr_t d) {
    uintptr_t x = d;
    int i;
    for (i = 0; i < 6; i++) x *= 2 - d * x;
    return x;
}

/* Slot index of `p` in chunk `c`, or (size_t)-1 when p is not an object start. */
NM_INLINE size_t nm__slot_index(const nm_pool_t *pool, const nm__chunk_t *c, const void *p) {
    uintptr_t off, q;
    if ((uintptr_t)p < (uintptr_t)c->objects) return (size_t)-1;
    off = (uintptr_t)p - (uintptr_t)c->objects;
    if (off & (((uintptr_t)1 << pool->stride_tz) - 1)) return (size_t)-1;
    q = (off >> pool->stride_tz) * pool->stride_inv;
    return q < c->nobj ? (size_t)q : (size_t)-1;
}

NM_INLINE int nm__bit_get(nm_atomic_t *words, size_t i) {
    return (int)(((uintptr_t)nm_atomic_load_relaxed(&words[i / NM__WBITS]) >> (i % NM__WBITS)) & 1u);
}
/* Owner-only bitmap writes: a relaxed load and store, no read-modify-write. */
NM_INLINE void nm__bit_put(nm_atomic_t *words, size_t i, int on) {
    uintptr_t w = (uintptr_t)nm_atomic_load_relaxed(&words[i / NM__WBITS]);
    uintptr_t m = (uintptr_t)1 << (i % NM__WBITS);
    w = on ? (w | m) : (w & ~m);
    nm_atomic_store_relaxed(&words[i / NM__WBITS], (intptr_t)w);
}
/* Zeroes an object inline for the sizes pools mostly hold (a call into memset costs more than
 * the stores): 8..64 bytes with at most four overlapping 16-byte (or two 8-byte) stores and no
 * loop, multiples of 16 up to 256 with a loop of 16-byte stores; the rest through memset. */
NM_INLINE void nm__zero_16_64(void *p, size_t n) {
    char *c = (char *)p;
    memset(c, 0, 16);
    memset(c + n - 16, 0, 16);
    if (n > 32) {
        memset(c + 16, 0, 16);
        memset(c + n - 32, 0, 16);
    }
}
NM_INLINE void nm__zero(void *p, size_t n) {
    char *c = (char *)p;
    if (n >= 16 && n <= 64) {
        nm__zero_16_64(p, n);
    } else if (n >= 8 && n < 16) {
        memset(c, 0, 8);
        memset(c + n - 8, 0, 8);
    } else if (n <= 256 && (n & 15) == 0) {
        size_t i;
        for (i = 0; i < n; i += 16) memset(c + i, 0, 16);
    } else {
        memset(p, 0, n);
    }
}

/* Zeroes an object as the pool's zero_mode says (nothing without NM_POOL_ZERO). */
NM_INLINE void nm__zero_obj(const nm_pool_t *pool, void *p) {
    if (pool->zero_mode == NM__ZERO_16_64) nm__zero_16_64(p, pool->object_size);
    else if (pool->zero_mode != NM__ZERO_NONE) nm__zero(p, pool->object_size);
}

/* Atomic OR; returns the previous word. */
static uintptr_t nm__atomic_or(nm_atomic_t *w, uintptr_t m) {
    intptr_t old = nm_atomic_load_relaxed(w);
    while (!nm_atomic_cas(w, &old, (intptr_t)((uintptr_t)old | m))) { }
    return (uintptr_t)old;
}

NM_INLINE void nm__counter_inc(nm_atomic_t *c) { nm_atomic_store_relaxed(c, nm_atomic_load_relaxed(c) + 1); }

NM_INLINE void *nm__encode(const nm_pool_t *pool, void *slot, void *next) {
    return (void *)((uintptr_t)next ^ pool->secret ^ (uintptr_t)slot);
}

/* Valgrind client requests, only when the pool was created under Valgrind (pool->vg), and out
 * of line: each request builds an argument block on the stack, and inline, that block's frame
 * cost the fast paths a frame and spills (0.9 ns a pair) even when no request ran. */
enum { NM__VGR_DEFINED, NM__VGR_UNDEFINED, NM__VGR_NOACCESS, NM__VGR_ALLOC, NM__VGR_FREE };
static NM_NOINLINE void nm__vg_request(int what, const void *pool, void *p, size_t n) {
    switch (what) {
    case NM__VGR_DEFINED: NM_VG_DEFINED(p, n); break;
    case NM__VGR_UNDEFINED: NM_VG_UNDEFINED(p, n); break;
    case NM__VGR_NOACCESS: NM_VG_NOACCESS(p, n); break;
    case NM__VGR_ALLOC: NM_VG_MEMPOOL_ALLOC(pool, p, n); break;
    default: NM_VG_MEMPOOL_FREE(pool, p); break;
    }
    (void)pool;
    (void)p;
    (void)n;
}
#define NM__VG(pool, what, p, n) do { if (NM_UNLIKELY((pool)->vg)) nm__vg_request((what), (pool), (p), (n)); } while (0)

/* Memory-checker hooks: make a slot's link word accessible to the pool, then hide it again. */
NM_INLINE void nm__link_open(const nm_pool_t *pool, void *slot) {
    NM_ASAN_UNPOISON(slot, sizeof(void *));
    NM__VG(pool, NM__VGR_DEFINED, slot, sizeof(void *));
}
/* The same for the inline paths (pool->fast: never under Valgrind). */
#define NM__LINK_OPEN_FAST(slot) NM_ASAN_UNPOISON((slot), sizeof(void *))
#define NM__LINK_CLOSE_FAST(slot) NM_ASAN_POISON((slot), sizeof(void *))
NM_INLINE void nm__link_close(const nm_pool_t *pool, void *slot) {
    NM__VG(pool, NM__VGR_NOACCESS, slot, sizeof(void *));
    NM_ASAN_POISON(slot, sizeof(void *));
}

/* Push `slot` on chunk c's free list, its link encoded (owner, or the pool lock held). */
NM_INLINE void nm__push_free(const nm_pool_t *pool, nm__chunk_t *c, void *slot) {
    nm__link_open(pool, slot);
    *(void **)slot = nm__encode(pool, slot, c->free);
    nm__link_close(pool, slot);
    c->free = slot;
}

/* Unchecked mode. */
/* A free object's link word (raw, not encoded), read and written with the memory checkers told:
 * between uses it is no-access, so a use after free of an object's first bytes is reported as
 * for the rest.  `vg` 0: an inline path (pool->fast), where only ASan's compile-time hooks run. */
NM_INLINE void *nm__ulink_get(const nm_pool_t *pool, void *p, int vg) {
    void *next;
    NM_ASAN_UNPOISON(p, sizeof(void *));
    if (vg) NM__VG(pool, NM__VGR_DEFINED, p, sizeof(void *));
    next = *(void **)p;
    if (vg) NM__VG(pool, NM__VGR_NOACCESS, p, sizeof(void *));
    NM_ASAN_POISON(p, sizeof(void *));
    return next;
}
NM_INLINE void nm__ulink_set(const nm_pool_t *pool, void *p, void *next, int vg) {
    NM_ASAN_UNPOISON(p, sizeof(void *));
    if (vg) NM__VG(pool, NM__VGR_UNDEFINED, p, sizeof(void *));
    *(void **)p = next;
    if (vg) NM__VG(pool, NM__VGR_NOACCESS, p, sizeof(void *));
    NM_ASAN_POISON(p, sizeof(void *));
}

static const char *nm__sitef(const char *f) { return f ? f : "<unknown>"; }

/* ---- chunk registry -------------------------------------------------------------------- */
static nm__reg_t *nm__reg_new(nm_pool_t *pool, size_t cap) {
    size_t bytes;
    nm__reg_t *r;
    if (nm_mul_overflow(cap, sizeof(nm_atomic_t), &bytes) || nm_add_overflow(bytes, sizeof(nm__reg_t), &bytes))
        return NULL;
    r = (nm__reg_t *)nm_calloc(pool->a, 1, bytes);
    if (r) r->cap = cap;
    return r;
}

NM_INLINE size_t nm__reg_hash(uintptr_t key, size_t cap) {
    return (size_t)((key * (uintptr_t)0x9E3779B97F4A7C15ull) >> 7) & (cap - 1);
}

static void nm__reg_put(nm__reg_t *r, uintptr_t start, unsigned shift) {
    size_t i = nm__reg_hash(start >> shift, r->cap);
    while (nm_atomic_load_relaxed(&r->keys[i]) != 0) i = (i + 1) & (r->cap - 1);
    nm_atomic_store_release(&r->keys[i], (intptr_t)start);
    r->count++;
}

/* Adds a chunk's start (pool lock held).  Returns 0, or NM_ERR_NOMEM. */
static int nm__reg_add(nm_pool_t *pool, uintptr_t start) {
    nm__reg_t *r = (nm__reg_t *)nm_atomic_load_relaxed(&pool->reg);
    if ((r->count + 1) * 2 > r->cap) {
        nm__reg_t *n = nm__reg_new(pool, r->cap * 2);
        size_t i;
        if (!n) return NM_ERR_NOMEM;
        for (i = 0; i < r->cap; i++) {
            uintptr_t k = (uintptr_t)nm_atomic_load_relaxed(&r->keys[i]);
            if (k) nm__reg_put(n, k, pool->chunk_shift);
        }
        n->older = r;
        nm_atomic_store_release(&pool->reg, (intptr_t)n);
        r = n;
    }
    nm__reg_put(r, start, pool->chunk_shift);
    return 0;
}

/* The start of the chunk registered under `frame`, or 0.  Lock-free. */
NM_INLINE uintptr_t nm__reg_find(const nm__reg_t *r, uintptr_t frame, unsigned shift) {
    size_t i = nm__reg_hash(frame, r->cap);
    uintptr_t k;
    while ((k = (uintptr_t)nm_atomic_load_acquire((nm_atomic_t *)&r->keys[i])) != 0) {
        if ((k >> shift) == frame) return k;
        i = (i + 1) & (r->cap - 1);
    }
    return 0;
}

/* The chunk holding `p` if p lies in one of this pool's chunks, else NULL.  Lock-free.  The
 * chunk starting in p's frame holds it when it starts at or below p; else the chunk starting in
 * the frame before holds it when it reaches p (chunks are one frame long); else nobody does. */
NM_INLINE nm__chunk_t *nm__chunk_of(nm_pool_t *pool, const void *p) {
    nm__reg_t *r = (nm__reg_t *)nm_atomic_load_ptr_acquire(&pool->reg);
    uintptr_t a = (uintptr_t)p, frame = a >> pool->chunk_shift, k;
    k = nm__reg_find(r, frame, pool->chunk_shift);
    if (k != 0 && k <= a) return (nm__chunk_t *)k;
    if (frame == 0) return NULL;
    k = nm__reg_find(r, frame - 1, pool->chunk_shift);
    return k != 0 && a - k < pool->chunk_size ? (nm__chunk_t *)k : NULL;
}

/* ---- thread caches ------------------------------------------------------------------- */
static void NM_TLS_DTOR_CALL nm__thread_exit(void *arg);

/* Returns chunks of `tc` to the pool's orphan list and frees the cache for reuse (lock held). */
static void nm__tcache_release(nm_pool_t *pool, nm__tcache_t *tc) {
    nm__chunk_t *c = tc->owned, *next;
    if (NM__HOT(tc)) /* back on its chunk's free list before the chunk is orphaned */
        nm__push_free(pool, tc->mine_chunk, NM__HOT(tc));
    tc->mine = 0;
    for (; c; c = next) {
        next = c->next_owned;
        nm_atomic_store_relaxed(&c->owner, 0);
        c->next_owned = pool->orphans;
        pool->orphans = c;
    }
    tc->owned = tc->cur = NULL;
    if (tc->ufree) { /* unchecked mode: the cache's free objects go to the shared list */
        void *last = tc->ufree, *next;
        while ((next = nm__ulink_get(pool, last, 1)) != NULL) last = next;
        nm__ulink_set(pool, last, (void *)nm_atomic_load_relaxed(&pool->ushared), 1);
        nm_atomic_store_relaxed(&pool->ushared, (intptr_t)tc->ufree);
        tc->ufree = NULL;
        tc->ucount = 0;
    }
    nm_atomic_store_relaxed(&tc->thread, 0);
}

/* Drops this thread's records of pools that no longer exist (global lock held). */
static void nm__tnodes_prune(void) {
    nm__tnode_t **pp = &nm__tnodes;
    while (*pp) {
        nm__tnode_t *n = *pp;
        nm_pool_t *q = nm__pools;
        while (q && !(q == n->pool && q->id == n->id)) q = q->next_live;
        if (!q) {
            *pp = n->next;
            nm_free(nm_allocator_libc(), n);
            nm__tnode_count--;
        } else {
            pp = &n->next;
        }
    }
}

/* Finds or makes the calling thread's cache for `pool` (slow path of nm__tc). */
NM_INLINE size_t nm__tc_hash(uintptr_t me) {
    return (size_t)(((uint64_t)me * 0x9E3779B97F4A7C15ull) >> 59) & (NM__TC_SLOTS - 1);
}

static NM_NOINLINE nm__tcache_t *nm__tc_slow(nm_pool_t *pool, uintptr_t me) {
    nm__tcache_t *tc, *spare = NULL;
    nm__tnode_t *node;
    int fresh = 0;
    nm_mutex_lock(&pool->lock);
    for (tc = pool->tcaches; tc; tc = tc->next) {
        uintptr_t t = (uintptr_t)nm_atomic_load_relaxed(&tc->thread);
        if (t == me) break;
        if (t == 0 && !spare) spare = tc;
    }
    if (!tc) {
        fresh = 1;
        if (spare) {
            tc = spare;
        } else {
            tc = (nm__tcache_t *)nm_calloc(pool->a, 1, sizeof *tc);
            if (!tc) {
                nm_mutex_unlock(&pool->lock);
                return NULL;
            }
            tc->pool = pool;
            tc->next = pool->tcaches;
            pool->tcaches = tc;
        }
        nm_atomic_store_relaxed(&tc->thread, (intptr_t)me);
    }
    nm_atomic_store_release(&pool->tcs[nm__tc_hash(me)], (intptr_t)tc);
    nm_mutex_unlock(&pool->lock);
    if (fresh) {
        /* remember it for the thread-exit callback */
        nm_mutex_lock(&nm__pools_lock);
        if (!nm__key_made) {
            if (nm_tls_key_create(&nm__key, nm__thread_exit) == 0) nm__key_made = 1;
        }
        if (nm__tnode_count >= nm__tnode_prune_at) {
            nm__tnodes_prune();
            nm__tnode_prune_at = nm__tnode_count * 2 + 16;
        }
        node = (nm__tnode_t *)nm_malloc(nm_allocator_libc(), sizeof *node);
        if (node) {
            node->pool = pool;
            node->id = pool->id;
            node->tc = tc;
            node->next = nm__tnodes;
            nm__tnodes = node;
            nm__tnode_count++;
            if (nm__key_made) nm_tls_key_set(nm__key, nm__tnodes);
        }
        nm_mutex_unlock(&nm__pools_lock);
    }
    return tc;
}

/* The last pool this thread used and its cache there: the common case is one thread-local
 * compare.  The pool's id (unique for the process) guards against a destroyed pool whose memory
 * now holds another pool; thread exit clears it. */
typedef struct nm__tlast {
    nm_pool_t *pool;
    uint64_t id;
    nm__tcache_t *tc;
} nm__tlast_t;
static NM_THREAD_LOCAL NM_TLS_FAST nm__tlast_t nm__tlast;

/* The calling thread's cache for `pool`: the last one used, else a hint slot checked against
 * the cache's thread, else the slow path. */
NM_INLINE nm__tcache_t *nm__tc(nm_pool_t *pool) {
    uintptr_t me;
    nm__tcache_t *tc;
    if (NM_LIKELY(nm__tlast.pool == pool && nm__tlast.id == pool->id)) return nm__tlast.tc;
    me = nm_thread_fast_id();
    tc = (nm__tcache_t *)nm_atomic_load_ptr_acquire(&pool->tcs[nm__tc_hash(me)]);
    if (tc == NULL || (uintptr_t)nm_atomic_load_relaxed(&tc->thread) != me) tc = nm__tc_slow(pool, me);
    if (tc != NULL) {
        nm__tlast.pool = pool;
        nm__tlast.id = pool->id;
        nm__tlast.tc = tc;
    }
    return tc;
}

/* Thread exit: orphan the exiting thread's chunks in every pool still alive. */
static void NM_TLS_DTOR_CALL nm__thread_exit(void *arg) {
    nm__tnode_t *n = (nm__tnode_t *)arg, *next;
    nm__tlast.pool = NULL; /* its cache is about to be released */
    nm_mutex_lock(&nm__pools_lock);
    for (; n; n = next) {
        nm_pool_t *q = nm__pools;
        next = n->next;
        while (q && !(q == n->pool && q->id == n->id)) q = q->next_live;
        if (q) {
            nm_mutex_lock(&q->lock);
            nm__tcache_release(q, n->tc);
            nm_mutex_unlock(&q->lock);
        }
        nm_free(nm_allocator_libc(), n);
    }
    nm__tnodes = NULL;
    nm__tnode_count = 0;
    nm_mutex_unlock(&nm__pools_lock);
}

/* ---- statistics ---------------------------------------------------------------------- */
static int64_t nm__live_sum(nm_pool_t *pool, int64_t *allocs, int64_t *frees, int64_t *tc_peak) {
    nm__tcache_t *tc;
    int64_t a = 0, f = 0, pk = 0, n = 0;
    for (tc = pool->tcaches; tc; tc = tc->next) {
        a += nm_atomic_load_relaxed(&tc->allocs);
        f += nm_atomic_load_relaxed(&tc->frees);
        if (nm_atomic_load_relaxed(&tc->peak_net) > pk) pk = nm_atomic_load_relaxed(&tc->peak_net);
        n++;
    }
    f += nm_atomic_load_relaxed(&pool->notc_frees);
    if (allocs) *allocs = a;
    if (frees) *frees = f;
    if (tc_peak) *tc_peak = n == 1 ? pk : 0;
    return a - f;
}

/* Records the summed live count as a peak candidate (pool lock held). */
static void nm__sample_peak(nm_pool_t *pool) {
    int64_t live = nm__live_sum(pool, NULL, NULL, NULL);
    if (live > nm_atomic_load_relaxed(&pool->peak_sampled)) nm_atomic_store_relaxed(&pool->peak_sampled, (intptr_t)live);
}

/* ---- chunks -------------------------------------------------------------------------- */
/* A fresh chunk owned by `tc` (pool lock held). */
static nm__chunk_t *nm__chunk_new(nm_pool_t *pool, nm__tcache_t *tc) {
    /* aligned to the objects' alignment only (objects_offset keeps them so): see the top */
    char *mem = (char *)(pool->alignment <= nm_allocator_alignment(pool->a)
                             ? nm_malloc(pool->a, pool->chunk_size)
                             : nm_memalign(pool->a, pool->alignment, pool->chunk_size));
    nm__chunk_t *c;
    char *p;
    if (!mem) return NULL;
    memset(mem, 0, pool->objects_offset);
    c = (nm__chunk_t *)mem;
    c->magic = (uintptr_t)c ^ pool->secret;
    c->pool = pool;
    p = mem + sizeof(nm__chunk_t);
    p = (char *)_nm_align_up((uintptr_t)p, sizeof(nm_atomic_t));
    c->alloc_bits = (nm_atomic_t *)p;
    p += pool->bits_words * sizeof(nm_atomic_t);
    c->remote_bits = (nm_atomic_t *)p;
    p += pool->bits_words * sizeof(nm_atomic_t);
    if (pool->flags & NM_POOL_CHECKED) {
        c->site_file = (const char **)p;
        p += pool->nobj * sizeof(char *);
        c->site_line = (int *)p;
    }
    c->objects = mem + pool->objects_offset;
    c->nobj = pool->nobj;
    if (nm__reg_add(pool, (uintptr_t)mem) != 0) {
        nm_free(pool->a, mem);
        return NULL;
    }
    NM__VG(pool, NM__VGR_NOACCESS, c->objects, pool->nobj * pool->stride);
    NM_ASAN_POISON(c->objects, pool->nobj * pool->stride);
    c->next_all = pool->all;
    pool->all = c;
    nm_atomic_store_relaxed(&c->owner, (intptr_t)tc);
    c->next_owned = tc->owned;
    tc->owned = c;
    nm_atomic_add_relaxed(&pool->nchunks, 1);
    nm_atomic_add_relaxed(&pool->reserved, (intptr_t)pool->chunk_size);
    return c;
}

/* Folds other threads' frees of chunk `c` back into its free list (owner only). */
static void nm__collect(nm_pool_t *pool, nm__chunk_t *c) {
    size_t w;
    if (nm_atomic_load_relaxed(&c->remote_pending) == 0) return;
    nm_atomic_exchange(&c->remote_pending, 0);
    for (w = 0; w < pool->bits_words; w++) {
        uintptr_t bits;
        if (nm_atomic_load_relaxed(&c->remote_bits[w]) == 0) continue;
        bits = (uintptr_t)nm_atomic_exchange(&c->remote_bits[w], 0);
        if (!bits) continue;
        nm_atomic_store_relaxed(&c->alloc_bits[w], (intptr_t)((uintptr_t)nm_atomic_load_relaxed(&c->alloc_bits[w]) & ~bits));
        while (bits) {
            unsigned b = 0;
            uintptr_t t = bits;
            void *slot;
            while (!(t & 1u)) { t >>= 1; b++; }
            bits &= bits - 1;
            slot = c->objects + (w * NM__WBITS + b) * pool->stride;
            nm__push_free(pool, c, slot);
        }
    }
}

/* 1 when `c` can hand out an object. */
NM_INLINE int nm__has_room(nm__chunk_t *c) { return c->free != NULL || c->bump < c->nobj; }

/* Makes tc->cur a chunk with room: own chunks, then orphans, then a new chunk. */
static NM_NOINLINE nm__chunk_t *nm__refill(nm_pool_t *pool, nm__tcache_t *tc) {
    nm__chunk_t *c;
    for (c = tc->owned; c; c = c->next_owned) {
        nm__collect(pool, c);
        if (nm__has_room(c)) return tc->cur = c;
    }
    nm_mutex_lock(&pool->lock);
    nm__sample_peak(pool);
    {
        /* adopt an orphan with room (orphans have no owner: under the lock we may fold their
         * remote frees); full orphans stay listed for later */
        nm__chunk_t **pp = &pool->orphans;
        while ((c = *pp) != NULL) {
            nm__collect(pool, c);
            if (nm__has_room(c)) {
                *pp = c->next_owned;
                nm_atomic_store_relaxed(&c->owner, (intptr_t)tc);
                c->next_owned = tc->owned;
                tc->owned = c;
                break;
            }
            pp = &c->next_owned;
        }
    }
    if (!c) c = nm__chunk_new(pool, tc);
    nm_mutex_unlock(&pool->lock);
    if (!c) {
        _nm_set_error(NM_ERR_NOMEM, "pool of %zu-byte objects: cannot get a %zu-byte chunk from allocator %s",
                      pool->object_size, pool->chunk_size, pool->a->name ? pool->a->name : "?");
        return NULL;
    }
    return tc->cur = c;
}

/* ---- fork (platform.h): the pool's lock across fork() ------------------------------------ */
static void nm__pool_fork_lock(void *arg) { nm_mutex_lock(&((nm_pool_t *)arg)->lock); }
static void nm__pool_fork_unlock(void *arg) { nm_mutex_unlock(&((nm_pool_t *)arg)->lock); }
/* In the child only the forking thread exists: the caches of the others are released as their
 * thread exits would have (chunks orphaned, for the next thread that needs one to adopt), so no
 * chunk is stranded and a new thread that happens to get a dead one's id starts afresh.  Their
 * fast paths take no lock, so an operation may have been cut short: at worst an object is lost
 * (neither free nor allocated), never handed out twice. */
static void nm__pool_fork_child(void *arg) {
    nm_pool_t *pool = (nm_pool_t *)arg;
    uintptr_t me = nm_thread_fast_id();
    nm__tcache_t *tc;
    for (tc = pool->tcaches; tc; tc = tc->next) {
        uintptr_t t = (uintptr_t)nm_atomic_load_relaxed(&tc->thread);
        if (t != 0 && t != me) nm__tcache_release(pool, tc);
    }
    nm_mutex_unlock(&pool->lock);
}

/* ---- creation and destruction ---------------------------------------------------------- */
nm_pool_t *nm_pool_create(nm_allocator_t *a, size_t object_size, size_t objects_per_chunk, unsigned flags) {
    return nm_pool_create_ex(a, object_size, objects_per_chunk, 64, flags);
}

/* Chunk layout for n objects: returns the objects' offset from the chunk start, or 0 on overflow. */
static size_t nm__layout(nm_pool_t *pool, size_t n, size_t *words) {
    size_t off = _nm_align_up(sizeof(nm__chunk_t), sizeof(nm_atomic_t)), t;
    *words = (n + NM__WBITS - 1) / NM__WBITS;
    if (nm_mul_overflow(*words, 2 * sizeof(nm_atomic_t), &t) || nm_add_overflow(off, t, &off)) return 0;
    if (pool->flags & NM_POOL_CHECKED) {
        if (nm_mul_overflow(n, sizeof(char *) + sizeof(int), &t) || nm_add_overflow(off, t, &off)) return 0;
    }
    if (nm_add_overflow(off, pool->alignment, &t)) return 0;
    return _nm_align_up(off, pool->alignment);
}

nm_pool_t *nm_pool_create_ex(nm_allocator_t *a, size_t object_size, size_t objects_per_chunk,
                             size_t alignment, unsigned flags) {
    nm_pool_t *pool;
    size_t stride, total, off, words, cs, n;
    uintptr_t odd;
    if (!a) a = nm_allocator_libc(); /* NULL: the C library */
    if (object_size == 0) { _nm_set_error(NM_ERR_INVALID, "nm_pool_create: object size is 0"); return NULL; }
    if (objects_per_chunk == 0) { _nm_set_error(NM_ERR_INVALID, "nm_pool_create: objects_per_chunk is 0"); return NULL; }
    if (!_nm_is_pow2(alignment) || alignment < sizeof(void *) || alignment > NM_POOL_MAX_ALIGN) {
        _nm_set_error(NM_ERR_INVALID, "nm_pool_create: alignment %zu is not a power of two in [%zu, %d]",
                      alignment, sizeof(void *), NM_POOL_MAX_ALIGN);
        return NULL;
    }
    if (flags & ~(unsigned)(NM_POOL_ZERO | NM_POOL_CHECKED | NM_POOL_BUGHUNT | NM_POOL_QUIET | NM_POOL_UNCHECKED)) {
        _nm_set_error(NM_ERR_INVALID, "nm_pool_create: unknown flags %#x", flags);
        return NULL;
    }
    if ((flags & NM_POOL_UNCHECKED) && (flags & (NM_POOL_CHECKED | NM_POOL_BUGHUNT))) {
        _nm_set_error(NM_ERR_INVALID, "nm_pool_create: NM_POOL_UNCHECKED excludes NM_POOL_CHECKED and NM_POOL_BUGHUNT");
        return NULL;
    }
    if (object_size > NM_MAX_ALLOC / 4 || objects_per_chunk > NM_MAX_ALLOC / 4) {
        _nm_set_error(NM_ERR_OVERFLOW, "nm_pool_create: object size %zu x %zu objects per chunk is too large",
                      object_size, objects_per_chunk);
        return NULL;
    }
    stride = _nm_align_up(object_size < sizeof(void *) ? sizeof(void *) : object_size, alignment);
    pool = (nm_pool_t *)nm_calloc(a, 1, sizeof *pool);
    if (!pool) return NULL;
    pool->a = a;
    pool->flags = flags;
    pool->unchecked = (flags & NM_POOL_UNCHECKED) != 0;
    pool->zero_mode = !(flags & NM_POOL_ZERO) ? NM__ZERO_NONE
                      : object_size >= 16 && object_size <= 64 ? NM__ZERO_16_64 : NM__ZERO_OTHER;
    pool->object_size = object_size;
    pool->stride = stride;
    pool->alignment = alignment;
    pool->want_per_chunk = objects_per_chunk;
    /* chunk size: smallest power of two holding the header and objects_per_chunk objects */
    off = nm__layout(pool, objects_per_chunk, &words);
    if (!off || nm_mul_overflow(stride, objects_per_chunk, &total) || nm_add_overflow(total, off, &total)
        || total > ((size_t)1 << (sizeof(size_t) * 8 - 2))) {
        nm_free(a, pool);
        _nm_set_error(NM_ERR_OVERFLOW, "nm_pool_create: %zu objects of %zu bytes do not fit a chunk",
                      objects_per_chunk, object_size);
        return NULL;
    }
    cs = 4096;
    while (cs < total) cs <<= 1;
    /* fill the power of two: as many objects as fit */
    n = (cs - off) / stride + 1;
    do {
        n--;
        off = nm__layout(pool, n, &words);
    } while (n > objects_per_chunk && off + n * stride > cs);
    pool->chunk_size = cs;
    pool->nobj = n;
    pool->objects_offset = off;
    pool->bits_words = words;
    for (pool->chunk_shift = 0; ((size_t)1 << pool->chunk_shift) < cs; pool->chunk_shift++) { }
    pool->vg = NM_VG_RUNNING() ? 1 : 0;
    for (odd = stride, pool->stride_tz = 0; !(odd & 1u); odd >>= 1) pool->stride_tz++;
    pool->stride_inv = nm__inverse(odd);
    nm_mutex_init(&pool->lock);
    {
        nm__reg_t *r = nm__reg_new(pool, 16);
        if (!r) { nm_free(a, pool); return NULL; }
        nm_atomic_store_relaxed(&pool->reg, (intptr_t)r);
    }
    if (flags & NM_POOL_BUGHUNT) { /* the mode is chosen here, once */
        pool->bh = _nm_bh_create(a, object_size, alignment, (flags & NM_POOL_ZERO) != 0, &pool->lock);
        if (!pool->bh) {
            nm_free(a, (void *)nm_atomic_load_relaxed(&pool->reg));
            nm_mutex_destroy(&pool->lock);
            nm_free(a, pool);
            return NULL;
        }
    }
    nm_atfork_register(&nm__pools_fork); /* once; before taking the lock it protects */
    nm_mutex_lock(&nm__pools_lock);
    pool->id = ++nm__pool_ids;
    pool->next_live = nm__pools;
    nm__pools = pool;
    nm_mutex_unlock(&nm__pools_lock);
    /* secret: address entropy mixed with the clock (not cryptographic; detects corruption) */
    {
        uint64_t s = nm_now_ns() ^ ((uint64_t)(uintptr_t)pool << 17) ^ (pool->id * 0x9E3779B97F4A7C15ull);
        s ^= s >> 33; s *= 0xff51afd7ed558ccdull; s ^= s >> 33; s *= 0xc4ceb9fe1a85ec53ull; s ^= s >> 33;
        pool->secret = (uintptr_t)s | 1u;
    }
    pool->fast = pool->vg || (flags & (NM_POOL_CHECKED | NM_POOL_BUGHUNT)) ? NM__FAST_NONE
                 : pool->unchecked ? NM__FAST_UNCHECKED : NM__FAST_POOL;
    NM_VG_MEMPOOL_CREATE(pool, 0, (flags & NM_POOL_ZERO) != 0);
    nm_atfork_init(&pool->fork, nm__pool_fork_lock, nm__pool_fork_unlock, nm__pool_fork_child, pool,
                   NM_ATFORK_OBJECT);
    nm_atfork_register(&pool->fork);
    return pool;
}

/* Prints one leaked object. */
static void nm__print_leak(nm_pool_t *pool, void *p, const char *file, int line) {
    if (file && line) fprintf(stderr, "nativemem: pool leak: %p (%zu bytes) allocated at %s:%d\n", p, pool->object_size, file, line);
    else fprintf(stderr, "nativemem: pool leak: %p (%zu bytes) allocated at %s\n", p, pool->object_size, nm__sitef(file));
}

void nm_pool_destroy(nm_pool_t *pool) {
    nm_pool_t **pp;
    nm__chunk_t *c, *next;
    nm__tcache_t *tc, *tn;
    nm__reg_t *r, *ro;
    if (!pool) return;
    nm_atfork_unregister(&pool->fork);
    nm_mutex_lock(&nm__pools_lock);
    for (pp = &nm__pools; *pp && *pp != pool; pp = &(*pp)->next_live) { }
    if (*pp) *pp = pool->next_live;
    nm_mutex_unlock(&nm__pools_lock);
    if ((pool->flags & NM_POOL_CHECKED) && !(pool->flags & NM_POOL_QUIET)) {
        size_t n = nm_pool_live_objects(pool, NULL, 0);
        if (n) {
            nm_pool_object_t *objs = (nm_pool_object_t *)nm_calloc(pool->a, n, sizeof *objs);
            size_t i;
            fprintf(stderr, "nativemem: pool of %zu-byte objects destroyed with %zu live object(s)\n", pool->object_size, n);
            if (objs) {
                size_t got = nm_pool_live_objects(pool, objs, n);
                if (got < n) n = got;
                for (i = 0; i < n; i++) nm__print_leak(pool, objs[i].ptr, objs[i].file, objs[i].line);
                nm_free(pool->a, objs);
            }
        }
    }
    if (pool->bh) _nm_bh_destroy(pool->bh);
    for (c = pool->all; c; c = next) {
        next = c->next_all;
        NM__VG(pool, NM__VGR_DEFINED, c->objects, c->nobj * pool->stride);
        NM_ASAN_UNPOISON(c->objects, c->nobj * pool->stride);
        nm_free(pool->a, c);
    }
    for (tc = pool->tcaches; tc; tc = tn) {
        tn = tc->next;
        nm_free(pool->a, tc);
    }
    for (r = (nm__reg_t *)nm_atomic_load_relaxed(&pool->reg); r; r = ro) {
        ro = r->older;
        nm_free(pool->a, r);
    }
    NM_VG_MEMPOOL_DESTROY(pool);
    nm_mutex_destroy(&pool->lock);
    pool->id = 0;
    nm_free(pool->a, pool);
}

/* ---- allocation ---------------------------------------------------------------------- */
/* Checked mode: verifies the poison of a slot being handed out again. */
static int nm__verify_poison(nm_pool_t *pool, nm__chunk_t *c, size_t idx, unsigned char *p) {
    size_t i;
    for (i = sizeof(void *); i < pool->object_size; i++) {
        if (p[i] != NM__POISON) {
            return _nm_set_error(NM_ERR_USE_AFTER_FREE,
                                 "write after free in pool object %p (%zu bytes): byte %zu is 0x%02x; "
                                 "the object was last allocated at %s%s%.0d",
                                 (void *)p, pool->object_size, i, p[i], nm__sitef(c->site_file[idx]),
                                 c->site_line[idx] ? ":" : "", c->site_line[idx]);
        }
    }
    return 0;
}

/* Counts `n` allocations of thread cache `tc` and its peak. */
NM_INLINE void nm__count_allocs(nm__tcache_t *tc, intptr_t n) {
    intptr_t a = nm_atomic_load_relaxed(&tc->allocs) + n;
    nm_atomic_store_relaxed(&tc->allocs, a);
    a -= nm_atomic_load_relaxed(&tc->frees);
    if (NM_UNLIKELY(a > nm_atomic_load_relaxed(&tc->peak_net))) nm_atomic_store_relaxed(&tc->peak_net, a);
}

/* How hand-out remembers a single allocation in tc->mine: */
#define NM__MINE_NONE 0  /* a batch's: counted by the caller, not remembered (freed as a batch)   */
#define NM__MINE_SET 1   /* counted, and remembered with its slot and chunk                       */
#define NM__MINE_HOT 2   /* counted; it was the hot object: its slot and chunk are there already  */

/* Hands out `slot` (index idx of chunk c) from thread cache `tc`: marks it allocated, counts and
 * remembers it (`mine`, above), verifies a reused slot's poison and records the site (checked
 * mode), and zeroes it (NM_POOL_ZERO). */
NM_INLINE void *nm__hand_out(nm_pool_t *pool, nm__tcache_t *tc, nm__chunk_t *c, void *slot, size_t idx,
                             const char *file, int line, int mine, int reused, int vg) {
    nm__bit_put(c->alloc_bits, idx, 1);
    NM_ASAN_UNPOISON(slot, pool->object_size);
    if (vg) NM__VG(pool, NM__VGR_ALLOC, slot, pool->object_size); /* 0: an inline path's (pool->fast) */
    if (pool->flags & NM_POOL_CHECKED) {
        if (reused) {
            int rc;
            NM__VG(pool, NM__VGR_DEFINED, slot, pool->object_size);
            rc = nm__verify_poison(pool, c, idx, (unsigned char *)slot);
            if (rc) { /* the damaged slot stays out of circulation, never counted (nor the peak) */
                nm__bit_put(c->alloc_bits, idx, 0);
                NM__VG(pool, NM__VGR_FREE, slot, 0);
                NM_ASAN_POISON(slot, pool->object_size);
                return NULL;
            }
            if (!(pool->flags & NM_POOL_ZERO)) NM__VG(pool, NM__VGR_UNDEFINED, slot, pool->object_size);
        }
        c->site_file[idx] = file ? file : _nm_site_file;
        c->site_line[idx] = file ? line : _nm_site_line;
    }
    if (mine != NM__MINE_NONE) {
        tc->mine = (uintptr_t)slot;
        if (mine == NM__MINE_SET) {
            tc->mine_idx = idx;
            tc->mine_chunk = c;
        }
        nm__count_allocs(tc, 1);
    }
    nm__zero_obj(pool, slot);
    return slot;
}

/* Pops one object for thread cache `tc`, site `file`:`line` (checked mode). */
/* `count`: count the allocation here (0: the caller counts a whole batch at once). */
NM_INLINE void *nm__alloc(nm_pool_t *pool, nm__tcache_t *tc, const char *file, int line, int count) {
    nm__chunk_t *c = tc->cur;
    void *slot;
    size_t idx;
    int reused = 0;
    if (NM__HOT(tc)) { /* validated when it was freed; its chunk is still this thread's */
        slot = NM__HOT(tc);
        idx = tc->mine_idx;
        c = tc->mine_chunk;
        tc->mine = 0;
        goto take;
    }
    for (;;) {
        if (NM_UNLIKELY(!c || !nm__has_room(c))) {
            if (c) nm__collect(pool, c);
            if (!c || !nm__has_room(c)) {
                c = nm__refill(pool, tc);
                if (!c) return NULL;
            }
        }
        if (c->free) {
            void *next;
            slot = c->free;
            idx = nm__slot_index(pool, c, slot);
            if (NM_UNLIKELY(idx == (size_t)-1)) { /* a link that passed the chunk check but is no object
                                                   * start: not read (it may end past the chunk) */
                c->free = NULL;
                _nm_set_error(NM_ERR_CORRUPT, "pool free list corrupt: link to %p is not an object start", slot);
                return NULL;
            }
            nm__link_open(pool, slot);
            next = nm__encode(pool, slot, *(void **)slot);
            nm__link_close(pool, slot);
            /* the next link is followed by the next pop: only within this chunk's memory */
            if (NM_UNLIKELY(next != NULL && (uintptr_t)next - (uintptr_t)c >= pool->chunk_size)) {
                c->free = NULL; /* drop the damaged list rather than follow it */
                if (pool->flags & NM_POOL_CHECKED)
                    _nm_set_error(NM_ERR_CORRUPT,
                                  "pool free list corrupt at %p (%zu-byte objects): its link decodes to %p "
                                  "(a write after free?); the object was last allocated at %s%s%.0d",
                                  slot, pool->object_size, next, nm__sitef(c->site_file[idx]),
                                  c->site_line[idx] ? ":" : "", c->site_line[idx]);
                else
                    _nm_set_error(NM_ERR_CORRUPT,
                                  "pool free list corrupt at %p (%zu-byte objects): its link decodes to %p "
                                  "(a write after free?)", slot, pool->object_size, next);
                return NULL;
            }
            c->free = next;
            if (NM_UNLIKELY(nm__bit_get(c->alloc_bits, idx))) {
                _nm_set_error(NM_ERR_CORRUPT, "pool free list corrupt: %p is on the free list but allocated", slot);
                return NULL;
            }
            reused = 1;
        } else {
            idx = c->bump++;
            slot = c->objects + idx * pool->stride;
        }
        break;
    }
take:
    return nm__hand_out(pool, tc, c, slot, idx, file, line, count ? NM__MINE_SET : NM__MINE_NONE, reused, 1);
}

/* ---- unchecked mode (NM_POOL_UNCHECKED): a per-thread free list and nothing else ---------- */

/* Objects that move at once between a cache and the shared list: a chunk's worth. */
#define NM__UBATCH(pool) ((pool)->nobj)

/* Takes up to a batch from the shared list into the cache, else carves from the cache's chunk,
 * else a new chunk. */
static NM_NOINLINE void *nm__ualloc_slow(nm_pool_t *pool, nm__tcache_t *tc) {
    nm__chunk_t *c;
    void *p;
    if (nm_atomic_load_relaxed(&pool->ushared) != 0) { /* a hint: looked at again under the lock */
        nm_mutex_lock(&pool->lock);
        nm__sample_peak(pool);
        if (nm_atomic_load_relaxed(&pool->ushared) != 0) {
            void *head = (void *)nm_atomic_load_relaxed(&pool->ushared), *last = head, *next;
            size_t n = 1;
            while (n < NM__UBATCH(pool) && (next = nm__ulink_get(pool, last, 1)) != NULL) {
                last = next;
                n++;
            }
            nm_atomic_store_relaxed(&pool->ushared, (intptr_t)nm__ulink_get(pool, last, 1));
            nm__ulink_set(pool, last, NULL, 1);
            tc->ufree = nm__ulink_get(pool, head, 1);
            tc->ucount = n - 1;
            nm_mutex_unlock(&pool->lock);
            return head;
        }
        nm_mutex_unlock(&pool->lock);
    }
    c = tc->cur;
    if (c == NULL || c->bump >= c->nobj) {
        nm__chunk_t **pp;
        nm_mutex_lock(&pool->lock);
        nm__sample_peak(pool);
        /* a chunk an exited thread was still carving (its free objects went to the shared list);
         * fully carved orphans leave the list (destroy finds every chunk through pool->all) */
        for (pp = &pool->orphans, c = NULL; *pp != NULL;) {
            nm__chunk_t *o = *pp;
            *pp = o->next_owned;
            if (o->bump < o->nobj) {
                nm_atomic_store_relaxed(&o->owner, (intptr_t)tc);
                o->next_owned = tc->owned;
                tc->owned = o;
                c = o;
                break;
            }
        }
        if (c == NULL) c = nm__chunk_new(pool, tc);
        nm_mutex_unlock(&pool->lock);
        if (c == NULL) {
            _nm_set_error(NM_ERR_NOMEM, "pool of %zu-byte objects: cannot get a %zu-byte chunk from allocator %s",
                          pool->object_size, pool->chunk_size, pool->a->name ? pool->a->name : "?");
            return NULL;
        }
        tc->cur = c;
    }
    p = c->objects + c->bump++ * pool->stride;
    return p;
}

/* `vg`: 0 from an inline path (pool->fast: no Valgrind), else 1. */
NM_INLINE void *nm__ualloc(nm_pool_t *pool, nm__tcache_t *tc, int vg) {
    void *p = tc->ufree;
    if (NM_LIKELY(p != NULL)) {
        tc->ufree = nm__ulink_get(pool, p, vg);
        tc->ucount--;
    } else {
        p = nm__ualloc_slow(pool, tc);
        if (NM_UNLIKELY(p == NULL)) return NULL;
    }
    nm__counter_inc(&tc->allocs); /* peak: sampled on the slow paths (see NM_POOL_UNCHECKED) */
    NM_ASAN_UNPOISON(p, pool->object_size);
    if (vg) NM__VG(pool, NM__VGR_ALLOC, p, pool->object_size);
    nm__zero_obj(pool, p);
    return p;
}

/* Gives a batch of the cache's objects to the shared list (the cache holds two batches). */
static NM_NOINLINE void nm__ufree_spill(nm_pool_t *pool, nm__tcache_t *tc) {
    void *head = tc->ufree, *last = head, *next;
    size_t n = 1;
    while (n < NM__UBATCH(pool) && (next = nm__ulink_get(pool, last, 1)) != NULL) {
        last = next;
        n++;
    }
    tc->ufree = nm__ulink_get(pool, last, 1);
    tc->ucount -= n;
    nm_mutex_lock(&pool->lock);
    nm__ulink_set(pool, last, (void *)nm_atomic_load_relaxed(&pool->ushared), 1);
    nm_atomic_store_relaxed(&pool->ushared, (intptr_t)head);
    nm_mutex_unlock(&pool->lock);
}

/* Pushes `p` (not NULL) on the cache's list and counts it; the caller spills when it is full. */
NM_INLINE void nm__ufree_push(nm_pool_t *pool, nm__tcache_t *tc, void *p, int vg) {
    if (vg) NM__VG(pool, NM__VGR_FREE, p, 0);
    NM_ASAN_POISON(p, pool->object_size);
    nm__ulink_set(pool, p, tc->ufree, vg); /* the link word: beyond objects smaller than a pointer */
    tc->ufree = p;
    tc->ucount++;
    nm__counter_inc(&tc->frees);
}
NM_INLINE int nm__ufree(nm_pool_t *pool, nm__tcache_t *tc, void *p) {
    if (NM_UNLIKELY(p == NULL)) return _nm_set_error(NM_ERR_INVALID_FREE, "free of NULL to a pool");
    nm__ufree_push(pool, tc, p, 1);
    if (NM_UNLIKELY(tc->ucount > 2 * NM__UBATCH(pool))) nm__ufree_spill(pool, tc);
    return NM_OK;
}

/* The modes' entry points, each its own function so that the unchecked one stays lean (no
 * registers saved for the checked path); nm_pool_alloc and nm_pool_free jump to one. */
static NM_NOINLINE void *nm__alloc_unchecked(nm_pool_t *pool) {
    nm__tcache_t *tc = nm__tc(pool);
    return NM_LIKELY(tc != NULL) ? nm__ualloc(pool, tc, 1) : NULL;
}
static NM_NOINLINE void *nm__alloc_checked(nm_pool_t *pool) {
    nm__tcache_t *tc;
    if (NM_UNLIKELY(pool->bh != NULL)) return _nm_bh_alloc(pool->bh, _nm_site_file, _nm_site_line);
    tc = nm__tc(pool);
    return NM_LIKELY(tc != NULL) ? nm__alloc(pool, tc, NULL, 0, 1) : NULL;
}

/* The entry points handle the common case themselves, with no second call and no register
 * saved: this thread's last pool (one thread-local compare), and an object at hand -- the
 * unchecked cache's first, or the hot object this thread freed last (see nm__tcache_t.mine).
 * Anything else goes to the mode's full path. */
static NM_NOINLINE void *nm__alloc_slow(nm_pool_t *pool) {
    return pool->unchecked ? nm__alloc_unchecked(pool) : nm__alloc_checked(pool);
}

void *nm_pool_alloc(nm_pool_t *pool) {
    if (NM_LIKELY(nm__tlast.pool == pool && nm__tlast.id == pool->id)) {
        nm__tcache_t *tc = nm__tlast.tc;
        void *p;
        if (pool->fast == NM__FAST_UNCHECKED) {
            if (NM_LIKELY(tc->ufree != NULL)) return nm__ualloc(pool, tc, 0);
        } else if (pool->fast == NM__FAST_POOL && (p = NM__HOT(tc)) != NULL) {
            return nm__hand_out(pool, tc, tc->mine_chunk, p, tc->mine_idx, NULL, 0, NM__MINE_HOT, 0, 0);
        }
    }
    return nm__alloc_slow(pool);
}

void *nm_pool_alloc_at(nm_pool_t *pool, const char *file, int line) {
    nm__tcache_t *tc;
    if (pool->bh) return _nm_bh_alloc(pool->bh, file, line);
    tc = nm__tc(pool);
    if (tc && pool->unchecked) return nm__ualloc(pool, tc, 1);
    return tc ? nm__alloc(pool, tc, file ? file : "<unknown>", line, 1) : NULL;
}

/* A batch's common case: pops from chunk c's free list with its head in a local (through
 * c->free each pop would wait on the previous one's store).  The same checks as nm__alloc's:
 * a slot is an object start of c, not allocated, before its link is read, and its link stays in
 * the chunk; the first slot failing one is left at the head for nm__alloc, which reports it.
 * Only for pool->fast == NM__FAST_POOL (no checked mode, no Valgrind).  `zmode` is the pool's
 * zero_mode, a constant in each caller below (one loop per mode, no branch on it per object).
 * Returns how many it handed out (uncounted). */
NM_INLINE size_t nm__alloc_run_z(nm_pool_t *pool, nm__chunk_t *c, void **out, size_t n, int zmode) {
    /* the pool's and chunk's fields in locals: the loop's stores (bitmap, zeroing, out) could
     * alias them for the compiler, which would reload each one per object */
    const uintptr_t secret = pool->secret, base = (uintptr_t)c->objects, inv = pool->stride_inv;
    const uintptr_t tzmask = ((uintptr_t)1 << pool->stride_tz) - 1, cs = pool->chunk_size;
    const unsigned tz = pool->stride_tz;
    const size_t nobj = c->nobj, osize = pool->object_size;
    nm_atomic_t *const bits = c->alloc_bits;
    void *head = c->free;
    size_t k = 0;
    while (k < n && head != NULL) {
        void *slot = head, *next;
        uintptr_t off = (uintptr_t)slot - base, idx = (off >> tz) * inv;
        /* idx is the slot only when off is a multiple of the stride (then below nobj); any other
         * offset, one below the objects included, gives an idx above nobj (see nm__slot_index) */
        if (NM_UNLIKELY((off & tzmask) != 0 || idx >= nobj || nm__bit_get(bits, idx))) break;
        NM__LINK_OPEN_FAST(slot);
        next = (void *)(*(uintptr_t *)slot ^ secret ^ (uintptr_t)slot);
        NM__LINK_CLOSE_FAST(slot);
        /* a link leading out of the chunk (written after free) keeps its slot out of circulation:
         * left at the head, for nm__alloc to drop and report */
        if (NM_UNLIKELY(next != NULL && (uintptr_t)next - (uintptr_t)c >= cs)) break;
        head = next;
        nm__bit_put(bits, idx, 1);
        NM_ASAN_UNPOISON(slot, osize);
        if (zmode == NM__ZERO_16_64) nm__zero_16_64(slot, osize);
        else if (zmode != NM__ZERO_NONE) nm__zero(slot, osize);
        out[k++] = slot;
    }
    c->free = head;
    return k;
}

static size_t nm__alloc_run(nm_pool_t *pool, nm__chunk_t *c, void **out, size_t n) {
    switch (pool->zero_mode) {
    case NM__ZERO_NONE: return nm__alloc_run_z(pool, c, out, n, NM__ZERO_NONE);
    case NM__ZERO_16_64: return nm__alloc_run_z(pool, c, out, n, NM__ZERO_16_64);
    default: return nm__alloc_run_z(pool, c, out, n, NM__ZERO_OTHER);
    }
}

size_t nm_pool_alloc_many(nm_pool_t *pool, void **out, size_t n) {
    size_t i;
    nm__tcache_t *tc;
    if (pool->bh) {
        for (i = 0; i < n; i++)
            if (!(out[i] = _nm_bh_alloc(pool->bh, _nm_site_file, _nm_site_line))) return i;
        return n;
    }
    tc = nm__tc(pool);
    if (!tc) return 0;
    if (pool->unchecked) {
        for (i = 0; i < n; i++)
            if (!(out[i] = nm__ualloc(pool, tc, 1))) return i;
        return n;
    }
    i = 0;
    while (i < n) {
        nm__chunk_t *c = tc->cur;
        if (!NM__HOT(tc) && c != NULL && c->free != NULL && pool->fast == NM__FAST_POOL) {
            i += nm__alloc_run(pool, c, out + i, n - i);
            if (i == n) break;
        }
        /* everything else, and a slot the run refused (reported here) */
        if ((out[i] = nm__alloc(pool, tc, NULL, 0, 0)) == NULL) break;
        i++;
    }
    if (i) nm__count_allocs(tc, (intptr_t)i); /* counted once for the batch */
    return i;
}

/* ---- free ---------------------------------------------------------------------------- */
static NM_NOINLINE int nm__bad_free(nm_pool_t *pool, nm__chunk_t *c, void *p, size_t idx) {
    if (!c) return _nm_set_error(NM_ERR_INVALID_FREE, "invalid free of %p: not from this pool (%zu-byte objects)",
                                 p, pool->object_size);
    if (idx == (size_t)-1)
        return _nm_set_error(NM_ERR_INVALID_FREE, "invalid free of %p: inside this pool's chunk %p but not at the "
                             "start of a %zu-byte object", p, (void *)c, pool->object_size);
    if (pool->flags & NM_POOL_CHECKED)
        return _nm_set_error(NM_ERR_DOUBLE_FREE, "double free of pool object %p (%zu bytes), last allocated at %s%s%.0d",
                             p, pool->object_size, nm__sitef(c->site_file[idx]), c->site_line[idx] ? ":" : "",
                             c->site_line[idx]);
    return _nm_set_error(NM_ERR_DOUBLE_FREE, "double free of pool object %p (%zu bytes)", p, pool->object_size);
}

/* A batch free's pushes onto one owned chunk's free list, the head kept in a local (through
 * c->free each push would wait on the previous one's store); written back when the batch moves
 * to another chunk and at its end.  Only the owner touches an owned chunk's list. */
typedef struct nm__run {
    nm__chunk_t *c;
    void *head;
} nm__run_t;

NM_INLINE void nm__run_end(nm__run_t *run) {
    if (run->c != NULL) run->c->free = run->head;
}

/* Keeps a freed object (already validated, its allocation bit cleared) for the thread's next
 * allocation. */
NM_INLINE void nm__keep_hot(nm__tcache_t *tc, nm__chunk_t *c, void *p, size_t idx) {
    tc->mine = (uintptr_t)p | 1u;
    tc->mine_idx = idx;
    tc->mine_chunk = c;
}

/* Returns `p` to the pool from thread cache `tc`; `count`: count it here (0: the caller counts a
 * batch).  `tc` NULL: a thread that has no cache and could get none (out of memory) frees as
 * another thread would, counted in the pool (callers pass a constant NULL: the compiler keeps
 * the cached path free of these tests). */
NM_INLINE int nm__free(nm_pool_t *pool, nm__tcache_t *tc, void *p, int count, nm__run_t *run) {
    nm__chunk_t *c;
    size_t idx;
    /* the object this thread allocated last: its slot is known (NM__IS_LAST: never NULL, which
     * the cleared field holds, nor an odd pointer, which a hot entry holds) */
    if (tc != NULL && NM__IS_LAST(tc, p)) {
        c = tc->mine_chunk;
        idx = tc->mine_idx;
        tc->mine = 0;
        if (NM_UNLIKELY(c->magic != ((uintptr_t)c ^ pool->secret)))
            return _nm_set_error(NM_ERR_CORRUPT, "pool chunk header %p is corrupt (freeing %p)", (void *)c, p);
        goto checked;
    }
    /* chunks live until destroy, so a chunk this thread already found needs no lookup */
    if (tc != NULL && NM_LIKELY((uintptr_t)p - tc->last_chunk < pool->chunk_size && tc->last_chunk != 0)) {
        c = (nm__chunk_t *)tc->last_chunk;
    } else {
        c = nm__chunk_of(pool, p);
        if (NM_UNLIKELY(!c)) return nm__bad_free(pool, NULL, p, 0);
        if (tc != NULL) tc->last_chunk = (uintptr_t)c;
    }
    if (NM_UNLIKELY(c->magic != ((uintptr_t)c ^ pool->secret)))
        return _nm_set_error(NM_ERR_CORRUPT, "pool chunk header %p is corrupt (freeing %p)", (void *)c, p);
    idx = nm__slot_index(pool, c, p);
    if (NM_UNLIKELY(idx == (size_t)-1)) return nm__bad_free(pool, c, p, idx);
checked:
    if (NM_UNLIKELY(!nm__bit_get(c->alloc_bits, idx) || nm__bit_get(c->remote_bits, idx)))
        return nm__bad_free(pool, c, p, idx);
    NM__VG(pool, NM__VGR_FREE, p, 0);
    if (pool->flags & NM_POOL_CHECKED) {
        NM__VG(pool, NM__VGR_UNDEFINED, p, pool->object_size);
        memset(p, NM__POISON, pool->object_size);
        NM__VG(pool, NM__VGR_NOACCESS, p, pool->object_size);
    }
    NM_ASAN_POISON(p, pool->object_size);
    if (NM_LIKELY(tc != NULL && (nm__tcache_t *)nm_atomic_load_relaxed(&c->owner) == tc)) {
        nm__bit_put(c->alloc_bits, idx, 0);
        if (run != NULL) { /* a batch: onto the run's list (see nm__run_t) */
            if (c != run->c) {
                nm__run_end(run);
                run->c = c;
                run->head = c->free;
            }
            nm__link_open(pool, p);
            *(void **)p = nm__encode(pool, p, run->head);
            nm__link_close(pool, p);
            run->head = p;
        } else if (!NM__HOT(tc) && !(pool->flags & NM_POOL_CHECKED)) { /* kept for the next alloc */
            nm__keep_hot(tc, c, p, idx);
        } else {
            nm__push_free(pool, c, p);
        }
    } else {
        uintptr_t m = (uintptr_t)1 << (idx % NM__WBITS);
        if (nm__atomic_or(&c->remote_bits[idx / NM__WBITS], m) & m) return nm__bad_free(pool, c, p, idx);
        nm_atomic_store_release(&c->remote_pending, 1);
    }
    if (tc == NULL) {
        nm_atomic_add_relaxed(&pool->notc_frees, 1);
    } else if (count) {
        nm__counter_inc(&tc->frees);
    }
    return 0;
}

/* An unchecked pool's free by a thread that has no cache and could get none (out of memory):
 * the object goes to the shared list, counted in the pool. */
static NM_NOINLINE int nm__ufree_notc(nm_pool_t *pool, void *p) {
    nm_clear_error(); /* the failed cache allocation's: this free has its own outcome */
    if (p == NULL) return _nm_set_error(NM_ERR_INVALID_FREE, "free of NULL to a pool");
    NM__VG(pool, NM__VGR_FREE, p, 0);
    NM_ASAN_POISON(p, pool->object_size);
    nm_mutex_lock(&pool->lock);
    nm__ulink_set(pool, p, (void *)nm_atomic_load_relaxed(&pool->ushared), 1);
    nm_atomic_store_relaxed(&pool->ushared, (intptr_t)p);
    nm_mutex_unlock(&pool->lock);
    nm_atomic_add_relaxed(&pool->notc_frees, 1);
    return NM_OK;
}
static NM_NOINLINE int nm__free_notc(nm_pool_t *pool, void *p) {
    nm_clear_error(); /* the failed cache allocation's: this free has its own outcome */
    return nm__free(pool, NULL, p, 1, NULL);
}

static NM_NOINLINE int nm__free_unchecked(nm_pool_t *pool, void *ptr) {
    nm__tcache_t *tc = nm__tc(pool);
    return NM_LIKELY(tc != NULL) ? nm__ufree(pool, tc, ptr) : nm__ufree_notc(pool, ptr);
}
static NM_NOINLINE int nm__free_checked(nm_pool_t *pool, void *ptr) {
    nm__tcache_t *tc;
    if (NM_UNLIKELY(pool->bh != NULL)) return _nm_bh_free(pool->bh, ptr);
    tc = nm__tc(pool);
    return NM_LIKELY(tc != NULL) ? nm__free(pool, tc, ptr, 1, NULL) : nm__free_notc(pool, ptr);
}

static NM_NOINLINE int nm__free_slow(nm_pool_t *pool, void *ptr) {
    return pool->unchecked ? nm__free_unchecked(pool, ptr) : nm__free_checked(pool, ptr);
}

/* The common cases handled here (see nm_pool_alloc): an unchecked cache with room, and the
 * object this thread allocated last, in a chunk it owns, with no hot object kept yet -- the
 * same checks as nm__free's (chunk header, allocation bit set, no remote free); anything that
 * fails one goes the full way, which reports it. */
int nm_pool_free(nm_pool_t *pool, void *ptr) {
    if (NM_LIKELY(nm__tlast.pool == pool && nm__tlast.id == pool->id)) {
        nm__tcache_t *tc = nm__tlast.tc;
        if (pool->fast == NM__FAST_UNCHECKED) {
            if (NM_LIKELY(ptr != NULL && tc->ucount < 2 * NM__UBATCH(pool))) { /* room: no spill */
                nm__ufree_push(pool, tc, ptr, 0);
                return NM_OK;
            }
        } else if (pool->fast == NM__FAST_POOL && NM__IS_LAST(tc, ptr)) {
            nm__chunk_t *c = tc->mine_chunk;
            size_t idx = tc->mine_idx;
            if (NM_LIKELY(c->magic == ((uintptr_t)c ^ pool->secret) && nm__bit_get(c->alloc_bits, idx)
                          && !nm__bit_get(c->remote_bits, idx)
                          && (nm__tcache_t *)nm_atomic_load_relaxed(&c->owner) == tc)) {
                NM_ASAN_POISON(ptr, pool->object_size);
                nm__bit_put(c->alloc_bits, idx, 0);
                tc->mine = (uintptr_t)ptr | 1u; /* now the hot object: same slot and chunk */
                nm__counter_inc(&tc->frees);
                return 0;
            }
        }
    }
    return nm__free_slow(pool, ptr);
}

/* free_many's first failure: its code, its pointer's index and its message (kept, as later
 * frees overwrite the thread's error). */
typedef struct nm__first_err {
    int code;
    size_t at;
    char msg[400];
} nm__first_err_t;

static NM_NOINLINE void nm__note_first(nm__first_err_t *f, int rc, size_t i) {
    if (f->code) return;
    f->code = rc;
    f->at = i;
    snprintf(f->msg, sizeof f->msg, "%s", nm_last_error_message());
}

/* free_many's common case: frees ptrs[i..n) while each is an object of the run's chunk (owned by
 * this thread: nm__free checked its header and owner when the run began), allocated and not
 * freed by another thread -- nm__free's checks -- pushing onto the run's list; returns the index
 * of the first pointer it did not free.  Only for pool->fast == NM__FAST_POOL (checked mode
 * poisons, Valgrind needs its requests: nm__free). */
static size_t nm__free_run(nm_pool_t *pool, nm__run_t *run, void **ptrs, size_t i, size_t n) {
    /* the chunk's and the pool's fields in locals (see nm__alloc_run_z) */
    nm__chunk_t *const c = run->c;
    const uintptr_t secret = pool->secret, base = (uintptr_t)c->objects, inv = pool->stride_inv;
    const uintptr_t tzmask = ((uintptr_t)1 << pool->stride_tz) - 1, nobj = c->nobj;
    const unsigned tz = pool->stride_tz;
    nm_atomic_t *const bits = c->alloc_bits, *const rbits = c->remote_bits;
    void *head = run->head;
    for (; i < n; i++) {
        void *p = ptrs[i];
        uintptr_t off = (uintptr_t)p - base, idx = (off >> tz) * inv;
        /* as in nm__slot_index: idx is the slot only when off is a multiple of the stride (then
         * below nobj); any other offset gives an idx above nobj */
        if (NM_UNLIKELY((off & tzmask) != 0 || idx >= nobj || !nm__bit_get(bits, idx) || nm__bit_get(rbits, idx)))
            break;
        nm__bit_put(bits, idx, 0);
        NM_ASAN_POISON(p, pool->object_size);
        NM__LINK_OPEN_FAST(p);
        *(void **)p = (void *)((uintptr_t)head ^ secret ^ (uintptr_t)p);
        NM__LINK_CLOSE_FAST(p);
        head = p;
    }
    run->head = head;
    return i;
}

int nm_pool_free_many(nm_pool_t *pool, void **ptrs, size_t n) {
    size_t i;
    nm__tcache_t *tc = NULL;
    int rc;
    nm__first_err_t first;
    first.code = 0;
    if (!pool->bh) {
        tc = nm__tc(pool);
        if (!tc) { /* no cache (out of memory): one by one, as nm_pool_free does then */
            for (i = 0; i < n; i++)
                if ((rc = nm_pool_free(pool, ptrs[i])) != 0) nm__note_first(&first, rc, i);
            goto out;
        }
    }
    if (tc != NULL && !pool->unchecked) { /* the common case: counted once for the batch */
        size_t freed = 0;
        nm__run_t run = {NULL, NULL};
        const int fast = pool->fast == NM__FAST_POOL; /* else nm__free (checked mode poisons) */
        for (i = 0; i < n; i++) {
            /* the objects of the run's chunk that follow, in one tight loop; then one through
             * nm__free (another chunk, or a pointer the loop refused, which nm__free reports) */
            if (run.c != NULL && fast) {
                size_t j = nm__free_run(pool, &run, ptrs, i, n);
                freed += j - i;
                if ((i = j) == n) break;
            }
            rc = nm__free(pool, tc, ptrs[i], 0, &run);
            if (NM_LIKELY(rc == 0)) freed++;
            else nm__note_first(&first, rc, i);
        }
        nm__run_end(&run);
        nm_atomic_store_relaxed(&tc->frees, nm_atomic_load_relaxed(&tc->frees) + (intptr_t)freed);
    } else {
        for (i = 0; i < n; i++) {
            rc = !tc ? _nm_bh_free(pool->bh, ptrs[i]) : nm__ufree(pool, tc, ptrs[i]);
            if (rc) nm__note_first(&first, rc, i);
        }
    }
out:
    if (first.code) return _nm_set_error(first.code, "free_many: pointer %zu of %zu: %s", first.at, n, first.msg);
    return 0;
}

int nm_pool_owns(nm_pool_t *pool, const void *ptr) {
    nm__chunk_t *c;
    size_t idx;
    if (pool->bh) return _nm_bh_owns(pool->bh, ptr);
    c = nm__chunk_of(pool, ptr);
    if (!c) return 0;
    idx = nm__slot_index(pool, c, ptr);
    if (pool->unchecked) return idx != (size_t)-1 && idx < c->bump; /* a slot handed out once: no liveness */
    return idx != (size_t)-1 && nm__bit_get(c->alloc_bits, idx) && !nm__bit_get(c->remote_bits, idx);
}

/* ---- introspection ------------------------------------------------------------------- */
void nm_pool_stats(nm_pool_t *pool, nm_pool_stats_t *out) {
    int64_t a, f, tcpk, live, pk;
    memset(out, 0, sizeof *out);
    if (pool->bh) {
        _nm_bh_stats(pool->bh, out);
        return;
    }
    nm_mutex_lock(&pool->lock);
    live = nm__live_sum(pool, &a, &f, &tcpk);
    pk = nm_atomic_load_relaxed(&pool->peak_sampled);
    if (tcpk > pk) pk = tcpk;
    if (live > pk) pk = live;
    nm_atomic_store_relaxed(&pool->peak_sampled, (intptr_t)pk);
    out->allocations = a;
    out->frees = f;
    out->live = live;
    out->peak = pk;
    out->chunks = nm_atomic_load_relaxed(&pool->nchunks);
    out->reserved_bytes = nm_atomic_load_relaxed(&pool->reserved);
    nm_mutex_unlock(&pool->lock);
}

size_t nm_pool_object_size(nm_pool_t *pool) { return pool->object_size; }
size_t nm_pool_alignment(nm_pool_t *pool) { return pool->alignment; }
size_t nm_pool_objects_per_chunk(nm_pool_t *pool) { return pool->nobj; }
unsigned nm_pool_flags(nm_pool_t *pool) { return pool->flags; }

size_t nm_pool_live_objects(nm_pool_t *pool, nm_pool_object_t *out, size_t n) {
    size_t count = 0, i;
    nm__chunk_t *c;
    if (pool->bh) return _nm_bh_live_objects(pool->bh, out, n);
    if (pool->unchecked) {
        (void)out;
        (void)n;
        _nm_set_error(NM_ERR_UNSUPPORTED, "an unchecked pool (NM_POOL_UNCHECKED) keeps no record of its live objects");
        return 0;
    }
    nm_mutex_lock(&pool->lock);
    for (c = pool->all; c; c = c->next_all) {
        for (i = 0; i < c->bump; i++) {
            if (!nm__bit_get(c->alloc_bits, i) || nm__bit_get(c->remote_bits, i)) continue;
            if (out && count < n) {
                out[count].ptr = c->objects + i * pool->stride;
                out[count].file = c->site_file ? c->site_file[i] : NULL;
                out[count].line = c->site_line ? c->site_line[i] : 0;
            }
            count++;
        }
    }
    nm_mutex_unlock(&pool->lock);
    return count;
}

int nm_pool_check(nm_pool_t *pool) {
    nm__chunk_t *c;
    int rc = 0;
    if (pool->bh) return 0; /* every object is the backend's: its checker's to verify */
    nm_mutex_lock(&pool->lock);
    for (c = pool->all; c && !rc; c = c->next_all) {
        size_t i;
        void *s = c->free;
        size_t steps = 0;
        while (s && !rc) {
            void *next;
            nm__link_open(pool, s);
            next = nm__encode(pool, s, *(void **)s);
            nm__link_close(pool, s);
            if (next && ((uintptr_t)next - (uintptr_t)c >= pool->chunk_size || nm__slot_index(pool, c, next) == (size_t)-1
                         || ++steps > c->nobj))
                rc = _nm_set_error(NM_ERR_CORRUPT, "pool free list corrupt at %p: link decodes to %p", s, next);
            s = next;
        }
        if (!(pool->flags & NM_POOL_CHECKED)) continue;
        for (i = 0; i < c->bump && !rc; i++) {
            unsigned char *p = (unsigned char *)(c->objects + i * pool->stride);
            int is_free = !nm__bit_get(c->alloc_bits, i) || nm__bit_get(c->remote_bits, i);
            if (!is_free) continue; /* every slot below bump was handed out, and poisoned when freed */
            NM_ASAN_UNPOISON(p, pool->object_size);
            NM__VG(pool, NM__VGR_DEFINED, p, pool->object_size);
            rc = nm__verify_poison(pool, c, i, p);
            NM__VG(pool, NM__VGR_NOACCESS, p, pool->object_size);
            NM_ASAN_POISON(p, pool->object_size);
        }
    }
    nm_mutex_unlock(&pool->lock);
    return rc;
}
