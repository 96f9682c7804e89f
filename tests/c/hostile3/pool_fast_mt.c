/* pool_fast_mt.c -- threads hammer one pool through every entry point (nm_pool_alloc,
 * nm_pool_free, nm_pool_alloc_many, nm_pool_free_many) and hand objects to each other through
 * mailboxes (remote frees, singly and inside batches mixed with their own objects).  Every object
 * carries a stamp (holder, serial) written when it is handed out and verified before it is freed:
 * an object handed out twice, or written by the pool while live, breaks a stamp.  A thread also
 * double-frees its own objects right after freeing them (must be NM_ERR_DOUBLE_FREE) and some
 * threads exit while holding a hot object.  At the end the statistics must be exact and the
 * pool empty.
 *
 * usage: pool_fast_mt FLAGS SIZE ALIGN THREADS OPS SEED     prints "OK" last on success */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include "nm_pool.h"
#include "nm_alloc.h"

#define MAXT 8
#define MBOX 64
#define HOLD 256

static nm_pool_t *pool;
static unsigned flags;
static size_t osize;
static int nthreads, nops;
static unsigned seed0;
static _Atomic(void *) mbox[MAXT][MBOX];
static atomic_long nalloc, nfree, nfail;

typedef struct { uint32_t holder, serial; } stamp_t;

static void fail(const char *what, void *p, int rc) {
    if (atomic_fetch_add(&nfail, 1) < 20)
        fprintf(stderr, "FAIL: %s %p rc=%d (%s)\n", what, p, rc, nm_last_error_message());
}

static uint32_t rnd(uint64_t *s) {
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return (uint32_t)(*s >> 11);
}

static void stamp(void *p, uint32_t holder, uint32_t serial) {
    if (osize >= sizeof(stamp_t)) {
        stamp_t s = {holder, serial};
        memcpy(p, &s, sizeof s);
        if (osize > sizeof s) memset((char *)p + sizeof s, (int)(serial & 0xff), osize - sizeof s);
    } else {
        memset(p, (int)(serial & 0xff), osize);
    }
}
/* A stamp that a mailbox hand-over changes: the new holder re-stamps. */
static int stamp_ok(void *p, uint32_t holder, uint32_t serial) {
    size_t i;
    if (osize >= sizeof(stamp_t)) {
        stamp_t s;
        memcpy(&s, p, sizeof s);
        if (s.holder != holder || s.serial != serial) return 0;
        for (i = sizeof s; i < osize; i++)
            if (((unsigned char *)p)[i] != (serial & 0xff)) return 0;
        return 1;
    }
    for (i = 0; i < osize; i++)
        if (((unsigned char *)p)[i] != (serial & 0xff)) return 0;
    return 1;
}
static int zero_ok(void *p) {
    size_t i;
    for (i = 0; i < osize; i++)
        if (((unsigned char *)p)[i]) return 0;
    return 1;
}

typedef struct { void *p; uint32_t serial; } held_t;

