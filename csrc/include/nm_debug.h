/* nm_debug.h -- the debug allocator (debug.c). */
#ifndef NM_DEBUG_H
#define NM_DEBUG_H

#include "nm_alloc.h"

enum nm_debug_flags {
    NM_DEBUG_GUARD_PAGES = 1, /* one page run per block, tail against a no-access page       */
    NM_DEBUG_NO_POISON = 2    /* do not fill new blocks with 0xCB (uninitialised pattern)    */
};

/* A record of one block, as reported by nm_debug_blocks. */
typedef struct nm_debug_block {
    void *address;
    size_t size;
    const char *file;      /* allocation site (C file, or an interned Python traceback) */
    int line;
    uint64_t serial;       /* allocation number, from 1                                */
} nm_debug_block_t;

typedef struct nm_debug_stats {
    size_t live_blocks, live_bytes, peak_bytes;
    uint64_t total_allocs, total_frees;
    size_t quarantined_blocks, quarantined_bytes;
    uint64_t errors;       /* corruption and misuse reports so far                     */
    uint64_t next_serial;
} nm_debug_stats_t;

/* A debug allocator wrapping `base` (NULL: libc): canaries before and after every block, a record
 * of every live block with its allocation site and serial number, 0xDD poisoning and a bounded
 * quarantine of `quarantine` freed blocks (and NM_DEBUG_QUARANTINE_BYTES), detection of
 * double/invalid frees, overflow, underflow, write after free and realloc of freed blocks.
 * The last block out of the quarantine is kept (the "recycled" block) for the next allocation
 * of its size: its poison is verified when it is handed out again (a damaged one fails that
 * allocation with NM_ERR_USE_AFTER_FREE) and when it goes back to base.  A double free names
 * the block's allocation and first free sites, also for the last 4096 blocks given back to base.
 * Errors found by nm_free (which cannot return them) go to the report hook (nativemem.h) and are
 * kept, the first one, for the next nm_debug_check.  Sites are kept as pointers: they must
 * outlive the blocks' reports.  Destroy with nm_allocator_destroy (what it finds goes to the
 * report hook). */
nm_allocator_t *nm_debug_create(nm_allocator_t *base, unsigned flags);
nm_allocator_t *nm_debug_create_ex(nm_allocator_t *base, unsigned flags, size_t quarantine);
/* The quarantine, with the recycled block, also holds at most this many bytes (default
 * NM_DEBUG_QUARANTINE_BYTES): the oldest blocks leave first, and a block larger than the bound
 * goes back to base at once (its poison verified), as ASan's quarantine does.  0: no byte bound. */
#define NM_DEBUG_QUARANTINE_BYTES 67108864
/* The tracemalloc domain ("nm") under which the Python layer reports the debug allocator's blocks. */
#define NM_TRACEMALLOC_DOMAIN 0x6E6D
int nm_debug_set_quarantine_bytes(nm_allocator_t *a, size_t max_bytes);
/* 1 when `a` is a debug allocator. */
int nm_debug_is(nm_allocator_t *a);
/* Verify every live block's canaries and every freed block's poison: NM_OK or the first error
 * (its message names address, size, offset and sites).  When it finds none, it returns, once,
 * the first error found by a free that could not return it (nm_free, NumPy's free, a realloc
 * that succeeded), with the same message.  The stats' error count counts every report. */
int nm_debug_check(nm_allocator_t *a);
/* Live blocks with serial > since (0: all), oldest first; fills up to cap, returns the count. */
size_t nm_debug_blocks(nm_allocator_t *a, nm_debug_block_t *out, size_t cap, uint64_t since);
void nm_debug_stats(nm_allocator_t *a, nm_debug_stats_t *out);
/* Empty the quarantine and the recycled block now (verifying each block's poison); NM_OK or the
 * first error. */
int nm_debug_flush(nm_allocator_t *a);

#endif /* NM_DEBUG_H */
