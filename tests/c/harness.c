/* harness.c -- the C core tested from C alone (no Python): the allocator table, every backend
 * adapter reachable here (libc, plain functions, Windows heaps under mingw/Wine), the arena,
 * pools (with cross-thread frees), the debug allocator, refcounts, interning, COW, props and
 * fault injection.  Run normally, under ASan/UBSan, under Valgrind and (threads) under TSan by
 * .ci/c-checks.sh.  Exit status 0 when every check passed. */
#include "nativemem.h"
#include "nm_testing.h"
#include "platform.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures, checks;
#define CHECK(cond)                                                                              \
    do {                                                                                         \
        checks++;                                                                                \
        if (!(cond)) {                                                                           \
            failures++;                                                                          \
            fprintf(stderr, "%s:%d: CHECK failed: %s (%s)\n", __FILE__, __LINE__, #cond,         \
                    nm_last_error_message());                                                    \
        }                                                                                        \
    } while (0)

static void check_table(nm_allocator_t *a, const char *what) {
    nm_alloc_stats_t st;
    void *p, *q, *z;
    size_t k;
    fprintf(stderr, "  table %s\n", what);
    p = nm_malloc(a, 100);
    CHECK(p != NULL);
    memset(p, 0xAB, 100);
    q = nm_realloc(a, p, 100000);
    CHECK(q != NULL && ((unsigned char *)q)[99] == 0xAB);
    z = nm_calloc(a, 100, 10);
    CHECK(z != NULL);
    for (k = 0; z && k < 1000; k++) CHECK(((unsigned char *)z)[k] == 0);
    for (k = 16; k <= 4096; k *= 2) {
        void *m = nm_memalign(a, k, k);
        CHECK(m != NULL && ((uintptr_t)m % k) == 0);
        nm_free(a, m);
    }
    CHECK(nm_calloc(a, (SIZE_MAX >> 1) + 1, 2) == NULL && nm_last_error() == NM_ERR_OVERFLOW);
    CHECK(nm_memalign(a, 24, 10) == NULL && nm_last_error() == NM_ERR_INVALID);
    CHECK(nm_malloc(a, SIZE_MAX) == NULL && nm_last_error() == NM_ERR_OVERFLOW);
    nm_clear_error();
    nm_free(a, q);
    nm_free(a, z);
    nm_allocator_stats(a, &st);
    CHECK(st.live_blocks == 0 && st.live_bytes == 0);
}

/* ---- threads: pool cross-thread frees, interning races, refcount destructor once ---------- */
typedef struct { nm_pool_t *pool; nm_strtab_t *tab; nm_refcount_t *ref; nm_atomic_t *slots; int id; } work_t;
static nm_atomic_t destroyed;
static void on_destroy(void *arg) { (void)arg; nm_atomic_add_relaxed(&destroyed, 1); }

static void worker(void *arg) {
    work_t *w = (work_t *)arg;
    char key[16];
    int i;
    for (i = 0; i < 20000; i++) {
        void *o = nm_pool_alloc(w->pool), *old;
        const char *s;
        if (o == NULL) abort();
        memset(o, w->id, 48);
        old = (void *)nm_atomic_exchange(&w->slots[(i * 7 + w->id) % 256], (intptr_t)o);
        if (old && nm_pool_free(w->pool, old) != NM_OK) abort(); /* often another thread's object */
        snprintf(key, sizeof key, "k%d", i % 50);
        s = nm_strtab_intern(w->tab, key, strlen(key));
        if (s == NULL || strcmp(s, key) != 0) abort();
        if (nm_strtab_release(w->tab, s) != NM_OK) abort();
    }
    for (i = 0; i < 1000; i++) nm_ref_release(w->ref);
}

/* Run fn on n threads, thread i getting (char *)args + i * stride, and wait for them all. */
static void run_threads(nm_thread_fn fn, void *args, size_t stride, int n) {
    nm_thread_t *t[16];
    int i;
    for (i = 0; i < n && i < 16; i++) {
        t[i] = nm_thread_start(fn, (char *)args + (size_t)i * stride);
        CHECK(t[i] != NULL);
    }
    for (i = 0; i < n && i < 16; i++)
        if (t[i]) nm_thread_join(t[i]);
}

static void check_threads(void) {
    enum { N = 4 };
    work_t w[N];
    nm_atomic_t slots[256];
    nm_refcount_t ref;
    nm_pool_stats_t st;
    int i;
    fprintf(stderr, "  threads\n");
    memset(slots, 0, sizeof slots);
    nm_ref_init(&ref, on_destroy, NULL);
    for (i = 0; i < N * 1000; i++) nm_ref_retain(&ref);
    destroyed = 0;
    {
        nm_pool_t *pool = nm_pool_create(NULL, 48, 64, NM_POOL_ZERO);
        nm_strtab_t *tab = nm_strtab_create(NULL);
        for (i = 0; i < N; i++) {
            w[i].pool = pool; w[i].tab = tab; w[i].ref = &ref; w[i].slots = slots; w[i].id = i + 1;
        }
        run_threads(worker, w, sizeof w[0], N);
        for (i = 0; i < 256; i++) if (slots[i]) CHECK(nm_pool_free(pool, (void *)slots[i]) == NM_OK);
        nm_pool_stats(pool, &st);
        CHECK(st.live == 0 && st.allocations == N * 20000 && st.frees == st.allocations);
        CHECK(nm_strtab_count(tab) == 0);
        CHECK(nm_ref_count(&ref) == 1 && destroyed == 0);
        CHECK(nm_ref_release(&ref) == 1 && destroyed == 1);
        nm_strtab_destroy(tab);
        nm_pool_destroy(pool);
    }
}

