/* pool_free_many_interior.c -- nm_pool_free_many with a pointer inside an object of the batch's
 * run chunk, for strides that are not a power of two (24 = 8 x 3, 48 = 16 x 3, 192 = 64 x 3,
 * 320 = 64 x 5).  The pointer must be refused (NM_ERR_INVALID_FREE, its index named) and nothing
 * else touched; the objects before and after it freed.  Prints "OK" last on success. */
#include <stdio.h>
#include <string.h>
#include "nm_pool.h"
#include "nm_alloc.h"

int main(void) {
    static const struct { size_t size, align; } cfg[] = {{24, 8}, {48, 16}, {150, 64}, {300, 64}};
    static const unsigned modes[] = {0, NM_POOL_ZERO, NM_POOL_CHECKED};
    int fails = 0;
    size_t k, m, off;
    for (m = 0; m < sizeof modes / sizeof *modes; m++) {
        for (k = 0; k < sizeof cfg / sizeof *cfg; k++) {
            size_t stride = (cfg[k].size + cfg[k].align - 1) / cfg[k].align * cfg[k].align;
            for (off = cfg[k].align; off < stride; off += cfg[k].align) {
                nm_pool_t *p = nm_pool_create_ex(NULL, cfg[k].size, 16, cfg[k].align, modes[m] | NM_POOL_QUIET);
                void *a = nm_pool_alloc(p), *b = nm_pool_alloc(p), *c = nm_pool_alloc(p);
                void *batch[3];
                int rc;
                nm_pool_stats_t st;
                batch[0] = a;                 /* opens the run on a's chunk */
                batch[1] = (char *)b + off;   /* inside b: the run chunk's fast check takes it */
                batch[2] = c;
                fprintf(stderr, "mode %u size %zu align %zu offset %zu\n", modes[m], cfg[k].size, cfg[k].align, off);
                rc = nm_pool_free_many(p, batch, 3);
                if (rc != NM_ERR_INVALID_FREE || !strstr(nm_last_error_message(), "pointer 1 of 3")) {
                    fprintf(stderr, "FAIL: free_many -> %d (%s), want NM_ERR_INVALID_FREE at pointer 1\n", rc,
                            nm_last_error_message());
                    fails++;
                }
                if (nm_pool_owns(p, b) != 1) { fprintf(stderr, "FAIL: b no longer live\n"); fails++; }
                if (nm_pool_owns(p, a) != 0 || nm_pool_owns(p, c) != 0) { fprintf(stderr, "FAIL: a or c still live\n"); fails++; }
                if ((rc = nm_pool_free(p, b)) != 0) { fprintf(stderr, "FAIL: free b -> %d\n", rc); fails++; }
                nm_pool_stats(p, &st);
                if (st.live != 0 || st.frees != 3) { fprintf(stderr, "FAIL: live %lld frees %lld\n", (long long)st.live, (long long)st.frees); fails++; }
                nm_pool_destroy(p);
            }
        }
    }
    if (fails) return 1;
    printf("OK\n");
    return 0;
}
