/* An unchecked pool of objects smaller than a pointer, built with -fsanitize=address: the free
 * writes its 8-byte link into a slot of which only object_size bytes were unpoisoned by the
 * allocation.  Prints "ok" when every size 1..16 survives alloc/free/alloc/free. */
#include <stdio.h>
#include "nativemem.h"

int main(void) {
    size_t n;
    for (n = 1; n <= 16; n++) {
        nm_pool_t *p = nm_pool_create(NULL, n, 16, NM_POOL_UNCHECKED);
        void *a = nm_pool_alloc(p), *b = nm_pool_alloc(p);
        if (!p || !a || !b) return 2;
        if (nm_pool_free(p, a) != 0 || nm_pool_free(p, b) != 0) return 3;
        a = nm_pool_alloc(p);
        if (nm_pool_free(p, a) != 0) return 4;
        nm_pool_destroy(p);
        printf("size %zu ok\n", n);
        fflush(stdout);
    }
    printf("ok\n");
    return 0;
}