static void check_structures(nm_allocator_t *base) {
    nm_allocator_t *ar, *dbg, *fa;
    nm_pool_t *pool;
    void *objs[100];
    nm_arena_stats_t ast;
    nm_alloc_stats_t st;
    int i;
    fprintf(stderr, "  arena\n");
    ar = nm_arena_create(base, 1 << 20);
    CHECK(ar != NULL);
    check_table(ar, "arena");
    CHECK(nm_arena_check(ar) == NM_OK);
    CHECK(nm_arena_stats(ar, &ast) == NM_OK && ast.free_blocks == 1);
    nm_allocator_destroy(ar);

    fprintf(stderr, "  pool\n");
    pool = nm_pool_create(base, 40, 16, NM_POOL_ZERO | NM_POOL_CHECKED);
    CHECK(pool != NULL);
    for (i = 0; i < 100; i++) {
        objs[i] = nm_pool_alloc_at(pool, __FILE__, __LINE__);
        CHECK(objs[i] != NULL && ((uintptr_t)objs[i] % 64) == 0);
    }
    CHECK(nm_pool_free(pool, (char *)objs[0] + 8) == NM_ERR_INVALID_FREE);
    for (i = 0; i < 100; i++) CHECK(nm_pool_free(pool, objs[i]) == NM_OK);
    CHECK(nm_pool_free(pool, objs[5]) == NM_ERR_DOUBLE_FREE);
    CHECK(nm_pool_free(pool, &i) == NM_ERR_INVALID_FREE);
    nm_clear_error();
    nm_pool_destroy(pool);

    fprintf(stderr, "  debug\n");
    dbg = nm_debug_create(base, 0);
    CHECK(dbg != NULL);
    check_table(dbg, "debug");
    CHECK(nm_debug_check(dbg) == NM_OK);
    {
        void *p = nm_malloc_at(dbg, 10, __FILE__, __LINE__);
        nm_debug_block_t blk;
        CHECK(nm_debug_blocks(dbg, &blk, 1, 0) == 1 && blk.size == 10 && strcmp(blk.file, __FILE__) == 0);
        nm_free(dbg, p);
        CHECK(nm_free_checked(dbg, p) == NM_ERR_DOUBLE_FREE);
        nm_clear_error();
        CHECK(nm_debug_set_quarantine_bytes(base, 100) == NM_ERR_INVALID); /* not a debug allocator */
        nm_clear_error();
        CHECK(nm_debug_set_quarantine_bytes(dbg, 100) == NM_OK);
        p = nm_malloc(dbg, 150);
        nm_free(dbg, p); /* over the byte bound: out of the quarantine at once */
        {
            nm_debug_stats_t st;
            nm_debug_stats(dbg, &st);
            CHECK(st.quarantined_blocks == 0 && st.quarantined_bytes == 0);
        }
    }
    nm_allocator_destroy(dbg);

    fprintf(stderr, "  refcount, strtab, cow, prop\n");
    {
        nm_refcount_t r;
        nm_strtab_t *t = nm_strtab_create(base);
        const char *a, *b;
        nm_cow_t *c, *s, *w;
        nm_prop_t *root, *child;
        nm_prop_value_t v;
        nm_ref_init(&r, NULL, NULL);
        CHECK(nm_ref_retain(&r) == NM_OK && nm_ref_release(&r) == 0 && nm_ref_release(&r) == 1);
        CHECK(nm_ref_release(&r) == NM_ERR_REFCOUNT && nm_ref_retain(&r) == NM_OK);
        nm_clear_error();
        a = nm_strtab_intern(t, "x\0y", 3);
        b = nm_strtab_intern(t, "x\0y", 3);
        CHECK(a == b && nm_strtab_refs(a) == 2 && nm_strtab_strlen(a) == 3);
        CHECK(nm_strtab_release(t, a) == NM_OK && nm_strtab_release(t, b) == NM_OK && nm_strtab_count(t) == 0);
        CHECK(nm_strtab_destroy(t) == 0);
        c = nm_cow_create_copy(base, "abc", 3);
        s = nm_cow_retain(c);
        w = nm_cow_make_writable(s);
        CHECK(w != c && nm_cow_refs(c) == 1 && memcmp(nm_cow_data(w), "abc", 3) == 0);
        CHECK(nm_cow_make_writable(w) == w);
        CHECK(nm_cow_release(w) == 1 && nm_cow_release(c) == 1);
        root = nm_prop_create(NULL, NULL, "root", 4);
        child = nm_prop_create(NULL, root, "child", 5);
        CHECK(root && child && nm_prop_set_int(child, 7) == NM_OK);
        CHECK(nm_prop_get(child, &v) == NM_OK && v.type == NM_PROP_INT && v.i == 7);
        CHECK(nm_prop_destroy(root) == NM_OK && nm_prop_is_zombie(child));
        CHECK(nm_prop_set_int(child, 1) == NM_ERR_CLOSED);
        nm_clear_error();
        CHECK(nm_prop_release(child) == 1 && nm_prop_release(root) == 1 && nm_prop_live_count() == 0);
    }

    fprintf(stderr, "  fault injection\n");
    fa = nm_allocator_faulty(base, 0);
    for (i = 1; i <= 40; i++) {
        nm_pool_t *pp;
        nm_strtab_t *tt;
        void *x = NULL;
        const char *sx = NULL;
        nm_faulty_set(fa, i);
        pp = nm_pool_create(fa, 32, 8, 0);
        tt = nm_strtab_create(fa);
        if (pp) x = nm_pool_alloc(pp);
        if (tt) sx = nm_strtab_intern(tt, "key", 3);
        if (sx) nm_strtab_release(tt, sx);
        if (x) nm_pool_free(pp, x);
        if (tt) nm_strtab_destroy(tt);
        if (pp) nm_pool_destroy(pp);
        nm_clear_error();
    }
    nm_allocator_stats(fa, &st);
    CHECK(st.live_blocks == 0);
    nm_allocator_destroy(fa);
}

#if defined(_WIN32)
/* Wired exactly as backends.py does with ctypes: addresses from GetProcAddress. */
static nm_allocator_t *windows_heap(int process) {
    HMODULE k32 = GetModuleHandleA("kernel32.dll");
    nm_winheap_fns_t f;
    HANDLE heap = process ? GetProcessHeap() : HeapCreate(0, 0, 0);
    ULONG lfh = 2, got = 0;
    BOOL set_ok = TRUE, query_ok;
    DWORD set_err = 0;
    char set_note[96] = "";
    /* what backends.py does, said as backends.py says it: only what the heap reports */
    if (!process) {
        set_ok = HeapSetInformation(heap, HeapCompatibilityInformation, &lfh, sizeof lfh);
        if (!set_ok) set_err = GetLastError();
        if (!set_ok) snprintf(set_note, sizeof set_note, "; HeapSetInformation(LFH) failed: error %lu", (unsigned long)set_err);
        else snprintf(set_note, sizeof set_note, "; HeapSetInformation(LFH) succeeded");
    }
    query_ok = HeapQueryInformation(heap, HeapCompatibilityInformation, &got, sizeof got, NULL);
    CHECK(query_ok);
    fprintf(stderr, "  windows %s: HeapCompatibilityInformation = %lu (%s)%s%s\n",
            process ? "process heap" : "private heap", (unsigned long)got,
            got == 2 ? "LFH" : got == 1 ? "look-aside" : got == 0 ? "standard heap" : "?", set_note,
            !process && set_ok && got != 2 ? ", yet the heap does not report the LFH" : "");
    f.heap = heap;
    f.heap_alloc = (void *)GetProcAddress(k32, "HeapAlloc");
    f.heap_realloc = (void *)GetProcAddress(k32, "HeapReAlloc");
    f.heap_free = (void *)GetProcAddress(k32, "HeapFree");
    f.heap_size = (void *)GetProcAddress(k32, "HeapSize");
    return nm_allocator_from_winheap(&f, process ? "process-heap" : "heap");
}
#else
static nm_allocator_t *plain_libc(void) {
    nm_plain_fns_t f;
    f.malloc = malloc; f.calloc = calloc; f.realloc = realloc; f.free = free;
    f.posix_memalign = NULL; /* headered mode, as on Windows' CRT */
    f.usable_size = NULL;
    return nm_allocator_from_plain(&f, "plain-headered");
}
#endif

/* ---- pool chunks through a headered adapter (Windows heaps, the CRT, plain functions without
 * posix_memalign): bytes asked of the allocator beneath, per chunk.  A chunk used to be
 * nm_memalign(cs, cs), which such an adapter can only serve by asking for 2 * cs + header. ---- */
static size_t raw_requested; /* bytes asked of HeapAlloc / malloc by the counting functions */
#if defined(_WIN32)
static LPVOID WINAPI counting_heap_alloc(HANDLE heap, DWORD flags, SIZE_T n) {
    raw_requested += n;
    return HeapAlloc(heap, flags, n);
}
static nm_allocator_t *counting_base(void) {
    HMODULE k32 = GetModuleHandleA("kernel32.dll");
    nm_winheap_fns_t f;
    f.heap = HeapCreate(0, 0, 0);
    f.heap_alloc = (void *)counting_heap_alloc;
    f.heap_realloc = (void *)GetProcAddress(k32, "HeapReAlloc");
    f.heap_free = (void *)GetProcAddress(k32, "HeapFree");
    f.heap_size = (void *)GetProcAddress(k32, "HeapSize");
    return nm_allocator_from_winheap(&f, "heap (counting)");
}
#define COUNTING_BASE "HeapAlloc"
#else
static void *counting_malloc(size_t n) { raw_requested += n; return malloc(n); }
static void *counting_calloc(size_t n, size_t s) { raw_requested += n * s; return calloc(n, s); }
static nm_allocator_t *counting_base(void) {
    nm_plain_fns_t f;
    f.malloc = counting_malloc; f.calloc = counting_calloc; f.realloc = realloc; f.free = free;
    f.posix_memalign = NULL; /* headered, as Windows' CRT */
    f.usable_size = NULL;
    return nm_allocator_from_plain(&f, "plain-headered (counting)");
}
#define COUNTING_BASE "malloc (headered adapter)"
#endif

