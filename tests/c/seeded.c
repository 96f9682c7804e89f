/* seeded.c -- deliberate bugs through the pool and the debug allocator, so the annotations are
 * proven to work under each tool, not only compiled.  `seeded MODE`: exit 3 with a
 * "nativemem:" report when nativemem itself catches the bug, 0 when nothing caught it (then the
 * tool running it must have: Valgrind's --error-exitcode or ASan's abort). */
#include "nativemem.h"
#include "nm_testing.h"

#include <stdio.h>
#include <string.h>

static int report(int rc) {
    if (rc != NM_OK) {
        fprintf(stderr, "nativemem: %s: %s\n", nm_strerror(rc), nm_last_error_message());
        return 3;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "pool-use-after-free") == 0) {
        nm_pool_t *p = nm_pool_create(NULL, 64, 16, 0);
        char *o = (char *)nm_pool_alloc(p), *keep = (char *)nm_pool_alloc(p);
        nm_pool_free(p, o);
        o[10] = 'x'; /* BUG: write to a freed pool object */
        nm_pool_free(p, keep);
        nm_pool_destroy(p);
        return 0;
    }
    if (strcmp(mode, "pool-double-free") == 0) {
        nm_pool_t *p = nm_pool_create(NULL, 64, 16, 0);
        void *o = nm_pool_alloc(p);
        int rc;
        nm_pool_free(p, o);
        rc = nm_pool_free(p, o); /* BUG */
        nm_pool_destroy(p);
        return report(rc);
    }
    if (strcmp(mode, "pool-checked-write-after-free") == 0) {
        nm_pool_t *p = nm_pool_create(NULL, 64, 4, NM_POOL_CHECKED);
        char *o = (char *)nm_pool_alloc_at(p, __FILE__, __LINE__);
        int i, rc = NM_OK;
        nm_pool_free(p, o);
        o[20] = 'x'; /* BUG */
        for (i = 0; i < 8 && rc == NM_OK; i++)
            if (nm_pool_alloc(p) == NULL) rc = nm_last_error();
        if (rc == NM_OK) rc = nm_pool_check(p);
        return report(rc);
    }
    if (strcmp(mode, "debug-overflow") == 0) {
        nm_allocator_t *d = nm_debug_create(NULL, 0);
        char *b = (char *)nm_malloc_at(d, 10, __FILE__, __LINE__);
        b[10] = 'x'; /* BUG: one byte past the end */
        return report(nm_free_checked(d, b));
    }
    if (strcmp(mode, "debug-use-after-free") == 0) {
        nm_allocator_t *d = nm_debug_create(NULL, 0);
        char *b = (char *)nm_malloc_at(d, 32, __FILE__, __LINE__);
        nm_free(d, b);
        b[3] = 'x'; /* BUG */
        return report(nm_debug_check(d));
    }
    if (strcmp(mode, "debug-double-free") == 0) {
        nm_allocator_t *d = nm_debug_create(NULL, 0);
        void *b = nm_malloc_at(d, 32, __FILE__, __LINE__);
        nm_free(d, b);
        return report(nm_free_checked(d, b)); /* BUG */
    }
    fprintf(stderr, "usage: seeded pool-use-after-free|pool-double-free|pool-checked-write-after-free|"
                    "debug-overflow|debug-use-after-free|debug-double-free\n");
    return 2;
}
