/* pool.c -- fixed-size object pools: cache-line aligned objects carved from chunks.
 *
 * Fast path: a per-thread magazine (an array of free object pointers) per pool, found through a
 * small thread-local table keyed by the pool's unique id; no lock.  Slow path: refill or flush
 * half a magazine from the pool's shared free list under its mutex.  Any thread may free any
 * object (it lands in the freeing thread's magazine), so cross-thread frees need no special
 * case.  Threads that exit hand their magazines back (thread-exit callback).
 *
 * Safety, always on: chunks are aligned to their power-of-two size, so the chunk of any address
 * is a mask away; a lock-free hash of chunk addresses says whether that chunk is ours before its
 * header is read; a per-chunk allocation bitmap (atomic bit per slot) catches double frees and
 * objects handed out twice.  The shared free list is hardened: next pointers are stored XORed
 * with a per-pool secret and the slot address, and checked on pop.
 * Checked mode adds allocation sites, 0xDD poisoning verified on reuse and leak reports;
 * bughunt mode makes one backend allocation per object.  Valgrind and ASan see objects as
 * heap blocks through the NM_VG_* / NM_ASAN_* annotations.
 */
#include "nm_internal.h"

#include <stdio.h>

#define NM__MAG_CAP    64
#define NM__MAG_BATCH  32
#define NM__TLS_SLOTS  8
#define NM__POISON     0xDD
#define NM__HUNT_RING  1024

typedef struct nm__site { const char *file; int line; } nm__site_t;

typedef struct nm__chunk {
    nm_pool_t *pool;
    struct nm__chunk *next;
    char *objs;             /* first object                               */
    size_t nobj;            /* slots in this chunk                        */
    size_t carved;          /* slots handed to the free lists so far      */
    nm_atomic_t *bitmap;    /* 1 bit per slot: allocated                  */
    nm__site_t *sites;      /* checked mode: last allocation site per slot */
} nm__chunk_t;

typedef struct nm__mag {
    void *slots[NM__MAG_CAP];
    size_t count;
    nm_atomic_t allocs;     /* single writer (the owning thread), read by stats */
    nm_atomic_t frees;
    nm_atomic_t peak;       /* highest allocs - frees seen by this thread       */
    struct nm__mag *next;   /* pool's list of magazines (pool lock)             */
} nm__mag_t;

typedef struct nm__registry {  /* open-addressing set of chunk addresses, lock-free reads */
    size_t mask;
    size_t used;
    struct nm__registry *retired;
    nm_atomic_t keys[1];
} nm__registry_t;

struct nm_pool {
    nm_allocator_t *a;
    uint64_t id;
    size_t object_size, stride, alignment, per_chunk, chunk_size;
    unsigned flags;
    uintptr_t secret;
    nm_mutex_t lock;
    void *free_head;                /* hardened shared free list (lock)     */
    nm__chunk_t *chunks;            /* all chunks (lock)                    */
    nm__chunk_t *carving;           /* chunk with uncarved slots (lock)     */
    nm__registry_t *registry;       /* published with release              */
    nm__mag_t *mags;                /* every magazine of this pool (lock)   */
    intptr_t peak;                  /* sampled under the lock (see nm__sample_peak) */
    nm_atomic_t n_chunks, reserved;
    nm_atomic_t slow_allocs, slow_frees;  /* counted under lock (checked / no magazine) */
    nm_atomic_t orphan_allocs, orphan_frees; /* from magazines of exited threads */
    /* bughunt: live set + ring of recently freed addresses */
    nm__registry_t *hunt_live;
    uintptr_t hunt_freed[NM__HUNT_RING];
    size_t hunt_pos;
    nm_pool_t *next_pool;           /* global list of live pools            */
};

/* ---- global pool list and thread-local magazine table --------------------------------------- */
static nm_mutex_t nm__pools_lock = NM_MUTEX_INIT;
static nm_pool_t *nm__pools;
static nm_atomic_t nm__next_id = 1;

typedef struct nm__tls_slot { uint64_t id; nm__mag_t *mag; } nm__tls_slot_t;
static NM_THREAD_LOCAL nm__tls_slot_t nm__tls[NM__TLS_SLOTS] NM_TLS_FAST;

static int nm__push_shared(nm_pool_t *p, void *obj);
static void nm__sample_peak(nm_pool_t *p);

/* Give magazine `m` of pool `p` back: its objects go to the shared list (pool lock held). */
static void nm__mag_retire(nm_pool_t *p, nm__mag_t *m) {
    nm__mag_t **pp;
    size_t i;
    for (i = 0; i < m->count; i++) nm__push_shared(p, m->slots[i]);
    m->count = 0;
    nm__sample_peak(p);
    p->orphan_allocs += m->allocs;
    p->orphan_frees += m->frees;
    for (pp = &p->mags; *pp; pp = &(*pp)->next)
        if (*pp == m) { *pp = m->next; break; }
    nm_free(p->a, m);
}

