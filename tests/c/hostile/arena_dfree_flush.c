/* arena_dfree_flush.c -- a double free racing an unrelated thread's cache flush.
 * Thread A frees blocks into its stripe, then frees them again (double frees: each must be told
 * NM_ERR_DOUBLE_FREE) while thread B walks the arena (nm_arena_stats empties every cache into the
 * heap).  A double free that returns 0 has claimed a block the heap also holds.
 * Exit status: 0 ok, 1 a double free was accepted (or the arena is damaged), 2 setup failed.
 * Usage: arena_dfree_flush ROUNDS [MODE]  MODE "mt" (default: stripes) or "st" (quick cache) */
#include "nativemem.h"
#include "nm_testing.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NB 240
static nm_allocator_t *A;
static atomic_int stop;
static atomic_long accepted;

static void *walker(void *arg) {
    nm_arena_stats_t st;
    (void)arg;
    while (!atomic_load(&stop)) nm_arena_stats(A, &st);
    return NULL;
}

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 2000, r;
    int st_mode = argc > 2 && strcmp(argv[2], "st") == 0;
    pthread_t w;
    void *p[NB];
    int i, k, rc = 0;
    nm_alloc_stats_t s;
    A = nm_arena_create(NULL, 1 << 20);
    if (!A) return 2;
    if (!st_mode) nm_arena_testing_mt(A, 1);
    pthread_create(&w, NULL, walker, NULL);
    for (r = 0; r < rounds && !accepted; r++) {
        for (i = 0; i < NB; i++) p[i] = nm_malloc(A, 16 + (size_t)(i % 30) * 16);
        for (i = 0; i < NB; i++) nm_free(A, p[i]);              /* into the stripe (or quick cache) */
        for (k = 0; k < 40 && !accepted; k++)
            for (i = 0; i < NB; i++)
                if (nm_free_checked(A, p[i]) == 0) {            /* a double free: must fail */
                    fprintf(stderr, "round %ld: double free of %p accepted\n", r, p[i]);
                    accepted++;
                }
        nm_clear_error();
    }
    atomic_store(&stop, 1);
    pthread_join(w, NULL);
    if (nm_arena_check(A) != 0) { fprintf(stderr, "check: %s\n", nm_last_error_message()); rc = 1; }
    nm_allocator_stats(A, &s);
    printf("rounds %ld accepted %ld live %lld\n", r, (long)accepted, (long long)s.live_blocks);
    if (accepted) rc = 1;
    return rc;
}
