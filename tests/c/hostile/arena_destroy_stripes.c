/* arena_destroy_stripes.c -- an mt arena destroyed while other threads still hold blocks (the
 * destroy deferred to the last free); they free them across threads into their stripes, so the
 * last free finishes the destroy with blocks cached in stripes.  The region comes from libc through
 * nm_allocator_libc(): after every round its live block count is back where it was.
 * Run it under ASan too.  Exit status: 0 ok, 1 counts drifted, 2 setup failed.
 * Usage: arena_destroy_stripes ROUNDS [THREADS] */
#include "nativemem.h"
#include "nm_testing.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define K 64
static nm_allocator_t *A;
static void **blocks;
static int nth;
static pthread_barrier_t bar;

static void *worker(void *arg) {
    long me = (long)arg, i;
    for (i = 0; i < K; i++) blocks[me * K + i] = nm_malloc(A, 1 + (size_t)((me * 131 + i * 17) % 480));
    pthread_barrier_wait(&bar); /* everyone allocated */
    pthread_barrier_wait(&bar); /* the arena is destroyed (deferred) */
    for (i = 0; i < K; i++) nm_free(A, blocks[((me + 1) % nth) * K + i]); /* a neighbour's blocks */
    return NULL;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 50, r, i;
    nm_alloc_stats_t s0, s1;
    pthread_t *t;
    nth = argc > 2 ? atoi(argv[2]) : 40;
    t = calloc(nth, sizeof *t);
    blocks = calloc((size_t)nth * K, sizeof *blocks);
    nm_allocator_stats(nm_allocator_libc(), &s0);
    for (r = 0; r < rounds; r++) {
        A = nm_arena_create(nm_allocator_libc(), 1 << 20);
        if (!A) return 2;
        if (r & 1) nm_arena_testing_mt(A, 1);
        pthread_barrier_init(&bar, NULL, (unsigned)nth + 1);
        for (i = 0; i < nth; i++) pthread_create(&t[i], NULL, worker, (void *)(long)i);
        pthread_barrier_wait(&bar);
        for (i = 0; i < nth * K; i++) if (!blocks[i]) { fprintf(stderr, "alloc failed\n"); return 2; }
        nm_allocator_destroy(A); /* live blocks: deferred to the last free */
        pthread_barrier_wait(&bar);
        for (i = 0; i < nth; i++) pthread_join(t[i], NULL);
        pthread_barrier_destroy(&bar);
    }
    nm_allocator_stats(nm_allocator_libc(), &s1);
    printf("libc live blocks before %lld after %lld\n", (long long)s0.live_blocks, (long long)s1.live_blocks);
    return s0.live_blocks != s1.live_blocks;
}