static void check_pool_chunk_overhead(void) {
    static const size_t shapes[][3] = {{64, 256, 64}, {48, 64, 64}, {1000, 64, 64}, {32, 4096, 16}, {200, 32, 4096}};
    nm_allocator_t *a = counting_base();
    size_t i;
    fprintf(stderr, "  pool chunks from %s: bytes asked per chunk\n", COUNTING_BASE);
    CHECK(a != NULL);
    if (!a) return;
    for (i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        nm_pool_t *pool = nm_pool_create_ex(a, shapes[i][0], shapes[i][1], shapes[i][2], 0);
        nm_pool_stats_t st;
        size_t n = 0, per_chunk;
        CHECK(pool != NULL);
        if (!pool) continue;
        raw_requested = 0;
        do {
            void *o = nm_pool_alloc(pool);
            CHECK(o != NULL && (uintptr_t)o % shapes[i][2] == 0);
            if (!o) break;
            nm_pool_stats(pool, &st);
        } while (++n < 1000000 && st.chunks < 8);
        per_chunk = raw_requested / (size_t)st.chunks;
        fprintf(stderr, "    %zu-byte objects, %zu-aligned: %lld chunks of %zu bytes (reserved %lld), %zu bytes asked of "
                "the base per chunk (%.3fx)\n", shapes[i][0], shapes[i][2], (long long)st.chunks,
                (size_t)(st.reserved_bytes / st.chunks), (long long)st.reserved_bytes, per_chunk,
                (double)per_chunk / (double)(st.reserved_bytes / st.chunks));
        /* a chunk plus its alignment, the adapter's header, and this thread's cache and the chunk
         * registry spread over the 8 chunks */
        CHECK(per_chunk <= (size_t)(st.reserved_bytes / st.chunks) + shapes[i][2] + 256);
        nm_pool_destroy(pool);
    }
    nm_allocator_destroy(a);
}

/* ---- a macOS-style malloc zone (the head of malloc_zone_t: two reserved words, then the zone's
 * size function), wired as backends.py wires a real one: usable sizes come from the zone's own
 * size function, never from the process-wide malloc_size() (which asks every zone) ----------- */
typedef struct fake_zone {
    void *reserved1, *reserved2;
    size_t (*size)(void *zone, const void *p);
    long size_calls;
} fake_zone_t;
static long fake_malloc_size_calls;
typedef struct { size_t size; size_t pad; } fake_zhdr_t; /* 16 bytes: blocks stay 16-aligned */
static void *fz_alloc(size_t n, size_t align, int zero) {
    char *raw;
    if (align < 16) align = 16;
    raw = (char *)malloc(n + align + sizeof(fake_zhdr_t) + sizeof(void *));
    if (raw == NULL) return NULL;
    {
        char *user = (char *)(((uintptr_t)raw + sizeof(fake_zhdr_t) + sizeof(void *) + align - 1) & ~(uintptr_t)(align - 1));
        ((fake_zhdr_t *)user)[-1].size = n;
        ((void **)((fake_zhdr_t *)user - 1))[-1] = raw;
        if (zero) memset(user, 0, n);
        return user;
    }
}
static void fz_release(void *p) { free(((void **)((fake_zhdr_t *)p - 1))[-1]); }
static void *fz_malloc(void *zone, size_t n) { (void)zone; return fz_alloc(n, 16, 0); }
static void *fz_calloc(void *zone, size_t n, size_t s) { (void)zone; return fz_alloc(n * s, 16, 1); }
static void fz_free(void *zone, void *p) { (void)zone; if (p) fz_release(p); }
static void *fz_memalign(void *zone, size_t a, size_t n) { (void)zone; return fz_alloc(n, a, 0); }
static void *fz_realloc(void *zone, void *p, size_t n) {
    void *q = fz_alloc(n, 16, 0);
    size_t old = p ? ((fake_zhdr_t *)p)[-1].size : 0;
    (void)zone;
    if (q && p) { memcpy(q, p, old < n ? old : n); fz_release(p); }
    return q;
}
static size_t fz_zone_size(void *zone, const void *p) {
    ((fake_zone_t *)zone)->size_calls++;
    return ((const fake_zhdr_t *)p)[-1].size;
}
static size_t fz_malloc_size(const void *p) { fake_malloc_size_calls++; return ((const fake_zhdr_t *)p)[-1].size; }

static void check_zone_usable_size(void) {
    fake_zone_t zone = {NULL, NULL, fz_zone_size, 0};
    nm_zone_fns_t f;
    nm_allocator_t *a;
    void *p;
    fprintf(stderr, "  zone table: usable size from the zone's own size function\n");
    f.zone = &zone;
    f.zone_malloc = (void *)fz_malloc; f.zone_calloc = (void *)fz_calloc; f.zone_realloc = (void *)fz_realloc;
    f.zone_free = (void *)fz_free; f.zone_memalign = (void *)fz_memalign; f.size = (void *)fz_malloc_size;
    a = nm_allocator_from_zone(&f, "zone");
    CHECK(a != NULL && nm_allocator_alignment(a) == 16);
    if (!a) return;
    check_table(a, "zone (fake)");
    p = nm_malloc(a, 77);
    CHECK(p != NULL && nm_usable_size(a, p) == 77);
    nm_free(a, p);
    CHECK(zone.size_calls > 0 && fake_malloc_size_calls == 0);
    nm_allocator_destroy(a);
    /* a zone without a size function: malloc_size is the fallback, and required */
    zone.size = NULL;
    a = nm_allocator_from_zone(&f, "zone");
    CHECK(a != NULL);
    if (a) {
        p = nm_malloc(a, 5);
        CHECK(p != NULL && nm_usable_size(a, p) == 5 && fake_malloc_size_calls > 0);
        nm_free(a, p);
        nm_allocator_destroy(a);
    }
    f.size = NULL;
    CHECK(nm_allocator_from_zone(&f, "zone") == NULL && nm_last_error() == NM_ERR_INVALID);
    nm_clear_error();
}

/* A thread's last freed object (kept for its next allocation) goes back to its chunk when the
 * thread exits. */
static void one_object(void *arg) {
    nm_pool_t *pool = (nm_pool_t *)arg;
    void *o = nm_pool_alloc(pool);
    if (o == NULL || nm_pool_free(pool, o) != NM_OK) abort();
    if (nm_pool_free(pool, o) != NM_ERR_DOUBLE_FREE) abort(); /* the kept object is still guarded */
    nm_clear_error();
}

/* Objects `pool` hands out before it holds more than `chunks` chunks (the last one included). */
static size_t allocs_until_chunks(nm_pool_t *pool, int64_t chunks) {
    nm_pool_stats_t st;
    size_t n = 0;
    do {
        if (nm_pool_alloc(pool) == NULL || ++n == 100000) break;
        nm_pool_stats(pool, &st);
    } while (st.chunks <= chunks);
    return n;
}

static void check_pool_thread_exit(void) {
    nm_pool_t *probe = nm_pool_create(NULL, 32, 16, NM_POOL_QUIET), *pool;
    nm_pool_stats_t st;
    size_t per_chunk;
    int i;
    fprintf(stderr, "  pool: objects kept by exited threads\n");
    CHECK(probe != NULL);
    if (!probe) return;
    per_chunk = allocs_until_chunks(probe, 1) - 1; /* objects in one chunk */
    nm_pool_destroy(probe);
    /* The main thread owns chunk 1; a thread makes chunk 2, keeps one freed object in it and
     * exits.  Every slot of both chunks is then handed out before a third chunk: the kept object
     * went back to chunk 2's free list (else one slot would be stranded). */
    pool = nm_pool_create(NULL, 32, 16, NM_POOL_QUIET);
    CHECK(pool != NULL);
    if (!pool) return;
    CHECK(nm_pool_alloc(pool) != NULL);
    run_threads(one_object, pool, 0, 1);
    nm_pool_stats(pool, &st);
    CHECK(st.chunks == 2 && st.live == 1);
    CHECK(allocs_until_chunks(pool, 2) == 2 * per_chunk - 1 + 1); /* the last one opened chunk 3 */
    nm_pool_destroy(pool);
    /* 300 short-lived threads, one object each: their chunk is adopted again and again */
    pool = nm_pool_create(NULL, 32, 16, 0);
    CHECK(pool != NULL);
    if (!pool) return;
    for (i = 0; i < 300; i++) run_threads(one_object, pool, 0, 1);
    nm_pool_stats(pool, &st);
    CHECK(st.live == 0 && st.allocations == 300 && st.frees == 300 && st.chunks == 1);
    nm_pool_destroy(pool);
}

