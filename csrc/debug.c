/* debug.c -- the debug allocator: an nm_allocator_t that wraps any other and catches misuse.
 *
 * Movian's design document describes a debug malloc (header with size, file, line and magic,
 * footer magic, live list, 0xDD poisoning, leak dump with peak usage).  Here the metadata lives
 * OUT of band, in records found through a hash of user addresses, so a report never reads memory
 * the allocator does not own and a wild write cannot damage the bookkeeping.  In band there are
 * only canaries: 16 bytes before the block and 16 (plus alignment slack) after it.
 *
 *   raw block from base:  [pad][head canary 16][user size][tail canary 16][slack]
 *   guard-page mode:      [pages: pad, head canary, user, tail slack][no-access page]
 *
 * Freed blocks are poisoned with 0xDD and kept in a bounded FIFO quarantine (a ring of records);
 * the oldest one out of it is kept as the "recycled" block for the next allocation of its size.
 * The poison is verified when a freed block is handed out again or given back to base (and on
 * check), so a write after free is reported with the block's allocation and free sites.  Errors
 * found by a free whose caller cannot be told (nm_free, not nm_free_checked) are kept as the
 * pending error, which the next nm_debug_check returns.  One lock protects everything (thread
 * safe); the hot path is kept short because it runs inside it: records come from slabs, the
 * address hash is open addressing without tombstones (backward-shift deletion), the live set is
 * the hash itself (reports sort by serial; a bad free looks for a freed block in the ring), the
 * 16-byte canaries are single stores, and fills and poison checks go 64 bytes a step.
 */
#include "nm_internal.h"

#include <stdio.h>
#include <stdlib.h>
#if defined(__SSE2__) || defined(_M_X64) || defined(_M_AMD64) /* part of x86-64 */
#include <emmintrin.h>
#define NM__SSE2 1
#endif

#define NM__CANARY      16
#define NM__HEAD_BYTE   0xFB
#define NM__TAIL_BYTE   0xFC
#define NM__FREE_BYTE   0xDD
#define NM__NEW_BYTE    0xCB
#define NM__RECENT      4096  /* blocks given back to base, for late double frees (a power of 2) */
#define NM__SLAB        63    /* records per slab */

/* LIVE: allocated.  QUARANTINED: freed, poisoned, in the ring.  RECYCLED: left the ring and kept,
 * still poisoned, to serve the next allocation of its size (its poison is
 * verified then, or when it goes back to base).  RECYCLED_BARE: the same without poison (no
 * quarantine: freed blocks are not filled). */
enum { NM__LIVE = 1, NM__QUARANTINED = 2, NM__RECYCLED = 3, NM__RECYCLED_BARE = 4 };

typedef struct nm__dblk {
    char *raw;                 /* what base (or the OS) gave                          */
    char *user;
    size_t size, raw_size;     /* raw_size: mapping length in guard mode             */
    const char *file, *free_file;
    int line, free_line;
    uint64_t serial;
    int state;
    struct nm__dblk *next;     /* spare list                                          */
} nm__dblk_t;

typedef struct nm__dslab {
    struct nm__dslab *next;
    nm__dblk_t recs[NM__SLAB];
} nm__dslab_t;

/* A block given back to base: enough to name its sites in a late double free. */
typedef struct nm__drecent {
    uintptr_t user;            /* 0: unused */
    size_t size;
    const char *file, *free_file;
    int line, free_line;
} nm__drecent_t;

typedef struct nm__dent {
    uintptr_t key;             /* user address; 0: empty */
    nm__dblk_t *rec;
} nm__dent_t;

typedef struct nm__dbg {
    nm_spin_t lock;             /* short critical sections: a spinlock (platform.h) */
    nm_allocator_t *base;
    nm_allocator_t *self;
    unsigned flags;
    size_t quarantine_cap;
    size_t byte_limit;         /* quarantine byte bound; SIZE_MAX: none */
    /* hash: user address -> record of a live block (freed blocks are found in the ring) */
    nm__dent_t *tab;
    size_t mask, count;
    unsigned shift;            /* 64 - log2(capacity) */
    /* quarantine: ring of records, oldest at q_first */
    nm__dblk_t **q;
    size_t q_size, q_first, q_count, q_bytes;
    uint64_t serial, errors;    /* live/peak/total counts: the table's own counters (self) */
    nm__drecent_t *recent;     /* ring of NM__RECENT, allocated by the first release to base */
    size_t recent_pos;
    nm__dblk_t *spare;         /* free records */
    nm__dblk_t *recycled;      /* one block out of the quarantine, kept for reuse (or NULL) */
    size_t recycled_bytes;     /* its size (0: none), counted against the byte bound */
    nm__dslab_t *slabs;
    size_t page;
    size_t base_align;         /* what base promises of its malloc blocks (nm_allocator_alignment) */
    int vg;                    /* running under Valgrind: issue client requests */
    int plain;                 /* no guard pages, Valgrind or ASan: the hot paths' inline checks */
    int pending_code;          /* the first error no caller was told of (NM_OK: none) */
    char pending_msg[512];     /* (cold: last) */
} nm__dbg_t;

/* nm_free leaves the reports of a free to this allocator (it may tear its table down in the
 * free), which hands them on itself with _nm_report unless _nm_checked_ctx says that the caller
 * (nm_free_checked) gets them (nm_internal.h). */

/* Valgrind client requests cost a few ns each even outside Valgrind: only under it. */
#define NM__VG(d, request) do { if ((d)->vg) { request; } } while (0)

/* ---- records and the address hash ------------------------------------------------------------ */
static nm__dblk_t *nm__rec_new(nm__dbg_t *d) {
    nm__dblk_t *r = d->spare;
    if (NM_UNLIKELY(r == NULL)) {
        nm__dslab_t *s = (nm__dslab_t *)calloc(1, sizeof(nm__dslab_t));
        size_t i;
        if (s == NULL) return NULL;
        s->next = d->slabs;
        d->slabs = s;
        for (i = 0; i + 1 < NM__SLAB; i++) s->recs[i].next = &s->recs[i + 1];
        r = &s->recs[0];
    }
    d->spare = r->next;
    return r;
}
NM_INLINE void nm__rec_free(nm__dbg_t *d, nm__dblk_t *r) {
    r->state = 0;
    r->next = d->spare;
    d->spare = r;
}