/* Thread exit: hand every magazine of this thread back to its pool if the pool still exists. */
static void nm__thread_exit(void) {
    int i;
    nm_mutex_lock(&nm__pools_lock);
    for (i = 0; i < NM__TLS_SLOTS; i++) {
        nm_pool_t *p;
        if (nm__tls[i].id == 0) continue;
        for (p = nm__pools; p; p = p->next_pool)
            if (p->id == nm__tls[i].id) {
                nm_mutex_lock(&p->lock);
                nm__mag_retire(p, nm__tls[i].mag);
                nm_mutex_unlock(&p->lock);
                break;
            }
        nm__tls[i].id = 0;
        nm__tls[i].mag = NULL;
    }
    nm_mutex_unlock(&nm__pools_lock);
}

/* ---- chunk registry -------------------------------------------------------------------------- */
NM_INLINE size_t nm__hash(uintptr_t k) { return (size_t)((k >> 6) * (uintptr_t)0x9E3779B97F4A7C15ull); }

static int nm__reg_contains(nm__registry_t *r, uintptr_t key) {
    size_t i;
    if (r == NULL || key <= 1) return 0; /* 0 and 1 mark empty and deleted entries */
    for (i = nm__hash(key) & r->mask;; i = (i + 1) & r->mask) {
        uintptr_t k = (uintptr_t)nm_atomic_load_relaxed(&r->keys[i]);
        if (k == key) return 1;
        if (k == 0) return 0;
    }
}

static nm__registry_t *nm__reg_new(nm_allocator_t *a, size_t cap) {
    size_t bytes;
    nm__registry_t *r;
    if (nm_mul_overflow(cap, sizeof(nm_atomic_t), &bytes) || nm_add_overflow(bytes, sizeof(nm__registry_t), &bytes))
        return NULL;
    r = (nm__registry_t *)nm_calloc(a, 1, bytes);
    if (r) r->mask = cap - 1;
    return r;
}

static void nm__reg_put(nm__registry_t *r, uintptr_t key) {
    size_t i;
    for (i = nm__hash(key) & r->mask;; i = (i + 1) & r->mask) {
        uintptr_t k = (uintptr_t)r->keys[i];
        if (k == key) return;
        if (k == 0 || k == 1) {
            if (k == 0) r->used++;
            nm_atomic_store_release(&r->keys[i], (intptr_t)key);
            return;
        }
    }
}

/* Insert under the pool lock, growing (and retiring the old table) at half load. */
static int nm__reg_insert(nm_pool_t *p, nm__registry_t **slot, uintptr_t key) {
    nm__registry_t *r = *slot;
    if (r == NULL || (r->used + 1) * 2 > r->mask + 1) {
        size_t cap = r ? (r->mask + 1) * 2 : 64, i;
        nm__registry_t *n = nm__reg_new(p->a, cap);
        if (n == NULL) return -1;
        if (r) {
            for (i = 0; i <= r->mask; i++)
                if ((uintptr_t)r->keys[i] > 1) nm__reg_put(n, (uintptr_t)r->keys[i]);
            n->retired = r; /* readers may still be probing it */
        }
        nm_atomic_store_release((nm_atomic_t *)slot, (intptr_t)n);
        r = n;
    }
    nm__reg_put(r, key);
    return 0;
}

/* Bughunt's live set deletes: a tombstone (1) keeps probe chains intact. */
static int nm__reg_remove(nm__registry_t *r, uintptr_t key) {
    size_t i;
    if (r == NULL || key <= 1) return 0;
    for (i = nm__hash(key) & r->mask;; i = (i + 1) & r->mask) {
        uintptr_t k = (uintptr_t)r->keys[i];
        if (k == key) { r->keys[i] = 1; return 1; }
        if (k == 0) return 0;
    }
}

static void nm__reg_free(nm_allocator_t *a, nm__registry_t *r) {
    while (r) {
        nm__registry_t *old = r->retired;
        nm_free(a, r);
        r = old;
    }
}

/* ---- slots ------------------------------------------------------------------------------------ */
NM_INLINE nm__chunk_t *nm__chunk_of(const nm_pool_t *p, const void *obj) {
    return (nm__chunk_t *)((uintptr_t)obj & ~(uintptr_t)(p->chunk_size - 1));
}

/* The chunk holding `obj` and its slot index, or NULL for a foreign pointer (error set naming
 * `what` unless it is NULL).  Never reads memory the pool does not own. */