/* ---- props: a chain a million deep, ended by destroy and by its last reference ------------- */
static nm_prop_t *prop_chain(int depth) {
    nm_prop_t *root = nm_prop_create(NULL, NULL, "root", 4), *cur = root;
    int i;
    for (i = 0; i < depth && cur; i++) {
        nm_prop_t *c = nm_prop_create(NULL, cur, "c", 1);
        if (cur != root) nm_prop_release(cur); /* its parent holds it */
        cur = c;
    }
    CHECK(cur != NULL);
    if (cur && cur != root) nm_prop_release(cur);
    return root;
}

static void check_prop_deep(void) {
    /* far deeper than a recursive walk's C stack allows (it overflowed before 200,000) */
    int depth = NM_VG_RUNNING() ? 300000 : 1000000;
    intptr_t base = nm_prop_live_count();
    nm_prop_t *root;
    fprintf(stderr, "  props: chains %d deep\n", depth);
    root = prop_chain(depth);
    CHECK(root != NULL && nm_prop_live_count() == base + depth + 1);
    if (root) {
        CHECK(nm_prop_destroy(root) == NM_OK && nm_prop_is_zombie(root));
        CHECK(nm_prop_live_count() == base + 1);
        CHECK(nm_prop_release(root) == 1);
    }
    CHECK(nm_prop_live_count() == base);
    root = prop_chain(depth);
    CHECK(root != NULL && nm_prop_live_count() == base + depth + 1);
    if (root) CHECK(nm_prop_release(root) == 1); /* dropped without destroy: the chain goes too */
    CHECK(nm_prop_live_count() == base);
}

/* ---- an arena shared by threads (arena.c: the striped caches of an `mt` arena) ------------ *
 * Four threads allocate, put blocks in shared slots and free what they displace (mostly other
 * threads' blocks), with a walk and a check now and then: in a small arena searches fail and
 * every stripe is emptied while the others use theirs.  Counts and the heap must come out exact;
 * under TSan, a data race fails it. */
typedef struct {
    nm_allocator_t *ar;
    nm_atomic_t *slots;
    size_t nslots;
    uint64_t seed;
    nm_atomic_t bad;
} arena_mt_t;

static void arena_mt_worker(void *arg) {
    arena_mt_t *w = (arena_mt_t *)arg;
    uint64_t x = w->seed;
    int i;
    for (i = 0; i < 20000; i++) {
        size_t sz, k;
        void *p, *old;
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        sz = 1 + (size_t)((x >> 33) % 600);
        p = nm_malloc(w->ar, sz);
        if (p != NULL) memset(p, (int)(x & 0xff), sz < 16 ? sz : 16);
        else nm_clear_error(); /* a small arena may be full for a moment */
        k = (size_t)((x >> 17) % w->nslots);
        old = (void *)nm_atomic_exchange(&w->slots[k], (intptr_t)p);
        if (old != NULL && nm_free_checked(w->ar, old) != NM_OK) nm_atomic_store_relaxed(&w->bad, 1);
        if ((i & 2047) == 0) {
            nm_arena_stats_t st;
            if (nm_arena_stats(w->ar, &st) != NM_OK || nm_arena_check(w->ar) != NM_OK) nm_atomic_store_relaxed(&w->bad, 1);
        }
    }
}

static void check_arena_threads(void) {
    enum { THREADS = 4, SLOTS = 96 };
    size_t sizes[2] = {1 << 16, 8 << 20};
    int forced, z, i;
    for (z = 0; z < 2; z++)
        for (forced = 0; forced < 2; forced++) {
            nm_atomic_t slots[SLOTS];
            arena_mt_t w[THREADS];
            nm_thread_t *t[THREADS];
            nm_allocator_t *ar = nm_arena_create(NULL, sizes[z]);
            nm_alloc_stats_t st;
            nm_arena_stats_t ast;
            int bad = 0;
            fprintf(stderr, "  arena of %zu bytes shared by %d threads%s\n", sizes[z], THREADS,
                    forced ? " (striped caches from the start)" : "");
            CHECK(ar != NULL);
            if (ar == NULL) return;
            if (forced) CHECK(nm_arena_testing_mt(ar, 1) == 1);
            memset(slots, 0, sizeof slots);
            for (i = 0; i < THREADS; i++) {
                w[i].ar = ar;
                w[i].slots = slots;
                w[i].nslots = SLOTS;
                w[i].seed = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1 + 8 * z + 4 * forced);
                w[i].bad = 0;
                t[i] = nm_thread_start(arena_mt_worker, &w[i]);
                CHECK(t[i] != NULL);
            }
            for (i = 0; i < THREADS; i++) {
                if (t[i]) nm_thread_join(t[i]);
                bad |= (int)w[i].bad;
            }
            CHECK(bad == 0);
            for (i = 0; i < SLOTS; i++)
                if (slots[i]) CHECK(nm_free_checked(ar, (void *)slots[i]) == NM_OK);
            nm_allocator_stats(ar, &st);
            CHECK(st.live_blocks == 0 && st.live_bytes == 0 && st.total_allocs == st.total_frees);
            CHECK(nm_arena_check(ar) == NM_OK);
            CHECK(nm_arena_stats(ar, &ast) == NM_OK && ast.free_blocks == 1 && ast.largest_free == ast.capacity);
            nm_allocator_destroy(ar);
        }
}

#if !defined(_WIN32)
/* ---- fork while other threads hold nativemem's locks (pthread_atfork, platform.c) ---------- *
 * Threads take and release every kind of lock in a loop (the debug allocator's, the arena's, the
 * string table's shards, the prop tree's, a pool's and the pools' global one through threads
 * that start and exit, the fork registry's through arenas created and destroyed) while the main
 * thread forks; each child uses every object once and exits.  A child that inherited a lock
 * held by a thread it does not have would hang: each gets 10 s, then is killed and counted. */
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

typedef struct {
    nm_allocator_t *dbg, *arena;
    nm_strtab_t *tab;
    nm_pool_t *pool;
    nm_atomic_t stop, rounds;
} fork_objs_t;

/* One operation on each object (what every child does too). */
static void touch_all(fork_objs_t *w) {
    void *p = nm_malloc(w->dbg, 64), *q = nm_malloc(w->arena, 64), *o = nm_pool_alloc(w->pool);
    const char *s = nm_strtab_intern(w->tab, "x", 1);
    nm_prop_t *root = nm_prop_create(NULL, NULL, "a", 1), *c = root ? nm_prop_create(NULL, root, "b", 1) : NULL;
    if (!p || !q || !o || !s || !root || !c) abort();
    nm_free(w->dbg, p);
    nm_free(w->arena, q);
    if (nm_pool_free(w->pool, o) != NM_OK || nm_strtab_release(w->tab, s) != NM_OK) abort();
    nm_prop_release(c);
    if (nm_prop_destroy(root) != NM_OK || nm_prop_release(root) != 1) abort();
}

static void pool_pair(void *arg) { /* a thread's start and exit take the pool's locks */
    nm_pool_t *pool = (nm_pool_t *)arg;
    void *o = nm_pool_alloc(pool);
    if (o == NULL || nm_pool_free(pool, o) != NM_OK) abort();
}

static void fork_hammer(void *arg) {
    fork_objs_t *w = (fork_objs_t *)arg;
    while (!nm_atomic_load_acquire(&w->stop)) {
        touch_all(w);
        if ((nm_atomic_add_relaxed(&w->rounds, 1) & 15) == 0) {
            nm_thread_t *t = nm_thread_start(pool_pair, w->pool);
            if (t) nm_thread_join(t);
        }
    }
}

/* Arenas come and go: registration, and destroy deferred to the last free (which retires the
 * arena's entry, parking it when a fork is in progress). */
