/* arena.c -- the bounded arena: one fixed region, reserved once, managed by TLSF.
 *
 * Movian's PS3 build replaces libc's heap with TLSF over one reserved region; this is the same
 * idea as an ordinary nm_allocator_t.  Two-level segregated fit: a first-level index by power of
 * two and 16 linear second-level classes per power, bitmaps to find a fitting non-empty list
 * with two bit scans, boundary tags (each header points to its physical predecessor) for O(1)
 * coalescing.  Every header carries a magic word derived from its address, so frees of foreign
 * pointers and double frees are reported instead of corrupting the heap.  One lock serialises
 * operations (as Movian's lwmutex does): a spinlock, the critical sections being short (the
 * full-heap walks of nm_arena_stats/check excepted, which are rare).
 */
#include "nm_internal.h"

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
#define NM__ACACHED    ((size_t)2)           /* freed, kept whole in the quick cache           */
/* The quick cache: freed blocks up to NM__QMAX bytes are kept whole, NM__QDEPTH per size, and
 * handed to the next request of their size without a search, a split or a merge.  They stay
 * "used" for TLSF; the cache is emptied into the heap when a search fails and before a walk
 * (nm_arena_stats, nm_arena_check), so the arena's bound and its statistics are unchanged. */
#define NM__QMAX       ((size_t)512)
#define NM__QDEPTH     8
#define NM__AMAGIC     ((size_t)0x6e6d4152454e4121ull)
#define NM__SL_LOG2    4
#define NM__SL_COUNT   (1 << NM__SL_LOG2)
#define NM__FL_SHIFT   8                     /* sizes below 256 share first-level index 0    */
#define NM__FL_COUNT   32                    /* classes up to 2^38 bytes: bitmaps fit 32 bits */

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
    nm__ablk_t *quick[NM__QMAX / NM__AALIGN + 1][NM__QDEPTH]; /* the quick cache, by size / 16 */
    unsigned char nquick[NM__QMAX / NM__AALIGN + 1];
    size_t quick_blocks;
    nm_allocator_t *self;   /* its instance (the destroy frees both)                     */
} nm__arena_t;

