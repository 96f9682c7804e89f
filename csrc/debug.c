/* debug.c -- the debug allocator: an nm_allocator_t that wraps any other and catches misuse.
 *
 * Movian's design document describes a debug malloc (header with size, file, line and magic,
 * footer magic, live list, 0xDD poisoning, leak dump with peak usage).  Here the metadata lives
 * OUT of band, in records found through a hash of user addresses, so a report never reads memory
 * the allocator does not own and a wild write cannot damage the bookkeeping.  In band there are
 * only canaries: 16 bytes before the block and 16 (plus alignment slack) after it.
 *
 *   raw block from base:  [pad][head canary 16][user size][tail canary >= 16]
 *   guard-page mode:      [pages: pad, head canary, user, tail slack][no-access page]
 *
 * Freed blocks are poisoned with 0xDD and kept in a bounded FIFO quarantine; the poison is
 * verified when a block leaves it (and on check), so a write after free is reported with the
 * block's allocation and free sites.  One mutex protects everything (thread safe).
 */
#include "nm_internal.h"

#include <stdio.h>
#include <stdlib.h>

#define NM__CANARY      16
#define NM__HEAD_BYTE   0xFB
#define NM__TAIL_BYTE   0xFC
#define NM__FREE_BYTE   0xDD
#define NM__NEW_BYTE    0xCB
#define NM__RECENT      4096  /* addresses released from quarantine, for late double frees */

enum { NM__LIVE = 1, NM__QUARANTINED = 2 };

typedef struct nm__dblk {
    char *raw;                 /* what base (or the OS) gave                          */
    char *user;
    size_t size, raw_size;     /* raw_size: mapping length in guard mode             */
    const char *file, *free_file;
    int line, free_line;
    uint64_t serial;
    int state;
    struct nm__dblk *prev, *next; /* live list (allocation order) or quarantine FIFO */
} nm__dblk_t;

typedef struct nm__dbg {
    nm_mutex_t lock;
    nm_allocator_t *base;
    nm_allocator_t *self;
    unsigned flags;
    size_t quarantine_cap;
    /* hash: user address -> record (live or quarantined); 0 empty, 1 tombstone */
    uintptr_t *keys;
    nm__dblk_t **vals;
    size_t mask, used, count;
    nm__dblk_t live_head;      /* circular list sentinels */
    nm__dblk_t q_head;
    size_t q_count, q_bytes;
    size_t live_blocks, live_bytes, peak_bytes;
    uint64_t serial, allocs, frees, errors;
    uintptr_t recent[NM__RECENT];
    size_t recent_pos;
    nm__dblk_t *spare;         /* recycled records */
    size_t page;
    int vg;                    /* running under Valgrind: issue client requests */
} nm__dbg_t;

/* Valgrind client requests cost a few ns each even outside Valgrind: only under it. */
#define NM__VG(d, request) do { if ((d)->vg) { request; } } while (0)

/* ---- records and the address hash ------------------------------------------------------------ */
static nm__dblk_t *nm__rec_new(nm__dbg_t *d) {
    nm__dblk_t *r = d->spare;
    if (r) {
        d->spare = r->next;
        memset(r, 0, sizeof *r);
        return r;
    }
    return (nm__dblk_t *)calloc(1, sizeof(nm__dblk_t));
}
static void nm__rec_free(nm__dbg_t *d, nm__dblk_t *r) {
    r->next = d->spare;
    d->spare = r;
}

NM_INLINE size_t nm__dh(uintptr_t k) { return (size_t)((k >> 4) * (uintptr_t)0x9E3779B97F4A7C15ull); }

static nm__dblk_t *nm__find(nm__dbg_t *d, const void *p) {
    uintptr_t k = (uintptr_t)p;
    size_t i;
    if (d->keys == NULL || k <= 1) return NULL;
    for (i = nm__dh(k) & d->mask;; i = (i + 1) & d->mask) {
        if (d->keys[i] == k) return d->vals[i];
        if (d->keys[i] == 0) return NULL;
    }
}