static void arena_churn(void *arg) {
    fork_objs_t *w = (fork_objs_t *)arg;
    while (!nm_atomic_load_acquire(&w->stop)) {
        nm_allocator_t *ar = nm_arena_create(NULL, 1 << 16);
        void *p = ar ? nm_malloc(ar, 32) : NULL;
        if (p == NULL) abort();
        nm_allocator_destroy(ar); /* deferred: p is live */
        nm_free(ar, p);           /* the last free destroys it */
    }
}

/* The child's exit status, or -1 when it had not exited after `seconds` (then it is killed). */
static int wait_child(pid_t pid, double seconds) {
    struct timespec pause = {0, 1000000};
    uint64_t deadline = nm_now_ns() + (uint64_t)(seconds * 1e9);
    int status;
    for (;;) {
        pid_t got = waitpid(pid, &status, WNOHANG);
        if (got == pid) return status;
        if (got < 0) return -2;
        if (nm_now_ns() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        nanosleep(&pause, NULL);
    }
}

static void check_fork(void) {
    enum { HAMMERS = 2 };
    fork_objs_t w;
    nm_thread_t *t[HAMMERS + 1];
    int i, forks = 200, hung = 0, failed = 0;
    if (NM_VG_RUNNING()) {
        /* Valgrind runs a forked child of a threaded program under its own scheduler, slowly and
         * unevenly on a loaded machine: a child past its deadline there says nothing about our
         * locks.  The normal, ASan and TSan builds run this case; tests/test_fork.py does too. */
        fprintf(stderr, "  fork while other threads hold the locks: skipped under Valgrind\n");
        return;
    }
    fprintf(stderr, "  fork while other threads hold the locks (%d forks)\n", forks);
    memset(&w, 0, sizeof w);
    w.dbg = nm_debug_create_ex(NULL, 0, 16);
    w.arena = nm_arena_create(NULL, 1 << 20);
    w.tab = nm_strtab_create(NULL);
    w.pool = nm_pool_create(NULL, 64, 64, 0);
    CHECK(w.dbg && w.arena && w.tab && w.pool);
    if (!(w.dbg && w.arena && w.tab && w.pool)) return;
    for (i = 0; i < HAMMERS; i++) t[i] = nm_thread_start(fork_hammer, &w);
    t[HAMMERS] = nm_thread_start(arena_churn, &w);
    while (nm_atomic_load_relaxed(&w.rounds) < 64) nm_thread_yield();
    for (i = 0; i < forks && hung < 3; i++) {
        pid_t pid = fork();
        int status;
        if (pid == 0) {
#if defined(NM_HAVE_VALGRIND) && defined(VALGRIND_CLO_CHANGE)
            /* blocks that only the parent's other threads pointed to would count as leaks here;
             * memory errors still fail the child */
            if (RUNNING_ON_VALGRIND) VALGRIND_CLO_CHANGE("--leak-check=no");
#endif
            touch_all(&w);
            _exit(0);
        }
        CHECK(pid > 0);
        if (pid < 0) break;
        status = wait_child(pid, 10.0);
        if (status == -1) hung++;
        else if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) failed++;
    }
    if (hung || failed) fprintf(stderr, "    %d of %d children hung, %d failed\n", hung, i, failed);
    CHECK(hung == 0 && failed == 0);
    nm_atomic_store_release(&w.stop, 1);
    for (i = 0; i <= HAMMERS; i++) {
        CHECK(t[i] != NULL);
        if (t[i]) nm_thread_join(t[i]);
    }
    nm_pool_destroy(w.pool);
    CHECK(nm_strtab_destroy(w.tab) == 0);
    nm_allocator_destroy(w.arena);
    nm_allocator_destroy(w.dbg);
}
#endif

/* ---- a base that promises 8-byte alignment only (nm_allocator_align8): the debug allocator,
 * pools and arenas on it assume no more (the debug allocator's tail canary once ended 8 bytes
 * past such a block: heap corruption on 32-bit Windows, and on 32-bit x86 musl builds) -------- */
static nm_atomic_t align8_reports; /* overruns align8 found where nobody could be told */
static void count_align8_reports(const char *name, int code, const char *message) {
    (void)name;
    if (code == NM_ERR_BUFFER_OVERFLOW && strstr(message, "align8 test allocator") != NULL)
        nm_atomic_add_relaxed(&align8_reports, 1);
    else
        fprintf(stderr, "nativemem: %s\n", message);
}

static void check_debug_over(nm_allocator_t *base, const char *what) {
    nm_allocator_t *dbg = nm_debug_create_ex(base, 0, 0); /* no quarantine: every free reaches base */
    void *blocks[300];
    size_t i;
    fprintf(stderr, "    debug allocator over %s\n", what);
    CHECK(dbg != NULL && nm_allocator_alignment(dbg) == 16);
    if (!dbg) return;
    for (i = 0; i < 300; i++) {
        size_t size = i % 100, align = (size_t)16 << (i % 5);
        unsigned char *p = (unsigned char *)(i % 3 == 0 ? nm_memalign(dbg, align, size)
                                             : i % 3 == 1 ? nm_malloc(dbg, size) : nm_calloc(dbg, 1, size));
        CHECK(p != NULL && (uintptr_t)p % (i % 3 == 0 ? align : 16) == 0);
        if (p) memset(p, 0x5A, size); /* up to the last byte: the tail canary must lie in base's block */
        blocks[i] = p;
    }
    for (i = 0; i < 300; i += 2) {
        blocks[i] = nm_realloc(dbg, blocks[i], i % 7 * 13);
        CHECK(blocks[i] != NULL);
    }
    for (i = 0; i < 300; i++) CHECK(nm_free_checked(dbg, blocks[i]) == NM_OK);
    CHECK(nm_debug_check(dbg) == NM_OK);
    nm_allocator_destroy(dbg);
}

/* Batches: alloc_many and free_many keep a chunk's free-list head in a local and write it back
 * when they move to another chunk.  Four chunks freed interleaved (A B C D A ...), with the
 * thread's hot object and a duplicate in the batch, must all come back exactly once, in every
 * mode and for sizes below, at and above a pointer and not a multiple of 16. */
static int cmp_ptr(const void *x, const void *y) {
    uintptr_t a = (uintptr_t)*(void *const *)x, b = (uintptr_t)*(void *const *)y;
    return a < b ? -1 : a > b;
}

