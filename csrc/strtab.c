/* strtab.c -- string interning with reference counts (glib's GRefString, Movian's strtab_get).
 *
 * 16 shards, each an open-addressing table with one tag byte per slot (the hash's top bits,
 * 0 = empty, 1 = deleted) beside an array of entry pointers, so a probe compares bytes before it
 * touches an entry.  Entries carry their hash, length, count and bytes in one block from the
 * table's allocator; interned equality is pointer equality.  A count may drop to zero only under
 * its shard's lock, and lookups take references under that lock, so a lookup racing the final
 * release never revives a dying string; releases of a string with other references are one
 * atomic decrement.
 */
#include "nm_internal.h"

#include <stdio.h>

#define NM__SHARDS 16

typedef struct nm__sentry {
    intptr_t refs;        /* atomic */
    uint64_t hash;
    size_t len;
    uint32_t magic;
    uint32_t shard;
    char data[1];         /* len bytes + NUL */
} nm__sentry_t;

#define NM__SMAGIC 0x53545231u
#define NM__ENTRY(s) ((nm__sentry_t *)((char *)(s) - offsetof(nm__sentry_t, data)))

/* A shard: its lock (a spinlock: a probe is a few dozen instructions), table and counters,
 * which its lock guards (no atomic read-modify-write beside the lock's own). */
typedef struct nm__shard {
    nm_spin_t lock;
    uint8_t *tags;
    nm__sentry_t **slots;
    size_t mask, used, count; /* used: live + deleted slots */
    uint64_t lookups, hits, inserts, removals;
    intptr_t bytes;
} nm__shard_t;

/* Shards 128 bytes apart: the hot head of one (lock and table, 48 bytes on 64-bit) never shares
 * a cache line with the next one's, whatever the table's own alignment. */
typedef union nm__shard_slot {
    nm__shard_t s;
    char spacing[128];
} nm__shard_slot_t;

struct nm_strtab {
    nm_allocator_t *a;
    nm__shard_slot_t shards[NM__SHARDS];
    nm_atfork_t fork;     /* fork safety: every shard's lock (platform.h) */
};

/* 8 bytes at a time (the last word overlapping, short keys from two overlapping loads), each
 * word folded in with a multiply, then a final avalanche: FNV-1a's byte loop was a chain of one
 * multiply per byte, a quarter of an interning hit.  Every byte and the length count. */
