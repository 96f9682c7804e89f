/* nm_arena.h -- public API of the bounded arena (arena.c). */
#ifndef NM_ARENA_H
#define NM_ARENA_H

#include "nm_alloc.h"

/* ---- bounded arena (Movian's PS3 heap): one fixed region, TLSF inside ------------------ */
enum { NM_ARENA_HIST_BINS = 32 };
typedef struct nm_arena_stats {
    size_t capacity;        /* bytes of the region usable for blocks               */
    size_t used_bytes;      /* bytes in allocated blocks (block sizes)             */
    size_t free_bytes;      /* bytes in free blocks                                */
    size_t largest_free;    /* largest single free block                           */
    size_t used_blocks;
    size_t free_blocks;
    /* log2 size histograms: bin i counts blocks with 2^i <= size < 2^(i+1) */
    size_t used_hist[32];
    size_t free_hist[32];
} nm_arena_stats_t;
/* Reserve `size` bytes from `base` (NULL: straight from the OS with mmap/VirtualAlloc) and
 * manage them as one heap.  Destroy with nm_allocator_destroy. */
nm_allocator_t *nm_arena_create(nm_allocator_t *base, size_t size);
int nm_arena_stats(nm_allocator_t *arena, nm_arena_stats_t *out);
/* Walk every block; NM_OK or NM_ERR_CORRUPT. */
int nm_arena_check(nm_allocator_t *arena);

#endif /* NM_ARENA_H */
