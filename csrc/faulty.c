/* faulty.c -- allocators for tests: fault injection (an allocator that fails its k-th request,
 * for out-of-memory tests of every structure built on the allocator table: pools, arenas,
 * interning, COW, debug), and a base that promises 8-byte alignment only. */
#include "nm_internal.h"
#include "nm_testing.h"

typedef struct nm__faulty {
    nm_allocator_t *base;
    nm_atomic_t fail_at, requests, failures;
} nm__faulty_t;

/* 1 when this request must fail. */
static int nm__fail_now(nm__faulty_t *f) {
    intptr_t n = nm_atomic_add_relaxed(&f->requests, 1);
    if (n == nm_atomic_load_relaxed(&f->fail_at)) {
        nm_atomic_add_relaxed(&f->failures, 1);
        return 1;
    }
    return 0;
}

static void *nm__f_malloc(void *ctx, size_t n) {
    nm__faulty_t *f = (nm__faulty_t *)ctx;
    return nm__fail_now(f) ? NULL : nm_malloc(f->base, n);
}
static void *nm__f_calloc(void *ctx, size_t n, size_t s) {
    nm__faulty_t *f = (nm__faulty_t *)ctx;
    return nm__fail_now(f) ? NULL : nm_calloc(f->base, n, s);
}
static void *nm__f_realloc(void *ctx, void *p, size_t n) {
    nm__faulty_t *f = (nm__faulty_t *)ctx;
    return nm__fail_now(f) ? NULL : nm_realloc(f->base, p, n);
}
static void *nm__f_memalign(void *ctx, size_t a, size_t n) {
    nm__faulty_t *f = (nm__faulty_t *)ctx;
    return nm__fail_now(f) ? NULL : nm_memalign(f->base, a, n);
}
static void nm__f_free(void *ctx, void *p) { nm_free(((nm__faulty_t *)ctx)->base, p); }
static size_t nm__f_usable(void *ctx, const void *p) { return nm_usable_size(((nm__faulty_t *)ctx)->base, p); }

static const nm_allocator_ops_t nm__faulty_ops = {nm__f_malloc, nm__f_calloc, nm__f_realloc, nm__f_free,
                                                  nm__f_memalign, nm__f_usable, NULL, 0, 0};

nm_allocator_t *nm_allocator_faulty(nm_allocator_t *base, long fail_at) {
    nm_allocator_t *a = _nm_allocator_make("faulty", &nm__faulty_ops, sizeof(nm__faulty_t), NM__F_REPORTS); /* its base may report */
    nm__faulty_t *f;
    if (a == NULL) return NULL;
    f = (nm__faulty_t *)a->ctx;
    f->base = base ? base : nm_allocator_libc();
    f->fail_at = fail_at;
    a->alignment = nm_allocator_alignment(f->base); /* its blocks are base's */
    return a;
}

static nm__faulty_t *nm__as_faulty(nm_allocator_t *a) {
    if (a == NULL || a->ops != &nm__faulty_ops) {
        _nm_set_error(NM_ERR_INVALID, "allocator '%s' is not a faulty test allocator", a ? a->name : "(null)");
        return NULL;
    }
    return (nm__faulty_t *)a->ctx;
}

void nm_faulty_set(nm_allocator_t *a, long fail_at) {
    nm__faulty_t *f = nm__as_faulty(a);
    if (f == NULL) return;
    nm_atomic_store_relaxed(&f->requests, 0);
    nm_atomic_store_relaxed(&f->failures, 0);
    nm_atomic_store_relaxed(&f->fail_at, fail_at);
}
long nm_faulty_requests(nm_allocator_t *a) {
    nm__faulty_t *f = nm__as_faulty(a);
    return f ? (long)nm_atomic_load_relaxed(&f->requests) : -1;
}
long nm_faulty_failures(nm_allocator_t *a) {
    nm__faulty_t *f = nm__as_faulty(a);
    return f ? (long)nm_atomic_load_relaxed(&f->failures) : -1;
}

