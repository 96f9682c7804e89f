/* strtab.c -- string interning with reference counts (glib's GRefString, Movian's strtab_get).
 *
 * 16 shards, each an open-addressing table of buckets: one cache line holding NM__BW entry
 * pointers, a tag byte beside each (8 bits of the hash, 0 = empty slot) and an overflow count,
 * so a lookup reads one line of the table, compares tags there and dereferences only the entry
 * whose tag matches.  An entry is one block from the table's allocator: 16 bytes of header
 * (count, length) and the bytes, so the count, the length and a short string share a cache line
 * (all of it up to 47 bytes in a line-aligned block).  Interned equality is pointer equality.
 * A count may drop to zero only under its shard's lock, and lookups take references under that
 * lock, so a lookup racing the final release never revives a dying string; releases of a string
 * with other references are one atomic decrement.
 */
#include "nm_internal.h"

#include <stdio.h>

#define NM__SHARDS 16
#define NM__LINE 64

/* An entry: its count and (length | magic << 32), then the bytes.  No hash: a probe compares
 * tags in the bucket first, and the rare paths that need it (the last release, a grow) hash
 * the bytes again. */
typedef struct nm__sentry {
    intptr_t refs;        /* atomic */
    uint64_t meta;        /* length (low 32 bits) | table-keyed magic << 32 */
    char data[1];         /* len bytes + NUL */
} nm__sentry_t;

/* 32 bits of magic: a release of a pointer that was never interned is caught but for odds of
 * 2^-32 (16 bits, with 48 of length, would have missed one in 65536); strings are then at most
 * 4 GiB - 1 bytes, which interning (names, keys, identifiers) never approaches.  The magic is
 * derived from the entry's address and the table's secret (nm__magic_for), so the bytes of an
 * interned string cannot forge a header that a release of an interior pointer would accept. */
#define NM__LENBITS 32
#define NM__MAXLEN ((((uint64_t)1) << NM__LENBITS) - 1)
#define NM__ENTRY(s) ((nm__sentry_t *)((char *)(s) - offsetof(nm__sentry_t, data)))
#define NM__HEAD offsetof(nm__sentry_t, data)
NM_INLINE size_t nm__elen(const nm__sentry_t *e) { return (size_t)(e->meta & NM__MAXLEN); }
NM_INLINE uint32_t nm__emagic(const nm__sentry_t *e) { return (uint32_t)(e->meta >> NM__LENBITS); }
/* Longer than an entry can hold: beyond 2^32 - 1 bytes, or than the largest block. */
NM_INLINE int nm__too_long(size_t n) {
#if SIZE_MAX > 0xFFFFFFFFu
    if (n > NM__MAXLEN) return 1;
#endif
    return n > NM_MAX_ALLOC - sizeof(nm__sentry_t);
}

/* A bucket: one cache line on 64-bit (7 tags, the overflow count, 7 pointers) and on 32-bit
 * (12 tags, the count, 12 pointers).  `over` counts the entries whose home bucket this is but
 * which live in a later one (saturating at 255, and then never decremented): a lookup stops at
 * the first bucket with over == 0, so a delete needs no tombstone. */
#if UINTPTR_MAX > 0xFFFFFFFFu
#  define NM__BW 7
#else
#  define NM__BW 12
#endif
typedef struct nm__bucket {
    uint8_t tag[NM__BW];
    uint8_t over;
    nm__sentry_t *e[NM__BW];
} nm__bucket_t;
_Static_assert(sizeof(nm__bucket_t) == NM__LINE, "a bucket is one cache line");

/* A shard: its lock (a spinlock: a probe is a few dozen instructions), table and counters,
 * which its lock guards (no atomic read-modify-write beside the lock's own). */
typedef struct nm__shard {
    nm_spin_t lock;
    nm__bucket_t *b;      /* nb buckets, NM__LINE-aligned inside raw */
    size_t nb, count;     /* nb: a power of two, or 0 before the first insert */
    void *raw;
    uint64_t lookups, hits, inserts, removals;
    intptr_t bytes;
} nm__shard_t;

/* Shards 128 bytes apart: the hot head of one (lock and table) never shares a cache line with
 * the next one's, whatever the table's own alignment. */