static nm__chunk_t *nm__locate(nm_pool_t *p, const void *obj, size_t *index, const char *what) {
    nm__chunk_t *c = nm__chunk_of(p, obj);
    size_t off;
    if (!nm__reg_contains((nm__registry_t *)nm_atomic_load_ptr_acquire(&p->registry), (uintptr_t)c)) {
        if (what == NULL) return NULL;
        _nm_set_error(NM_ERR_INVALID_FREE, "%s of %p: not an object of this pool (%zu-byte objects)", what, obj,
                      p->object_size);
        return NULL;
    }
    if ((const char *)obj < c->objs || (off = (size_t)((const char *)obj - c->objs)) % p->stride != 0 ||
        off / p->stride >= c->nobj) {
        if (what == NULL) return NULL;
        _nm_set_error(NM_ERR_INVALID_FREE, "%s of %p: inside chunk %p but not at an object boundary (stride %zu)",
                      what, obj, (void *)c, p->stride);
        return NULL;
    }
    *index = off / p->stride;
    return c;
}

NM_INLINE intptr_t nm__bit(size_t i) { return (intptr_t)((uintptr_t)1 << (i % (sizeof(nm_atomic_t) * 8))); }
NM_INLINE nm_atomic_t *nm__word(nm__chunk_t *c, size_t i) { return &c->bitmap[i / (sizeof(nm_atomic_t) * 8)]; }

/* Push onto the hardened shared list (pool lock held). */
static int nm__push_shared(nm_pool_t *p, void *obj) {
    void **slot = (void **)obj;
    NM_ASAN_UNPOISON(obj, sizeof(void *));
    NM_VG_UNDEFINED(obj, sizeof(void *));
    *slot = (void *)((uintptr_t)p->free_head ^ p->secret ^ (uintptr_t)obj);
    NM_VG_NOACCESS(obj, sizeof(void *));
    NM_ASAN_POISON(obj, sizeof(void *));
    p->free_head = obj;
    return 0;
}

/* Pop from the shared list, verifying the decoded next pointer (pool lock held). */
static void *nm__pop_shared(nm_pool_t *p) {
    void *obj = p->free_head, *next;
    size_t idx;
    if (obj == NULL) return NULL;
    NM_ASAN_UNPOISON(obj, sizeof(void *));
    NM_VG_DEFINED(obj, sizeof(void *));
    next = (void *)((uintptr_t)(*(void **)obj) ^ p->secret ^ (uintptr_t)obj);
    NM_VG_NOACCESS(obj, sizeof(void *));
    NM_ASAN_POISON(obj, sizeof(void *));
    if (next != NULL && nm__locate(p, next, &idx, "free-list pop") == NULL) {
        _nm_set_error(NM_ERR_CORRUPT,
                      "pool free list corrupt at %p (a write after free?): next pointer decodes to %p, not an object "
                      "of this pool; the rest of the list is dropped",
                      obj, next);
        p->free_head = NULL;
        return NULL;
    }
    p->free_head = next;
    return obj;
}

/* Carve fresh slots from the current chunk, or reserve a new chunk (pool lock held). */
static void *nm__carve(nm_pool_t *p) {
    nm__chunk_t *c = p->carving;
    if (c == NULL || c->carved == c->nobj) {
        size_t bm_words = (p->per_chunk + sizeof(nm_atomic_t) * 8 - 1) / (sizeof(nm_atomic_t) * 8);
        char *mem = (char *)nm_memalign(p->a, p->chunk_size, p->chunk_size);
        if (mem == NULL) return NULL;
        c = (nm__chunk_t *)mem;
        memset(c, 0, sizeof *c);
        c->pool = p;
        c->bitmap = (nm_atomic_t *)(mem + _nm_align_up(sizeof *c, sizeof(nm_atomic_t)));
        memset(c->bitmap, 0, bm_words * sizeof(nm_atomic_t));
        c->objs = (char *)_nm_align_up((uintptr_t)(c->bitmap + bm_words), p->alignment);
        c->nobj = p->per_chunk;
        if (p->flags & NM_POOL_CHECKED) {
            c->sites = (nm__site_t *)nm_calloc(p->a, c->nobj, sizeof(nm__site_t));
            if (c->sites == NULL) {
                nm_free(p->a, mem);
                return NULL;
            }
        }
        if (nm__reg_insert(p, &p->registry, (uintptr_t)c) != 0) {
            if (c->sites) nm_free(p->a, c->sites);
            nm_free(p->a, mem);
            return NULL;
        }
        if (p->flags & NM_POOL_CHECKED) memset(c->objs, NM__POISON, c->nobj * p->stride);
        NM_VG_NOACCESS(c->objs, c->nobj * p->stride);
        NM_ASAN_POISON(c->objs, c->nobj * p->stride);
        c->next = p->chunks;
        p->chunks = c;
        p->carving = c;
        nm_atomic_add_relaxed(&p->n_chunks, 1);
        nm_atomic_add_relaxed(&p->reserved, (intptr_t)p->chunk_size);
    }
    return c->objs + p->stride * c->carved++;
}

