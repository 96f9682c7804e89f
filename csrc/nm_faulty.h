/* nm_faulty.h -- a fault-injection allocator for tests (faulty.c); included by nativemem.h. */
#ifndef NM_FAULTY_H
#define NM_FAULTY_H

/* Wraps `base`: the `fail_at`-th allocation request (malloc, calloc, realloc or memalign,
 * counting from 1 since creation or the last nm_faulty_set) returns NULL; 0 never fails.
 * Frees always pass through. */
nm_allocator_t *nm_allocator_faulty(nm_allocator_t *base, long fail_at);
void nm_faulty_set(nm_allocator_t *a, long fail_at);
/* Allocation requests seen since the last nm_faulty_set, and how many were failed. */
long nm_faulty_requests(nm_allocator_t *a);
long nm_faulty_failures(nm_allocator_t *a);

/* A base for alignment tests: wraps `base` (NULL: libc) and returns malloc/calloc/realloc blocks
 * only 8-byte aligned -- each is 8 bytes past a 16-byte boundary, as HeapAlloc's and the CRT's
 * may be on 32-bit Windows -- and says so (nm_allocator_alignment: 8); memalign honours its
 * argument.  Each block is followed by a guard word verified on free and realloc: a write past a
 * block's end is reported (NM_ERR_BUFFER_OVERFLOW), so whatever runs on it (debug allocator,
 * pools, arena) is caught assuming more alignment than it was promised. */
nm_allocator_t *nm_allocator_align8(nm_allocator_t *base);

#endif /* NM_FAULTY_H */