static void *worker(void *arg) {
    int me = (int)(intptr_t)arg, op;
    uint64_t s = (uint64_t)seed0 * 0x9E3779B97F4A7C15ull + (uint64_t)me * 7919 + 1;
    held_t held[HOLD];
    int nh = 0;
    uint32_t serial = 1;
    long my_alloc = 0, my_free = 0;
    void *batch[64];
    for (op = 0; op < nops; op++) {
        uint32_t r = rnd(&s) % 100;
        if (r < 30 && nh < HOLD) { /* single */
            void *p = nm_pool_alloc(pool);
            if (!p) { fail("alloc NULL", p, 0); continue; }
            if ((flags & NM_POOL_ZERO) && !zero_ok(p)) fail("not zeroed", p, 0);
            stamp(p, (uint32_t)me, serial);
            held[nh].p = p; held[nh].serial = serial++; nh++;
            my_alloc++;
        } else if (r < 40 && nh < HOLD - 32) { /* batch */
            size_t k = 1 + rnd(&s) % 32, got, i;
            got = nm_pool_alloc_many(pool, batch, k);
            if (got != k) fail("alloc_many short", NULL, (int)got);
            for (i = 0; i < got; i++) {
                if ((flags & NM_POOL_ZERO) && !zero_ok(batch[i])) fail("not zeroed (batch)", batch[i], 0);
                stamp(batch[i], (uint32_t)me, serial);
                held[nh].p = batch[i]; held[nh].serial = serial++; nh++;
            }
            my_alloc += (long)got;
        } else if (r < 60 && nh > 0) { /* single free, sometimes the last one allocated */
            int i = (rnd(&s) & 1) ? nh - 1 : (int)(rnd(&s) % (uint32_t)nh), rc;
            void *p = held[i].p;
            if (!stamp_ok(p, (uint32_t)me, held[i].serial)) fail("stamp broken (object handed out twice?)", p, 0);
            held[i] = held[--nh];
            rc = nm_pool_free(pool, p);
            if (rc) fail("free", p, rc);
            else my_free++;
            if ((rnd(&s) % 8) == 0 && !(flags & NM_POOL_UNCHECKED)) {
                /* our own object (we allocated it, so we own its chunk): nobody can have it again
                 * before our next allocation */
                rc = nm_pool_free(pool, p);
                if (rc != NM_ERR_DOUBLE_FREE) fail("double free not reported", p, rc);
            }
        } else if (r < 75 && nh > 0) { /* batch free: own objects, plus whatever is in my mailbox */
            size_t k = 0, i;
            int j;
            int want = 1 + (int)(rnd(&s) % 32);
            for (j = 0; j < want && nh > 0 && k < 48; j++) {
                int i2 = (int)(rnd(&s) % (uint32_t)nh);
                if (!stamp_ok(held[i2].p, (uint32_t)me, held[i2].serial)) fail("stamp broken (batch)", held[i2].p, 0);
                batch[k++] = held[i2].p;
                held[i2] = held[--nh];
            }
            for (j = 0; j < MBOX && k < 64; j++) {
                void *q = atomic_exchange(&mbox[me][j], NULL);
                if (q) batch[k++] = q;
            }
            /* shuffle */
            for (i = k; i > 1; i--) {
                size_t t = rnd(&s) % i;
                void *x = batch[i - 1]; batch[i - 1] = batch[t]; batch[t] = x;
            }
            {
                int rc = nm_pool_free_many(pool, batch, k);
                if (rc) fail("free_many", NULL, rc);
                else my_free += (long)k;
            }
        } else if (r < 90 && nh > 0) { /* hand one to another thread */
            int to = (int)(rnd(&s) % (uint32_t)nthreads), i = (int)(rnd(&s) % (uint32_t)nh), j;
            void *p = held[i].p;
            if (!stamp_ok(p, (uint32_t)me, held[i].serial)) fail("stamp broken (hand-over)", p, 0);
            memset(p, 0x5a, osize); /* no longer ours: anything but our stamp */
            for (j = 0; j < MBOX; j++) {
                void *expect = NULL;
                if (atomic_compare_exchange_strong(&mbox[to][j], &expect, p)) break;
            }
            if (j < MBOX) held[i] = held[--nh];
            else stamp(p, (uint32_t)me, held[i].serial);
        } else { /* take from my mailbox and free singly (remote frees) */
            int j;
            for (j = 0; j < MBOX; j++) {
                void *q = atomic_exchange(&mbox[me][j], NULL);
                if (q) {
                    int rc = nm_pool_free(pool, q);
                    if (rc) fail("free (mailbox)", q, rc);
                    else my_free++;
                }
            }
        }
    }
    /* exit with a hot object: free one, keep the rest freed in a batch */
    {
        while (nh > 0) {
            void *p = held[--nh].p;
            int rc = nm_pool_free(pool, p);
            if (rc) fail("final free", p, rc);
            else my_free++;
        }
    }
    atomic_fetch_add(&nalloc, my_alloc);
    atomic_fetch_add(&nfree, my_free);
    return NULL;
}