static void check_pool_batches(void) {
    static const unsigned modes[] = {0, NM_POOL_ZERO, NM_POOL_CHECKED | NM_POOL_QUIET, NM_POOL_UNCHECKED,
                                     NM_POOL_UNCHECKED | NM_POOL_ZERO, NM_POOL_BUGHUNT | NM_POOL_QUIET};
    static const size_t sizes[] = {4, 8, 24, 40, 64, 100};
    size_t m, z;
    fprintf(stderr, "  pool batches across interleaved chunks\n");
    for (m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        for (z = 0; z < sizeof sizes / sizeof sizes[0]; z++) {
            nm_pool_t *pool = nm_pool_create(NULL, sizes[z], 16, modes[m]);
            size_t per, n, i, k, got;
            void **objs, **order, **again;
            int unchecked = (modes[m] & NM_POOL_UNCHECKED) != 0, rc;
            nm_pool_stats_t st;
            CHECK(pool != NULL);
            if (!pool) continue;
            per = nm_pool_objects_per_chunk(pool);
            n = 4 * per;
            objs = (void **)calloc(n + 2, sizeof(void *));
            order = (void **)calloc(n + 2, sizeof(void *));
            again = (void **)calloc(n + 2, sizeof(void *));
            if (!objs || !order || !again) { free(objs); free(order); free(again); nm_pool_destroy(pool); continue; }
            for (i = 0; i < n; i++) {
                objs[i] = nm_pool_alloc(pool);
                CHECK(objs[i] != NULL);
                if (objs[i]) memset(objs[i], 0x5A, sizes[z]);
            }
            for (i = 0; i < per; i++)
                for (k = 0; k < 4; k++) order[i * 4 + k] = objs[k * per + i];
            CHECK(nm_pool_free(pool, order[0]) == NM_OK); /* the hot object, freed singly */
            if (unchecked) { /* no double-free detection in this mode: no duplicates */
                CHECK(nm_pool_free_many(pool, order + 1, n - 1) == NM_OK);
            } else {
                order[n] = order[0];
                order[n + 1] = order[7];
                rc = nm_pool_free_many(pool, order, n + 2); /* order[0] and order[7] twice */
                CHECK(rc == NM_ERR_DOUBLE_FREE);
            }
            nm_clear_error();
            nm_pool_stats(pool, &st);
            CHECK(st.live == 0 && st.allocations == (int64_t)n && st.frees == (int64_t)n);
            CHECK(nm_pool_check(pool) == NM_OK);
            got = nm_pool_alloc_many(pool, again, n);
            CHECK(got == n);
            for (i = 0; i < got; i++) {
                size_t j;
                int zeroed = 1;
                if (modes[m] & NM_POOL_ZERO) for (j = 0; j < sizes[z]; j++) zeroed &= ((unsigned char *)again[i])[j] == 0;
                CHECK(zeroed);
                memset(again[i], 0xA5, sizes[z]);
            }
            /* each exactly once, and (but for bughunt's fresh blocks) the very objects freed: none
             * stranded on a list whose head was not written back */
            memcpy(order, again, got * sizeof(void *));
            qsort(order, got, sizeof(void *), cmp_ptr);
            qsort(objs, n, sizeof(void *), cmp_ptr);
            for (i = 1; i < got; i++) CHECK(order[i - 1] != order[i]);
            if (!(modes[m] & NM_POOL_BUGHUNT)) CHECK(got == n && memcmp(order, objs, n * sizeof(void *)) == 0);
            nm_pool_stats(pool, &st);
            CHECK(st.live == (int64_t)got);
            if (!(modes[m] & NM_POOL_BUGHUNT)) CHECK(st.chunks == 4);
            CHECK(nm_pool_free_many(pool, again, got) == NM_OK);
            nm_pool_stats(pool, &st);
            CHECK(st.live == 0);
            CHECK(nm_pool_check(pool) == NM_OK);
            free(objs);
            free(order);
            free(again);
            nm_pool_destroy(pool);
        }
    }
}

static void check_pools_over(nm_allocator_t *base, const char *what) {
    size_t align;
    fprintf(stderr, "    pools over %s\n", what);
    for (align = sizeof(void *); align <= 4096; align *= 2) {
        unsigned flags[3] = {0, NM_POOL_CHECKED | NM_POOL_QUIET, NM_POOL_BUGHUNT};
        int f;
        for (f = 0; f < 3; f++) {
            nm_pool_t *pool = nm_pool_create_ex(base, 24 + align / 2, 8, align, flags[f]);
            void *objs[40];
            int i;
            CHECK(pool != NULL);
            if (!pool) continue;
            for (i = 0; i < 40; i++) {
                objs[i] = nm_pool_alloc(pool);
                CHECK(objs[i] != NULL && (uintptr_t)objs[i] % align == 0);
                if (objs[i]) memset(objs[i], 0x33, 24 + align / 2);
            }
            for (i = 0; i < 40; i++) CHECK(nm_pool_free(pool, objs[i]) == NM_OK);
            nm_pool_destroy(pool);
        }
    }
}

static void check_arena_over(nm_allocator_t *base, const char *what) {
    nm_allocator_t *ar = nm_arena_create(base, 1 << 16);
    void *p, *q;
    fprintf(stderr, "    arena over %s\n", what);
    CHECK(ar != NULL && nm_allocator_alignment(ar) == 16);
    if (!ar) return;
    p = nm_malloc(ar, 100);
    q = nm_memalign(ar, 256, 100);
    CHECK(p && q && (uintptr_t)p % 16 == 0 && (uintptr_t)q % 256 == 0);
    nm_free(ar, p);
    nm_free(ar, q);
    CHECK(nm_arena_check(ar) == NM_OK);
    {   /* the whole region, to the last byte it promises */
        void *all[80];
        int n = 0, i;
        while (n < 80 && (all[n] = nm_malloc(ar, 1000)) != NULL) memset(all[n++], 0x77, 1000);
        CHECK(n > 40 && n < 80);
        nm_clear_error();
        for (i = 0; i < n; i++) nm_free(ar, all[i]);
    }
    CHECK(nm_arena_check(ar) == NM_OK);
    nm_allocator_destroy(ar);
}

static void check_align8(void) {
    nm_allocator_t *a8 = nm_allocator_align8(NULL), *dbg, *ar;
    nm_alloc_stats_t st;
    int i;
    fprintf(stderr, "  8-aligned base (alignof(max_align_t) here: %u)\n", (unsigned)nm_allocator_alignment(nm_allocator_libc()));
    CHECK(a8 != NULL);
    if (!a8) return;
    nm_set_report_hook(count_align8_reports);
    align8_reports = 0;
    CHECK(nm_allocator_alignment(a8) == 8);
    for (i = 0; i < 64; i++) {
        void *p = nm_malloc(a8, (size_t)i * 3);
        CHECK(p != NULL && (uintptr_t)p % 16 == 8); /* only 8-aligned, every time */
        nm_free(a8, p);
    }
    {   /* the guard works: an overrun is reported */
        char *p = (char *)nm_malloc(a8, 10);
        p[10] = 1;
        CHECK(nm_free_checked(a8, p) == NM_ERR_BUFFER_OVERFLOW);
        nm_clear_error();
    }
    check_table(a8, "align8");
    check_debug_over(a8, "align8");
    check_pools_over(a8, "align8");
    check_arena_over(a8, "align8");
    check_structures(a8);
    /* stacked: a debug allocator and pools on an arena on align8, pools on a debug allocator */
    ar = nm_arena_create(a8, 1 << 20);
    CHECK(ar != NULL);
    if (ar) {
        check_debug_over(ar, "an arena over align8");
        check_pools_over(ar, "an arena over align8");
        nm_allocator_destroy(ar);
    }
    dbg = nm_debug_create(a8, 0);
    CHECK(dbg != NULL);
    if (dbg) {
        check_pools_over(dbg, "a debug allocator over align8");
        CHECK(nm_debug_check(dbg) == NM_OK);
        nm_allocator_destroy(dbg);
    }
    nm_allocator_stats(a8, &st);
    CHECK(st.live_blocks == 0);
    CHECK(nm_atomic_load_relaxed(&align8_reports) == 0);
    nm_set_report_hook(NULL);
    nm_allocator_destroy(a8);
}

/* ---- threads on one debug allocator: cross-thread frees, and destroy racing the last free -- */
typedef struct { nm_allocator_t *dbg; nm_atomic_t *slots; int id; } dwork_t;

static void debug_worker(void *arg) {
    dwork_t *w = (dwork_t *)arg;
    int i;
    for (i = 0; i < 5000; i++) {
        size_t size = 1 + (size_t)((i * 37 + w->id * 11) % 200);
        unsigned char *o = (unsigned char *)nm_malloc(w->dbg, size), *old;
        if (o == NULL) abort();
        memset(o, w->id, size);
        old = (unsigned char *)nm_atomic_exchange(&w->slots[(i * 5 + w->id) % 64], (intptr_t)o);
        if (old && nm_free_checked(w->dbg, old) != NM_OK) abort(); /* often another thread's block */
    }
}

static void free_one(void *arg) {
    void **pair = (void **)arg;
    nm_free((nm_allocator_t *)pair[0], pair[1]);
}