/* Verify a checked slot's 0xDD poison before reuse; NULL (error set) if it was written. */
static int nm__poison_intact(nm_pool_t *p, void *obj, nm__chunk_t *c, size_t idx) {
    const unsigned char *b = (const unsigned char *)obj;
    size_t i;
    for (i = sizeof(void *); i < p->object_size; i++) /* the first word held the free-list link */
        if (b[i] != NM__POISON) {
            _nm_set_error(NM_ERR_USE_AFTER_FREE,
                          "write after free in pool object %p (%zu bytes): byte %zu is 0x%02x, not 0x%02x; last "
                          "allocated at %s:%d",
                          obj, p->object_size, i, b[i], NM__POISON,
                          c->sites[idx].file ? c->sites[idx].file : "?", c->sites[idx].line);
            return 0;
        }
    return 1;
}

/* Hand out `obj`: mark its bit, verify/zero/record (no lock needed). NULL if it was corrupt. */
static void *nm__hand_out(nm_pool_t *p, void *obj, const char *file, int line) {
    size_t idx = 0;
    nm__chunk_t *c = nm__chunk_of(p, obj);
    intptr_t bit;
    idx = (size_t)((char *)obj - c->objs) / p->stride;
    bit = nm__bit(idx);
    if (NM_UNLIKELY(nm_atomic_or(nm__word(c, idx), bit) & bit)) {
        _nm_set_error(NM_ERR_CORRUPT, "pool object %p is already allocated: free list corrupt", obj);
        return NULL;
    }
    NM_VG_MEMPOOL_ALLOC(p, obj, p->object_size);
    NM_ASAN_UNPOISON(obj, p->object_size);
    if (p->flags & NM_POOL_CHECKED) {
        NM_VG_DEFINED(obj, p->object_size); /* the poison bytes are defined */
        if (!nm__poison_intact(p, obj, c, idx)) {
            /* the damaged slot stays out of circulation: in no list, bit clear */
            nm_atomic_and(nm__word(c, idx), ~bit);
            NM_VG_MEMPOOL_FREE(p, obj);
            return NULL;
        }
        c->sites[idx].file = file;
        c->sites[idx].line = line;
    }
    if (p->flags & NM_POOL_ZERO) memset(obj, 0, p->object_size);
    return obj;
}

/* Count one allocation on magazine `m` (owning thread only: relaxed stores, no lock prefix). */
NM_INLINE void nm__mag_count_alloc(nm__mag_t *m) {
    intptr_t a = m->allocs + 1, live = a - m->frees;
    nm_atomic_store_relaxed(&m->allocs, a);
    if (live > m->peak) nm_atomic_store_relaxed(&m->peak, live);
}

/* Live objects now: every counter summed (pool lock held). */
static intptr_t nm__live_locked(nm_pool_t *p) {
    nm__mag_t *m;
    intptr_t live = nm_atomic_load_relaxed(&p->slow_allocs) + p->orphan_allocs - nm_atomic_load_relaxed(&p->slow_frees) -
                    p->orphan_frees;
    for (m = p->mags; m; m = m->next) live += nm_atomic_load_relaxed(&m->allocs) - nm_atomic_load_relaxed(&m->frees);
    return live;
}

/* Sample the peak (pool lock held): exact for slow-path pools; with magazines, sampled at each
 * refill/flush and made exact for single-threaded use in nm_pool_stats. */
static void nm__sample_peak(nm_pool_t *p) {
    intptr_t live = nm__live_locked(p);
    if (live > p->peak) p->peak = live;
}

/* ---- magazines --------------------------------------------------------------------------------- */
static NM_NOINLINE nm__mag_t *nm__mag_new(nm_pool_t *p) {
    nm__tls_slot_t *s = &nm__tls[p->id % NM__TLS_SLOTS];
    nm__mag_t *m;
    if (s->id != 0) { /* evict another pool's magazine from this slot */
        nm_pool_t *q;
        nm_mutex_lock(&nm__pools_lock);
        for (q = nm__pools; q; q = q->next_pool)
            if (q->id == s->id) {
                nm_mutex_lock(&q->lock);
                nm__mag_retire(q, s->mag);
                nm_mutex_unlock(&q->lock);
                break;
            }
        nm_mutex_unlock(&nm__pools_lock);
        s->id = 0;
        s->mag = NULL;
    }
    m = (nm__mag_t *)nm_calloc(p->a, 1, sizeof(nm__mag_t));
    if (m == NULL) return NULL;
    nm_mutex_lock(&p->lock);
    m->next = p->mags;
    p->mags = m;
    nm_mutex_unlock(&p->lock);
    s->id = p->id;
    s->mag = m;
    nm_thread_exit_arm();
    return m;
}

NM_INLINE nm__mag_t *nm__mag_get(nm_pool_t *p) {
    nm__tls_slot_t *s = &nm__tls[p->id % NM__TLS_SLOTS];
    if (NM_LIKELY(s->id == p->id)) return s->mag;
    return nm__mag_new(p);
}

