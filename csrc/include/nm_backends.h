/* nm_backends.h -- the backends a process can pick at run time (backends.c): the C library,
 * malloc-style functions found at run time (jemalloc, mimalloc), Windows heaps (kernel32) and
 * macOS malloc zones (libSystem), each an nm_allocator_t. */
#ifndef NM_BACKENDS_H
#define NM_BACKENDS_H

#include "nm_alloc.h"

/* The C library's malloc family (posix_memalign where available), a process-wide table. */
nm_allocator_t *nm_allocator_libc(void);

/* Context-free malloc-style functions (jemalloc, mimalloc, a libc found with ctypes).
 * posix_memalign may be NULL: the adapter then keeps a small header before every block so
 * that aligned blocks can be freed with the plain free (as on Windows' CRT).
 * usable_size may be NULL. */
typedef struct nm_plain_fns {
    void *(*malloc)(size_t size);
    void *(*calloc)(size_t n, size_t size);
    void *(*realloc)(void *p, size_t size);
    void (*free)(void *p);
    int (*posix_memalign)(void **out, size_t alignment, size_t size);
    size_t (*usable_size)(void *p);
} nm_plain_fns_t;
nm_allocator_t *nm_allocator_from_plain(const nm_plain_fns_t *fns, const char *name);

/* Windows heap functions resolved from kernel32 with GetProcAddress/ctypes; the heap handle is
 * the context (HeapAlloc(heap, flags, size) and friends).  Every block carries a 16-byte
 * header so that aligned blocks free through HeapFree. */
typedef struct nm_winheap_fns {
    void *heap;          /* HANDLE from HeapCreate or GetProcessHeap             */
    void *heap_alloc;    /* LPVOID WINAPI HeapAlloc(HANDLE, DWORD, SIZE_T)       */
    void *heap_realloc;  /* LPVOID WINAPI HeapReAlloc(HANDLE, DWORD, LPVOID, SIZE_T) */
    void *heap_free;     /* BOOL WINAPI HeapFree(HANDLE, DWORD, LPVOID)          */
    void *heap_size;     /* SIZE_T WINAPI HeapSize(HANDLE, DWORD, LPCVOID)       */
} nm_winheap_fns_t;
nm_allocator_t *nm_allocator_from_winheap(const nm_winheap_fns_t *fns, const char *name);

/* macOS malloc-zone functions resolved from libSystem; the zone is the context.  Usable sizes
 * come from the zone's own `size` function (malloc_zone_t's third field, read from the zone when
 * the table is made): a direct lookup, where malloc_size() asks every zone in turn. */
typedef struct nm_zone_fns {
    void *zone;             /* malloc_zone_t * from malloc_create_zone            */
    void *zone_malloc;      /* void *malloc_zone_malloc(zone, size)               */
    void *zone_calloc;      /* void *malloc_zone_calloc(zone, n, size)            */
    void *zone_realloc;     /* void *malloc_zone_realloc(zone, p, size)           */
    void *zone_free;        /* void malloc_zone_free(zone, p)                     */
    void *zone_memalign;    /* void *malloc_zone_memalign(zone, alignment, size)  */
    void *size;             /* size_t malloc_size(const void *p): used only when the
                               zone has no size function; may then not be NULL   */
} nm_zone_fns_t;
nm_allocator_t *nm_allocator_from_zone(const nm_zone_fns_t *fns, const char *name);

#endif /* NM_BACKENDS_H */