/* ---- a base that promises 8-byte alignment only ----------------------------------------------- *
 *   raw block (16-aligned, from base):  [pad][offset, size][user: size bytes][guard 8]
 * A malloc block's user pointer is raw + 24: 8 mod 16, never 16-aligned.  A memalign block with
 * alignment >= 16 is `alignment` in.  The header sits right before the user pointer. */
typedef struct nm__a8hdr { size_t offset, size; } nm__a8hdr_t;
#define NM__A8_IN    ((size_t)24)
#define NM__A8_GUARD ((size_t)8)
static const unsigned char nm__a8_guard[NM__A8_GUARD] = {0xA8, 0x5A, 0xA8, 0x5A, 0xA8, 0x5A, 0xA8, 0x5A};

NM_INLINE nm__a8hdr_t *nm__a8_hdr(const void *user) { return (nm__a8hdr_t *)((char *)user - sizeof(nm__a8hdr_t)); }

static void *nm__a8_alloc(nm_allocator_t *base, size_t alignment, size_t n) {
    size_t in = alignment >= 16 ? alignment : NM__A8_IN;
    char *raw, *user;
    nm__a8hdr_t h;
    if (n > NM_MAX_ALLOC - in - NM__A8_GUARD) return NULL;
    raw = (char *)nm_memalign(base, alignment >= 16 ? alignment : 16, in + n + NM__A8_GUARD);
    if (raw == NULL) return NULL;
    user = raw + in;
    h.offset = in;
    h.size = n;
    memcpy(nm__a8_hdr(user), &h, sizeof h);
    memcpy(user + n, nm__a8_guard, NM__A8_GUARD);
    return user;
}

/* Verify the guard after `user` and give the block back to base; the guard's verdict. */
static int nm__a8_release(nm_allocator_t *base, void *user) {
    nm__a8hdr_t h;
    int rc = NM_OK;
    memcpy(&h, nm__a8_hdr(user), sizeof h);
    if (memcmp((char *)user + h.size, nm__a8_guard, NM__A8_GUARD) != 0)
        rc = _nm_set_error(NM_ERR_BUFFER_OVERFLOW,
                           "align8 test allocator: block %p (%zu bytes) was written past its end", user, h.size);
    nm_free(base, (char *)user - h.offset);
    return rc;
}

static void *nm__a8_malloc(void *ctx, size_t n) { return nm__a8_alloc(*(nm_allocator_t **)ctx, 0, n); }
static void *nm__a8_calloc(void *ctx, size_t n, size_t s) {
    void *p = nm__a8_alloc(*(nm_allocator_t **)ctx, 0, n * s); /* n * s checked by nm_calloc */
    if (p) memset(p, 0, n * s);
    return p;
}
static void *nm__a8_memalign(void *ctx, size_t a, size_t n) { return nm__a8_alloc(*(nm_allocator_t **)ctx, a, n); }
static void nm__a8_free(void *ctx, void *p) { (void)nm__a8_release(*(nm_allocator_t **)ctx, p); }
static void *nm__a8_realloc(void *ctx, void *p, size_t n) {
    nm_allocator_t *base = *(nm_allocator_t **)ctx;
    size_t old = nm__a8_hdr(p)->size;
    void *q = nm__a8_alloc(base, 0, n);
    if (q == NULL) return NULL;
    memcpy(q, p, old < n ? old : n);
    (void)nm__a8_release(base, p);
    return q;
}
static size_t nm__a8_usable(void *ctx, const void *p) { (void)ctx; return nm__a8_hdr(p)->size; }

static const nm_allocator_ops_t nm__a8_ops = {nm__a8_malloc, nm__a8_calloc, nm__a8_realloc, nm__a8_free,
                                              nm__a8_memalign, nm__a8_usable, NULL, 8, NM_OPS_EXACT_SIZE};

nm_allocator_t *nm_allocator_align8(nm_allocator_t *base) {
    nm_allocator_t *a = _nm_allocator_make("align8", &nm__a8_ops, sizeof(nm_allocator_t *), NM__F_REPORTS); /* it reports overruns */
    if (a == NULL) return NULL;
    *(nm_allocator_t **)a->ctx = base ? base : nm_allocator_libc();
    return a;
}