static int nm__grow(nm__dbg_t *d) {
    size_t cap = d->keys ? (d->mask + 1) * 2 : 256, i;
    uintptr_t *keys = (uintptr_t *)calloc(cap, sizeof(uintptr_t));
    nm__dblk_t **vals = (nm__dblk_t **)calloc(cap, sizeof(nm__dblk_t *));
    if (keys == NULL || vals == NULL) {
        free(keys);
        free(vals);
        return -1;
    }
    for (i = 0; d->keys && i <= d->mask; i++)
        if (d->keys[i] > 1) {
            size_t j;
            for (j = nm__dh(d->keys[i]) & (cap - 1); keys[j]; j = (j + 1) & (cap - 1)) {
            }
            keys[j] = d->keys[i];
            vals[j] = d->vals[i];
        }
    free(d->keys);
    free(d->vals);
    d->keys = keys;
    d->vals = vals;
    d->mask = cap - 1;
    d->used = d->count;
    return 0;
}

static int nm__put(nm__dbg_t *d, nm__dblk_t *r) {
    uintptr_t k = (uintptr_t)r->user;
    size_t i;
    if (d->keys == NULL || (d->used + 1) * 2 > d->mask + 1)
        if (nm__grow(d) != 0) return -1;
    for (i = nm__dh(k) & d->mask; d->keys[i] > 1; i = (i + 1) & d->mask) {
    }
    if (d->keys[i] == 0) d->used++;
    d->keys[i] = k;
    d->vals[i] = r;
    d->count++;
    return 0;
}

static void nm__del(nm__dbg_t *d, const void *p) {
    uintptr_t k = (uintptr_t)p;
    size_t i;
    for (i = nm__dh(k) & d->mask; d->keys[i]; i = (i + 1) & d->mask)
        if (d->keys[i] == k) {
            d->keys[i] = 1;
            d->vals[i] = NULL;
            d->count--;
            return;
        }
}

NM_INLINE void nm__link(nm__dblk_t *head, nm__dblk_t *r) {
    r->prev = head->prev;
    r->next = head;
    head->prev->next = r;
    head->prev = r;
}
NM_INLINE void nm__unlink(nm__dblk_t *r) {
    r->prev->next = r->next;
    r->next->prev = r->prev;
}

/* ---- canaries and poison ---------------------------------------------------------------------- */
NM_INLINE size_t nm__tail_len(nm__dbg_t *d, const nm__dblk_t *r) {
    if (d->flags & NM_DEBUG_GUARD_PAGES)
        return (size_t)(r->raw + r->raw_size - d->page - (r->user + r->size)); /* slack before the guard */
    return NM__CANARY;
}

static void nm__paint(nm__dbg_t *d, nm__dblk_t *r) {
    size_t tail = nm__tail_len(d, r);
    memset(r->user - NM__CANARY, NM__HEAD_BYTE, NM__CANARY);
    if (tail) memset(r->user + r->size, NM__TAIL_BYTE, tail);
    NM__VG(d, NM_VG_NOACCESS(r->user - NM__CANARY, NM__CANARY));
    if (tail) NM__VG(d, NM_VG_NOACCESS(r->user + r->size, tail));
    NM_ASAN_POISON(r->user - NM__CANARY, NM__CANARY);
    if (tail) NM_ASAN_POISON(r->user + r->size, tail);
}

static const char *nm__s(const char *f) { return f ? f : "?"; }

static const unsigned char nm__head_pattern[NM__CANARY] = {
    NM__HEAD_BYTE, NM__HEAD_BYTE, NM__HEAD_BYTE, NM__HEAD_BYTE, NM__HEAD_BYTE, NM__HEAD_BYTE, NM__HEAD_BYTE, NM__HEAD_BYTE,
    NM__HEAD_BYTE, NM__HEAD_BYTE, NM__HEAD_BYTE, NM__HEAD_BYTE, NM__HEAD_BYTE, NM__HEAD_BYTE, NM__HEAD_BYTE, NM__HEAD_BYTE};