typedef union nm__shard_slot {
    nm__shard_t s;
    char spacing[128];
} nm__shard_slot_t;

struct nm_strtab {
    nm_allocator_t *a;
    uint64_t secret;      /* per table: keys the entries' magic (nm__magic_for) */
    nm__shard_slot_t shards[NM__SHARDS];
    nm_atfork_t fork;     /* fork safety: every shard's lock (platform.h) */
};

/* The magic of the entry at `e` in table `t`. */
NM_INLINE uint32_t nm__magic_for(const nm_strtab_t *t, const nm__sentry_t *e) {
    return (uint32_t)((((uint64_t)(uintptr_t)e ^ t->secret) * 0x9E3779B97F4A7C15ull) >> 32);
}

/* 8 bytes at a time (the last word overlapping, short keys from two overlapping loads), each
 * word folded in with a multiply, then a final avalanche: FNV-1a's byte loop was a chain of one
 * multiply per byte, a quarter of an interning hit.  Every byte and the length count. */
NM_INLINE uint64_t nm__load8(const char *p) { uint64_t w; memcpy(&w, p, 8); return w; }
NM_INLINE uint64_t nm__load4(const char *p) { uint32_t w; memcpy(&w, p, 4); return w; }
NM_INLINE uint64_t nm__fold(uint64_t h, uint64_t w) {
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 32);
}
NM_INLINE uint64_t nm__strhash(const char *s, size_t n) {
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

/* Three disjoint parts of the hash: the bucket (low bits), the shard (bits 52-55) and the tag
 * (bits 56-63, 0 made 1).  (The shard was once h % 16, the slot's own low bits: every key of a
 * shard then had the same 4 low bits, so only one home slot in 16 was ever used and probes ran
 * through clusters.) */
NM_INLINE uint8_t nm__tag(uint64_t h) {
    uint8_t g = (uint8_t)(h >> 56);
    return (uint8_t)(g + (g == 0));
}
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
    {   /* address entropy mixed with the clock (not cryptographic: it keeps string bytes from
         * passing for a header) */
        uint64_t x = nm_now_ns() ^ ((uint64_t)(uintptr_t)t << 17) ^ ((uint64_t)(uintptr_t)&x << 7);
        x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
        t->secret = x;
    }
    nm_atfork_init(&t->fork, nm__strtab_fork_lock, nm__strtab_fork_unlock, NULL, t, NM_ATFORK_OBJECT);
    nm_atfork_register(&t->fork);
    return t;
}

/* Tag matching 8 bytes at a time: for word k (bytes 8k..8k+7) of B's tag bytes, the top bit of
 * each byte equal to g, exactly (no borrow runs from one byte into the next), kept only for the
 * bytes that are tags (the first word of a 64-bit bucket ends with `over`).  Bit 8b+7 stands for
 * byte b of the word in memory order on a little-endian machine, for byte 7-b on a big-endian
 * one. */
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#  define NM__BIG_ENDIAN 1
#else
#  define NM__BIG_ENDIAN 0 /* MSVC's targets are all little-endian */
#endif
#define NM__TAGWORDS ((NM__BW + 7) / 8)
NM_INLINE uint64_t nm__tags_equal(const nm__bucket_t *B, int k, uint8_t g) {
    const uint64_t lo7 = 0x7F7F7F7F7F7F7F7Full;
    int valid = NM__BW - 8 * k < 8 ? NM__BW - 8 * k : 8;
    uint64_t x = nm__load8((const char *)B->tag + 8 * k) ^ (0x0101010101010101ull * g), keep;
    if (valid == 8) keep = ~(uint64_t)0;
    else if (NM__BIG_ENDIAN) keep = ~(uint64_t)0 << (8 * (8 - valid));
    else keep = ~(~(uint64_t)0 << (8 * valid));
    return ~(((x & lo7) + lo7) | x | lo7) & keep;
}
/* The slot (of word k) that the lowest bit of a nonzero nm__tags_equal stands for. */
NM_INLINE int nm__slot_of(uint64_t m, int k) {
    int b = ((uint32_t)m ? nm_ctz32((uint32_t)m) : 32 + nm_ctz32((uint32_t)(m >> 32))) >> 3;
    return 8 * k + (NM__BIG_ENDIAN ? 7 - b : b);
}

