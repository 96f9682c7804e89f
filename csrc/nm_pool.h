/* nm_pool.h -- fixed-size object pools (pool.c); included by nativemem.h. */
#ifndef NM_POOL_H
#define NM_POOL_H

typedef struct nm_pool nm_pool_t;

enum nm_pool_flags {
    NM_POOL_ZERO = 1,     /* objects are zeroed when handed out                               */
    NM_POOL_CHECKED = 2,  /* allocation sites, 0xDD poison verified on reuse, live iteration   */
    NM_POOL_BUGHUNT = 4   /* one backend allocation per object, so external checkers see each  */
};

typedef struct nm_pool_stats {
    int64_t allocations;    /* objects handed out, ever                                   */
    int64_t frees;          /* objects returned, ever                                     */
    int64_t live;           /* allocations - frees                                        */
    int64_t peak;           /* highest live count seen                                    */
    int64_t chunks;         /* chunks reserved from the allocator (objects in bughunt)    */
    int64_t reserved_bytes; /* bytes reserved from the allocator                          */
    int64_t object_size;    /* bytes per object as requested                             */
    int64_t stride;         /* bytes per slot (object size rounded to the alignment)      */
} nm_pool_stats_t;

/* A pool of objects of `object_size` bytes, carved `objects_per_chunk` at a time from chunks of
 * allocator `a` (NULL: libc).  Objects are aligned to 64 bytes (the cache line). */
nm_pool_t *nm_pool_create(nm_allocator_t *a, size_t object_size, size_t objects_per_chunk, unsigned flags);
/* Same, with an alignment: any power of two from sizeof(void *) up to 4096. */
nm_pool_t *nm_pool_create_ex(nm_allocator_t *a, size_t object_size, size_t objects_per_chunk, unsigned flags,
                             size_t alignment);
void *nm_pool_alloc(nm_pool_t *pool);
/* Alloc recording `file`/`line` as the site (checked pools; others ignore it). */
void *nm_pool_alloc_at(nm_pool_t *pool, const char *file, int line);
/* NM_OK, or NM_ERR_INVALID_FREE (not from this pool / not an object boundary),
 * NM_ERR_DOUBLE_FREE, NM_ERR_CORRUPT. */
int nm_pool_free(nm_pool_t *pool, void *ptr);
/* Fill out[0..n) with objects; returns how many were allocated (n unless out of memory). */
size_t nm_pool_alloc_many(nm_pool_t *pool, void **out, size_t n, const char *file, int line);
/* Free ptrs[0..n); returns NM_OK or the first error (the remaining pointers are still freed;
 * *bad_index receives the index of the first bad pointer when not NULL). */
int nm_pool_free_many(nm_pool_t *pool, void **ptrs, size_t n, size_t *bad_index);
/* 1 when ptr is a live object of this pool, 0 otherwise (never faults on foreign pointers). */
int nm_pool_owns(nm_pool_t *pool, const void *ptr);
size_t nm_pool_object_size(nm_pool_t *pool);
void nm_pool_stats(nm_pool_t *pool, nm_pool_stats_t *out);
/* Live objects: fills up to `cap` entries (sites only in checked pools, else NULL/0) and
 * returns the total number of live objects. */
size_t nm_pool_live(nm_pool_t *pool, void **objs, const char **files, int *lines, size_t cap);
/* Destroy the pool and every chunk; returns the number of objects still live (leaks), each
 * reported on stderr with its site in checked pools when `report` is nonzero. */
size_t nm_pool_destroy_report(nm_pool_t *pool, int report);
void nm_pool_destroy(nm_pool_t *pool);

/* Measurement loops (C, so FFI cost does not hide the pool): ns per alloc+free pair, and ns
 * per object for batches of `batch` allocs then `batch` frees. */
double nm_pool_bench_pairs(nm_pool_t *pool, size_t iterations);
double nm_pool_bench_batch(nm_pool_t *pool, size_t batch, size_t rounds);

#endif /* NM_POOL_H */
