/* nm_testing.h -- what nativemem's own tests and benchmarks use, kept out of the public API
 * (nativemem.h does not include it; build_ffi.py appends it to the cdef): measurement loops in C
 * (bench.c), so FFI cost does not hide the allocator, and test allocators (faulty.c). */
#ifndef NM_TESTING_H
#define NM_TESTING_H

#include "nm_alloc.h"
#include "nm_pool.h"

/* ---- measurement loops (bench.c) ---------------------------------------------------------- */
/* Every loop returns nanoseconds per operation (per alloc+free pair, or per object for
 * batches), or a negative value when an allocation failed; `*ops` (when not NULL) receives
 * the number of allocations performed, so tests can check them against allocator stats. */
double nm_bench_pairs(nm_allocator_t *a, size_t size, size_t iterations, uint64_t *ops);
double nm_bench_batch(nm_allocator_t *a, size_t size, size_t batch, size_t rounds, uint64_t *ops);
/* random sizes in [min_size, max_size], a window of `live` blocks freed in random order */
double nm_bench_mix(nm_allocator_t *a, size_t min_size, size_t max_size, size_t live, size_t iterations,
                    uint64_t seed, uint64_t *ops);
/* The same pair loop on the C library's malloc/free called directly (no table). */
double nm_bench_raw_libc_pairs(size_t size, size_t iterations);
/* The same pair loop on a malloc/free pair called through plain function pointers (no table):
 * a library loaded at run time (mimalloc's mi_malloc/mi_free) called directly. */
double nm_bench_raw_fn_pairs(void *(*malloc_fn)(size_t), void (*free_fn)(void *), size_t size, size_t iterations);
/* The same loop on a bare per-thread free list in out-of-line functions (no checks, no counts):
 * the floor under a pool's pair. */
double nm_bench_raw_freelist_pairs(size_t size, size_t iterations);
/* Larson-like: `threads` threads each own a window of blocks; each round a thread frees a
 * random block of another thread's window (cross-thread free) and allocates a replacement. */
double nm_bench_larson(nm_allocator_t *a, size_t min_size, size_t max_size, size_t window, size_t rounds,
                       int threads, uint64_t *ops);
/* Producer/consumer (xmalloc-test style): one thread allocates, the other frees, through a
 * bounded lock-free ring. */
double nm_bench_prodcons(nm_allocator_t *a, size_t size, size_t count, uint64_t *ops);
/* Pools in the two-thread workloads: alloc from `pool`, cross-thread frees. */
double nm_bench_pool_larson(nm_pool_t *pool, size_t window, size_t rounds, int threads, uint64_t *ops);
/* Raw atomic inc+dec pair on one word, the floor for reference counts. */
double nm_bench_atomic_pairs(size_t iterations);

/* Pools: ns per alloc+free pair; ns per object for batches of `batch` allocs then `batch` frees. */
double nm_pool_bench_pairs(nm_pool_t *p, size_t iterations);
double nm_pool_bench_batch(nm_pool_t *p, size_t batch, size_t rounds);
/* ns per inc+dec pair on a refcount. */
double nm_ref_bench_pairs(size_t iterations);
/* ns per intern hit (+ release) in a table holding `entries` strings. */
double nm_strtab_bench_hits(nm_allocator_t *a, size_t entries, size_t iterations);
/* ns per load of a pointer chase through `region_bytes` of memory in random order (one 64-byte
 * line per step, each load depending on the last): the floor of any random lookup in a table
 * that size. */
double nm_bench_dependent_load(size_t region_bytes, size_t iterations);
/* ns per make_writable of a shared buffer of `size` bytes (a copy) and release. */
double nm_cow_bench_make_writable(nm_allocator_t *a, size_t size, size_t iterations);

/* ---- test allocators (faulty.c) ------------------------------------------------------------ */
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

/* ---- arena internals (arena.c) ---------------------------------------------------------------- */
/* An arena's `mt` state (1: two threads have met on its lock, small blocks go through its striped
 * caches); `set` 1 makes it so now, for tests that need the striped paths without a race.
 * -1 when `a` is not an arena. */
int nm_arena_testing_mt(nm_allocator_t *a, int set);

#endif /* NM_TESTING_H */
