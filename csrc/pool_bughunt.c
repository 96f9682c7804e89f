/* pool_bughunt.c -- a pool's bughunt mode: every object is its own backend block (nm_memalign),
 * tracked in an open-addressing map (address -> live/freed, allocation site) that detects
 * foreign and double frees and lists live objects.  Slower than the pool's chunks by design. */
#include "pool_bughunt.h"

#include <stdlib.h>

typedef struct nm__bh_ent {
    uintptr_t addr;
    int state; /* 0 empty, 1 live, 2 freed */
    int line;
    const char *file;
} nm__bh_ent_t;

struct nm__bh {
    nm_allocator_t *a;
    nm_mutex_t *lock;
    size_t object_size, alignment;
    int zero;
    nm__bh_ent_t *tab;
    size_t cap, count;      /* count: entries used (live and freed), cap a power of two */
    int64_t allocs, frees, live, peak;
};

NM_INLINE size_t nm__bh_hash(uintptr_t addr, size_t cap) {
    return (size_t)(((uint64_t)(addr >> 4) * 0x9E3779B97F4A7C15ull) >> 17) & (cap - 1);
}
static const char *nm__bh_site(const char *f) { return f ? f : "<unknown>"; }

nm__bh_t *_nm_bh_create(nm_allocator_t *a, size_t object_size, size_t alignment, int zero, nm_mutex_t *lock) {
    nm__bh_t *bh = (nm__bh_t *)nm_calloc(a, 1, sizeof *bh);
    if (bh == NULL) return NULL;
    bh->a = a;
    bh->lock = lock;
    bh->object_size = object_size;
    bh->alignment = alignment;
    bh->zero = zero;
    return bh;
}

void _nm_bh_destroy(nm__bh_t *bh) {
    size_t i;
    for (i = 0; i < bh->cap; i++)
        if (bh->tab[i].state == 1) nm_free(bh->a, (void *)bh->tab[i].addr);
    nm_free(bh->a, bh->tab);
    nm_free(bh->a, bh);
}

static nm__bh_ent_t *nm__bh_find(nm__bh_t *bh, uintptr_t addr) {
    size_t i;
    if (!bh->cap) return NULL;
    i = nm__bh_hash(addr, bh->cap);
    while (bh->tab[i].state != 0) {
        if (bh->tab[i].addr == addr) return &bh->tab[i];
        i = (i + 1) & (bh->cap - 1);
    }
    return NULL;
}

static nm__bh_ent_t *nm__bh_insert(nm__bh_t *bh, uintptr_t addr) {
    nm__bh_ent_t *e = nm__bh_find(bh, addr);
    size_t i;
    if (e) return e; /* a freed object's address, reused by the backend */
    if ((bh->count + 1) * 2 > bh->cap) {
        size_t ncap = bh->cap ? bh->cap * 2 : 64, j;
        nm__bh_ent_t *old = bh->tab, *nt = (nm__bh_ent_t *)nm_calloc(bh->a, ncap, sizeof *nt);
        if (!nt) return NULL;
        for (j = 0; j < bh->cap; j++) {
            if (!old[j].state) continue;
            i = nm__bh_hash(old[j].addr, ncap);
            while (nt[i].state) i = (i + 1) & (ncap - 1);
            nt[i] = old[j];
        }
        nm_free(bh->a, old);
        bh->tab = nt;
        bh->cap = ncap;
    }
    i = nm__bh_hash(addr, bh->cap);
    while (bh->tab[i].state) i = (i + 1) & (bh->cap - 1);
    bh->tab[i].addr = addr;
    bh->count++;
    return &bh->tab[i];
}

void *_nm_bh_alloc(nm__bh_t *bh, const char *file, int line) {
    void *p = nm_memalign_at(bh->a, bh->alignment, bh->object_size, file, line);
    nm__bh_ent_t *e;
    if (!p) return NULL;
    nm_mutex_lock(bh->lock);
    e = nm__bh_insert(bh, (uintptr_t)p);
    if (!e) {
        nm_mutex_unlock(bh->lock);
        nm_free(bh->a, p);
        return NULL;
    }
    e->state = 1;
    e->file = file;
    e->line = line;
    bh->allocs++;
    if (++bh->live > bh->peak) bh->peak = bh->live;
    nm_mutex_unlock(bh->lock);
    if (bh->zero) memset(p, 0, bh->object_size);
    return p;
}

int _nm_bh_free(nm__bh_t *bh, void *p) {
    nm__bh_ent_t *e;
    int rc = NM_OK;
    nm_mutex_lock(bh->lock);
    e = nm__bh_find(bh, (uintptr_t)p);
    if (!e) {
        rc = _nm_set_error(NM_ERR_INVALID_FREE, "invalid free of %p: not an object of this pool (%zu-byte objects)",
                           p, bh->object_size);
    } else if (e->state == 2) {
        rc = _nm_set_error(NM_ERR_DOUBLE_FREE, "double free of %p (%zu bytes), last allocated at %s%s%.0d", p,
                           bh->object_size, nm__bh_site(e->file), e->line ? ":" : "", e->line);
    } else {
        e->state = 2;
        bh->frees++;
        bh->live--;
    }
    nm_mutex_unlock(bh->lock);
    if (rc == NM_OK) nm_free(bh->a, p);
    return rc;
}

int _nm_bh_owns(nm__bh_t *bh, const void *p) {
    nm__bh_ent_t *e;
    int r;
    nm_mutex_lock(bh->lock);
    e = nm__bh_find(bh, (uintptr_t)p);
    r = e && e->state == 1;
    nm_mutex_unlock(bh->lock);
    return r;
}

void _nm_bh_stats(nm__bh_t *bh, nm_pool_stats_t *out) {
    nm_mutex_lock(bh->lock);
    out->allocations = bh->allocs;
    out->frees = bh->frees;
    out->live = bh->live;
    out->peak = bh->peak;
    out->chunks = bh->live; /* each object is its own backend block */
    out->reserved_bytes = bh->live * (int64_t)bh->object_size;
    nm_mutex_unlock(bh->lock);
}

size_t _nm_bh_live_objects(nm__bh_t *bh, nm_pool_object_t *out, size_t n) {
    size_t count = 0, i;
    nm_mutex_lock(bh->lock);
    for (i = 0; i < bh->cap; i++) {
        if (bh->tab[i].state != 1) continue;
        if (out && count < n) {
            out[count].ptr = (void *)bh->tab[i].addr;
            out[count].file = bh->tab[i].file;
            out[count].line = bh->tab[i].line;
        }
        count++;
    }
    nm_mutex_unlock(bh->lock);
    return count;
}