int main(int argc, char **argv) {
    pthread_t th[MAXT];
    int i, j, round;
    nm_pool_stats_t st;
    size_t align;
    if (argc < 7) return 2;
    flags = (unsigned)strtoul(argv[1], NULL, 0) | NM_POOL_QUIET;
    osize = strtoul(argv[2], NULL, 0);
    align = strtoul(argv[3], NULL, 0);
    nthreads = atoi(argv[4]);
    nops = atoi(argv[5]);
    seed0 = (unsigned)atoi(argv[6]);
    if (nthreads > MAXT) nthreads = MAXT;
    pool = nm_pool_create_ex(NULL, osize, 32, align, flags);
    if (!pool) { fprintf(stderr, "create: %s\n", nm_last_error_message()); return 2; }
    for (round = 0; round < 2; round++) { /* the second round's threads reuse the exited ones' caches */
        for (i = 0; i < nthreads; i++) pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
        for (i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
        for (i = 0; i < nthreads; i++)
            for (j = 0; j < MBOX; j++) {
                void *q = atomic_exchange(&mbox[i][j], NULL);
                if (q) {
                    int rc = nm_pool_free(pool, q);
                    if (rc) fail("free (leftover)", q, rc);
                    else atomic_fetch_add(&nfree, 1);
                }
            }
    }
    nm_pool_stats(pool, &st);
    if (st.allocations != nalloc || st.frees != nfree || st.live != 0) {
        fprintf(stderr, "FAIL: stats allocations %lld frees %lld live %lld; counted %ld %ld\n", (long long)st.allocations,
                (long long)st.frees, (long long)st.live, (long)nalloc, (long)nfree);
        atomic_fetch_add(&nfail, 1);
    }
    if (!(flags & NM_POOL_UNCHECKED)) {
        size_t live = nm_pool_live_objects(pool, NULL, 0);
        int rc = nm_pool_check(pool);
        if (live != 0) { fprintf(stderr, "FAIL: %zu live objects listed\n", live); atomic_fetch_add(&nfail, 1); }
        if (rc) { fprintf(stderr, "FAIL: check %d %s\n", rc, nm_last_error_message()); atomic_fetch_add(&nfail, 1); }
    }
    /* everything is free: this thread takes every slot of every chunk, with no new chunk (no
     * object was lost: a free list dropped, a hot object forgotten) and no two objects overlapping */
    {
        size_t n = (size_t)st.chunks * nm_pool_objects_per_chunk(pool), k, got;
        void **v = malloc((n + 1) * sizeof *v);
        nm_pool_stats_t st2;
        got = nm_pool_alloc_many(pool, v, n);
        if (got != n) { fprintf(stderr, "FAIL: final alloc_many %zu of %zu\n", got, n); atomic_fetch_add(&nfail, 1); }
        nm_pool_stats(pool, &st2);
        if (st2.chunks != st.chunks) {
            fprintf(stderr, "FAIL: %lld chunks after taking every slot of %lld chunks: objects were lost\n",
                    (long long)st2.chunks, (long long)st.chunks);
            atomic_fetch_add(&nfail, 1);
        }
        for (k = 0; k < got; k++) memset(v[k], (int)(k & 0xff), osize);
        for (k = 0; k < got; k++) {
            size_t b;
            for (b = 0; b < osize; b++)
                if (((unsigned char *)v[k])[b] != (k & 0xff)) { fprintf(stderr, "FAIL: object %zu overlaps another\n", k); atomic_fetch_add(&nfail, 1); break; }
        }
        if (nm_pool_free_many(pool, v, got)) { fprintf(stderr, "FAIL: final free_many %s\n", nm_last_error_message()); atomic_fetch_add(&nfail, 1); }
        free(v);
    }
    nm_pool_destroy(pool);
    if (nfail) return 1;
    printf("allocations %ld frees %ld\nOK\n", (long)nalloc, (long)nfree);
    return 0;
}
