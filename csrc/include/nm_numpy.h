/* nm_numpy.h -- a NumPy (NEP 49) data-memory handler over any allocator table (numpy.c). */
#ifndef NM_NUMPY_H
#define NM_NUMPY_H

#include "nm_alloc.h"

/* Same layout as NumPy's PyDataMem_Handler (numpy/ndarraytypes.h, version 1), so no NumPy
 * header is needed to build it. */
typedef struct nm_numpy_handler {
    char name[127];
    uint8_t version;
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr, size_t size);
} nm_numpy_handler_t;

/* Fill `h` so NumPy allocates array data from `a` (which must outlive every array made with it). */
void nm_numpy_handler_init(nm_numpy_handler_t *h, nm_allocator_t *a, const char *name);

#endif /* NM_NUMPY_H */
