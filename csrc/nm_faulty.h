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

#endif /* NM_FAULTY_H */