static void check_debug_threads(nm_allocator_t *base, const char *what) {
    enum { N = 4 };
    dwork_t w[N];
    nm_atomic_t slots[64];
    nm_debug_stats_t st;
    nm_allocator_t *dbg = nm_debug_create_ex(base, 0, 128);
    int i;
    fprintf(stderr, "  debug allocator, threads (over %s)\n", what);
    memset(slots, 0, sizeof slots);
    for (i = 0; i < N; i++) {
        w[i].dbg = dbg; w[i].slots = slots; w[i].id = i + 1;
    }
    run_threads(debug_worker, w, sizeof w[0], N);
    for (i = 0; i < 64; i++) if (slots[i]) CHECK(nm_free_checked(dbg, (void *)slots[i]) == NM_OK);
    nm_debug_stats(dbg, &st);
    CHECK(st.live_blocks == 0 && st.total_allocs == N * 5000 && st.total_frees == st.total_allocs);
    CHECK(st.errors == 0 && nm_debug_check(dbg) == NM_OK);
    nm_allocator_destroy(dbg);
    /* Destroy requested while another thread frees the last block: whichever comes second tears
     * the allocator down, exactly once, and nobody touches it afterwards (ASan/TSan watch). */
    for (i = 0; i < 200; i++) {
        void *pair[2];
        nm_thread_t *th;
        pair[0] = nm_debug_create_ex(base, 0, (size_t)(i % 3));
        pair[1] = nm_malloc((nm_allocator_t *)pair[0], 32);
        CHECK(pair[0] != NULL && pair[1] != NULL);
        th = nm_thread_start(free_one, pair);
        CHECK(th != NULL);
        nm_allocator_destroy((nm_allocator_t *)pair[0]);
        if (th) nm_thread_join(th);
    }
}

/* ---- debug allocator gaps: the recycled block's poison and byte bound, double-free sites,
 * memalign messages, and reports from frees that cannot return an error ------------------- */
static int hook_calls, hook_code;
static char hook_name[64], hook_msg[512];
static void record_report(const char *name, int code, const char *message) {
    hook_calls++;
    hook_code = code;
    snprintf(hook_name, sizeof hook_name, "%s", name);
    snprintf(hook_msg, sizeof hook_msg, "%s", message);
}
static void hook_reset(void) { hook_calls = 0; hook_code = 0; hook_name[0] = hook_msg[0] = '\0'; }

static nm_atomic_t thread_reports;
static void count_double_frees(const char *name, int code, const char *message) {
    (void)message;
    if (code == NM_ERR_DOUBLE_FREE && strcmp(name, "debug") == 0) nm_atomic_add_relaxed(&thread_reports, 1);
}
static void double_freer(void *arg) {
    nm_allocator_t *d = nm_debug_create_ex(NULL, 0, 4);
    int i;
    (void)arg;
    for (i = 0; i < 100; i++) {
        void *p = nm_malloc(d, 16);
        nm_free(d, p);
        nm_free(d, p); /* reported, from this thread */
    }
    nm_clear_error();
    nm_allocator_destroy(d);
}

/* A deliberate write into memory the allocator poisoned (a freed block, a canary): made
 * addressable first, so that ASan and Valgrind leave the catching to the debug allocator. */
static void scribble(void *p, ptrdiff_t off) {
    char *c = (char *)p + off;
    NM_ASAN_UNPOISON(c, 1);
    NM_VG_UNDEFINED(c, 1);
    *c = 'x';
}

static int has(const char *text, const char *part) { return text != NULL && strstr(text, part) != NULL; }

/* The message names the block's address, size, allocation and free sites. */
static int names_block(const char *msg, void *p, const char *size) {
    char addr[32];
    snprintf(addr, sizeof addr, "%p", p);
    return has(msg, addr) && has(msg, size) && has(msg, "victim.c:7") && has(msg, "freer.c:11");
}

/* p (48 bytes, allocated at victim.c:7, freed at freer.c:11) becomes d's recycled block. */
static char *recycled_victim(nm_allocator_t *d) {
    char *p = (char *)nm_malloc_at(d, 48, "victim.c", 7), *q = (char *)nm_malloc(d, 48);
    CHECK(nm_free_checked_at(d, p, "freer.c", 11) == NM_OK);
    CHECK(nm_free_checked(d, q) == NM_OK); /* p leaves the quarantine (of one block) */
    return p;
}