/* Fibonacci hashing: the product's high bits, so neighbouring blocks spread out. */
NM_INLINE size_t nm__home(const nm__dbg_t *d, uintptr_t k) {
    return (size_t)(((uint64_t)k * 0x9E3779B97F4A7C15ull) >> d->shift);
}

#define NM__NO_SLOT ((size_t)-1)

/* The slot of live block p, or NM__NO_SLOT. */
NM_INLINE size_t nm__slot(const nm__dbg_t *d, const void *p) {
    uintptr_t k = (uintptr_t)p;
    size_t i;
    if (d->tab == NULL || k == 0) return NM__NO_SLOT;
    for (i = nm__home(d, k);; i = (i + 1) & d->mask) {
        if (d->tab[i].key == k) return i;
        if (d->tab[i].key == 0) return NM__NO_SLOT;
    }
}

/* The record of live block p, or NULL. */
static nm__dblk_t *nm__find(nm__dbg_t *d, const void *p) {
    size_t i = nm__slot(d, p);
    return i == NM__NO_SLOT ? NULL : d->tab[i].rec;
}

NM_INLINE void nm__place(nm__dbg_t *d, nm__dblk_t *r) {
    size_t i;
    for (i = nm__home(d, (uintptr_t)r->user); d->tab[i].key; i = (i + 1) & d->mask) {
    }
    d->tab[i].key = (uintptr_t)r->user;
    d->tab[i].rec = r;
}

static NM_NOINLINE int nm__grow(nm__dbg_t *d) {
    size_t old = d->tab ? d->mask + 1 : 0, cap = old ? old * 2 : 1024, i;
    nm__dent_t *prev = d->tab;
    unsigned bits = 0;
    nm__dent_t *tab = (nm__dent_t *)calloc(cap, sizeof(nm__dent_t));
    if (tab == NULL) return -1;
    while (((size_t)1 << bits) < cap) bits++;
    d->tab = tab;
    d->mask = cap - 1;
    d->shift = 64u - bits;
    for (i = 0; i < old; i++)
        if (prev[i].key) nm__place(d, prev[i].rec);
    free(prev);
    return 0;
}

NM_INLINE int nm__put(nm__dbg_t *d, nm__dblk_t *r) {
    /* at most an eighth full: on mixed sizes ~10% faster than a quarter full, which was ~10%
     * faster than half full (fewer probes and backward shifts, mispredicted branches each); the
     * table then takes 128 to 256 bytes per live block (freed blocks are not in it) */
    if (NM_UNLIKELY(d->tab == NULL || (d->count + 1) * 8 > d->mask + 1))
        if (nm__grow(d) != 0) return -1;
    nm__place(d, r);
    d->count++;
    return 0;
}

/* Empty slot i; later entries of its probe run shift back (no tombstones).  Records do not
 * store their slot: keeping it current would touch every shifted entry's (cold) record. */
NM_INLINE void nm__del_at(nm__dbg_t *d, size_t i) {
    size_t j, mask = d->mask;
    d->count--;
    for (j = i;;) {
        size_t k;
        j = (j + 1) & mask;
        if (d->tab[j].key == 0) break;
        k = nm__home(d, d->tab[j].key);
        /* the entry at j may fill the hole at i unless its home lies cyclically in (i, j] */
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j)) continue;
        d->tab[i] = d->tab[j];
        i = j;
    }
    d->tab[i].key = 0;
    d->tab[i].rec = NULL;
}

/* The record in slot i when it is a live block allocated after serial `since`, else NULL. */
NM_INLINE nm__dblk_t *nm__live_at(const nm__dbg_t *d, size_t i, uint64_t since) {
    nm__dblk_t *r = d->tab[i].key ? d->tab[i].rec : NULL;
    return r && r->state == NM__LIVE && r->serial > since ? r : NULL;
}

/* ---- canaries and poison ---------------------------------------------------------------------- */
#define NM__HEAD_WORD (0x0101010101010101ull * NM__HEAD_BYTE)
#define NM__TAIL_WORD (0x0101010101010101ull * NM__TAIL_BYTE)

NM_INLINE size_t nm__tail_len(nm__dbg_t *d, const nm__dblk_t *r) {
    if (d->flags & NM_DEBUG_GUARD_PAGES)
        return (size_t)(r->raw + r->raw_size - d->page - (r->user + r->size)); /* slack before the guard */
    return NM__CANARY;
}

/* A 16-byte canary is two word stores / loads, not a call. */
NM_INLINE void nm__fill16(void *p, uint64_t w) {
    memcpy(p, &w, 8);
    memcpy((char *)p + 8, &w, 8);
}
/* Nonzero when the 16 bytes at p are not all bytes of w. */
NM_INLINE uint64_t nm__diff16(const void *p, uint64_t w) {
    uint64_t a, b;
    memcpy(&a, p, 8);
    memcpy(&b, (const char *)p + 8, 8);
    return (a ^ w) | (b ^ w);
}
NM_INLINE int nm__is16(const void *p, uint64_t w) { return nm__diff16(p, w) == 0; }

/* The poison checks and the fills run for every block, over all its bytes: four 16-byte words
 * a step with SSE2 where there is (all of x86-64), else four 8-byte words.  The bytes a whole
 * step does not cover are done with four words ending at the end (overlapping bytes done
 * already): no loop over words, no branch on the remainder. */
#ifdef NM__SSE2
typedef __m128i nm__vec;
#define NM__SPLAT(b) _mm_set1_epi8((char)(b))
#define NM__LOAD(q) _mm_loadu_si128((const __m128i *)(const void *)(q))
#define NM__STORE(q, v) _mm_storeu_si128((__m128i *)(void *)(q), (v))
#define NM__AND(a, b) _mm_and_si128((a), (b))
#define NM__IOR(a, b) _mm_or_si128((a), (b))
#define NM__ALL_EQ(a, o, w) (_mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi8((a), (w)), _mm_cmpeq_epi8((o), (w)))) == 0xFFFF)
#define NM__WORD 16
#else
typedef uint64_t nm__vec;
#define NM__SPLAT(b) (0x0101010101010101ull * (unsigned char)(b))
NM_INLINE uint64_t nm__load8(const void *q) { uint64_t v; memcpy(&v, q, 8); return v; }
NM_INLINE void nm__store8(void *q, uint64_t v) { memcpy(q, &v, 8); }
#define NM__LOAD(q) nm__load8(q)
#define NM__STORE(q, v) nm__store8((q), (v))
#define NM__AND(a, b) ((a) & (b))
#define NM__IOR(a, b) ((a) | (b))
#define NM__ALL_EQ(a, o, w) ((a) == (w) && (o) == (w))
#define NM__WORD 8
#endif
#define NM__STEP (4 * NM__WORD)

