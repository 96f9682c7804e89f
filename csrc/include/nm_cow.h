/* nm_cow.h -- copy-on-write buffers, Movian's buf_t (cow.c). */
#ifndef NM_COW_H
#define NM_COW_H

#include "nm_alloc.h"

/* ---- copy-on-write buffers (Movian's buf_t) -------------------------------------------------- */
typedef struct nm_cow nm_cow_t;
typedef void (*nm_cow_free_fn)(void *arg, void *data);
nm_cow_t *nm_cow_create(nm_allocator_t *a, size_t size);                 /* zeroed            */
nm_cow_t *nm_cow_create_copy(nm_allocator_t *a, const void *data, size_t size);
/* Wrap memory owned elsewhere; free_fn(arg, data) runs with the last reference. */
nm_cow_t *nm_cow_adopt(nm_allocator_t *a, void *data, size_t size, nm_cow_free_fn free_fn, void *arg);
nm_cow_t *nm_cow_retain(nm_cow_t *c);
/* 1 when this was the last reference (memory freed), 0 otherwise, NM_ERR_REFCOUNT on misuse. */
int nm_cow_release(nm_cow_t *c);
/* Sole owner: returns c itself (no allocation).  Shared: a private copy, and one reference on c
 * is released.  NULL on out-of-memory (c is then untouched). */
nm_cow_t *nm_cow_make_writable(nm_cow_t *c);
void *nm_cow_data(nm_cow_t *c);
size_t nm_cow_size(const nm_cow_t *c);
intptr_t nm_cow_refs(const nm_cow_t *c);

#endif /* NM_COW_H */
