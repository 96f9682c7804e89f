/* nm_bench.h -- measurement loops in C (bench.c), so FFI cost does not hide the allocator. */
#ifndef NM_BENCH_H
#define NM_BENCH_H

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

#endif /* NM_BENCH_H */