/* 1 when all n bytes at p equal b: the AND and the OR of all the words both equal a word of b
 * only when every byte is b (two operations a word, no branch but the loop's). */
static int nm__all_bytes(const unsigned char *p, size_t n, unsigned char b) {
    const nm__vec w = NM__SPLAT(b);
    nm__vec lo = w, hi = w, v0, v1, v2, v3;
    const unsigned char *end = p + n;
    if (n >= NM__STEP) {
        for (; p + NM__STEP <= end; p += NM__STEP) {
            v0 = NM__LOAD(p);
            v1 = NM__LOAD(p + NM__WORD);
            v2 = NM__LOAD(p + 2 * NM__WORD);
            v3 = NM__LOAD(p + 3 * NM__WORD);
            lo = NM__AND(lo, NM__AND(NM__AND(v0, v1), NM__AND(v2, v3)));
            hi = NM__IOR(hi, NM__IOR(NM__IOR(v0, v1), NM__IOR(v2, v3)));
        }
        if (p == end) return NM__ALL_EQ(lo, hi, w);
        p = end - NM__STEP; /* a last step ending at the end (the ragged end) */
        end = p + 2 * NM__WORD;
    } else if (n >= 2 * NM__WORD) { /* two words from each end */
        end -= 2 * NM__WORD;
    } else if (n >= NM__WORD) {     /* one from each end */
        v0 = NM__LOAD(p);
        v1 = NM__LOAD(end - NM__WORD);
        return NM__ALL_EQ(NM__AND(v0, v1), NM__IOR(v0, v1), w);
    } else {
        for (; p < end; p++)
            if (*p != b) return 0;
        return 1;
    }
    /* two words from p, two from end */
    v0 = NM__LOAD(p);
    v1 = NM__LOAD(p + NM__WORD);
    v2 = NM__LOAD(end);
    v3 = NM__LOAD(end + NM__WORD);
    lo = NM__AND(lo, NM__AND(NM__AND(v0, v1), NM__AND(v2, v3)));
    hi = NM__IOR(hi, NM__IOR(NM__IOR(v0, v1), NM__IOR(v2, v3)));
    return NM__ALL_EQ(lo, hi, w);
}

/* memset(dst, b, n), inline up to 1 KiB (a library call beyond, where it pays). */
NM_INLINE void nm__fill(void *dst, unsigned char b, size_t n) {
    unsigned char *p = (unsigned char *)dst, *end = p + n;
    const nm__vec w = NM__SPLAT(b);
    if (n < NM__WORD || n > 1024) {
        memset(p, b, n);
        return;
    }
    if (n >= NM__STEP) {
        for (; p + NM__STEP <= end; p += NM__STEP) {
            NM__STORE(p, w);
            NM__STORE(p + NM__WORD, w);
            NM__STORE(p + 2 * NM__WORD, w);
            NM__STORE(p + 3 * NM__WORD, w);
        }
        if (p < end) {
            p = end - NM__STEP;
            NM__STORE(p, w);
            NM__STORE(p + NM__WORD, w);
            NM__STORE(p + 2 * NM__WORD, w);
            NM__STORE(p + 3 * NM__WORD, w);
        }
    } else {
        NM__STORE(p, w);
        NM__STORE(end - NM__WORD, w);
        if (n > 2 * NM__WORD) {
            NM__STORE(p + NM__WORD, w);
            NM__STORE(end - 2 * NM__WORD, w);
        }
    }
}

static void nm__paint(nm__dbg_t *d, nm__dblk_t *r) {
    size_t tail = nm__tail_len(d, r);
    nm__fill16(r->user - NM__CANARY, NM__HEAD_WORD);
    if (tail == NM__CANARY) nm__fill16(r->user + r->size, NM__TAIL_WORD);
    else if (tail) memset(r->user + r->size, NM__TAIL_BYTE, tail);
    NM__VG(d, NM_VG_NOACCESS(r->user - NM__CANARY, NM__CANARY));
    if (tail) NM__VG(d, NM_VG_NOACCESS(r->user + r->size, tail));
    NM_ASAN_POISON(r->user - NM__CANARY, NM__CANARY);
    if (tail) NM_ASAN_POISON(r->user + r->size, tail);
}

static const char *nm__s(const char *f) { return f ? f : "?"; }