NM_INLINE uint64_t nm__load8(const char *p) { uint64_t w; memcpy(&w, p, 8); return w; }
NM_INLINE uint64_t nm__load4(const char *p) { uint32_t w; memcpy(&w, p, 4); return w; }
NM_INLINE uint64_t nm__fold(uint64_t h, uint64_t w) {
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 32);
}
static uint64_t nm__strhash(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull ^ ((uint64_t)n * 0xff51afd7ed558ccdull);
    if (n >= 8) {
        size_t i;
        for (i = 0; i + 8 < n; i += 8) h = nm__fold(h, nm__load8(s + i));
        h = nm__fold(h, nm__load8(s + n - 8));
    } else if (n >= 4) {
        h = nm__fold(h, nm__load4(s) | (nm__load4(s + n - 4) << 32));
    } else if (n > 0) {
        h = nm__fold(h, (uint64_t)(unsigned char)s[0] | ((uint64_t)(unsigned char)s[n / 2] << 8) |
                            ((uint64_t)(unsigned char)s[n - 1] << 16));
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

/* Three disjoint parts of the hash: the slot (low bits), the shard (bits 52-55) and the tag (bits
 * 56-62).  (The shard was once h % 16, the slot's own low bits: every key of a shard then had the
 * same 4 low bits, so only one home slot in 16 was ever used and probes ran through clusters.) */
NM_INLINE uint8_t nm__tag(uint64_t h) { return (uint8_t)((h >> 56) | 0x80); }
NM_INLINE size_t nm__shard_of(uint64_t h) { return (size_t)(h >> 52) & (NM__SHARDS - 1); }

/* Across fork(): every shard's lock, in shard order (no thread ever holds two of them). */
static void nm__strtab_fork_lock(void *arg) {
    nm_strtab_t *t = (nm_strtab_t *)arg;
    int k;
    for (k = 0; k < NM__SHARDS; k++) nm_spin_lock(&t->shards[k].s.lock);
}
static void nm__strtab_fork_unlock(void *arg) {
    nm_strtab_t *t = (nm_strtab_t *)arg;
    int k;
    for (k = NM__SHARDS; k-- > 0;) nm_spin_unlock(&t->shards[k].s.lock);
}

nm_strtab_t *nm_strtab_create(nm_allocator_t *a) {
    nm_strtab_t *t;
    if (a == NULL) a = nm_allocator_libc();
    t = (nm_strtab_t *)nm_calloc(a, 1, sizeof *t);
    if (t == NULL) return NULL;
    t->a = a;
    nm_atfork_init(&t->fork, nm__strtab_fork_lock, nm__strtab_fork_unlock, NULL, t, NM_ATFORK_OBJECT);
    nm_atfork_register(&t->fork);
    return t;
}

static int nm__shard_grow(nm_strtab_t *t, nm__shard_t *sh) {
    size_t cap = sh->mask ? (sh->count * 4 > sh->mask + 1 ? (sh->mask + 1) * 2 : sh->mask + 1) : 16, i;
    uint8_t *tags = (uint8_t *)nm_calloc(t->a, cap, 1);
    nm__sentry_t **slots = (nm__sentry_t **)nm_calloc(t->a, cap, sizeof(nm__sentry_t *));
    if (tags == NULL || slots == NULL) {
        nm_free(t->a, tags);
        nm_free(t->a, slots);
        return NM_ERR_NOMEM;
    }
    for (i = 0; sh->tags && i <= sh->mask; i++)
        if (sh->tags[i] >= 0x80) {
            size_t j = (size_t)sh->slots[i]->hash & (cap - 1);
            while (tags[j]) j = (j + 1) & (cap - 1);
            tags[j] = sh->tags[i];
            slots[j] = sh->slots[i];
        }
    nm_free(t->a, sh->tags);
    nm_free(t->a, sh->slots);
    sh->tags = tags;
    sh->slots = slots;
    sh->mask = cap - 1;
    sh->used = sh->count;
    return NM_OK;
}

/* a[0..n) == b[0..n) for the short strings interning sees, with word loads that stay inside
 * both ranges (the last word overlapping); memcmp beyond 32 bytes. */
NM_INLINE int nm__same(const char *a, const char *b, size_t n) {
    if (n >= 8) {
        size_t i;
        if (n > 32) return memcmp(a, b, n) == 0;
        for (i = 0; i + 8 < n; i += 8)
            if (nm__load8(a + i) != nm__load8(b + i)) return 0;
        return nm__load8(a + n - 8) == nm__load8(b + n - 8);
    }
    if (n >= 4) return nm__load4(a) == nm__load4(b) && nm__load4(a + n - 4) == nm__load4(b + n - 4);
    return n == 0 || (a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1]);
}

/* Slot of the entry equal to s[0..n), or the insertion slot (tag 0/1) when absent. */
static size_t nm__probe(nm__shard_t *sh, const char *s, size_t n, uint64_t h, int *found) {
    uint8_t tag = nm__tag(h);
    size_t i = (size_t)h & sh->mask, first_free = (size_t)-1;
    for (;; i = (i + 1) & sh->mask) {
        uint8_t g = sh->tags[i];
        if (g == 0) {
            *found = 0;
            return first_free != (size_t)-1 ? first_free : i;
        }
        if (g == 1) {
            if (first_free == (size_t)-1) first_free = i;
        } else if (g == tag) {
            nm__sentry_t *e = sh->slots[i];
            if (e->hash == h && e->len == n && nm__same(e->data, s, n)) {
                *found = 1;
                return i;
            }
        }
    }
}

const char *nm_strtab_intern(nm_strtab_t *t, const char *s, size_t n) {
    uint64_t h;
    nm__shard_t *sh;
    size_t i, bytes;
    int found;
    nm__sentry_t *e;
    if (s == NULL && n) {
        _nm_set_error(NM_ERR_INVALID, "intern of NULL with length %zu", n);
        return NULL;
    }
    if (n > NM_MAX_ALLOC - sizeof(nm__sentry_t)) {
        _nm_set_error(NM_ERR_OVERFLOW, "string of %zu bytes is too long to intern", n);
        return NULL;
    }
    h = nm__strhash(s ? s : "", n);
    sh = &t->shards[nm__shard_of(h)].s;
    nm_spin_lock(&sh->lock);
    sh->lookups++;
    if (sh->mask == 0 || (sh->used + 1) * 10 > (sh->mask + 1) * 7) {
        if (nm__shard_grow(t, sh) != NM_OK) {
            nm_spin_unlock(&sh->lock);
            return (const char *)_nm_oom("strtab", sizeof(nm__sentry_t) + n);
        }
    }
    i = nm__probe(sh, s, n, h, &found);
    if (found) {
        e = sh->slots[i];
        nm_atomic_add_relaxed(&e->refs, 1); /* under the lock: never revives a dying entry */
        sh->hits++;
        nm_spin_unlock(&sh->lock);
        return e->data;
    }
    bytes = offsetof(nm__sentry_t, data) + n + 1;
    e = (nm__sentry_t *)nm_malloc(t->a, bytes);
    if (e == NULL) {
        nm_spin_unlock(&sh->lock);
        return NULL;
    }
    e->refs = 1;
    e->hash = h;
    e->len = n;
    e->magic = NM__SMAGIC;
    e->shard = (uint32_t)nm__shard_of(h);
    if (n) memcpy(e->data, s, n);
    e->data[n] = '\0';
    if (sh->tags[i] == 0) sh->used++;
    sh->tags[i] = nm__tag(h);
    sh->slots[i] = e;
    sh->count++;
    sh->inserts++;
    sh->bytes += (intptr_t)bytes;
    nm_spin_unlock(&sh->lock);
    return e->data;
}

void nm_strtab_retain(nm_strtab_t *t, const char *s) {
    (void)t;
    nm_atomic_add_relaxed(&NM__ENTRY(s)->refs, 1);
}

int nm_strtab_release(nm_strtab_t *t, const char *s) {
    nm__sentry_t *e = NM__ENTRY(s);
    nm__shard_t *sh;
    intptr_t refs = nm_atomic_load_relaxed(&e->refs);
    size_t i;
    int found;
    if (e->magic != NM__SMAGIC) return _nm_set_error(NM_ERR_INVALID_FREE, "release of %p: not an interned string", (void *)s);
    /* fast path: not the last reference */
    while (refs > 1)
        if (nm_atomic_cas(&e->refs, &refs, refs - 1)) return NM_OK;
    sh = &t->shards[e->shard].s;
    nm_spin_lock(&sh->lock);
    refs = nm_atomic_add_acq_rel(&e->refs, -1);
    if (refs > 0) {
        nm_spin_unlock(&sh->lock);
        return NM_OK;
    }
    if (refs < 0) {
        nm_atomic_store_relaxed(&e->refs, 0);
        nm_spin_unlock(&sh->lock);
        return _nm_set_error(NM_ERR_REFCOUNT, "release of interned string %p: no reference left", (void *)s);
    }
    i = nm__probe(sh, e->data, e->len, e->hash, &found);
    if (found && sh->slots[i] == e) {
        sh->tags[i] = 1;
        sh->slots[i] = NULL;
        sh->count--;
    }
    sh->removals++;
    sh->bytes -= (intptr_t)(offsetof(nm__sentry_t, data) + e->len + 1);
    nm_spin_unlock(&sh->lock);
    e->magic = 0;
    nm_free(t->a, e);
    return NM_OK;
}

size_t nm_strtab_strlen(const char *s) { return NM__ENTRY(s)->len; }
intptr_t nm_strtab_refs(const char *s) { return nm_atomic_load_relaxed(&NM__ENTRY(s)->refs); }

intptr_t nm_strtab_lookup_refs(nm_strtab_t *t, const char *s, size_t n) {
    uint64_t h = nm__strhash(s ? s : "", n);
    nm__shard_t *sh = &t->shards[nm__shard_of(h)].s;
    intptr_t refs = 0;
    int found = 0;
    size_t i;
    nm_spin_lock(&sh->lock);
    if (sh->mask) {
        i = nm__probe(sh, s, n, h, &found);
        if (found) refs = nm_atomic_load_relaxed(&sh->slots[i]->refs);
    }
    nm_spin_unlock(&sh->lock);
    return refs;
}

size_t nm_strtab_count(nm_strtab_t *t) {
    size_t n = 0;
    int k;
    for (k = 0; k < NM__SHARDS; k++) {
        nm__shard_t *sh = &t->shards[k].s;
        nm_spin_lock(&sh->lock);
        n += sh->count;
        nm_spin_unlock(&sh->lock);
    }
    return n;
}

void nm_strtab_stats(nm_strtab_t *t, nm_strtab_stats_t *out) {
    int k;
    memset(out, 0, sizeof *out);
    for (k = 0; k < NM__SHARDS; k++) {
        nm__shard_t *sh = &t->shards[k].s;
        nm_spin_lock(&sh->lock);
        out->entries += sh->count;
        out->capacity += sh->mask ? sh->mask + 1 : 0;
        out->bytes += (size_t)sh->bytes;
        out->lookups += sh->lookups;
        out->hits += sh->hits;
        out->inserts += sh->inserts;
        out->removals += sh->removals;
        nm_spin_unlock(&sh->lock);
    }
    out->shards = NM__SHARDS;
}

size_t nm_strtab_destroy(nm_strtab_t *t) {
    size_t left = 0, i;
    int k;
    if (t == NULL) return 0;
    nm_atfork_unregister(&t->fork);
    for (k = 0; k < NM__SHARDS; k++) {
        nm__shard_t *sh = &t->shards[k].s;
        for (i = 0; sh->tags && i <= sh->mask; i++)
            if (sh->tags[i] >= 0x80) {
                sh->slots[i]->magic = 0;
                nm_free(t->a, sh->slots[i]);
                left++;
            }
        nm_free(t->a, sh->tags);
        nm_free(t->a, sh->slots);
    }
    nm_free(t->a, t);
    return left;
}