static const unsigned char nm__tail_pattern[NM__CANARY] = {
    NM__TAIL_BYTE, NM__TAIL_BYTE, NM__TAIL_BYTE, NM__TAIL_BYTE, NM__TAIL_BYTE, NM__TAIL_BYTE, NM__TAIL_BYTE, NM__TAIL_BYTE,
    NM__TAIL_BYTE, NM__TAIL_BYTE, NM__TAIL_BYTE, NM__TAIL_BYTE, NM__TAIL_BYTE, NM__TAIL_BYTE, NM__TAIL_BYTE, NM__TAIL_BYTE};

/* 1 when all n bytes at p equal b (word at a time). */
static int nm__all_bytes(const unsigned char *p, size_t n, unsigned char b) {
    uint64_t w = 0x0101010101010101ull * b, x;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&x, p + i, 8);
        if (x != w) return 0;
    }
    for (; i < n; i++)
        if (p[i] != b) return 0;
    return 1;
}

/* Verify one live block's canaries; reports (and returns) the error code. */
static int nm__verify_canaries(nm__dbg_t *d, nm__dblk_t *r) {
    const unsigned char *h = (const unsigned char *)r->user - NM__CANARY;
    const unsigned char *t = (const unsigned char *)r->user + r->size;
    size_t i, tail = nm__tail_len(d, r);
    int rc = NM_OK;
    NM_ASAN_UNPOISON(h, NM__CANARY);
    if (tail) NM_ASAN_UNPOISON(t, tail);
    NM__VG(d, NM_VG_DEFINED(h, NM__CANARY));
    if (tail) NM__VG(d, NM_VG_DEFINED(t, tail));
    /* fast path: whole canaries compared at once; the byte loops below only locate damage */
    if (memcmp(h, nm__head_pattern, NM__CANARY) == 0 &&
        (tail <= NM__CANARY ? memcmp(t, nm__tail_pattern, tail) == 0 : nm__all_bytes(t, tail, NM__TAIL_BYTE))) {
        NM__VG(d, NM_VG_NOACCESS(h, NM__CANARY));
        if (tail) NM__VG(d, NM_VG_NOACCESS(t, tail));
        NM_ASAN_POISON(h, NM__CANARY);
        if (tail) NM_ASAN_POISON(t, tail);
        return NM_OK;
    }
    for (i = 0; i < tail; i++)
        if (t[i] != NM__TAIL_BYTE) {
            d->errors++;
            rc = _nm_set_error(NM_ERR_BUFFER_OVERFLOW,
                               "buffer overflow: block %p (%zu bytes) was written past its end at offset %zu "
                               "(byte 0x%02x); allocated at %s:%d (serial %llu)",
                               (void *)r->user, r->size, r->size + i, t[i], nm__s(r->file), r->line,
                               (unsigned long long)r->serial);
            break;
        }
    if (rc == NM_OK)
        for (i = NM__CANARY; i-- > 0;)
            if (h[i] != NM__HEAD_BYTE) {
                d->errors++;
                rc = _nm_set_error(NM_ERR_BUFFER_UNDERFLOW,
                                   "buffer underflow: block %p (%zu bytes) was written before its start at offset "
                                   "-%zu (byte 0x%02x); allocated at %s:%d (serial %llu)",
                                   (void *)r->user, r->size, NM__CANARY - i, h[i], nm__s(r->file), r->line,
                                   (unsigned long long)r->serial);
                break;
            }
    NM__VG(d, NM_VG_NOACCESS(h, NM__CANARY));
    if (tail) NM__VG(d, NM_VG_NOACCESS(t, tail));
    NM_ASAN_POISON(h, NM__CANARY);
    if (tail) NM_ASAN_POISON(t, tail);
    return rc;
}