static NM_NOINLINE void *nm__alloc_slow(nm_pool_t *p, nm__mag_t *m, const char *file, int line) {
    void *obj = NULL;
    unsigned seq = _nm_error_seq();
    nm_mutex_lock(&p->lock);
    if (m) {
        while (m->count < NM__MAG_BATCH) {
            void *o = nm__pop_shared(p);
            if (o == NULL && _nm_error_seq() != seq) break; /* corrupt list: report it */
            if (o == NULL) o = nm__carve(p);
            if (o == NULL) break;
            m->slots[m->count++] = o;
        }
        if (m->count && _nm_error_seq() == seq) obj = m->slots[--m->count];
    } else {
        obj = nm__pop_shared(p);
        if (obj == NULL && _nm_error_seq() == seq) obj = nm__carve(p);
    }
    if (obj && !m) {
        nm_atomic_add_relaxed(&p->slow_allocs, 1);
        obj = nm__hand_out(p, obj, file, line);
        if (obj == NULL) nm_atomic_add_relaxed(&p->slow_allocs, -1);
    } else if (obj) {
        nm__mag_count_alloc(m);
    }
    nm__sample_peak(p);
    nm_mutex_unlock(&p->lock);
    if (obj == NULL) {
        if (_nm_error_seq() != seq) return NULL; /* corrupt free list, or the allocator's own error */
        return _nm_oom("pool", p->chunk_size);
    }
    return m ? nm__hand_out(p, obj, file, line) : obj;
}

/* ---- bughunt: one backend block per object ------------------------------------------------------ */
static void *nm__hunt_alloc(nm_pool_t *p) {
    void *obj = nm_memalign(p->a, p->alignment, p->object_size);
    if (obj == NULL) return NULL;
    nm_mutex_lock(&p->lock);
    if (nm__reg_insert(p, &p->hunt_live, (uintptr_t)obj) != 0) {
        nm_mutex_unlock(&p->lock);
        nm_free(p->a, obj);
        return _nm_oom("pool", p->object_size);
    }
    nm_atomic_add_relaxed(&p->slow_allocs, 1);
    nm_atomic_add_relaxed(&p->n_chunks, 1);
    nm_atomic_add_relaxed(&p->reserved, (intptr_t)p->object_size);
    nm__sample_peak(p);
    nm_mutex_unlock(&p->lock);
    if (p->flags & NM_POOL_ZERO) memset(obj, 0, p->object_size);
    return obj;
}

static int nm__hunt_free(nm_pool_t *p, void *obj) {
    size_t i;
    int found;
    nm_mutex_lock(&p->lock);
    found = nm__reg_remove(p->hunt_live, (uintptr_t)obj);
    if (!found) {
        int recent = 0;
        for (i = 0; i < NM__HUNT_RING; i++)
            if (p->hunt_freed[i] == (uintptr_t)obj) recent = 1;
        nm_mutex_unlock(&p->lock);
        return recent ? _nm_set_error(NM_ERR_DOUBLE_FREE, "double free of pool object %p", obj)
                      : _nm_set_error(NM_ERR_INVALID_FREE, "free of %p: not an object of this pool", obj);
    }
    p->hunt_freed[p->hunt_pos++ % NM__HUNT_RING] = (uintptr_t)obj;
    nm_atomic_add_relaxed(&p->slow_frees, 1);
    nm_atomic_add_relaxed(&p->n_chunks, -1);
    nm_atomic_add_relaxed(&p->reserved, -(intptr_t)p->object_size);
    nm_mutex_unlock(&p->lock);
    nm_free(p->a, obj);
    return NM_OK;
}