/* Puts e (hash h) in the first free slot from its home bucket on, counting it in the `over` of
 * every full bucket it passes.  The table has a free slot (the load stays below 7/8). */
static void nm__place(nm__bucket_t *b, size_t mask, nm__sentry_t *e, uint64_t h) {
    size_t i = (size_t)h & mask;
    for (;; i = (i + 1) & mask) {
        nm__bucket_t *B = &b[i];
        int k;
        for (k = 0; k < NM__TAGWORDS; k++) {
            uint64_t m = nm__tags_equal(B, k, 0);
            if (m) {
                int j = nm__slot_of(m, k);
                B->tag[j] = nm__tag(h);
                B->e[j] = e;
                return;
            }
        }
        if (B->over < 255) B->over++;
    }
}

/* Twice the buckets (2 at first), every entry placed again from its rehashed bytes. */
static int nm__shard_grow(nm_strtab_t *t, nm__shard_t *sh) {
    size_t nb = sh->nb ? sh->nb * 2 : 2, bytes, i;
    int j;
    void *raw;
    nm__bucket_t *b;
    if (nm_mul_overflow(nb, sizeof(nm__bucket_t), &bytes) || bytes > NM_MAX_ALLOC - NM__LINE) return NM_ERR_NOMEM;
    raw = nm_malloc(t->a, bytes + NM__LINE - 1);
    if (raw == NULL) return NM_ERR_NOMEM;
    b = (nm__bucket_t *)(((uintptr_t)raw + NM__LINE - 1) & ~(uintptr_t)(NM__LINE - 1));
    memset(b, 0, bytes);
    for (i = 0; i < sh->nb; i++)
        for (j = 0; j < NM__BW; j++)
            if (sh->b[i].tag[j]) {
                nm__sentry_t *e = sh->b[i].e[j];
                nm__place(b, nb - 1, e, nm__strhash(e->data, nm__elen(e)));
            }
    nm_free(t->a, sh->raw);
    sh->raw = raw;
    sh->b = b;
    sh->nb = nb;
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

/* The entry equal to s[0..n) (hash h), or NULL. */
NM_INLINE nm__sentry_t *nm__find(nm__shard_t *sh, const char *s, size_t n, uint64_t h) {
    uint8_t g = nm__tag(h);
    size_t mask = sh->nb - 1, i = (size_t)h & mask, left = sh->nb;
    if (sh->nb == 0) return NULL;
    for (;; i = (i + 1) & mask) {
        const nm__bucket_t *B = &sh->b[i];
        int k;
        for (k = 0; k < NM__TAGWORDS; k++) {
            uint64_t m;
            for (m = nm__tags_equal(B, k, g); m; m &= m - 1) {
                nm__sentry_t *e = B->e[nm__slot_of(m, k)];
                if (nm__elen(e) == n && nm__same(e->data, s, n)) return e;
            }
        }
        if (B->over == 0 || --left == 0) return NULL;
    }
}

const char *nm_strtab_intern(nm_strtab_t *t, const char *s, size_t n) {
    uint64_t h;
    nm__shard_t *sh;
    size_t bytes;
    nm__sentry_t *e;
    if (s == NULL && n) {
        _nm_set_error(NM_ERR_INVALID, "intern of NULL with length %zu", n);
        return NULL;
    }
    if (nm__too_long(n)) {
        _nm_set_error(NM_ERR_OVERFLOW, "string of %zu bytes is too long to intern", n);
        return NULL;
    }
    if (s == NULL) s = "";
    h = nm__strhash(s, n);
    sh = &t->shards[nm__shard_of(h)].s;
    nm_spin_lock(&sh->lock);
    sh->lookups++;
    e = nm__find(sh, s, n, h);
    if (e != NULL) {
        nm_atomic_add_relaxed(&e->refs, 1); /* under the lock: never revives a dying entry */
        sh->hits++;
        nm_spin_unlock(&sh->lock);
        return e->data;
    }
    if ((sh->count + 1) * 8 > sh->nb * NM__BW * 7 && nm__shard_grow(t, sh) != NM_OK) {
        nm_spin_unlock(&sh->lock);
        return (const char *)_nm_oom("strtab", sizeof(nm__sentry_t) + n);
    }
    bytes = NM__HEAD + n + 1;
    e = (nm__sentry_t *)nm_malloc(t->a, bytes);
    if (e == NULL) {
        nm_spin_unlock(&sh->lock);
        return NULL;
    }
    e->refs = 1;
    e->meta = (uint64_t)n | ((uint64_t)nm__magic_for(t, e) << NM__LENBITS);
    if (n) memcpy(e->data, s, n);
    e->data[n] = '\0';
    nm__place(sh->b, sh->nb - 1, e, h);
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

/* Takes e (hash h) out of its shard's table: its slot emptied, the `over` counts of the buckets
 * between its home and its own bucket decremented (those not saturated). */
static void nm__unlink(nm__shard_t *sh, nm__sentry_t *e, uint64_t h) {
    uint8_t g = nm__tag(h);
    size_t mask = sh->nb - 1, home = (size_t)h & mask, i = home, left = sh->nb;
    if (sh->nb == 0) return;
    for (;; i = (i + 1) & mask) {
        nm__bucket_t *B = &sh->b[i];
        int k;
        for (k = 0; k < NM__TAGWORDS; k++) {
            uint64_t m;
            for (m = nm__tags_equal(B, k, g); m; m &= m - 1) {
                int j = nm__slot_of(m, k);
                if (B->e[j] != e) continue;
                B->tag[j] = 0;
                B->e[j] = NULL;
                for (; home != i; home = (home + 1) & mask)
                    if (sh->b[home].over < 255) sh->b[home].over--;
                sh->count--;
                return;
            }
        }
        if (B->over == 0 || --left == 0) return;
    }
}

int nm_strtab_release(nm_strtab_t *t, const char *s) {
    nm__sentry_t *e = NM__ENTRY(s);
    nm__shard_t *sh;
    intptr_t refs = nm_atomic_load_relaxed(&e->refs);
    uint64_t h;
    size_t n;
    if (nm__emagic(e) != nm__magic_for(t, e)) return _nm_set_error(NM_ERR_INVALID_FREE, "release of %p: not an interned string", (void *)s);
    /* fast path: not the last reference */
    while (refs > 1)
        if (nm_atomic_cas(&e->refs, &refs, refs - 1)) return NM_OK;
    n = nm__elen(e);
    h = nm__strhash(e->data, n);
    sh = &t->shards[nm__shard_of(h)].s;
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
    nm__unlink(sh, e, h);
    sh->removals++;
    sh->bytes -= (intptr_t)(NM__HEAD + n + 1);
    nm_spin_unlock(&sh->lock);
    e->meta = 0;
    nm_free(t->a, e);
    return NM_OK;
}

size_t nm_strtab_strlen(const char *s) { return nm__elen(NM__ENTRY(s)); }
intptr_t nm_strtab_refs(const char *s) { return nm_atomic_load_relaxed(&NM__ENTRY(s)->refs); }

intptr_t nm_strtab_lookup_refs(nm_strtab_t *t, const char *s, size_t n) {
    uint64_t h = nm__strhash(s ? s : "", n);
    nm__shard_t *sh = &t->shards[nm__shard_of(h)].s;
    nm__sentry_t *e;
    intptr_t refs = 0;
    nm_spin_lock(&sh->lock);
    e = nm__find(sh, s ? s : "", n, h);
    if (e != NULL) refs = nm_atomic_load_relaxed(&e->refs);
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
        out->capacity += sh->nb * NM__BW;
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
    int k, j;
    if (t == NULL) return 0;
    nm_atfork_unregister(&t->fork);
    for (k = 0; k < NM__SHARDS; k++) {
        nm__shard_t *sh = &t->shards[k].s;
        for (i = 0; i < sh->nb; i++)
            for (j = 0; j < NM__BW; j++)
                if (sh->b[i].tag[j]) {
                    sh->b[i].e[j]->meta = 0;
                    nm_free(t->a, sh->b[i].e[j]);
                    left++;
                }
        nm_free(t->a, sh->raw);
    }
    nm_free(t->a, t);
    return left;
}