/* Verify one live block's canaries; reports (and returns) the error code. */
static NM_NOINLINE int nm__check_canaries(nm__dbg_t *d, nm__dblk_t *r) {
    const unsigned char *h = (const unsigned char *)r->user - NM__CANARY;
    const unsigned char *t = (const unsigned char *)r->user + r->size;
    size_t i, tail = nm__tail_len(d, r);
    int rc = NM_OK;
    NM_ASAN_UNPOISON(h, NM__CANARY);
    if (tail) NM_ASAN_UNPOISON(t, tail);
    NM__VG(d, NM_VG_DEFINED(h, NM__CANARY));
    if (tail) NM__VG(d, NM_VG_DEFINED(t, tail));
    /* fast path: whole canaries compared at once; the byte loops below only locate damage */
    if (nm__is16(h, NM__HEAD_WORD) &&
        (tail == NM__CANARY ? nm__is16(t, NM__TAIL_WORD) : nm__all_bytes(t, tail, NM__TAIL_BYTE))) {
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
static NM_NOINLINE int nm__check_poison(nm__dbg_t *d, nm__dblk_t *r) {
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

/* The same, the intact case inline when the blocks are plain memory (no hooks to call). */
NM_INLINE int nm__verify_canaries(nm__dbg_t *d, nm__dblk_t *r) {
    if (NM_LIKELY(d->plain) && nm__is16(r->user - NM__CANARY, NM__HEAD_WORD) &&
        nm__is16(r->user + r->size, NM__TAIL_WORD))
        return NM_OK;
    return nm__check_canaries(d, r);
}
NM_INLINE int nm__verify_poison(nm__dbg_t *d, nm__dblk_t *r) {
    if (NM_LIKELY(d->plain) && nm__all_bytes((const unsigned char *)r->user, r->size, NM__FREE_BYTE)) return NM_OK;
    return nm__check_poison(d, r);
}

/* ---- raw blocks ---------------------------------------------------------------------------------- */
/* Every block is at least NM__DALIGN-aligned (the table's promise).  Bytes asked of base for
 * `size` user bytes at alignment `align` (>= NM__DALIGN), not in guard mode: the two canaries,
 * and room to align the user pointer.  Above NM__DALIGN the raw block comes from base's memalign
 * (aligned to `align`: the user pointer is `align` in).  At NM__DALIGN it comes from base's
 * malloc, which promises base_align only: the user pointer is the first NM__DALIGN boundary at
 * least a head canary in, up to NM__DALIGN - base_align further when base_align is smaller (a
 * win32 heap's or a 32-bit CRT's 8): the tail canary must end inside the block for any raw
 * address base may return. */
#define NM__DALIGN ((size_t)16)
NM_INLINE size_t nm__raw_need(const nm__dbg_t *d, size_t size, size_t align) {
    if (align > NM__DALIGN) return size + 2 * NM__CANARY + align;
    return size + 2 * NM__CANARY + (d->base_align < NM__DALIGN ? NM__DALIGN - d->base_align : 0);
}

static int nm__raw_alloc(nm__dbg_t *d, nm__dblk_t *r, size_t size, size_t align) {
    size_t need;
    if (align < NM__DALIGN) align = NM__DALIGN;
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
    need = nm__raw_need(d, size, align);
    r->raw = (char *)(align > NM__DALIGN ? nm_memalign(d->base, align, need) : nm_malloc(d->base, need));
    if (r->raw == NULL) return -1;
    r->raw_size = need;
    r->user = (char *)_nm_align_up((uintptr_t)r->raw + NM__CANARY, align);
    return 0;
}

/* Returns the error base reported freeing the block (NM_OK for libc): it is this allocator's to
 * hand on (with its own, and counted with them), after its lock is dropped -- a report hook may
 * call back into it. */
static int nm__raw_free(nm__dbg_t *d, nm__dblk_t *r) {
    int rc;
    if (d->flags & NM_DEBUG_GUARD_PAGES) {
        nm_os_unmap(r->raw, r->raw_size);
        return NM_OK;
    }
    NM_ASAN_UNPOISON(r->raw, r->raw_size);
    NM__VG(d, NM_VG_UNDEFINED(r->raw, r->raw_size));
    if (NM_LIKELY(!(d->base->flags & NM__F_REPORTS))) { /* libc & co. report nothing */
        nm_free(d->base, r->raw);
        return NM_OK;
    }
    rc = nm_free_checked(d->base, r->raw);
    if (NM_UNLIKELY(rc != NM_OK)) d->errors++;
    return rc;
}

/* ---- quarantine -------------------------------------------------------------------------------- */
/* Remember a block given back to base, with its sites, for a late double free. */
static void nm__remember(nm__dbg_t *d, const nm__dblk_t *r) {
    nm__drecent_t *e;
    if (NM_UNLIKELY(d->recent == NULL)) {
        d->recent = (nm__drecent_t *)calloc(NM__RECENT, sizeof *d->recent);
        if (d->recent == NULL) return; /* a late double free then reads as an invalid free */
    }
    e = &d->recent[d->recent_pos++ % NM__RECENT];
    e->user = (uintptr_t)r->user;
    e->size = r->size;
    e->file = r->file;
    e->line = r->line;
    e->free_file = r->free_file;
    e->free_line = r->free_line;
}

/* Drop a freed block's record for good (it is not in the hash): memory back to base, block
 * remembered; returns what base reported. */
static int nm__forget(nm__dbg_t *d, nm__dblk_t *r) {
    int rc;
    nm__remember(d, r);
    rc = nm__raw_free(d, r);
    nm__rec_free(d, r);
    return rc;
}

/* The quarantine's byte bound as a limit (SIZE_MAX: none). */
NM_INLINE size_t nm__byte_limit(const nm__dbg_t *d) { return d->byte_limit; }

/* Give the recycled block (if any) back to base, its poison verified; returns that check. */
static int nm__drop_recycled(nm__dbg_t *d) {
    nm__dblk_t *r = d->recycled;
    int rc, e;
    if (r == NULL) return NM_OK;
    d->recycled = NULL;
    d->recycled_bytes = 0;
    rc = r->state == NM__RECYCLED ? nm__verify_poison(d, r) : NM_OK;
    e = nm__forget(d, r);
    return rc != NM_OK ? rc : e;
}

/* A freed block straight back to base, its poison (if any) verified; returns the first error. */
static NM_NOINLINE int nm__give_back(nm__dbg_t *d, nm__dblk_t *r, int poisoned) {
    int rc = poisoned ? nm__verify_poison(d, r) : NM_OK, e = nm__forget(d, r);
    return rc != NM_OK ? rc : e;
}

/* A block leaving the quarantine (poisoned; not with quarantine 0): kept as the recycled block (a
 * late double free still names its sites), and the one kept before goes back to base.  The next
 * allocation of the same size reuses it without calling base -- base's LIFO caches would hand
 * out the same address anyway.  Its poison is verified
 * when it is handed out or goes back to base, not now: each freed block's poison is read once.
 * It counts against the byte bound (callers see to that: nm__shrink, the no-quarantine path of
 * nm__release).  Guard-page blocks go back at once.  Returns the first poison error found. */
NM_INLINE int nm__retire(nm__dbg_t *d, nm__dblk_t *r, int poisoned) {
    int rc = NM_OK;
    if (NM_UNLIKELY(d->flags & NM_DEBUG_GUARD_PAGES)) return nm__give_back(d, r, poisoned);
    if (d->recycled != NULL) rc = nm__drop_recycled(d);
    NM_ASAN_POISON(r->user, r->size); /* already, unless there is no quarantine */
    r->state = poisoned ? NM__RECYCLED : NM__RECYCLED_BARE;
    d->recycled = r;
    d->recycled_bytes = r->size;
    return rc;
}

/* Move the oldest quarantined block out of the ring; returns the first poison error found. */
static int nm__evict(nm__dbg_t *d) {
    nm__dblk_t *r;
    if (d->q_count == 0) return NM_OK;
    r = d->q[d->q_first];
    if (++d->q_first == d->q_size) d->q_first = 0;
    d->q_count--;
    d->q_bytes -= r->size;
    return nm__retire(d, r, 1);
}

/* Release the oldest blocks while the quarantine holds more than max_blocks, or it and the
 * recycled block more than max_bytes (the recycled block left the ring before any block in it:
 * it goes first, and the last one out goes too if it does not fit); returns the first poison
 * error found. */
static int nm__shrink(nm__dbg_t *d, size_t max_blocks, size_t max_bytes) {
    int rc = NM_OK, e;
    for (;;) {
        if (d->recycled != NULL && d->q_bytes + d->recycled_bytes > max_bytes) e = nm__drop_recycled(d);
        else if (d->q_count > 0 && (d->q_count > max_blocks || d->q_bytes > max_bytes)) e = nm__evict(d);
        else break;
        if (rc == NM_OK) rc = e;
    }
    return rc;
}

/* The ring grows by doubling up to the quarantine's capacity (1 << 24 records at most). */
static NM_NOINLINE int nm__q_grow(nm__dbg_t *d) {
    size_t size = d->q_size ? d->q_size * 2 : 64, i;
    nm__dblk_t **q;
    if (size > d->quarantine_cap) size = d->quarantine_cap;
    q = (nm__dblk_t **)malloc(size * sizeof *q);
    if (q == NULL) return -1;
    for (i = 0; i < d->q_count; i++) q[i] = d->q[(d->q_first + i) % d->q_size];
    free(d->q);
    d->q = q;
    d->q_size = size;
    d->q_first = 0;
    return 0;
}

/* ---- the allocator's functions ------------------------------------------------------------------- */
/* Allocate and record a block (lock held). */
static void *nm__dalloc_locked(nm__dbg_t *d, size_t size, size_t align, int zero) {
    nm__dblk_t *r = d->recycled;
    /* same raw size as the recycled block, which had no extra alignment (a memalign block of the
     * same raw size has its user pointer further in: not reusable for this size): reuse it in
     * place, once its poison is verified (a damaged one goes back to base; the allocation fails
     * with the report, as a checked pool's does) */
    if (r != NULL && align <= NM__DALIGN && r->raw_size == nm__raw_need(d, size, NM__DALIGN) &&
        r->user == (char *)_nm_align_up((uintptr_t)r->raw + NM__CANARY, NM__DALIGN)) {
        d->recycled = NULL;
        d->recycled_bytes = 0;
        NM_ASAN_UNPOISON(r->raw, r->raw_size); /* as fresh memory: paint poisons the canaries again */
        if (r->state == NM__RECYCLED) { /* the check inline; nm__verify_poison locates and reports */
            NM__VG(d, NM_VG_DEFINED(r->user, r->size));
            if (NM_UNLIKELY(!nm__all_bytes((const unsigned char *)r->user, r->size, NM__FREE_BYTE))) {
                nm__verify_poison(d, r);
                nm__forget(d, r);
                return NULL;
            }
        }
        NM__VG(d, NM_VG_UNDEFINED(r->raw, r->raw_size));
        if (NM_UNLIKELY(nm__put(d, r) != 0)) { /* live again: back in the hash */
            nm__forget(d, r);
            return NULL;
        }
    } else {
        r = nm__rec_new(d);
        if (r == NULL) return NULL;
        if (nm__raw_alloc(d, r, size, align) != 0) {
            nm__rec_free(d, r);
            return NULL;
        }
        if (nm__put(d, r) != 0) {
            nm__raw_free(d, r);
            nm__rec_free(d, r);
            return NULL;
        }
    }
    r->size = size;
    r->file = _nm_site_file;
    r->line = _nm_site_line;
    r->free_file = NULL;
    r->free_line = 0;
    r->serial = ++d->serial;
    r->state = NM__LIVE;
    nm__paint(d, r);
    if (zero) nm__fill(r->user, 0, size);
    else if (!(d->flags & NM_DEBUG_NO_POISON)) nm__fill(r->user, NM__NEW_BYTE, size);
    _nm_table_count_alloc_serial(d->self, size);
    NM__VG(d, NM_VG_MALLOCLIKE(r->user, size, NM__CANARY, zero));
    return r->user;
}

static void *nm__dalloc(nm__dbg_t *d, size_t size, size_t align, int zero) {
    void *user;
    nm_spin_lock(&d->lock);
    user = nm__dalloc_locked(d, size, align, zero);
    nm_spin_unlock(&d->lock);
    return user;
}

static void *nm__dbg_malloc(void *ctx, size_t n) { return nm__dalloc((nm__dbg_t *)ctx, n, NM__DALIGN, 0); }
static void *nm__dbg_calloc(void *ctx, size_t n, size_t s) { return nm__dalloc((nm__dbg_t *)ctx, n * s, NM__DALIGN, 1); }
static void *nm__dbg_memalign(void *ctx, size_t a, size_t n) { return nm__dalloc((nm__dbg_t *)ctx, n, a, 0); }

/* A site as "file:line" in buf, or "an unknown site" when none was recorded. */
static const char *nm__site(char *buf, size_t n, const char *file, int line) {
    if (file == NULL) return "an unknown site";
    snprintf(buf, n, "%s:%d", file, line);
    return buf;
}

/* The record of freed block p still held (quarantined or recycled), or NULL.  Freed blocks are
 * not in the hash, which then stays small (live blocks only): a bad free, the only caller,
 * walks the ring. */
static nm__dblk_t *nm__freed(const nm__dbg_t *d, const void *p) {
    size_t i, at = d->q_first;
    if (d->recycled != NULL && d->recycled->user == (const char *)p) return d->recycled;
    for (i = 0; i < d->q_count; i++) {
        if (d->q[at]->user == (const char *)p) return d->q[at];
        if (++at == d->q_size) at = 0;
    }
    return NULL;
}

/* Classify a pointer that is not a live block (lock held): a freed one (freed_code: a double
 * free, or realloc of a freed block) names the block's allocation and free sites, whether it is
 * in the quarantine, the recycled block, or already back in base; sets and returns the error. */
static NM_NOINLINE int nm__bad_pointer(nm__dbg_t *d, const void *p, int freed_code) {
    const char *what = freed_code == NM_ERR_DOUBLE_FREE ? "double free" : "realloc";
    const char *freed = freed_code == NM_ERR_DOUBLE_FREE ? "first freed" : "freed";
    nm__dblk_t *r = nm__freed(d, p);
    char at[240], fat[240];
    size_t i;
    d->errors++;
    if (r)
        return _nm_set_error(freed_code, "%s of %p: block (%zu bytes) already freed; allocated at %s, %s at %s (serial "
                             "%llu; %s)", what, p, r->size, nm__site(at, sizeof at, r->file, r->line), freed,
                             nm__site(fat, sizeof fat, r->free_file, r->free_line), (unsigned long long)r->serial,
                             r->state == NM__QUARANTINED ? "in the quarantine" : "kept for reuse");
    for (i = 1; d->recent && i <= NM__RECENT; i++) { /* newest first */
        const nm__drecent_t *e = &d->recent[(d->recent_pos - i) % NM__RECENT];
        if (e->user == (uintptr_t)p)
            return _nm_set_error(freed_code, "%s of %p: block (%zu bytes) already freed; allocated at %s, %s at %s "
                                 "(given back to the base allocator since)", what, p, e->size,
                                 nm__site(at, sizeof at, e->file, e->line), freed,
                                 nm__site(fat, sizeof fat, e->free_file, e->free_line));
    }
    return _nm_set_error(NM_ERR_INVALID_FREE, "%s of %p: not a block of this debug allocator",
                         freed_code == NM_ERR_DOUBLE_FREE ? "free" : "realloc", p);
}

/* Keep the thread's error, just reported by a free or realloc whose caller will not get it, as
 * the pending error for nm_debug_check -- the first one only (lock held). */
static NM_NOINLINE void nm__pend(nm__dbg_t *d) {
    if (d->pending_code != NM_OK || nm_last_error() == NM_OK) return;
    d->pending_code = nm_last_error();
    snprintf(d->pending_msg, sizeof d->pending_msg, "%s", nm_last_error_message());
}

/* A free just reported an error (lock held): 1 when its caller will not get it (nm_free, not
 * nm_free_checked), which makes it pending and to be handed on once the lock is dropped. */
static NM_NOINLINE int nm__unreturned(nm__dbg_t *d) {
    if (_nm_checked_ctx == (void *)d) return 0;
    nm__pend(d);
    return 1;
}

/* Free a live record, already out of the hash, and count it out of the table (lock held);
 * returns the first error found (canaries, eviction). */
NM_INLINE int nm__release(nm__dbg_t *d, nm__dblk_t *r) {
    int rc = nm__verify_canaries(d, r), rc2 = NM_OK;
    size_t at;
    _nm_table_count_free_serial(d->self, r->size);
    NM__VG(d, NM_VG_FREELIKE(r->user, NM__CANARY));
    r->state = NM__QUARANTINED;
    r->free_file = _nm_site_file;
    r->free_line = _nm_site_line;
    if (d->q_count == d->q_size) {                   /* ring full: grow it, or make room */
        if (d->q_size < d->quarantine_cap && nm__q_grow(d) == 0) {
        } else if (d->q_count > 0) {
            rc2 = nm__evict(d);
        } else {                   /* no quarantine (or no memory for one): kept if within the bound */
            if (NM_UNLIKELY(r->size > nm__byte_limit(d))) rc2 = nm__give_back(d, r, 0);
            else rc2 = nm__retire(d, r, 0);
            return rc != NM_OK ? rc : rc2;
        }
    }
    if (d->flags & NM_DEBUG_GUARD_PAGES) {
        nm_os_protect(r->raw, r->raw_size - d->page, 0);
    } else {
        NM__VG(d, NM_VG_UNDEFINED(r->user, r->size));
        nm__fill(r->user, NM__FREE_BYTE, r->size);
        NM__VG(d, NM_VG_NOACCESS(r->user, r->size));
        NM_ASAN_POISON(r->user, r->size);
    }
    at = d->q_first + d->q_count;
    if (at >= d->q_size) at -= d->q_size;
    d->q[at] = r;
    d->q_count++;
    d->q_bytes += r->size;
    if (NM_UNLIKELY(d->q_bytes + d->recycled_bytes > nm__byte_limit(d))) { /* oldest first, this block last */
        int e = nm__shrink(d, SIZE_MAX, nm__byte_limit(d));
        if (rc2 == NM_OK) rc2 = e;
    }
    /* a canary error is about this block; otherwise re-raise the eviction's (another block).
     * (The free and realloc paths learn of errors from d->errors, which keeps this cheap.) */
    return rc != NM_OK ? rc : rc2;
}

/* Deferred destruction, decided under the lock: nm_allocator_destroy with blocks live marks the
 * allocator dying; the free that releases the last block then tears it down, after unlocking.
 * Deciding under the lock (not with the front door's atomics) means no thread can still be in
 * a critical section, or about to enter one, when the memory goes. */
NM_INLINE int nm__last_free_of_dying(nm__dbg_t *d) {
    nm_allocator_t *a = d->self;
    if (NM_LIKELY(nm_atomic_load_relaxed(&a->st_dying) != 1)) return 0;
    if (nm_atomic_load_relaxed(&a->st_allocs) != nm_atomic_load_relaxed(&a->st_frees)) return 0;
    nm_atomic_store_relaxed(&a->st_dying, 2);
    return 1;
}
static void nm__teardown(nm_allocator_t *a);

static NM_NOINLINE void nm__teardown_reporting(nm__dbg_t *d, int report);

/* The end of a free that reported an error (lock held): unlock, hand the error on unless the
 * caller gets it, tear down if it was the last free of a dying allocator. */
static NM_NOINLINE void nm__free_reported(nm__dbg_t *d, int last) {
    nm_allocator_t *self = d->self;
    int report = nm__unreturned(d);
    nm_spin_unlock(&d->lock);
    if (report) _nm_report(self->name);
    if (last) nm__teardown_reporting(d, report);
}

static void nm__dbg_free(void *ctx, void *p) {
    nm__dbg_t *d = (nm__dbg_t *)ctx;
    nm__dblk_t *r;
    uint64_t errors;
    size_t i;
    int last;
    nm_spin_lock(&d->lock);
    i = nm__slot(d, p);
    if (NM_UNLIKELY(i == NM__NO_SLOT)) {
        nm__bad_pointer(d, p, NM_ERR_DOUBLE_FREE);
        nm__free_reported(d, 0);
        return;
    }
    r = d->tab[i].rec;
    nm__del_at(d, i); /* its slot is hot: out of the hash now (the hash holds live blocks only) */
    errors = d->errors; /* every report counts: cheaper than carrying codes through the hot path */
    nm__release(d, r);
    if (NM_UNLIKELY(d->errors != errors)) {
        nm__free_reported(d, nm__last_free_of_dying(d));
        return;
    }
    last = nm__last_free_of_dying(d);
    nm_spin_unlock(&d->lock);
    if (NM_UNLIKELY(last)) nm__teardown_reporting(d, _nm_checked_ctx != (void *)d);
}

static void *nm__dbg_realloc(void *ctx, void *p, size_t n) {
    nm__dbg_t *d = (nm__dbg_t *)ctx;
    nm_allocator_t *self = d->self;
    nm__dblk_t *r;
    size_t keep;
    void *q;
    int last = 0;
    nm_spin_lock(&d->lock);
    r = nm__find(d, p);
    if (r == NULL) {
        nm__bad_pointer(d, p, NM_ERR_REALLOC_FREED);
        nm_spin_unlock(&d->lock);
        return NULL;
    }
    if (nm__verify_canaries(d, r) != NM_OK) { /* refuse to copy a damaged block */
        nm_spin_unlock(&d->lock);
        return NULL;
    }
    keep = r->size < n ? r->size : n;
    /* always move, so stale pointers to the old block are caught (it goes to the quarantine) */
    q = nm__dalloc_locked(d, n, NM__DALIGN, 0);
    if (q != NULL) {
        uint64_t errors = d->errors;
        memcpy(q, p, keep);
        nm__del_at(d, nm__slot(d, p)); /* found again: the allocation may have grown the hash */
        nm__release(d, r);
        /* the realloc succeeds: an error found releasing the old block reaches no caller */
        if (NM_UNLIKELY(d->errors != errors)) nm__pend(d);
        last = nm__last_free_of_dying(d);
    }
    nm_spin_unlock(&d->lock);
    if (NM_UNLIKELY(last)) nm__teardown(self);
    return q;
}

static size_t nm__dbg_usable(void *ctx, const void *p) {
    nm__dbg_t *d = (nm__dbg_t *)ctx;
    nm__dblk_t *r;
    size_t n = 0;
    nm_spin_lock(&d->lock);
    r = nm__find(d, p);
    if (r) n = r->size;
    nm_spin_unlock(&d->lock);
    return n;
}

/* Release everything (no other thread may use the allocator any more). */
static void nm__teardown(nm_allocator_t *a) {
    nm__dbg_t *d = (nm__dbg_t *)a->ctx;
    size_t i;
    nm__shrink(d, 0, 0); /* errors stay in the thread's error: nm_allocator_destroy hands them on */
    nm__drop_recycled(d);
    for (i = 0; d->tab && i <= d->mask; i++) /* leaks: give their memory back */
        if (d->tab[i].key) nm__raw_free(d, d->tab[i].rec);
    while (d->slabs) {
        nm__dslab_t *s = d->slabs;
        d->slabs = s->next;
        free(s);
    }
    free(d->tab);
    free(d->q);
    free(d->recent);
    _nm_table_free(a);
}

/* The last free after a deferred destroy tears the allocator down; what that finds (a quarantined
 * block's poison) is handed on unless the free's caller gets it (`report` 0). */
static NM_NOINLINE void nm__teardown_reporting(nm__dbg_t *d, int report) {
    const char *name = d->self->name; /* static: it outlives the table */
    unsigned seq = _nm_error_seq();
    nm__teardown(d->self);
    if (report && _nm_error_seq() != seq) _nm_report(name);
}

/* The instance's destroy (NM__F_SELF_STATS | NM__F_OWNS_TABLE: nm_allocator_destroy calls it
 * directly): now when no block is live, else on the last free. */
static void nm__dbg_destroy(void *ctx) {
    nm__dbg_t *d = (nm__dbg_t *)ctx;
    nm_allocator_t *a = d->self;
    int now = 0;
    nm_atfork_unregister_spin(&d->lock); /* fork safety (platform.h): before taking the lock */
    nm_spin_lock(&d->lock);
    if (nm_atomic_load_relaxed(&a->st_dying) == 0) {
        now = nm_atomic_load_relaxed(&a->st_allocs) == nm_atomic_load_relaxed(&a->st_frees);
        nm_atomic_store_relaxed(&a->st_dying, now ? 2 : 1);
    }
    nm_spin_unlock(&d->lock);
    if (now) nm__teardown(a);
}

static const nm_allocator_ops_t nm__dbg_ops = {nm__dbg_malloc, nm__dbg_calloc, nm__dbg_realloc, nm__dbg_free,
                                               nm__dbg_memalign, nm__dbg_usable, nm__dbg_destroy, NM__DALIGN,
                                               NM_OPS_EXACT_SIZE};

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
    a = _nm_allocator_make("debug", &nm__dbg_ops, sizeof(nm__dbg_t),
                           NM__F_SELF_STATS | NM__F_REPORTS | NM__F_OWNS_TABLE);
    if (a == NULL) return NULL;
    a->name = "debug"; /* static: a free that tears the table down still names it in a report */
    d = (nm__dbg_t *)a->ctx;
    d->base = base ? base : nm_allocator_libc();
    d->self = a;
    d->flags = flags;
    d->quarantine_cap = quarantine;
    d->byte_limit = NM_DEBUG_QUARANTINE_BYTES;
    d->page = nm_os_page_size();
    d->base_align = nm_allocator_alignment(d->base);
    d->vg = NM_VG_RUNNING() ? 1 : 0;
#ifndef NM_HAVE_ASAN
    d->plain = !(flags & NM_DEBUG_GUARD_PAGES) && !d->vg;
#endif
    nm_atfork_register_spin(&d->lock); /* fork safety (platform.h) */
    return a;
}

nm_allocator_t *nm_debug_create(nm_allocator_t *base, unsigned flags) { return nm_debug_create_ex(base, flags, 1024); }

int nm_debug_is(nm_allocator_t *a) { return a != NULL && a->ops == &nm__dbg_ops; }

static nm__dbg_t *nm__as_dbg(nm_allocator_t *a);
int nm_debug_set_quarantine_bytes(nm_allocator_t *a, size_t max_bytes) {
    nm__dbg_t *d = nm__as_dbg(a);
    int rc = NM_OK;
    if (d == NULL) return NM_ERR_INVALID;
    nm_spin_lock(&d->lock);
    d->byte_limit = max_bytes ? max_bytes : SIZE_MAX;
    rc = nm__shrink(d, SIZE_MAX, nm__byte_limit(d));
    nm_spin_unlock(&d->lock);
    return rc;
}

static nm__dbg_t *nm__as_dbg(nm_allocator_t *a) {
    if (!nm_debug_is(a)) {
        _nm_set_error(NM_ERR_INVALID, "allocator '%s' is not a debug allocator", a ? a->name : "(null)");
        return NULL;
    }
    return (nm__dbg_t *)a->ctx;
}

/* Live records with serial > since, oldest first, in a malloc'd array (lock held); NULL with
 * *n set when there is no memory for the array (callers then walk the hash unsorted). */
static int nm__by_serial(const void *x, const void *y) {
    uint64_t a = (*(nm__dblk_t *const *)x)->serial, b = (*(nm__dblk_t *const *)y)->serial;
    return a < b ? -1 : a > b;
}
static nm__dblk_t **nm__live_sorted(nm__dbg_t *d, uint64_t since, size_t *n) {
    nm__dblk_t **v;
    size_t i, k = 0;
    *n = 0;
    for (i = 0; d->tab && i <= d->mask; i++)
        if (nm__live_at(d, i, since)) k++;
    *n = k;
    v = (nm__dblk_t **)malloc((k ? k : 1) * sizeof *v);
    if (v == NULL) return NULL;
    for (i = 0, k = 0; d->tab && i <= d->mask; i++)
        if (nm__live_at(d, i, since)) v[k++] = d->tab[i].rec;
    qsort(v, k, sizeof *v, nm__by_serial);
    return v;
}

int nm_debug_check(nm_allocator_t *a) {
    nm__dbg_t *d = nm__as_dbg(a);
    nm__dblk_t **v;
    size_t i, n;
    int rc = NM_OK;
    if (d == NULL) return NM_ERR_INVALID;
    nm_spin_lock(&d->lock);
    v = nm__live_sorted(d, 0, &n); /* oldest first, so "the first corrupt block" is well defined */
    if (v != NULL) {
        for (i = 0; i < n && rc == NM_OK; i++) rc = nm__verify_canaries(d, v[i]);
        free(v);
    } else {
        for (i = 0; d->tab && i <= d->mask && rc == NM_OK; i++)
            if (nm__live_at(d, i, 0)) rc = nm__verify_canaries(d, d->tab[i].rec);
    }
    for (i = 0; i < d->q_count && rc == NM_OK; i++) rc = nm__verify_poison(d, d->q[(d->q_first + i) % d->q_size]);
    if (rc == NM_OK && d->recycled && d->recycled->state == NM__RECYCLED) rc = nm__verify_poison(d, d->recycled);
    if (rc == NM_OK && d->pending_code != NM_OK) { /* nothing newer: the error nobody was told of */
        rc = _nm_set_error(d->pending_code, "%s", d->pending_msg);
        d->pending_code = NM_OK;
    }
    nm_spin_unlock(&d->lock);
    return rc;
}

int nm_debug_flush(nm_allocator_t *a) {
    nm__dbg_t *d = nm__as_dbg(a);
    int rc = NM_OK, e;
    if (d == NULL) return NM_ERR_INVALID;
    nm_spin_lock(&d->lock);
    rc = nm__shrink(d, 0, 0);
    e = nm__drop_recycled(d); /* flush means: every freed block back to base */
    if (rc == NM_OK) rc = e;
    nm_spin_unlock(&d->lock);
    return rc;
}

NM_INLINE void nm__export(nm_debug_block_t *out, const nm__dblk_t *r) {
    out->address = r->user;
    out->size = r->size;
    out->file = r->file;
    out->line = r->line;
    out->serial = r->serial;
}

size_t nm_debug_blocks(nm_allocator_t *a, nm_debug_block_t *out, size_t cap, uint64_t since) {
    nm__dbg_t *d = nm__as_dbg(a);
    nm__dblk_t **v;
    size_t i, n = 0;
    if (d == NULL) return 0;
    nm_spin_lock(&d->lock);
    if (cap == 0) { /* a count only */
        for (i = 0; d->tab && i <= d->mask; i++)
            if (nm__live_at(d, i, since)) n++;
    } else if ((v = nm__live_sorted(d, since, &n)) != NULL) {
        for (i = 0; i < n && i < cap; i++) nm__export(&out[i], v[i]);
        free(v);
    } else { /* no memory to sort: unsorted, still complete */
        size_t k = 0;
        for (i = 0; d->tab && i <= d->mask; i++)
            if (nm__live_at(d, i, since) && k < cap) nm__export(&out[k++], d->tab[i].rec);
    }
    nm_spin_unlock(&d->lock);
    return n;
}

void nm_debug_stats(nm_allocator_t *a, nm_debug_stats_t *out) {
    nm__dbg_t *d = nm__as_dbg(a);
    memset(out, 0, sizeof *out);
    if (d == NULL) return;
    nm_spin_lock(&d->lock);
    out->total_allocs = (uint64_t)nm_atomic_load_relaxed(&a->st_allocs);
    out->total_frees = (uint64_t)nm_atomic_load_relaxed(&a->st_frees);
    out->live_blocks = (size_t)(out->total_allocs - out->total_frees);
    out->live_bytes = (size_t)nm_atomic_load_relaxed(&a->st_live_bytes);
    out->peak_bytes = (size_t)nm_atomic_load_relaxed(&a->st_peak_bytes);
    out->quarantined_blocks = d->q_count;
    out->quarantined_bytes = d->q_bytes;
    out->errors = d->errors;
    out->next_serial = d->serial + 1;
    nm_spin_unlock(&d->lock);
}
