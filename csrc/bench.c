/* bench.c -- measurement loops that run inside C, so FFI cost does not hide the allocator.
 *
 * Every contender (each nm_allocator_t backend, the pool, raw libc) runs the same loop; the
 * Python side (nativemem.bench) interleaves contenders and reports medians and ratios.
 */
#include "nm_internal.h"
#include "nm_testing.h"

#include <stdio.h>
#include <stdlib.h>

/* xorshift64*: deterministic sizes and choices, identical for every contender. */
NM_INLINE uint64_t nm__rng(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

NM_INLINE void nm__touch(void *p) { *(volatile char *)p = 1; }
/* Keeps the compiler from discarding a loop. */
static volatile uintptr_t nm__sink;

double nm_bench_pairs(nm_allocator_t *a, size_t size, size_t iterations, uint64_t *ops) {
    uint64_t t0;
    size_t i;
    if (iterations == 0) return 0.0;
    t0 = nm_now_ns();
    for (i = 0; i < iterations; i++) {
        void *p = nm_malloc(a, size);
        if (p == NULL) return -1.0;
        nm__touch(p);
        nm_free(a, p);
    }
    t0 = nm_now_ns() - t0;
    if (ops) *ops = iterations;
    return (double)t0 / (double)iterations;
}

double nm_bench_raw_libc_pairs(size_t size, size_t iterations) {
    uint64_t t0;
    size_t i;
    if (iterations == 0) return 0.0;
    t0 = nm_now_ns();
    for (i = 0; i < iterations; i++) {
        void *p = malloc(size);
        if (p == NULL) return -1.0;
        nm__touch(p);
        free(p);
    }
    return (double)(nm_now_ns() - t0) / (double)iterations;
}

double nm_bench_raw_fn_pairs(void *(*malloc_fn)(size_t), void (*free_fn)(void *), size_t size, size_t iterations) {
    uint64_t t0;
    size_t i;
    if (iterations == 0 || malloc_fn == NULL || free_fn == NULL) return 0.0;
    t0 = nm_now_ns();
    for (i = 0; i < iterations; i++) {
        void *p = malloc_fn(size);
        if (p == NULL) return -1.0;
        nm__touch(p);
        free_fn(p);
    }
    return (double)(nm_now_ns() - t0) / (double)iterations;
}

double nm_bench_batch(nm_allocator_t *a, size_t size, size_t batch, size_t rounds, uint64_t *ops) {
    void **v;
    uint64_t t0;
    size_t r, i, bytes;
    if (batch == 0 || rounds == 0 || nm_mul_overflow(batch, sizeof(void *), &bytes)) return 0.0;
    v = (void **)malloc(bytes);
    if (v == NULL) return -1.0;
    t0 = nm_now_ns();
    for (r = 0; r < rounds; r++) {
        for (i = 0; i < batch; i++) {
            v[i] = nm_malloc(a, size);
            if (v[i] == NULL) { free(v); return -1.0; }
            nm__touch(v[i]);
        }
        for (i = 0; i < batch; i++) nm_free(a, v[i]);
    }
    t0 = nm_now_ns() - t0;
    free(v);
    if (ops) *ops = (uint64_t)batch * rounds;
    return (double)t0 / (double)(batch * rounds);
}

double nm_bench_mix(nm_allocator_t *a, size_t min_size, size_t max_size, size_t live, size_t iterations,
                    uint64_t seed, uint64_t *ops) {
    void **v;
    uint64_t t0, s = seed ? seed : 88172645463325252ull, n = 0;
    size_t i, bytes, span;
    if (live == 0 || iterations == 0 || max_size < min_size || nm_mul_overflow(live, sizeof(void *), &bytes))
        return 0.0;
    span = max_size - min_size + 1;
    v = (void **)calloc(live, sizeof(void *));
    if (v == NULL) return -1.0;
    (void)bytes;
    t0 = nm_now_ns();
    for (i = 0; i < iterations; i++) {
        size_t k = (size_t)(nm__rng(&s) % live);
        if (v[k]) nm_free(a, v[k]);
        v[k] = nm_malloc(a, min_size + (size_t)(nm__rng(&s) % span));
        if (v[k] == NULL) break;
        nm__touch(v[k]);
        n++;
    }
    t0 = nm_now_ns() - t0;
    for (i = 0; i < live; i++)
        if (v[i]) nm_free(a, v[i]);
    free(v);
    if (ops) *ops = n;
    return n == iterations ? (double)t0 / (double)iterations : -1.0;
}

/* ---- two-thread workloads ------------------------------------------------------------------------ */
typedef struct nm__larson {
    nm_allocator_t *a;
    nm_pool_t *pool;
    size_t min_size, span, window, rounds;
    int threads, index;
    nm_atomic_t *slots;    /* threads * window shared slots (atomic exchange)            */
    nm_atomic_t *start;    /* start barrier                                               */
    uint64_t ops;
    int failed;
} nm__larson_t;

static void *nm__l_alloc(nm__larson_t *l, uint64_t *s) {
    if (l->pool) return nm_pool_alloc(l->pool);
    return nm_malloc(l->a, l->min_size + (size_t)(nm__rng(s) % l->span));
}
static void nm__l_free(nm__larson_t *l, void *p) {
    if (l->pool) nm_pool_free(l->pool, p);
    else nm_free(l->a, p);
}

static void nm__larson_worker(void *arg) {
    nm__larson_t *l = (nm__larson_t *)arg;
    uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(l->index + 1);
    size_t r, total = (size_t)l->threads * l->window;
    nm_atomic_add_acq_rel(l->start, 1);
    while (nm_atomic_load_acquire(l->start) < l->threads) nm_thread_yield();
    for (r = 0; r < l->rounds; r++) {
        /* mostly other threads' slots: frees cross threads */
        size_t k = (size_t)(nm__rng(&s) % total);
        void *fresh = nm__l_alloc(l, &s), *old;
        if (fresh == NULL) { l->failed = 1; return; }
        nm__touch(fresh);
        old = (void *)nm_atomic_exchange(&l->slots[k], (intptr_t)fresh);
        if (old) nm__l_free(l, old);
        l->ops++;
    }
}

static double nm__larson_run(nm_allocator_t *a, nm_pool_t *pool, size_t min_size, size_t max_size, size_t window,
                             size_t rounds, int threads, uint64_t *ops) {
    nm__larson_t w[16];
    nm_thread_t *t[16];
    nm_atomic_t start = 0;
    nm_atomic_t *slots;
    uint64_t t0, total_ops = 0;
    size_t i, n;
    int k, failed = 0;
    if (threads < 1 || threads > 16 || window == 0 || max_size < min_size) return 0.0;
    n = (size_t)threads * window;
    slots = (nm_atomic_t *)calloc(n, sizeof(nm_atomic_t));
    if (slots == NULL) return -1.0;
    for (k = 0; k < threads; k++) {
        w[k].a = a; w[k].pool = pool; w[k].min_size = min_size; w[k].span = max_size - min_size + 1;
        w[k].window = window; w[k].rounds = rounds; w[k].threads = threads; w[k].index = k;
        w[k].slots = slots; w[k].start = &start; w[k].ops = 0; w[k].failed = 0;
    }
    t0 = nm_now_ns();
    for (k = 0; k < threads; k++) t[k] = nm_thread_start(nm__larson_worker, &w[k]);
    for (k = 0; k < threads; k++) {
        if (t[k]) nm_thread_join(t[k]);
        else failed = 1;
    }
    t0 = nm_now_ns() - t0;
    for (i = 0; i < n; i++) {
        void *p = (void *)slots[i];
        if (p) {
            if (pool) nm_pool_free(pool, p);
            else nm_free(a, p);
        }
    }
    free(slots);
    for (k = 0; k < threads; k++) {
        total_ops += w[k].ops;
        failed |= w[k].failed;
    }
    if (ops) *ops = total_ops;
    if (failed || total_ops == 0) return -1.0;
    return (double)t0 / (double)total_ops; /* wall time per operation across all threads */
}

double nm_bench_larson(nm_allocator_t *a, size_t min_size, size_t max_size, size_t window, size_t rounds,
                       int threads, uint64_t *ops) {
    return nm__larson_run(a, NULL, min_size, max_size, window, rounds, threads, ops);
}

double nm_bench_pool_larson(nm_pool_t *pool, size_t window, size_t rounds, int threads, uint64_t *ops) {
    return nm__larson_run(NULL, pool, 1, 1, window, rounds, threads, ops);
}

/* ---- producer/consumer ----------------------------------------------------------------------------- */
#define NM__RING 1024
typedef struct nm__pc {
    nm_allocator_t *a;
    size_t size, count;
    nm_atomic_t ring[NM__RING];
    nm_atomic_t head, tail; /* head: next to write (producer), tail: next to read (consumer) */
    nm_atomic_t failed;
} nm__pc_t;

static void nm__consumer(void *arg) {
    nm__pc_t *pc = (nm__pc_t *)arg;
    size_t got = 0;
    while (got < pc->count) {
        intptr_t tail = nm_atomic_load_relaxed(&pc->tail);
        if (tail == nm_atomic_load_acquire(&pc->head)) {
            if (nm_atomic_load_acquire(&pc->failed)) return;
            nm_thread_yield();
            continue;
        }
        nm_free(pc->a, (void *)nm_atomic_load_relaxed(&pc->ring[tail % NM__RING]));
        nm_atomic_store_release(&pc->tail, tail + 1);
        got++;
    }
}

double nm_bench_prodcons(nm_allocator_t *a, size_t size, size_t count, uint64_t *ops) {
    nm__pc_t *pc = (nm__pc_t *)calloc(1, sizeof(nm__pc_t));
    nm_thread_t *t;
    uint64_t t0;
    size_t i;
    if (pc == NULL) return -1.0;
    pc->a = a;
    pc->size = size;
    pc->count = count;
    t0 = nm_now_ns();
    t = nm_thread_start(nm__consumer, pc);
    if (t == NULL) { free(pc); return -1.0; }
    for (i = 0; i < count; i++) {
        intptr_t head = nm_atomic_load_relaxed(&pc->head);
        void *p;
        while (head - nm_atomic_load_acquire(&pc->tail) >= NM__RING) nm_thread_yield();
        p = nm_malloc(a, size);
        if (p == NULL) { nm_atomic_store_release(&pc->failed, 1); break; }
        nm__touch(p);
        nm_atomic_store_relaxed(&pc->ring[head % NM__RING], (intptr_t)p);
        nm_atomic_store_release(&pc->head, head + 1);
    }
    nm_thread_join(t);
    t0 = nm_now_ns() - t0;
    if (ops) *ops = i;
    free(pc);
    return i == count ? (double)t0 / (double)count : -1.0;
}

double nm_bench_atomic_pairs(size_t iterations) {
    nm_atomic_t word = 1;
    uint64_t t0 = nm_now_ns();
    size_t i;
    for (i = 0; i < iterations; i++) {
        nm_atomic_add_relaxed(&word, 1);
        if (nm_atomic_add_release(&word, -1) == 0) nm_atomic_fence_acquire();
    }
    return iterations ? (double)(nm_now_ns() - t0) / (double)iterations : 0.0;
}

/* ---- the other areas: pools, reference counts, interning, copy-on-write ---------------- */
/* The same loop as the allocators' pairs (nm_bench_raw_fn_pairs): allocate, touch, free. */
double nm_pool_bench_pairs(nm_pool_t *p, size_t iterations) {
    uint64_t t0, t1;
    size_t i;
    if (iterations == 0) return 0.0;
    t0 = nm_now_ns();
    for (i = 0; i < iterations; i++) {
        void *o = nm_pool_alloc(p);
        if (o == NULL) return -1.0;
        nm__touch(o);
        nm_pool_free(p, o);
    }
    t1 = nm_now_ns();
    return (double)(t1 - t0) / (double)iterations;
}

/* The floor under a pool's pair: a per-thread free list (one thread-local head) popped and
 * pushed in functions that are not inlined, through the allocators' pair loop -- no lookup of a
 * pool or a thread cache, no check, no count.  Its objects come from malloc and go back to it. */
static NM_THREAD_LOCAL NM_TLS_FAST void *nm__fl_head; /* as the pool's nm__tlast */
static NM_NOINLINE void *nm__fl_malloc(size_t size) {
    void *p = nm__fl_head;
    if (p != NULL) {
        nm__fl_head = *(void **)p;
        return p;
    }
    return malloc(size < sizeof(void *) ? sizeof(void *) : size);
}
static NM_NOINLINE void nm__fl_free(void *p) {
    *(void **)p = nm__fl_head;
    nm__fl_head = p;
}
double nm_bench_raw_freelist_pairs(size_t size, size_t iterations) {
    double ns = nm_bench_raw_fn_pairs(nm__fl_malloc, nm__fl_free, size, iterations);
    while (nm__fl_head != NULL) {
        void *p = nm__fl_head;
        nm__fl_head = *(void **)p;
        free(p);
    }
    return ns;
}

double nm_pool_bench_batch(nm_pool_t *p, size_t batch, size_t rounds) {
    void **v;
    uint64_t t0, t1;
    size_t r, total;
    if (batch == 0 || rounds == 0 || nm_mul_overflow(batch, rounds, &total)) return 0.0;
    v = (void **)calloc(batch, sizeof(void *));
    if (!v) return -1.0;
    t0 = nm_now_ns();
    for (r = 0; r < rounds; r++) {
        nm_pool_alloc_many(p, v, batch);
        nm_pool_free_many(p, v, batch);
    }
    t1 = nm_now_ns();
    free(v);
    return (double)(t1 - t0) / (double)total;
}

double nm_ref_bench_pairs(size_t iterations) {
    nm_refcount_t r;
    uint64_t t0;
    size_t i;
    nm_ref_init(&r, NULL, NULL);
    t0 = nm_now_ns();
    for (i = 0; i < iterations; i++) {
        nm_ref_retain_at(&r, NULL, 0);
        nm_ref_release_at(&r, NULL, 0);
    }
    return iterations ? (double)(nm_now_ns() - t0) / (double)iterations : 0.0;
}

double nm_strtab_bench_hits(nm_allocator_t *a, size_t entries, size_t iterations) {
    nm_strtab_t *t = nm_strtab_create(a);
    char *keys;
    int *lens;
    uint64_t t0, x = 1;
    size_t i;
    double ns = -1.0;
    if (t == NULL || entries == 0) return -1.0;
    keys = (char *)malloc(entries * 24);
    lens = (int *)malloc(entries * sizeof(int));
    if (keys == NULL || lens == NULL) goto out;
    for (i = 0; i < entries; i++) {
        lens[i] = snprintf(keys + i * 24, 24, "key-%zu", i);
        if (nm_strtab_intern(t, keys + i * 24, (size_t)lens[i]) == NULL) goto out;
    }
    t0 = nm_now_ns();
    for (i = 0; i < iterations; i++) {
        size_t k;
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        k = (size_t)((x >> 33) % entries);
        nm_strtab_release(t, nm_strtab_intern(t, keys + k * 24, (size_t)lens[k]));
    }
    ns = (double)(nm_now_ns() - t0) / (double)(iterations ? iterations : 1);
out:
    free(keys);
    free(lens);
    nm_strtab_destroy(t);
    return ns;
}

double nm_cow_bench_make_writable(nm_allocator_t *a, size_t size, size_t iterations) {
    nm_cow_t *c = nm_cow_create(a, size);
    uint64_t t0;
    size_t i;
    if (c == NULL) return -1.0;
    t0 = nm_now_ns();
    for (i = 0; i < iterations; i++) {
        c = nm_cow_make_writable(c);
        ((volatile char *)nm_cow_data(c))[0] = (char)i;
    }
    t0 = nm_now_ns() - t0;
    nm_cow_release(c);
    return iterations ? (double)t0 / (double)iterations : 0.0;
}

/* ---- the memory floor of a random lookup ------------------------------------------------- */
double nm_bench_dependent_load(size_t region_bytes, size_t iterations) {
    size_t n = region_bytes / 64, i;
    uintptr_t *mem;
    size_t *order;
    uint64_t rng = 0x9E3779B97F4A7C15ull, t0;
    uintptr_t p;
    if (n < 2 || iterations == 0) return -1.0;
    mem = (uintptr_t *)malloc(n * 64);
    order = (size_t *)malloc(n * sizeof(size_t));
    if (mem == NULL || order == NULL) {
        free(mem);
        free(order);
        return -1.0;
    }
    for (i = 0; i < n; i++) order[i] = i;
    for (i = n - 1; i > 0; i--) { /* Fisher-Yates: one random cycle through every line */
        size_t j = (size_t)(nm__rng(&rng) % (i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (i = 0; i < n; i++) mem[order[i] * 8] = (uintptr_t)&mem[order[(i + 1) % n] * 8];
    free(order);
    p = (uintptr_t)&mem[0];
    for (i = 0; i < n / 4; i++) p = *(uintptr_t *)p; /* warm the page tables a little */
    t0 = nm_now_ns();
    for (i = 0; i < iterations; i++) p = *(uintptr_t *)p;
    t0 = nm_now_ns() - t0;
    nm__sink = p;
    free(mem);
    return (double)t0 / (double)iterations;
}
