/* faulty.c -- fault injection: an allocator that fails its k-th request, for out-of-memory tests
 * of every structure built on the allocator table (pools, arenas, interning, COW, debug). */
#include "nm_internal.h"

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

nm_allocator_t *nm_allocator_faulty(nm_allocator_t *base, long fail_at) {
    nm_allocator_t *a = _nm_table_new("faulty", sizeof(nm__faulty_t));
    nm__faulty_t *f;
    if (a == NULL) return NULL;
    f = (nm__faulty_t *)a->ctx;
    f->base = base ? base : nm_allocator_libc();
    f->fail_at = fail_at;
    a->malloc = nm__f_malloc;
    a->calloc = nm__f_calloc;
    a->realloc = nm__f_realloc;
    a->free = nm__f_free;
    a->memalign = nm__f_memalign;
    a->usable_size = nm__f_usable;
    a->flags |= NM_ALLOC_REPORTS; /* its base may report */
    return a;
}

void nm_faulty_set(nm_allocator_t *a, long fail_at) {
    nm__faulty_t *f = (nm__faulty_t *)a->ctx;
    nm_atomic_store_relaxed(&f->requests, 0);
    nm_atomic_store_relaxed(&f->failures, 0);
    nm_atomic_store_relaxed(&f->fail_at, fail_at);
}
long nm_faulty_requests(nm_allocator_t *a) { return (long)nm_atomic_load_relaxed(&((nm__faulty_t *)a->ctx)->requests); }
long nm_faulty_failures(nm_allocator_t *a) { return (long)nm_atomic_load_relaxed(&((nm__faulty_t *)a->ctx)->failures); }
