/* example_backend.c -- writing a backend in C: one const nm_allocator_ops_t and its functions.
 * This one is a counting wrapper around the C library (a real backend would call its own
 * allocator); everything nativemem builds on allocators then runs on it: the front door's checks
 * and statistics, pools, the debug allocator.  tests/test_capi.py compiles and runs it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nativemem.h"

typedef struct counting { size_t mallocs, frees; } counting_t;

static void *c_malloc(void *ctx, size_t size) { ((counting_t *)ctx)->mallocs++; return malloc(size); }
static void *c_realloc(void *ctx, void *p, size_t size) { (void)ctx; return realloc(p, size); }
static void c_free(void *ctx, void *p) { ((counting_t *)ctx)->frees++; free(p); }
static void *c_memalign(void *ctx, size_t alignment, size_t size) {
    void *p = NULL;
    ((counting_t *)ctx)->mallocs++;
    return posix_memalign(&p, alignment, size) == 0 ? p : NULL;
}
static void c_destroy(void *ctx) { printf("destroy: %zu mallocs, %zu frees\n", ((counting_t *)ctx)->mallocs, ((counting_t *)ctx)->frees); }

/* calloc and usable_size left NULL: the front door uses malloc + memset, and counts blocks only */
static const nm_allocator_ops_t counting_ops = {c_malloc, NULL, c_realloc, c_free, c_memalign, NULL, c_destroy, 0, 0};

#define CHECK(x) do { if (!(x)) { fprintf(stderr, "FAILED: %s (line %d): %s\n", #x, __LINE__, nm_last_error_message()); return 1; } } while (0)

int main(void) {
    counting_t ctx = {0, 0};
    nm_allocator_t *a = nm_allocator_new("counting", &counting_ops, &ctx), *dbg;
    nm_alloc_stats_t st;
    nm_pool_t *pool;
    unsigned char *z;
    void *p, *o;
    size_t i;
    CHECK(a != NULL && strcmp(nm_allocator_name(a), "counting") == 0 && nm_allocator_context(a) == &ctx);
    CHECK(nm_allocator_get_stats_mode(a) == NM_STATS_BLOCKS);          /* the default: block counts */
    CHECK(nm_allocator_set_stats(a, NM_STATS_BYTES) == NM_ERR_UNSUPPORTED); /* bytes need usable_size */
    p = nm_malloc(a, 100);
    z = (unsigned char *)nm_calloc(a, 10, 10);
    CHECK(p != NULL && z != NULL);
    for (i = 0; i < 100; i++) CHECK(z[i] == 0);
    CHECK(nm_calloc(a, SIZE_MAX / 2, 4) == NULL && nm_last_error() == NM_ERR_OVERFLOW); /* checked before the backend */
    nm_allocator_stats(a, &st);
    CHECK(st.live_blocks == 2 && st.total_allocs == 2 && st.live_bytes == 0);
    nm_free(a, p);
    nm_free(a, z);
    pool = nm_pool_create(a, 40, 32, NM_POOL_ZERO);        /* pools draw from it */
    CHECK(pool != NULL);
    o = nm_pool_alloc(pool);
    CHECK(o != NULL && nm_pool_free(pool, o) == NM_OK && nm_pool_free(pool, o) == NM_ERR_DOUBLE_FREE);
    nm_pool_destroy(pool);
    dbg = nm_debug_create(a, 0);                            /* and so does the debug allocator */
    CHECK(dbg != NULL);
    p = nm_malloc(dbg, 16);
    CHECK(p != NULL);
    ((char *)p)[16] = 1;                                    /* overrun: caught on the checked free */
    CHECK(nm_free_checked(dbg, p) == NM_ERR_BUFFER_OVERFLOW);
    nm_allocator_destroy(dbg);
    nm_allocator_stats(a, &st);
    CHECK(st.live_blocks == 0 && ctx.mallocs == ctx.frees);
    /* bad ops are refused at construction */
    {
        static const nm_allocator_ops_t no_free = {c_malloc, NULL, c_realloc, NULL, c_memalign, NULL, NULL, 0, 0};
        CHECK(nm_allocator_new("broken", &no_free, &ctx) == NULL && nm_last_error() == NM_ERR_INVALID);
    }
    nm_allocator_destroy(a);                                /* runs c_destroy */
    printf("example backend: OK\n");
    return 0;
}