NM_INLINE size_t nm__bsize(const nm__ablk_t *b) { return b->size & ~(NM__AFREE | NM__ACACHED); }
NM_INLINE int nm__bfree(const nm__ablk_t *b) { return (int)(b->size & NM__AFREE); }
/* free or in the quick cache: not a block its owner may use */
NM_INLINE int nm__bgone(const nm__ablk_t *b) { return (b->size & (NM__AFREE | NM__ACACHED)) != 0; }
NM_INLINE size_t nm__bmagic(const nm__ablk_t *b) { return NM__AMAGIC ^ (size_t)(uintptr_t)b; }
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
    b->size = size | (free_ ? NM__AFREE : 0);
    b->magic = nm__bmagic(b);
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
    b->size = keep;
    nm__set_block(rest, b, have - keep, 1);
    if (nm__bfree(next)) {
        nm__list_remove(ar, next);
        rest->size = (nm__bsize(rest) + nm__bsize(next)) | NM__AFREE;
        next->magic = 0; /* no longer a header */
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

/* Empty the quick cache into the heap (lock held); 1 when it held anything. */
static NM_NOINLINE int nm__quick_flush(nm__arena_t *ar) {
    size_t c;
    if (ar->quick_blocks == 0) return 0;
    for (c = 0; c <= NM__QMAX / NM__AALIGN; c++)
        while (ar->nquick[c]) {
            nm__ablk_t *b = ar->quick[c][--ar->nquick[c]];
            b->size &= ~NM__ACACHED;
            nm__free_locked(ar, b);
        }
    ar->quick_blocks = 0;
    return 1;
}

/* A free block of at least `need` bytes, the quick cache emptied first if that is what it takes. */
static nm__ablk_t *nm__find_or_flush(nm__arena_t *ar, size_t need) {
    nm__ablk_t *b = nm__find_free(ar, need);
    if (NM_UNLIKELY(b == NULL) && nm__quick_flush(ar)) b = nm__find_free(ar, need);
    return b;
}

static void *nm__alloc_locked(nm__arena_t *ar, size_t req) {
    size_t need = nm__need(req);
    nm__ablk_t *b;
    if (need == 0) return NULL;
    if (need <= NM__QMAX && ar->nquick[need / NM__AALIGN]) { /* the quick cache: its size exactly */
        b = ar->quick[need / NM__AALIGN][--ar->nquick[need / NM__AALIGN]];
        ar->quick_blocks--;
        b->size &= ~NM__ACACHED;
        b->req = req;
        return nm__bpayload(b);
    }
    b = nm__find_or_flush(ar, need);
    if (b == NULL) return NULL;
    nm__list_remove(ar, b);
    b->size &= ~NM__AFREE;
    nm__trim(ar, b, need);
    b->req = req;
    return nm__bpayload(b);
}

/* Validate a pointer handed to free/realloc; returns its header or NULL with the error set. */
static nm__ablk_t *nm__validate(nm__arena_t *ar, const void *p, const char *what, int freed_code) {
    const char *c = (const char *)p;
    nm__ablk_t *b;
    if (c < ar->start + NM__AHDR || c >= ar->end || ((uintptr_t)(c - ar->start) % NM__AALIGN) != 0) {
        _nm_set_error(NM_ERR_INVALID_FREE, "%s of %p: not a block of this arena [%p, %p)", what, p,
                      (void *)ar->start, (void *)ar->end);
        return NULL;
    }
    b = nm__bof(p);
    if (b->magic != nm__bmagic(b)) {
        _nm_set_error(NM_ERR_INVALID_FREE, "%s of %p: not the start of a block of this arena", what, p);
        return NULL;
    }
    if (nm__bgone(b)) {
        _nm_set_error(freed_code, "%s of %p: block is already free", what, p);
        return NULL;
    }
    return b;
}

static void nm__free_locked(nm__arena_t *ar, nm__ablk_t *b) {
    nm__ablk_t *prev = b->prev_phys, *next = nm__bnext(b);
    b->size |= NM__AFREE;
    if (prev && nm__bfree(prev)) {
        nm__list_remove(ar, prev);
        prev->size = (nm__bsize(prev) + nm__bsize(b)) | NM__AFREE;
        b = prev;
    }
    if (nm__bfree(next)) {
        nm__list_remove(ar, next);
        b->size = (nm__bsize(b) + nm__bsize(next)) | NM__AFREE;
        next->magic = 0;
    }
    nm__bnext(b)->prev_phys = b;
    nm__list_insert(ar, b);
}

/* ---- the allocator table's functions -------------------------------------------------------- */
static void *nm__arena_malloc(void *ctx, size_t n) {
    nm__arena_t *ar = (nm__arena_t *)ctx;
    void *p;
    nm_spin_lock(&ar->lock);
    p = nm__alloc_locked(ar, n);
    nm_spin_unlock(&ar->lock);
    return p;
}

static void *nm__arena_calloc(void *ctx, size_t n, size_t s) {
    void *p = nm__arena_malloc(ctx, n * s); /* product checked by nm_calloc */
    if (p) memset(p, 0, n * s);
    return p;
}

static void nm__arena_free(void *ctx, void *p) {
    nm__arena_t *ar = (nm__arena_t *)ctx;
    nm__ablk_t *b;
    nm_spin_lock(&ar->lock);
    b = nm__validate(ar, p, "free", NM_ERR_DOUBLE_FREE);
    if (b) {
        size_t sz = nm__bsize(b);
        if (sz <= NM__QMAX && ar->nquick[sz / NM__AALIGN] < NM__QDEPTH) { /* kept whole for its size */
            b->size |= NM__ACACHED;
            ar->quick[sz / NM__AALIGN][ar->nquick[sz / NM__AALIGN]++] = b;
            ar->quick_blocks++;
        } else {
            nm__free_locked(ar, b);
        }
    }
    nm_spin_unlock(&ar->lock);
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
    if (need <= have) { /* shrink in place */
        nm__trim(ar, b, need);
        b->req = n;
        q = p;
    } else if (nm__bfree(next) && have + nm__bsize(next) >= need) { /* grow into the free neighbour */
        nm__list_remove(ar, next);
        b->size = have + nm__bsize(next);
        next->magic = 0;
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
    b->size &= ~NM__AFREE;
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
        b->size = gap;
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
    nm_spin_lock(&ar->lock);
    b = nm__bof(p);
    if (b->magic == nm__bmagic(b) && !nm__bgone(b)) r = b->req;
    nm_spin_unlock(&ar->lock);
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
    sentinel->size = 0;
    sentinel->magic = nm__bmagic(sentinel);
    sentinel->req = 0;
    nm__list_insert(ar, first);
    nm_atfork_init(&ar->fork, nm_atfork_spin_lock, nm_atfork_spin_unlock, NULL, &ar->lock, NM_ATFORK_OBJECT);
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
    nm__quick_flush(ar); /* cached blocks are free space: the walk sees them merged */
    for (b = (nm__ablk_t *)ar->start; (char *)b < ar->end; b = nm__bnext(b)) {
        size_t sz = nm__bsize(b);
        int bin = nm_fls_size(sz);
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
    {   /* the quick cache: each entry a cached header of its size, inside the region */
        size_t c, k, n = 0;
        for (c = 0; c <= NM__QMAX / NM__AALIGN; c++)
            for (k = 0; k < ar->nquick[c]; k++, n++) {
                nm__ablk_t *q = ar->quick[c][k];
                if ((char *)q < ar->start || (char *)q >= ar->end || q->magic != nm__bmagic(q) ||
                    !(q->size & NM__ACACHED) || nm__bsize(q) != c * NM__AALIGN) {
                    rc = _nm_set_error(NM_ERR_CORRUPT, "arena quick cache entry %p is damaged", (void *)q);
                    goto out;
                }
            }
        if (n != ar->quick_blocks) {
            rc = _nm_set_error(NM_ERR_CORRUPT, "arena quick cache holds %zu blocks, counted %zu", n, ar->quick_blocks);
            goto out;
        }
    }
    nm__quick_flush(ar);
    for (b = (nm__ablk_t *)ar->start; (char *)b < ar->end; b = nm__bnext(b)) {
        size_t sz = nm__bsize(b);
        if (b->magic != nm__bmagic(b) || b->prev_phys != prev || sz < NM__AMIN || sz % NM__AALIGN ||
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
    if ((char *)b != ar->end || b->prev_phys != prev || b->magic != nm__bmagic(b)) {
        rc = _nm_set_error(NM_ERR_CORRUPT, "arena block chain does not end at its sentinel %p", (void *)ar->end);
        goto out;
    }
    for (fl = 0; fl < NM__FL_COUNT; fl++)
        for (sl = 0; sl < NM__SL_COUNT; sl++) {
            nm__ablk_t *f;
            int want_fl, want_sl;
            for (f = ar->heads[fl][sl]; f; f = f->next_free) {
                if ((char *)f < ar->start || (char *)f >= ar->end || f->magic != nm__bmagic(f) || !nm__bfree(f) ||
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