/* Verify a quarantined block's poison (not in guard mode: its pages are protected). */
static int nm__verify_poison(nm__dbg_t *d, nm__dblk_t *r) {
    const unsigned char *u = (const unsigned char *)r->user;
    size_t i;
    int rc = NM_OK;
    if (d->flags & NM_DEBUG_GUARD_PAGES) return NM_OK;
    NM_ASAN_UNPOISON(u, r->size);
    NM__VG(d, NM_VG_DEFINED(u, r->size));
    if (nm__all_bytes(u, r->size, NM__FREE_BYTE)) i = r->size; /* fast path: intact */
    else i = 0;
    for (; i < r->size; i++)
        if (u[i] != NM__FREE_BYTE) {
            d->errors++;
            rc = _nm_set_error(NM_ERR_USE_AFTER_FREE,
                               "write after free: block %p (%zu bytes) was modified at offset %zu (byte 0x%02x) "
                               "after it was freed; allocated at %s:%d, freed at %s:%d (serial %llu)",
                               (void *)r->user, r->size, i, u[i], nm__s(r->file), r->line, nm__s(r->free_file),
                               r->free_line, (unsigned long long)r->serial);
            break;
        }
    NM__VG(d, NM_VG_NOACCESS(u, r->size));
    NM_ASAN_POISON(u, r->size);
    return rc;
}

/* ---- raw blocks ---------------------------------------------------------------------------------- */
static int nm__raw_alloc(nm__dbg_t *d, nm__dblk_t *r, size_t size, size_t align) {
    size_t need;
    if (align < 16) align = 16;
    if (d->flags & NM_DEBUG_GUARD_PAGES) {
        size_t body, pages;
        if (size > NM_MAX_ALLOC - 2 * align - 2 * d->page) return -1;
        body = size + NM__CANARY + align;
        pages = (body + d->page - 1) / d->page;
        r->raw_size = (pages + 1) * d->page;
        r->raw = (char *)nm_os_map(r->raw_size);
        if (r->raw == NULL) return -1;
        nm_os_protect(r->raw + pages * d->page, d->page, 0);
        /* user ends as close to the guard page as its alignment allows */
        r->user = (char *)((uintptr_t)(r->raw + pages * d->page - size) & ~(uintptr_t)(align - 1));
        return 0;
    }
    if (size > NM_MAX_ALLOC - 2 * NM__CANARY - align) return -1;
    need = size + 2 * NM__CANARY + (align > 16 ? align : 0);
    r->raw = (char *)(align > 16 ? nm_memalign(d->base, align, need) : nm_malloc(d->base, need));
    if (r->raw == NULL) return -1;
    r->raw_size = need;
    r->user = (char *)_nm_align_up((uintptr_t)r->raw + NM__CANARY, align);
    return 0;
}

static void nm__raw_free(nm__dbg_t *d, nm__dblk_t *r) {
    if (d->flags & NM_DEBUG_GUARD_PAGES) {
        nm_os_unmap(r->raw, r->raw_size);
    } else {
        NM_ASAN_UNPOISON(r->raw, r->raw_size);
        NM__VG(d, NM_VG_UNDEFINED(r->raw, r->raw_size));
        nm_free(d->base, r->raw);
    }
}

/* ---- quarantine -------------------------------------------------------------------------------- */
static void nm__remember(nm__dbg_t *d, const void *p) { d->recent[d->recent_pos++ % NM__RECENT] = (uintptr_t)p; }

/* Release the oldest quarantined block; returns its poison check's result. */
static int nm__evict(nm__dbg_t *d) {
    nm__dblk_t *r = d->q_head.next;
    int rc;
    if (r == &d->q_head) return NM_OK;
    rc = nm__verify_poison(d, r);
    nm__unlink(r);
    nm__del(d, r->user);
    d->q_count--;
    d->q_bytes -= r->size;
    nm__remember(d, r->user);
    nm__raw_free(d, r);
    nm__rec_free(d, r);
    return rc;
}

