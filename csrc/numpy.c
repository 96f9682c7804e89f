/* numpy.c -- a NEP 49 data-memory handler: NumPy array data from any nm_allocator_t.
 * NumPy may call these without the GIL; they only use the allocator table. */
#include "nm_internal.h"

#include <stdio.h>

static const char nm__np_site[] = "numpy array data";

static void *nm__np_malloc(void *ctx, size_t n) {
    return nm_malloc_at((nm_allocator_t *)ctx, n, nm__np_site, 0);
}
static void *nm__np_calloc(void *ctx, size_t n, size_t s) {
    return nm_calloc_at((nm_allocator_t *)ctx, n, s, nm__np_site, 0);
}
static void *nm__np_realloc(void *ctx, void *p, size_t n) {
    return nm_realloc_at((nm_allocator_t *)ctx, p, n, nm__np_site, 0);
}
static void nm__np_free(void *ctx, void *p, size_t size) {
    (void)size;
    /* nm_free, not nm_free_checked: NumPy cannot take an error, so what the allocator finds goes
     * to the report hook (or stderr), and a debug allocator keeps it for its next check */
    nm_free((nm_allocator_t *)ctx, p);
}

void nm_numpy_handler_init(nm_numpy_handler_t *h, nm_allocator_t *a, const char *name) {
    memset(h, 0, sizeof *h);
    snprintf(h->name, sizeof h->name, "%s", name ? name : "nativemem");
    h->version = 1;
    h->ctx = a;
    h->malloc = nm__np_malloc;
    h->calloc = nm__np_calloc;
    h->realloc = nm__np_realloc;
    h->free = nm__np_free;
}