/* ---- public API ------------------------------------------------------------------------------------ */
nm_pool_t *nm_pool_create_ex(nm_allocator_t *a, size_t object_size, size_t per_chunk, unsigned flags,
                             size_t alignment) {
    nm_pool_t *p;
    size_t stride, header, total, chunk;
    if (a == NULL) a = nm_allocator_libc();
    if (object_size == 0 || per_chunk == 0) {
        _nm_set_error(NM_ERR_INVALID, "pool object size and objects per chunk must be positive");
        return NULL;
    }
    if (flags & ~(unsigned)(NM_POOL_ZERO | NM_POOL_CHECKED | NM_POOL_BUGHUNT)) {
        _nm_set_error(NM_ERR_INVALID, "unknown pool flags 0x%x", flags);
        return NULL;
    }
    if (!_nm_is_pow2(alignment) || alignment < sizeof(void *) || alignment > 4096) {
        _nm_set_error(NM_ERR_INVALID, "pool alignment %zu must be a power of two between %zu and 4096", alignment,
                      sizeof(void *));
        return NULL;
    }
    if (object_size > NM_MAX_ALLOC / 4) {
        _nm_set_error(NM_ERR_OVERFLOW, "pool object size %zu is too large", object_size);
        return NULL;
    }
    stride = (size_t)_nm_align_up(object_size < sizeof(void *) ? sizeof(void *) : object_size, alignment);
    header = _nm_align_up(sizeof(nm__chunk_t), sizeof(nm_atomic_t)) +
             (per_chunk + sizeof(nm_atomic_t) * 8 - 1) / (sizeof(nm_atomic_t) * 8) * sizeof(nm_atomic_t);
    if (stride < object_size || nm_mul_overflow(stride, per_chunk, &total) ||
        nm_add_overflow(total, header + alignment, &total) || total > ((size_t)1 << (sizeof(size_t) * 8 - 2))) {
        _nm_set_error(NM_ERR_OVERFLOW, "pool chunk of %zu objects of %zu bytes overflows", per_chunk, object_size);
        return NULL;
    }
    chunk = 4096;
    while (chunk < total) chunk <<= 1;
    p = (nm_pool_t *)nm_calloc(a, 1, sizeof(nm_pool_t));
    if (p == NULL) return NULL;
    p->a = a;
    p->object_size = object_size;
    p->stride = stride;
    p->alignment = alignment;
    p->flags = flags;
    p->chunk_size = chunk;
    /* fill the chunk: slots that fit after the header are free to use */
    p->per_chunk = (chunk - _nm_align_up(header, alignment)) / stride;
    if (p->per_chunk > per_chunk * 2 + 64) p->per_chunk = per_chunk * 2 + 64;
    /* the bitmap was sized for per_chunk; never exceed what it can hold */
    if (p->per_chunk > (header - _nm_align_up(sizeof(nm__chunk_t), sizeof(nm_atomic_t))) * 8)
        p->per_chunk = (header - _nm_align_up(sizeof(nm__chunk_t), sizeof(nm_atomic_t))) * 8;
    p->id = (uint64_t)nm_atomic_add_relaxed(&nm__next_id, 1);
    p->secret = (uintptr_t)p ^ ((uintptr_t)nm_now_ns() * (uintptr_t)0x9E3779B97F4A7C15ull) ^ (uintptr_t)&p;
    nm_mutex_init(&p->lock);
    NM_VG_MEMPOOL_CREATE(p, 0, (flags & NM_POOL_ZERO) ? 1 : 0);
    nm_thread_exit_init(nm__thread_exit);
    nm_mutex_lock(&nm__pools_lock);
    p->next_pool = nm__pools;
    nm__pools = p;
    nm_mutex_unlock(&nm__pools_lock);
    return p;
}

nm_pool_t *nm_pool_create(nm_allocator_t *a, size_t object_size, size_t objects_per_chunk, unsigned flags) {
    return nm_pool_create_ex(a, object_size, objects_per_chunk, flags, 64);
}

void *nm_pool_alloc_at(nm_pool_t *p, const char *file, int line) {
    nm__mag_t *m;
    if (NM_UNLIKELY(p->flags & (NM_POOL_CHECKED | NM_POOL_BUGHUNT))) {
        if (p->flags & NM_POOL_BUGHUNT) return nm__hunt_alloc(p);
        return nm__alloc_slow(p, NULL, file, line);
    }
    m = nm__mag_get(p);
    if (NM_LIKELY(m && m->count)) {
        void *obj = m->slots[--m->count];
        nm__mag_count_alloc(m);
        return nm__hand_out(p, obj, file, line);
    }
    return nm__alloc_slow(p, m, file, line);
}

void *nm_pool_alloc(nm_pool_t *p) {
    if (NM_UNLIKELY(p->flags & NM_POOL_CHECKED)) return nm_pool_alloc_at(p, _nm_site_file, _nm_site_line);
    return nm_pool_alloc_at(p, NULL, 0);
}