static void check_debug_gaps(void) {
    nm_allocator_t *base = nm_allocator_clone(nm_allocator_libc(), "counted"), *d;
    nm_alloc_stats_t st;
    nm_debug_stats_t ds;
    char *p, *q, *r;
    fprintf(stderr, "  debug allocator: recycled block, byte bound, double-free sites, memalign, reports\n");
    nm_set_report_hook(record_report);

    /* 1. the recycled block's poison is verified when it is handed out again ... */
    d = nm_debug_create_ex(NULL, 0, 1);
    p = recycled_victim(d);
    scribble(p, 5);
    CHECK(nm_malloc(d, 48) == NULL && nm_last_error() == NM_ERR_USE_AFTER_FREE);
    CHECK(names_block(nm_last_error_message(), p, "48 bytes") && has(nm_last_error_message(), "offset 5"));
    q = (char *)nm_malloc(d, 48); /* the damaged block went back to base: the next one works */
    CHECK(q != NULL && nm_free_checked(d, q) == NM_OK);
    /* ... when flush releases it ... */
    nm_clear_error();
    CHECK(nm_debug_flush(d) == NM_OK);
    p = recycled_victim(d);
    scribble(p, 47);
    CHECK(nm_debug_flush(d) == NM_ERR_USE_AFTER_FREE && names_block(nm_last_error_message(), p, "48 bytes"));
    /* ... when another block replaces it ... */
    p = recycled_victim(d);
    scribble(p, 0);
    r = (char *)nm_malloc(d, 100);
    CHECK(nm_free_checked(d, r) == NM_ERR_USE_AFTER_FREE && names_block(nm_last_error_message(), p, "48 bytes"));
    /* ... and when the allocator is destroyed (nothing to return it to: the hook hears it) */
    CHECK(nm_debug_flush(d) == NM_OK);
    p = recycled_victim(d);
    scribble(p, 20);
    nm_clear_error();
    hook_reset();
    nm_allocator_destroy(d);
    CHECK(nm_last_error() == NM_ERR_USE_AFTER_FREE && names_block(nm_last_error_message(), p, "48 bytes"));
    CHECK(hook_calls == 1 && hook_code == NM_ERR_USE_AFTER_FREE && names_block(hook_msg, p, "48 bytes"));
    nm_clear_error();

    /* ... and only a block without extra alignment is reused for malloc (a memalign block of the
     * same raw size has its user pointer further in) */
    d = nm_debug_create_ex(NULL, 0, 0);
    p = (char *)nm_memalign(d, 64, 32);
    nm_free(d, p); /* the recycled block: 32 + 2 * 16 + 64 raw bytes, like a 96-byte malloc's */
    q = (char *)nm_malloc(d, 96);
    CHECK(q != NULL && q != p);
    if (q) memset(q, 'y', 96);
    CHECK(nm_free_checked(d, q) == NM_OK && nm_debug_check(d) == NM_OK);
    nm_allocator_destroy(d);

    /* 2. the recycled block counts against the quarantine's byte bound */
    d = nm_debug_create_ex(base, 0, 16);
    CHECK(nm_debug_set_quarantine_bytes(d, 4096) == NM_OK);
    p = (char *)nm_malloc(d, 10000);
    nm_free(d, p); /* larger than the bound: back to base at once, not kept for reuse */
    nm_allocator_stats(base, &st);
    CHECK(st.live_blocks == 0);
    p = (char *)nm_malloc(d, 1500);
    q = (char *)nm_malloc(d, 1500);
    r = (char *)nm_malloc(d, 1500);
    nm_free(d, p);
    nm_free(d, q);
    nm_free(d, r); /* 4500 bytes: p leaves, and quarantine + recycled would hold 4500: p goes to base */
    nm_debug_stats(d, &ds);
    nm_allocator_stats(base, &st);
    CHECK(ds.quarantined_blocks == 2 && ds.quarantined_bytes == 3000 && st.live_blocks == 2);
    nm_allocator_destroy(d);
    nm_allocator_stats(base, &st);
    CHECK(st.live_blocks == 0);

    /* 3. a double free names where the block was allocated and first freed */
    d = nm_debug_create_ex(NULL, 0, 1);
    p = (char *)nm_malloc_at(d, 48, "victim.c", 7);
    CHECK(nm_free_checked_at(d, p, "freer.c", 11) == NM_OK);
    CHECK(nm_free_checked(d, p) == NM_ERR_DOUBLE_FREE); /* still in the quarantine */
    CHECK(has(nm_last_error_message(), "double free") && names_block(nm_last_error_message(), p, "48 bytes"));
    q = (char *)nm_malloc(d, 64);
    CHECK(nm_free_checked(d, q) == NM_OK); /* p is the recycled block now */
    CHECK(nm_free_checked(d, p) == NM_ERR_DOUBLE_FREE);
    CHECK(has(nm_last_error_message(), "double free") && names_block(nm_last_error_message(), p, "48 bytes"));
    r = (char *)nm_malloc(d, 80);
    CHECK(nm_free_checked(d, r) == NM_OK); /* q replaces p, which goes back to base */
    CHECK(nm_free_checked(d, p) == NM_ERR_DOUBLE_FREE);
    CHECK(has(nm_last_error_message(), "double free") && names_block(nm_last_error_message(), p, "48 bytes"));
    nm_clear_error();
    nm_allocator_destroy(d);

    /* 4. memalign failures name the alignment and the size */
    d = nm_debug_create(NULL, 0);
    if (sizeof(size_t) == 8) {
        nm_allocator_t *targets[2];
        int i;
        targets[0] = nm_allocator_libc();
        targets[1] = d;
        for (i = 0; i < 2; i++) {
            CHECK(nm_memalign(targets[i], (size_t)1 << 62, 8) == NULL);
            CHECK(nm_last_error() == NM_ERR_INVALID || nm_last_error() == NM_ERR_OVERFLOW);
            CHECK(has(nm_last_error_message(), "alignment=4611686018427387904") &&
                  has(nm_last_error_message(), "size=8"));
        }
    }
    CHECK(nm_memalign(d, 24, 10) == NULL && nm_last_error() == NM_ERR_INVALID &&
          has(nm_last_error_message(), "alignment=24, size=10"));
    {
        nm_allocator_t *fa = nm_allocator_faulty(NULL, 1);
        CHECK(nm_memalign(fa, 64, 8) == NULL && nm_last_error() == NM_ERR_NOMEM);
        CHECK(has(nm_last_error_message(), "memalign(alignment=64, size=8)"));
        nm_allocator_destroy(fa);
    }
    nm_clear_error();
    nm_allocator_destroy(d);

    /* 5. errors found by a free that cannot return them: to the hook (not from nm_free_checked),
     * and kept by the debug allocator for its next check */
    d = nm_debug_create_ex(NULL, 0, 16);
    p = (char *)nm_malloc_at(d, 64, "victim.c", 7);
    scribble(p, 64);
    hook_reset();
    nm_free(d, p);
    CHECK(hook_calls == 1 && hook_code == NM_ERR_BUFFER_OVERFLOW && strcmp(hook_name, "debug") == 0);
    CHECK(has(hook_msg, "buffer overflow") && has(hook_msg, "victim.c:7"));
    nm_clear_error();
    CHECK(nm_debug_check(d) == NM_ERR_BUFFER_OVERFLOW && strcmp(nm_last_error_message(), hook_msg) == 0);
    CHECK(nm_debug_check(d) == NM_OK); /* reported once */
    p = (char *)nm_malloc(d, 32);
    scribble(p, 32);
    CHECK(nm_free_checked(d, p) == NM_ERR_BUFFER_OVERFLOW && hook_calls == 1); /* the caller has it */
    CHECK(nm_debug_check(d) == NM_OK);
    p = (char *)nm_malloc(d, 32);
    nm_free(d, p);
    nm_free(d, p); /* a double free through nm_free */
    CHECK(hook_calls == 2 && hook_code == NM_ERR_DOUBLE_FREE);
    q = (char *)nm_malloc(d, 16);
    scribble(q, 16);
    nm_free(d, q); /* a second unreported error: the first stays pending */
    CHECK(hook_calls == 3 && hook_code == NM_ERR_BUFFER_OVERFLOW);
    r = (char *)nm_malloc(d, 24);
    scribble(r, -1);
    CHECK(nm_debug_check(d) == NM_ERR_BUFFER_UNDERFLOW); /* found now: newer than the pending one */
    CHECK(nm_free_checked(d, r) == NM_ERR_BUFFER_UNDERFLOW);
    CHECK(nm_debug_check(d) == NM_ERR_DOUBLE_FREE && has(nm_last_error_message(), "double free"));
    CHECK(nm_debug_check(d) == NM_OK);
    nm_debug_stats(d, &ds);
    CHECK(ds.errors == 6); /* every one counted, reported or not */
    nm_clear_error();
    nm_allocator_destroy(d);
    {   /* an arena's bad free, and one through a wrapper (reported once) */
        nm_allocator_t *ar = nm_arena_create(NULL, 1 << 16), *fa = nm_allocator_faulty(ar, 0);
        hook_reset();
        p = (char *)nm_malloc(ar, 100);
        nm_free(ar, p);
        nm_free(ar, p);
        CHECK(hook_calls == 1 && hook_code == NM_ERR_DOUBLE_FREE && strcmp(hook_name, "arena") == 0);
        p = (char *)nm_malloc(fa, 100);
        nm_free(fa, p);
        nm_free(fa, p);
        CHECK(hook_calls == 2 && hook_code == NM_ERR_DOUBLE_FREE);
        CHECK(nm_free_checked(ar, p) == NM_ERR_DOUBLE_FREE && hook_calls == 2);
        nm_clear_error();
        nm_allocator_destroy(fa);
        nm_allocator_destroy(ar);
    }
    {   /* reports from several threads at once, while the hook is being set (TSan watches) */
        int i;
        thread_reports = 0;
        nm_set_report_hook(count_double_frees);
        {
            nm_thread_t *t[4];
            for (i = 0; i < 4; i++) t[i] = nm_thread_start(double_freer, NULL);
            for (i = 0; i < 1000; i++) nm_set_report_hook(count_double_frees);
            for (i = 0; i < 4; i++) if (t[i]) nm_thread_join(t[i]);
        }
        CHECK(nm_atomic_load_relaxed(&thread_reports) == 4 * 100);
        CHECK(nm_get_report_hook() == count_double_frees);
    }
    nm_set_report_hook(NULL);
    nm_allocator_destroy(base);
}

int main(void) {
    nm_allocator_t *extra;
    fprintf(stderr, "nativemem C harness\n");
    check_table(nm_allocator_libc(), "libc");
#if defined(_WIN32)
    extra = windows_heap(0);
    CHECK(extra != NULL);
    if (extra) { check_table(extra, "heap"); check_structures(extra); nm_allocator_destroy(extra); }
    extra = windows_heap(1);
    CHECK(extra != NULL);
    if (extra) { check_table(extra, "process-heap"); nm_allocator_destroy(extra); }
#else
    extra = plain_libc();
    CHECK(extra != NULL);
    if (extra) { check_table(extra, "plain"); nm_allocator_destroy(extra); }
#endif
    check_structures(nm_allocator_libc());
    check_zone_usable_size();
    check_align8();
    check_threads();
    check_arena_threads();
    check_debug_threads(NULL, "libc");
    {
        nm_allocator_t *a8 = nm_allocator_align8(NULL);
        CHECK(a8 != NULL);
        if (a8) {
            nm_alloc_stats_t st;
            check_debug_threads(a8, "align8");
            nm_allocator_stats(a8, &st);
            CHECK(st.live_blocks == 0);
            nm_allocator_destroy(a8);
        }
    }
    check_pool_thread_exit();
    check_pool_chunk_overhead();
    check_pool_batches();
    check_prop_deep();
#if !defined(_WIN32)
    /* under qemu-user (.ci/c-checks.sh sets NM_HARNESS_EMULATED) a child forked while other
     * threads run may hang on the emulator's own locks, whatever the program does */
    if (getenv("NM_HARNESS_EMULATED") == NULL) check_fork();
    else fprintf(stderr, "  fork: skipped (NM_HARNESS_EMULATED: qemu-user is not fork-safe with threads)\n");
#endif
    check_debug_gaps();
    fprintf(stderr, "%d checks, %d failed\n", checks, failures);
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
