/* slot_exit_race.c -- front-door block counts lost when a thread-exit destructor (a pool's) frees
 * through nm_free after the thread's counter slot was released and reused by a new thread.
 * Exit status 1 when the libc allocator's live block count drifts. */
#include "nativemem.h"
#ifndef NTH
#define NTH 40
#endif
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
static nm_pool_t *pools[8];
static void *worker(void *arg) {
    long k = (long)arg, i;
    nm_allocator_t *L = nm_allocator_libc();
    for (i = 0; i < 200; i++) { void *p = nm_malloc(L, 32); nm_free(L, p); }
    /* touch several pools: each adds a thread node from libc, freed in the pool's thread-exit hook */
    if (getenv("NOPOOL")) return NULL;
    for (i = 0; i < 8; i++) { void *o = nm_pool_alloc(pools[(k + i) % 8]); nm_pool_free(pools[(k + i) % 8], o); }
    for (i = 0; i < 200; i++) { void *p = nm_malloc(L, 32); nm_free(L, p); }
    return NULL;
}
int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 200, r, i;
    nm_alloc_stats_t s0, s1;
    nm_allocator_stats(nm_allocator_libc(), &s0);
    for (i = 0; i < 8; i++) pools[i] = nm_pool_create(NULL, 32, 64, 0);
    for (r = 0; r < rounds; r++) {
        pthread_t t[NTH];
        for (i = 0; i < NTH; i++) pthread_create(&t[i], NULL, worker, (void *)(long)i);
        for (i = 0; i < NTH; i++) pthread_join(t[i], NULL);
    }
    for (i = 0; i < 8; i++) nm_pool_destroy(pools[i]);
    nm_allocator_stats(nm_allocator_libc(), &s1);
    printf("libc live blocks before %lld after %lld (allocs +%lld frees +%lld)\n", (long long)s0.live_blocks,
           (long long)s1.live_blocks, (long long)(s1.total_allocs - s0.total_allocs), (long long)(s1.total_frees - s0.total_frees));
    return s0.live_blocks != s1.live_blocks;
}