int nm_pool_free(nm_pool_t *p, void *obj) {
    nm__chunk_t *c;
    size_t idx;
    intptr_t bit;
    nm__mag_t *m;
    if (obj == NULL) return _nm_set_error(NM_ERR_INVALID_FREE, "free of NULL in a pool");
    if (NM_UNLIKELY(p->flags & NM_POOL_BUGHUNT)) return nm__hunt_free(p, obj);
    c = nm__locate(p, obj, &idx, "free");
    if (c == NULL) return NM_ERR_INVALID_FREE;
    bit = nm__bit(idx);
    if (NM_UNLIKELY(!(nm_atomic_and(nm__word(c, idx), ~bit) & bit))) {
        if (c->sites)
            return _nm_set_error(NM_ERR_DOUBLE_FREE, "double free of pool object %p (%zu bytes), last allocated at %s:%d",
                                 obj, p->object_size, c->sites[idx].file ? c->sites[idx].file : "?", c->sites[idx].line);
        return _nm_set_error(NM_ERR_DOUBLE_FREE, "double free of pool object %p (%zu bytes)", obj, p->object_size);
    }
    if (p->flags & NM_POOL_CHECKED) memset(obj, NM__POISON, p->object_size);
    NM_VG_MEMPOOL_FREE(p, obj);
    NM_ASAN_POISON(obj, p->object_size);
    if (NM_UNLIKELY(p->flags & NM_POOL_CHECKED)) {
        nm_mutex_lock(&p->lock);
        nm__push_shared(p, obj);
        nm_atomic_add_relaxed(&p->slow_frees, 1);
        nm_mutex_unlock(&p->lock);
        return NM_OK;
    }
    m = nm__mag_get(p);
    if (NM_UNLIKELY(m == NULL || m->count == NM__MAG_CAP)) {
        nm_mutex_lock(&p->lock);
        if (m) {
            while (m->count > NM__MAG_CAP - NM__MAG_BATCH) nm__push_shared(p, m->slots[--m->count]);
            nm__sample_peak(p);
        } else {
            nm__push_shared(p, obj);
            nm_atomic_add_relaxed(&p->slow_frees, 1);
        }
        nm_mutex_unlock(&p->lock);
        if (m == NULL) return NM_OK;
    }
    m->slots[m->count++] = obj;
    nm_atomic_store_relaxed(&m->frees, m->frees + 1);
    return NM_OK;
}

size_t nm_pool_alloc_many(nm_pool_t *p, void **out, size_t n, const char *file, int line) {
    size_t i;
    for (i = 0; i < n; i++) {
        out[i] = nm_pool_alloc_at(p, file, line);
        if (out[i] == NULL) break;
    }
    return i;
}

int nm_pool_free_many(nm_pool_t *p, void **ptrs, size_t n, size_t *bad_index) {
    size_t i;
    int first = NM_OK;
    char msg[384];
    for (i = 0; i < n; i++) {
        int rc = nm_pool_free(p, ptrs[i]);
        if (rc != NM_OK && first == NM_OK) {
            first = rc;
            if (bad_index) *bad_index = i;
            snprintf(msg, sizeof msg, "%s", nm_last_error_message());
        }
    }
    if (first != NM_OK) _nm_set_error(first, "%s", msg); /* report the first failure, not the last */
    return first;
}

int nm_pool_owns(nm_pool_t *p, const void *obj) {
    nm__chunk_t *c;
    size_t idx;
    int r;
    if (obj == NULL) return 0;
    if (p->flags & NM_POOL_BUGHUNT) {
        nm_mutex_lock(&p->lock);
        r = nm__reg_contains(p->hunt_live, (uintptr_t)obj);
        nm_mutex_unlock(&p->lock);
        return r;
    }
    c = nm__locate(p, obj, &idx, NULL);
    if (c == NULL) return 0;
    return (nm_atomic_load_relaxed(nm__word(c, idx)) & nm__bit(idx)) != 0;
}

size_t nm_pool_object_size(nm_pool_t *p) { return p->object_size; }

void nm_pool_stats(nm_pool_t *p, nm_pool_stats_t *out) {
    nm__mag_t *m;
    int64_t allocs, frees;
    nm_mutex_lock(&p->lock);
    allocs = nm_atomic_load_relaxed(&p->slow_allocs) + p->orphan_allocs;
    frees = nm_atomic_load_relaxed(&p->slow_frees) + p->orphan_frees;
    for (m = p->mags; m; m = m->next) {
        allocs += nm_atomic_load_relaxed(&m->allocs);
        frees += nm_atomic_load_relaxed(&m->frees);
    }
    {
        /* one thread has used the pool: its own peak is the pool's, exactly */
        intptr_t peak = p->peak;
        if (p->mags && !p->mags->next && p->slow_allocs == 0 && p->orphan_allocs == 0 && p->mags->peak > peak)
            peak = p->mags->peak;
        if (allocs - frees > peak) peak = allocs - frees;
        p->peak = peak;
        out->peak = peak;
    }
    nm_mutex_unlock(&p->lock);
    out->allocations = allocs;
    out->frees = frees;
    out->live = allocs - frees;
    out->chunks = nm_atomic_load_relaxed(&p->n_chunks);
    out->reserved_bytes = nm_atomic_load_relaxed(&p->reserved);
    out->object_size = (int64_t)p->object_size;
    out->stride = (int64_t)p->stride;
}