/* ---- the allocator's functions ------------------------------------------------------------------- */
/* Allocate and record a block (lock held). */
static void *nm__dalloc_locked(nm__dbg_t *d, size_t size, size_t align, int zero) {
    nm__dblk_t *r;
    void *user = NULL;
    r = nm__rec_new(d);
    if (r == NULL) goto out;
    if (nm__raw_alloc(d, r, size, align) != 0) {
        nm__rec_free(d, r);
        goto out;
    }
    r->size = size;
    r->file = _nm_site_file;
    r->line = _nm_site_line;
    r->serial = ++d->serial;
    r->state = NM__LIVE;
    if (nm__put(d, r) != 0) {
        nm__raw_free(d, r);
        nm__rec_free(d, r);
        goto out;
    }
    nm__link(&d->live_head, r);
    nm__paint(d, r);
    if (zero) memset(r->user, 0, size);
    else if (!(d->flags & NM_DEBUG_NO_POISON)) memset(r->user, NM__NEW_BYTE, size);
    d->live_blocks++;
    d->live_bytes += size;
    if (d->live_bytes > d->peak_bytes) d->peak_bytes = d->live_bytes;
    d->allocs++;
    user = r->user;
    _nm_table_count_alloc_serial(d->self, size);
    NM__VG(d, NM_VG_MALLOCLIKE(user, size, NM__CANARY, zero));
out:
    return user;
}

static void *nm__dalloc(nm__dbg_t *d, size_t size, size_t align, int zero) {
    void *user;
    nm_mutex_lock(&d->lock);
    user = nm__dalloc_locked(d, size, align, zero);
    nm_mutex_unlock(&d->lock);
    return user;
}

static void *nm__dbg_malloc(void *ctx, size_t n) { return nm__dalloc((nm__dbg_t *)ctx, n, 16, 0); }
static void *nm__dbg_calloc(void *ctx, size_t n, size_t s) { return nm__dalloc((nm__dbg_t *)ctx, n * s, 16, 1); }
static void *nm__dbg_memalign(void *ctx, size_t a, size_t n) { return nm__dalloc((nm__dbg_t *)ctx, n, a, 0); }

/* Classify a pointer that is not a live block (lock held); sets and returns the error. */
static int nm__bad_pointer(nm__dbg_t *d, const void *p, const char *what, int freed_code) {
    nm__dblk_t *r = nm__find(d, p);
    size_t i;
    d->errors++;
    if (r && r->state == NM__QUARANTINED)
        return _nm_set_error(freed_code, "%s of %p: block (%zu bytes) already freed; allocated at %s:%d, freed at %s:%d",
                             what, p, r->size, nm__s(r->file), r->line, nm__s(r->free_file), r->free_line);
    for (i = 0; i < NM__RECENT; i++)
        if (d->recent[i] == (uintptr_t)p)
            return _nm_set_error(freed_code, "%s of %p: block already freed (no longer in the quarantine)", what, p);
    return _nm_set_error(NM_ERR_INVALID_FREE, "%s of %p: not a block of this debug allocator", what, p);
}

/* Free a live record (lock held); returns the first error found (canaries, eviction). */
static int nm__release(nm__dbg_t *d, nm__dblk_t *r) {
    int rc = nm__verify_canaries(d, r), rc2 = NM_OK;
    nm__unlink(r);
    NM__VG(d, NM_VG_FREELIKE(r->user, NM__CANARY));
    d->live_blocks--;
    d->live_bytes -= r->size;
    d->frees++;
    r->state = NM__QUARANTINED;
    r->free_file = _nm_site_file;
    r->free_line = _nm_site_line;
    if (d->quarantine_cap == 0) {
        nm__del(d, r->user);
        nm__remember(d, r->user);
        nm__raw_free(d, r);
        nm__rec_free(d, r);
        return rc;
    }
    if (d->flags & NM_DEBUG_GUARD_PAGES) {
        nm_os_protect(r->raw, r->raw_size - d->page, 0);
    } else {
        NM__VG(d, NM_VG_UNDEFINED(r->user, r->size));
        memset(r->user, NM__FREE_BYTE, r->size);
        NM__VG(d, NM_VG_NOACCESS(r->user, r->size));
        NM_ASAN_POISON(r->user, r->size);
    }
    nm__link(&d->q_head, r);
    d->q_count++;
    d->q_bytes += r->size;
    while (d->q_count > d->quarantine_cap) {
        int e = nm__evict(d);
        if (rc2 == NM_OK) rc2 = e;
    }
    if (rc == NM_OK && rc2 != NM_OK) {
        /* re-raise the eviction's message: it is about another block */
        return rc2;
    }
    return rc;
}

