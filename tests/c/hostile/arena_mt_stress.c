/* arena_mt_stress.c -- many threads (more than the arena's 8 stripes, more than the front door's
 * 31 owned slots) hammer one mt arena: malloc/calloc/free/realloc/memalign/usable_size, cross-thread
 * frees through a shared table, periodic nm_arena_check/nm_arena_stats, a tiny arena so searches
 * fail and flushes run.  Every block carries a stamp (its own address and a sequence number) over
 * its whole payload; a block handed out twice, or written by the allocator while live, shows as a
 * damaged stamp.  Exit status: 0 ok, 1 invariant broken, 2 setup failed.
 * Usage: arena_mt_stress ARENA_BYTES THREADS ITERS [seed] */
#include "nativemem.h"
#include "nm_testing.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TABLE 4096
static nm_allocator_t *A;
static void *table[TABLE];
static size_t table_req[TABLE];
static pthread_mutex_t table_lock[TABLE];
static atomic_long failures;
static long iters;
static size_t tuse = TABLE, hold = 16, big = 6000;
static atomic_ulong seqno;

static void fail(const char *what, void *p, long x) {
    fprintf(stderr, "FAIL: %s (%p, %ld)\n", what, p, x);
    failures++;
}

static uint64_t rnd(uint64_t *s) { *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17; return *s; }

/* stamp: every 8-byte word of the payload = address ^ seq (seq kept in the first word) */
static void stamp(void *p, size_t n) {
    unsigned long s = ++seqno;
    size_t i;
    if (n >= 8) {
        ((unsigned long *)p)[0] = s;
        for (i = 1; i < n / 8; i++) ((uintptr_t *)p)[i] = (uintptr_t)p ^ s ^ i;
    } else memset(p, 0x5a, n);
}
static int stamped(void *p, size_t n) {
    size_t i;
    if (n >= 8) {
        unsigned long s = ((unsigned long *)p)[0];
        for (i = 1; i < n / 8; i++) if (((uintptr_t *)p)[i] != ((uintptr_t)p ^ s ^ i)) return 0;
    } else for (i = 0; i < n; i++) if (((unsigned char *)p)[i] != 0x5a) return 0;
    return 1;
}

static size_t pick_size(uint64_t *r) {
    uint64_t x = rnd(r) % 100;
    if (x < 80) return 1 + rnd(r) % 480;   /* cached classes */
    if (x < 95) return 481 + rnd(r) % (big < 1500 ? big : 1500);
    return 1 + rnd(r) % big;
}

static void put(uint64_t *r, void *p, size_t n) {
    size_t k = rnd(r) % tuse;
    void *old;
    size_t on;
    pthread_mutex_lock(&table_lock[k]);
    old = table[k]; on = table_req[k];
    table[k] = p; table_req[k] = n;
    pthread_mutex_unlock(&table_lock[k]);
    if (old) {
        int rc;
        if (!stamped(old, on)) fail("stamp damaged at free", old, (long)on);
        if (nm_usable_size(A, old) != on) fail("usable_size wrong at free", old, (long)nm_usable_size(A, old));
        rc = nm_free_checked(A, old);
        if (rc) fail("free_checked of a live block failed", old, rc);
    }
}

