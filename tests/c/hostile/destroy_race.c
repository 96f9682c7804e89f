/* destroy_race.c -- nm_allocator_destroy racing the frees of the last blocks (deferred destroy):
 * the destroy must run exactly once and nothing may touch the table after it (build with ASan). */
#include "nativemem.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
static const nm_allocator_ops_t *base_ops;
static int destroyed;
static void *m(void *c, size_t n) { (void)c; return malloc(n); }
static void *r(void *c, void *p, size_t n) { (void)c; return realloc(p, n); }
static void f(void *c, void *p) { (void)c; free(p); }
static void *ma(void *c, size_t al, size_t n) { (void)c; void *p; return posix_memalign(&p, al, n) ? NULL : p; }
static void d(void *c) { (void)c; __atomic_add_fetch(&destroyed, 1, __ATOMIC_SEQ_CST); }
static const nm_allocator_ops_t ops = {m, NULL, r, f, ma, NULL, d, 0, 0};
static nm_allocator_t *A;
static void *blk[64];
static atomic_int go;
#ifndef NT
#define NT 8
#endif
static void *freer(void *arg) {
    long i = (long)arg;
    while (!atomic_load(&go)) {}
    nm_free(A, blk[i]);
    return NULL;
}
int main(int argc, char **argv) {
    int iters = argc > 1 ? atoi(argv[1]) : 2000, it, i;
    (void)base_ops;
    for (it = 0; it < iters; it++) {
        pthread_t t[NT];
        destroyed = 0;
        A = nm_allocator_new("race", &ops, NULL);
        for (i = 0; i < NT; i++) blk[i] = nm_malloc(A, 16);
        atomic_store(&go, 0);
        for (i = 0; i < NT; i++) pthread_create(&t[i], NULL, freer, (void *)(long)i);
        atomic_store(&go, 1);
        nm_allocator_destroy(A);
        for (i = 0; i < NT; i++) pthread_join(t[i], NULL);
        if (destroyed != 1) { printf("iteration %d: destroyed %d times\n", it, destroyed); return 1; }
    }
    printf("ok\n");
    return 0;
}