static void nm__dbg_free(void *ctx, void *p) {
    nm__dbg_t *d = (nm__dbg_t *)ctx;
    nm__dblk_t *r;
    size_t freed = 0;
    int ok = 0;
    nm_mutex_lock(&d->lock);
    r = nm__find(d, p);
    if (r == NULL || r->state != NM__LIVE) {
        nm__bad_pointer(d, p, "free", NM_ERR_DOUBLE_FREE);
    } else {
        freed = r->size;
        ok = 1;
        nm__release(d, r);
        _nm_table_count_free_serial(d->self, freed);
    }
    nm_mutex_unlock(&d->lock);
    if (ok) _nm_table_after_free(d->self); /* may finish a deferred destroy: lock released */
}

static void *nm__dbg_realloc(void *ctx, void *p, size_t n) {
    nm__dbg_t *d = (nm__dbg_t *)ctx;
    nm__dblk_t *r;
    size_t keep;
    void *q;
    nm_mutex_lock(&d->lock);
    r = nm__find(d, p);
    if (r == NULL || r->state != NM__LIVE) {
        nm__bad_pointer(d, p, "realloc", NM_ERR_REALLOC_FREED);
        nm_mutex_unlock(&d->lock);
        return NULL;
    }
    if (nm__verify_canaries(d, r) != NM_OK) { /* refuse to copy a damaged block */
        nm_mutex_unlock(&d->lock);
        return NULL;
    }
    keep = r->size < n ? r->size : n;
    /* always move, so stale pointers to the old block are caught (it goes to the quarantine) */
    q = nm__dalloc_locked(d, n, 16, 0);
    if (q != NULL) {
        memcpy(q, p, keep);
        keep = r->size;
        nm__release(d, r);
        _nm_table_count_free_serial(d->self, keep);
    }
    nm_mutex_unlock(&d->lock);
    if (q != NULL) _nm_table_after_free(d->self);
    return q;
}

static size_t nm__dbg_usable(void *ctx, const void *p) {
    nm__dbg_t *d = (nm__dbg_t *)ctx;
    nm__dblk_t *r;
    size_t n = 0;
    nm_mutex_lock(&d->lock);
    r = nm__find(d, p);
    if (r && r->state == NM__LIVE) n = r->size;
    nm_mutex_unlock(&d->lock);
    return n;
}

static void nm__dbg_destroy(nm_allocator_t *a) {
    nm__dbg_t *d = (nm__dbg_t *)a->ctx;
    nm__dblk_t *r, *next;
    while (d->q_count) nm__evict(d);
    for (r = d->live_head.next; r != &d->live_head; r = next) { /* leaks: release their memory */
        next = r->next;
        nm__raw_free(d, r);
        free(r);
    }
    while (d->spare) {
        r = d->spare;
        d->spare = r->next;
        free(r);
    }
    free(d->keys);
    free(d->vals);
    nm_mutex_destroy(&d->lock);
    _nm_table_free(a);
}