static void *worker(void *arg) {
    uint64_t r = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1;
    long i;
    void *mine[16] = {0};
    size_t mreq[16] = {0};
    for (i = 0; i < iters; i++) {
        uint64_t op = rnd(&r) % 100;
        size_t k = rnd(&r) % hold;
        if (op < 40) { /* malloc into own slot */
            size_t n = pick_size(&r);
            void *p = (op & 1) ? nm_malloc(A, n) : nm_calloc(A, 1, n);
            if (p == NULL) { nm_clear_error(); continue; }
            if ((uintptr_t)p % 16) fail("misaligned", p, 0);
            if (!(op & 1)) { size_t j; for (j = 0; j < n; j++) if (((unsigned char *)p)[j]) { fail("calloc not zeroed", p, (long)j); break; } }
            stamp(p, n);
            if (mine[k]) {
                if (!stamped(mine[k], mreq[k])) fail("stamp damaged (own)", mine[k], (long)mreq[k]);
                nm_free(A, mine[k]);
            }
            mine[k] = p; mreq[k] = n;
        } else if (op < 55) { /* hand one over to the shared table (cross-thread frees) */
            if (mine[k]) { put(&r, mine[k], mreq[k]); mine[k] = NULL; }
        } else if (op < 70) { /* realloc own */
            if (mine[k]) {
                size_t n = pick_size(&r);
                size_t keep = n < mreq[k] ? n : mreq[k];
                unsigned long s0 = mreq[k] >= 8 ? ((unsigned long *)mine[k])[0] : 0;
                if (!stamped(mine[k], mreq[k])) fail("stamp damaged before realloc", mine[k], (long)mreq[k]);
                void *q = nm_realloc(A, mine[k], n);
                if (q == NULL) { nm_clear_error(); continue; }
                if (keep >= 8 && ((unsigned long *)q)[0] != s0) fail("realloc lost contents", q, 0);
                (void)keep;
                stamp(q, n);
                mine[k] = q; mreq[k] = n;
            }
        } else if (op < 78) { /* memalign */
            size_t al = (size_t)16 << (rnd(&r) % 6);
            size_t n = pick_size(&r);
            void *p = nm_memalign(A, al, n);
            if (p == NULL) { nm_clear_error(); continue; }
            if ((uintptr_t)p % al) fail("memalign misaligned", p, (long)al);
            stamp(p, n);
            if (mine[k]) nm_free(A, mine[k]);
            mine[k] = p; mreq[k] = n;
        } else if (op < 90) { /* free own */
            if (mine[k]) {
                if (!stamped(mine[k], mreq[k])) fail("stamp damaged (own free)", mine[k], (long)mreq[k]);
                if (nm_usable_size(A, mine[k]) != mreq[k]) fail("usable_size wrong", mine[k], (long)nm_usable_size(A, mine[k]));
                int rc = nm_free_checked(A, mine[k]);
                if (rc) fail("free_checked failed", mine[k], rc);
                mine[k] = NULL;
            }
        } else if (op < 99) { /* take one from the table */
            size_t j = rnd(&r) % tuse;
            void *p;
            size_t n;
            pthread_mutex_lock(&table_lock[j]);
            p = table[j]; n = table_req[j]; table[j] = NULL;
            pthread_mutex_unlock(&table_lock[j]);
            if (p) {
                if (!stamped(p, n)) fail("stamp damaged (table)", p, (long)n);
                if (nm_free_checked(A, p)) fail("cross-thread free failed", p, 0);
            }
        } else { /* walk */
            nm_arena_stats_t st;
            if (rnd(&r) & 1) { if (nm_arena_check(A) != 0) fail(nm_last_error_message(), NULL, 0); }
            else if (nm_arena_stats(A, &st) != 0) fail("stats failed", NULL, 0);
            else if (st.free_bytes + st.used_bytes != st.capacity) fail("stats bytes do not add up", NULL, (long)(st.free_bytes + st.used_bytes));
        }
    }
    for (i = 0; i < 16; i++) if (mine[i]) {
        if (!stamped(mine[i], mreq[i])) fail("stamp damaged (end)", mine[i], (long)mreq[i]);
        if (nm_free_checked(A, mine[i])) fail("end free failed", mine[i], 0);
    }
    return NULL;
}

int main(int argc, char **argv) {
    size_t size = argc > 1 ? strtoul(argv[1], NULL, 0) : 65536;
    int nth = argc > 2 ? atoi(argv[2]) : 40, i;
    pthread_t *t;
    nm_alloc_stats_t s;
    nm_arena_stats_t st;
    for (i = 0; i < TABLE; i++) pthread_mutex_init(&table_lock[i], NULL);
    if (getenv("TUSE")) tuse = strtoul(getenv("TUSE"), NULL, 0);
    if (getenv("HOLD")) hold = strtoul(getenv("HOLD"), NULL, 0);
    if (getenv("BIG")) big = strtoul(getenv("BIG"), NULL, 0);
    iters = argc > 3 ? atol(argv[3]) : 20000;
    nm_set_oom_policy(NM_OOM_RAISE);
    A = nm_arena_create(NULL, size);
    if (!A) return 2;
    if (getenv("FORCE_MT")) nm_arena_testing_mt(A, 1);
    t = calloc(nth, sizeof *t);
    for (i = 0; i < nth; i++) pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    for (i = 0; i < nth; i++) pthread_join(t[i], NULL);
    for (i = 0; i < TABLE; i++) if (table[i]) {
        if (!stamped(table[i], table_req[i])) fail("stamp damaged (final)", table[i], 0);
        if (nm_free_checked(A, table[i])) fail("final free failed", table[i], 0);
    }
    if (nm_arena_check(A) != 0) fail(nm_last_error_message(), NULL, 0);
    nm_allocator_stats(A, &s);
    if (s.live_blocks != 0 || s.live_bytes != 0) fail("live counts not zero", NULL, (long)s.live_blocks);
    nm_arena_stats(A, &st);
    if (st.free_blocks != 1 || st.largest_free != st.capacity) fail("arena not whole again", NULL, (long)st.free_blocks);
    printf("mt=%d allocs=%lld failures=%ld\n", nm_arena_testing_mt(A, 0), (long long)s.total_allocs, (long)failures);
    nm_allocator_destroy(A);
    return failures ? 1 : 0;
}
