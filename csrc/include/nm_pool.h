/* nm_pool.h -- fixed-size object pools (declarations only; read into cffi's cdef).
 *
 * A pool carves objects of one size from power-of-two sized chunks taken from an
 * nm_allocator_t (each aligned only to the objects' alignment).  Allocation and same-thread free take no lock (per-thread caches, each
 * owning chunks; frees from other threads go through a lock-free per-chunk bitmap).  Every
 * free is checked against a per-chunk allocation bitmap (foreign, misaligned and double frees
 * are reported), free-list links are encoded with a per-pool secret, and chunks are returned
 * to the allocator only by nm_pool_destroy.
 *
 * Alignment: nm_pool_create uses 64 (a cache line); nm_pool_create_ex takes any power of two
 * from sizeof(void *) up to 4096.
 */
#ifndef NM_POOL_H
#define NM_POOL_H

#include "nm_alloc.h"

typedef struct nm_pool nm_pool_t;

enum nm_pool_flags {
    NM_POOL_ZERO = 1,     /* objects are zeroed when handed out                                */
    NM_POOL_CHECKED = 2,  /* sites per object, 0xDD poison on free verified on reuse, leaks    */
    NM_POOL_BUGHUNT = 4,  /* one backend allocation per object (external checkers see each)    */
    NM_POOL_QUIET = 8,    /* nm_pool_destroy does not print leaks to stderr (caller reports)   */
    NM_POOL_UNCHECKED = 16 /* for C code already validated with the checked and bughunt modes:
                              a per-thread free list and nothing else -- no ownership bitmap, no
                              double-free or foreign-free detection (either corrupts the pool),
                              no hardened links.  Objects freed by another thread join that
                              thread's list; lists past two chunks' worth go to a shared list.
                              Allocations, frees and live stay exact; the peak is
                              sampled (when the pool takes memory, and when stats are read);
                              nm_pool_live_objects lists nothing (NM_ERR_UNSUPPORTED) and
                              nm_pool_owns only says whether an address is an object slot of the
                              pool.  Not with CHECKED or BUGHUNT.                                 */
};

typedef struct nm_pool_stats {
    int64_t allocations;     /* objects handed out, ever                                   */
    int64_t frees;           /* objects returned, ever                                     */
    int64_t live;            /* allocations - frees                                        */
    int64_t peak;            /* highest live seen (exact single-threaded; see pool.c)      */
    int64_t chunks;          /* chunks (or, in bughunt mode, objects) held from the backend */
    int64_t reserved_bytes;  /* bytes held from the backend for objects                    */
} nm_pool_stats_t;

/* One live object, as listed by nm_pool_live_objects (file NULL when no site was kept). */
typedef struct nm_pool_object {
    void *ptr;
    const char *file;
    int line;
} nm_pool_object_t;

/* The largest object alignment nm_pool_create_ex accepts. */
#define NM_POOL_MAX_ALIGN 4096

/* `a` NULL means the C library allocator. */
nm_pool_t *nm_pool_create(nm_allocator_t *a, size_t object_size, size_t objects_per_chunk, unsigned flags);
nm_pool_t *nm_pool_create_ex(nm_allocator_t *a, size_t object_size, size_t objects_per_chunk,
                             size_t alignment, unsigned flags);
void *nm_pool_alloc(nm_pool_t *pool);
/* Same, recording `file`:`line` as the object's site in checked mode. */
void *nm_pool_alloc_at(nm_pool_t *pool, const char *file, int line);
/* 0 on success; NM_ERR_INVALID_FREE (foreign / not an object start) or NM_ERR_DOUBLE_FREE. */
int nm_pool_free(nm_pool_t *pool, void *ptr);
/* Allocates up to n objects into out[]; returns how many (fewer only on error, error set). */
size_t nm_pool_alloc_many(nm_pool_t *pool, void **out, size_t n);
/* Frees ptrs[0..n) in order, every valid one of them; 0 when all were freed, else the status of
 * the first bad pointer (the message names its index).  The bad ones are left as they were. */
int nm_pool_free_many(nm_pool_t *pool, void **ptrs, size_t n);
/* 1 when ptr is the start of a live object of this pool, else 0 (never reads foreign memory). */
int nm_pool_owns(nm_pool_t *pool, const void *ptr);
void nm_pool_destroy(nm_pool_t *pool);
void nm_pool_stats(nm_pool_t *pool, nm_pool_stats_t *out);
size_t nm_pool_object_size(nm_pool_t *pool);
size_t nm_pool_alignment(nm_pool_t *pool);
size_t nm_pool_objects_per_chunk(nm_pool_t *pool);
unsigned nm_pool_flags(nm_pool_t *pool);
/* Live objects (pool quiescent): fills out[0..min(n, live)) and returns the live count. */
size_t nm_pool_live_objects(nm_pool_t *pool, nm_pool_object_t *out, size_t n);
/* Checked mode: verifies the poison of every free object and every free-list link.
 * 0 when intact, else NM_ERR_USE_AFTER_FREE / NM_ERR_CORRUPT naming the first damaged object. */
int nm_pool_check(nm_pool_t *pool);

#endif /* NM_POOL_H */