/* ---- public API ------------------------------------------------------------------------------------ */
nm_allocator_t *nm_debug_create_ex(nm_allocator_t *base, unsigned flags, size_t quarantine) {
    nm_allocator_t *a;
    nm__dbg_t *d;
    if (flags & ~(unsigned)(NM_DEBUG_GUARD_PAGES | NM_DEBUG_NO_POISON)) {
        _nm_set_error(NM_ERR_INVALID, "unknown debug allocator flags 0x%x", flags);
        return NULL;
    }
    if (quarantine > ((size_t)1 << 24)) {
        _nm_set_error(NM_ERR_INVALID, "quarantine of %zu blocks is too large", quarantine);
        return NULL;
    }
    a = _nm_table_new("debug", sizeof(nm__dbg_t));
    if (a == NULL) return NULL;
    d = (nm__dbg_t *)a->ctx;
    d->base = base ? base : nm_allocator_libc();
    d->self = a;
    d->flags = flags;
    d->quarantine_cap = quarantine;
    d->page = nm_os_page_size();
    d->vg = NM_VG_RUNNING() ? 1 : 0;
    d->live_head.next = d->live_head.prev = &d->live_head;
    d->q_head.next = d->q_head.prev = &d->q_head;
    nm_mutex_init(&d->lock);
    a->malloc = nm__dbg_malloc;
    a->calloc = nm__dbg_calloc;
    a->realloc = nm__dbg_realloc;
    a->free = nm__dbg_free;
    a->memalign = nm__dbg_memalign;
    a->usable_size = nm__dbg_usable;
    a->destroy = nm__dbg_destroy;
    a->flags |= NM_ALLOC_EXACT_SIZE | NM_ALLOC_SELF_STATS | NM_ALLOC_REPORTS;
    return a;
}

nm_allocator_t *nm_debug_create(nm_allocator_t *base, unsigned flags) { return nm_debug_create_ex(base, flags, 1024); }

int nm_debug_is(nm_allocator_t *a) { return a != NULL && a->malloc == nm__dbg_malloc; }

static nm__dbg_t *nm__as_dbg(nm_allocator_t *a) {
    if (!nm_debug_is(a)) {
        _nm_set_error(NM_ERR_INVALID, "allocator '%s' is not a debug allocator", a ? a->name : "(null)");
        return NULL;
    }
    return (nm__dbg_t *)a->ctx;
}

int nm_debug_check(nm_allocator_t *a) {
    nm__dbg_t *d = nm__as_dbg(a);
    nm__dblk_t *r;
    int rc = NM_OK;
    if (d == NULL) return NM_ERR_INVALID;
    nm_mutex_lock(&d->lock);
    for (r = d->live_head.next; r != &d->live_head && rc == NM_OK; r = r->next) rc = nm__verify_canaries(d, r);
    for (r = d->q_head.next; r != &d->q_head && rc == NM_OK; r = r->next) rc = nm__verify_poison(d, r);
    nm_mutex_unlock(&d->lock);
    return rc;
}

int nm_debug_flush(nm_allocator_t *a) {
    nm__dbg_t *d = nm__as_dbg(a);
    int rc = NM_OK;
    if (d == NULL) return NM_ERR_INVALID;
    nm_mutex_lock(&d->lock);
    while (d->q_count) {
        int e = nm__evict(d);
        if (rc == NM_OK) rc = e;
    }
    nm_mutex_unlock(&d->lock);
    return rc;
}

size_t nm_debug_blocks(nm_allocator_t *a, nm_debug_block_t *out, size_t cap, uint64_t since) {
    nm__dbg_t *d = nm__as_dbg(a);
    nm__dblk_t *r;
    size_t n = 0;
    if (d == NULL) return 0;
    nm_mutex_lock(&d->lock);
    for (r = d->live_head.next; r != &d->live_head; r = r->next) {
        if (r->serial <= since) continue;
        if (n < cap) {
            out[n].address = r->user;
            out[n].size = r->size;
            out[n].file = r->file;
            out[n].line = r->line;
            out[n].serial = r->serial;
        }
        n++;
    }
    nm_mutex_unlock(&d->lock);
    return n;
}

void nm_debug_stats(nm_allocator_t *a, nm_debug_stats_t *out) {
    nm__dbg_t *d = nm__as_dbg(a);
    memset(out, 0, sizeof *out);
    if (d == NULL) return;
    nm_mutex_lock(&d->lock);
    out->live_blocks = d->live_blocks;
    out->live_bytes = d->live_bytes;
    out->peak_bytes = d->peak_bytes;
    out->total_allocs = d->allocs;
    out->total_frees = d->frees;
    out->quarantined_blocks = d->q_count;
    out->quarantined_bytes = d->q_bytes;
    out->errors = d->errors;
    out->next_serial = d->serial + 1;
    nm_mutex_unlock(&d->lock);
}