size_t nm_pool_live(nm_pool_t *p, void **objs, const char **files, int *lines, size_t cap) {
    size_t n = 0, i;
    nm__chunk_t *c;
    nm_mutex_lock(&p->lock);
    if (p->flags & NM_POOL_BUGHUNT) {
        nm__registry_t *r = p->hunt_live;
        for (i = 0; r && i <= r->mask; i++)
            if ((uintptr_t)r->keys[i] > 1) {
                if (n < cap) {
                    if (objs) objs[n] = (void *)(uintptr_t)r->keys[i];
                    if (files) files[n] = NULL;
                    if (lines) lines[n] = 0;
                }
                n++;
            }
    } else {
        for (c = p->chunks; c; c = c->next)
            for (i = 0; i < c->nobj; i++)
                if (nm_atomic_load_relaxed(nm__word(c, i)) & nm__bit(i)) {
                    if (n < cap) {
                        if (objs) objs[n] = c->objs + i * p->stride;
                        if (files) files[n] = c->sites ? c->sites[i].file : NULL;
                        if (lines) lines[n] = c->sites ? c->sites[i].line : 0;
                    }
                    n++;
                }
    }
    nm_mutex_unlock(&p->lock);
    return n;
}

size_t nm_pool_destroy_report(nm_pool_t *p, int report) {
    nm_pool_t **pp;
    nm__chunk_t *c, *next;
    size_t leaks, i;
    if (p == NULL) return 0;
    leaks = nm_pool_live(p, NULL, NULL, NULL, 0);
    if (report && leaks) {
        fprintf(stderr, "nativemem: destroying pool of %zu-byte objects with %zu live object(s)\n", p->object_size,
                leaks);
        for (c = p->chunks; c; c = c->next)
            for (i = 0; i < c->nobj; i++)
                if (nm_atomic_load_relaxed(nm__word(c, i)) & nm__bit(i))
                    fprintf(stderr, "  leak at %p (%s:%d)\n", (void *)(c->objs + i * p->stride),
                            c->sites && c->sites[i].file ? c->sites[i].file : "?", c->sites ? c->sites[i].line : 0);
    }
    nm_mutex_lock(&nm__pools_lock);
    for (pp = &nm__pools; *pp; pp = &(*pp)->next_pool)
        if (*pp == p) { *pp = p->next_pool; break; }
    nm_mutex_unlock(&nm__pools_lock);
    /* other threads' thread-local slots still name this id; ids are never reused, so the stale
     * slots are never matched again, and the exit callback only follows ids of live pools */
    for (i = 0; i < NM__TLS_SLOTS; i++)
        if (nm__tls[i].id == p->id) { nm__tls[i].id = 0; nm__tls[i].mag = NULL; }
    while (p->mags) {
        nm__mag_t *m = p->mags;
        p->mags = m->next;
        nm_free(p->a, m);
    }
    if (p->flags & NM_POOL_BUGHUNT && p->hunt_live) {
        nm__registry_t *r = p->hunt_live;
        for (i = 0; i <= r->mask; i++)
            if ((uintptr_t)r->keys[i] > 1) nm_free(p->a, (void *)(uintptr_t)r->keys[i]);
    }
    for (c = p->chunks; c; c = next) {
        next = c->next;
        if (c->sites) nm_free(p->a, c->sites);
        NM_ASAN_UNPOISON(c, p->chunk_size);
        NM_VG_UNDEFINED(c, p->chunk_size);
        nm_free(p->a, c);
    }
    NM_VG_MEMPOOL_DESTROY(p);
    nm__reg_free(p->a, p->registry);
    nm__reg_free(p->a, p->hunt_live);
    nm_mutex_destroy(&p->lock);
    nm_free(p->a, p);
    return leaks;
}

void nm_pool_destroy(nm_pool_t *p) { (void)nm_pool_destroy_report(p, 1); }

/* ---- measurement loops ------------------------------------------------------------------------------ */
double nm_pool_bench_pairs(nm_pool_t *p, size_t iterations) {
    uint64_t t0;
    size_t i;
    void *sink = NULL;
    if (iterations == 0) return 0.0;
    t0 = nm_now_ns();
    for (i = 0; i < iterations; i++) {
        void *o = nm_pool_alloc(p);
        if (o == NULL) return -1.0;
        *(volatile char *)o = (char)i;
        sink = o;
        nm_pool_free(p, o);
    }
    (void)sink;
    return (double)(nm_now_ns() - t0) / (double)iterations;
}

double nm_pool_bench_batch(nm_pool_t *p, size_t batch, size_t rounds) {
    void **objs;
    uint64_t t0;
    size_t r, i, bytes;
    if (batch == 0 || rounds == 0 || nm_mul_overflow(batch, sizeof(void *), &bytes)) return 0.0;
    objs = (void **)nm_malloc(nm_allocator_libc(), bytes);
    if (objs == NULL) return -1.0;
    t0 = nm_now_ns();
    for (r = 0; r < rounds; r++) {
        for (i = 0; i < batch; i++) {
            objs[i] = nm_pool_alloc(p);
            if (objs[i] == NULL) { batch = i; break; }
        }
        for (i = 0; i < batch; i++) nm_pool_free(p, objs[i]);
    }
    t0 = nm_now_ns() - t0;
    nm_free(nm_allocator_libc(), objs);
    return (double)t0 / (double)(batch * rounds);
}
