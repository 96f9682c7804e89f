/* arena_dfree_race.c -- two threads free the same small block of an mt arena at once, while the
 * first thread's stripe is full for that size (its free then goes on to the heap).  Exactly one
 * of the two frees may succeed; the other must be told NM_ERR_DOUBLE_FREE.
 * Thread B waits until A's free has claimed the block (its header's size word shows the cached
 * bit, read the way a hostile caller can), then retries its free until it fails for good.
 * Exit status: 0 ok, 1 both frees succeeded (or the arena is damaged), 2 setup failed.
 * Usage: arena_dfree_race SECONDS */
#include "nativemem.h"
#include "nm_testing.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define SZ 48
static nm_allocator_t *A;
static void *_Atomic target;
static atomic_int go, b_done, quit;
static atomic_long b_wins;

static void *racer(void *arg) {
    (void)arg;
    for (;;) {
        void *p;
        while (!atomic_load(&go) && !atomic_load(&quit)) ;
        if (atomic_load(&quit)) return NULL;
        p = atomic_load(&target);
        /* wait for A's claim: the size word (header + 8) gets bit 1 (cached), or bit 0 (free) */
        while (!(atomic_load_explicit((_Atomic size_t *)((char *)p - 24), memory_order_relaxed) & 3)) ;
        for (int i = 0; i < 2000; i++)
            if (nm_free_checked(A, p) == 0) { atomic_fetch_add(&b_wins, 1); break; }
        nm_clear_error();
        atomic_store(&go, 0);
        atomic_store(&b_done, 1);
    }
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 10;
    pthread_t th;
    struct timespec t0, t1;
    void *keep[8];
    long rounds = 0, both = 0;
    int i, rc = 0;
    A = nm_arena_create(NULL, 1 << 20);
    if (!A) return 2;
    nm_arena_testing_mt(A, 1);
    pthread_create(&th, NULL, racer, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        void *p;
        long before = atomic_load(&b_wins);
        int a_rc;
        for (i = 0; i < 8; i++) keep[i] = nm_malloc(A, SZ);
        p = nm_malloc(A, SZ);
        for (i = 0; i < 8; i++) nm_free(A, keep[i]);      /* this thread's stripe: full for the size */
        atomic_store(&target, p);
        atomic_store(&b_done, 0);
        atomic_store(&go, 1);
        a_rc = nm_free_checked(A, p);                     /* to the heap: the stripe is full */
        while (!atomic_load(&b_done)) ;
        if (a_rc == 0 && atomic_load(&b_wins) != before) {
            fprintf(stderr, "round %ld: both frees of %p succeeded\n", rounds, p);
            both++;
            break;
        }
        nm_clear_error();
        rounds++;
        clock_gettime(CLOCK_MONOTONIC, &t1);
    } while ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9 < secs);
    atomic_store(&quit, 1);
    pthread_join(th, NULL);
    if (nm_arena_check(A) != 0) { fprintf(stderr, "check: %s\n", nm_last_error_message()); rc = 1; }
    printf("rounds %ld both-succeeded %ld\n", rounds, both);
    return rc || both;
}
