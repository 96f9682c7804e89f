/* backends.c -- allocator tables over real allocators: the C library, context-free
 * malloc-style functions handed in from Python (jemalloc, mimalloc), Windows heaps and macOS
 * malloc zones.  Function pointers come from the facade's ctypes look-ups, so this file
 * needs no platform allocator headers. */
#include "nm_internal.h"

#include <stdlib.h>

#if defined(__GLIBC__) || defined(__linux__)
#  include <malloc.h>
#  define NM_LIBC_USABLE(p) malloc_usable_size(p)
#elif defined(__APPLE__)
#  include <malloc/malloc.h>
#  define NM_LIBC_USABLE(p) malloc_size(p)
#elif defined(__FreeBSD__)
#  include <malloc_np.h>
#  define NM_LIBC_USABLE(p) malloc_usable_size(p)
#endif

/* ---- headered blocks ------------------------------------------------------------------ *
 * For allocators without an aligned allocation that frees with the plain free (Windows CRT,
 * Windows heaps) every block carries a header in front (two size_t: 16 bytes on 64-bit, 8 on
 * 32-bit): the distance back to the raw block and the requested size.  A plain block's user
 * pointer is exactly one header in (no padding the raw request did not pay for: the raw block
 * may be only 8-aligned, as HeapAlloc's and the CRT's are on 32-bit Windows), so such a table
 * promises min(raw alignment, header size); aligned blocks pad before the header. */
typedef struct nm__hdr { size_t offset; size_t size; } nm__hdr_t;
#define NM__HDR ((size_t)sizeof(nm__hdr_t))
/* The alignment of a plain headered block whose raw block has alignment `raw` (powers of two). */
#define NM__HDR_ALIGN(raw) ((raw) < NM__HDR ? (raw) : NM__HDR)

NM_INLINE nm__hdr_t *nm__hdr_of(const void *user) { return (nm__hdr_t *)((char *)user - NM__HDR); }
NM_INLINE void *nm__raw_of(const void *user) { return (char *)user - nm__hdr_of(user)->offset; }
/* `alignment` 0: a plain block (the raw request was size + NM__HDR); else the raw request was
 * size + NM__HDR + alignment (or, for HeapAlloc, whose blocks are NM__HDR-aligned, size + NM__HDR
 * when alignment <= NM__HDR). */
NM_INLINE void *nm__finish(void *raw, size_t alignment, size_t size) {
    char *user;
    nm__hdr_t *h;
    if (raw == NULL) return NULL;
    user = (char *)raw + NM__HDR;
    if (alignment > 1) user = (char *)_nm_align_up((uintptr_t)user, alignment);
    h = nm__hdr_of(user);
    h->offset = (size_t)(user - (char *)raw);
    h->size = size;
    return user;
}

/* ---- the C library -------------------------------------------------------------------- */
#if defined(NM_LIBC_USABLE) && !defined(NM_OS_WINDOWS)
static void *nm__libc_malloc(void *ctx, size_t n) { (void)ctx; return malloc(n); }
static void *nm__libc_calloc(void *ctx, size_t n, size_t s) { (void)ctx; return calloc(n, s); }
static void *nm__libc_realloc(void *ctx, void *p, size_t n) { (void)ctx; return realloc(p, n); }
static void nm__libc_free(void *ctx, void *p) { (void)ctx; free(p); }
static void *nm__libc_memalign(void *ctx, size_t a, size_t n) {
    void *p = NULL;
    (void)ctx;
    return posix_memalign(&p, a, n) == 0 ? p : NULL;
}
static size_t nm__libc_usable(void *ctx, const void *p) { (void)ctx; return NM_LIBC_USABLE((void *)p); }
#else
/* No way to free aligned blocks with free() or to ask a block's size: use headers. */
static void *nm__libc_malloc(void *ctx, size_t n) {
    (void)ctx;
    if (n > NM_MAX_ALLOC - NM__HDR) return NULL;
    return nm__finish(malloc(n + NM__HDR), 0, n);
}
static void *nm__libc_calloc(void *ctx, size_t n, size_t s) {
    (void)ctx;
    n *= s; /* checked by nm_calloc */
    if (n > NM_MAX_ALLOC - NM__HDR) return NULL;
    return nm__finish(calloc(1, n + NM__HDR), 0, n);
}
static void *nm__libc_memalign(void *ctx, size_t a, size_t n) {
    (void)ctx;
    if (n > NM_MAX_ALLOC - NM__HDR - a) return NULL;
    return nm__finish(malloc(n + a + NM__HDR), a, n);
}
static void nm__libc_free(void *ctx, void *p) { (void)ctx; free(nm__raw_of(p)); }
static void *nm__libc_realloc(void *ctx, void *p, size_t n) {
    nm__hdr_t *h = nm__hdr_of(p);
    void *q;
    if (n > NM_MAX_ALLOC - NM__HDR) return NULL;
    if (h->offset == NM__HDR) return nm__finish(realloc(nm__raw_of(p), n + NM__HDR), 0, n);
    q = nm__libc_malloc(ctx, n);
    if (q) {
        memcpy(q, p, h->size < n ? h->size : n);
        nm__libc_free(ctx, p);
    }
    return q;
}
static size_t nm__libc_usable(void *ctx, const void *p) { (void)ctx; return nm__hdr_of(p)->size; }
#endif

#if defined(NM_LIBC_USABLE) && !defined(NM_OS_WINDOWS)
#  define NM__LIBC_ALIGN 0 /* malloc's own promise: NM_MALLOC_ALIGN */
#else
#  define NM__LIBC_ALIGN NM__HDR_ALIGN(NM_MALLOC_ALIGN)
#endif
#if defined(NM_LIBC_USABLE) && !defined(NM_OS_WINDOWS)
#  define NM__LIBC_PLAIN .plain_malloc = malloc, .plain_free = free, /* called directly by the front door */
#else
#  define NM__LIBC_PLAIN
#endif
static nm_allocator_t nm__libc = {
    .malloc = nm__libc_malloc, .calloc = nm__libc_calloc, .realloc = nm__libc_realloc, .free = nm__libc_free,
    .memalign = nm__libc_memalign, .usable_size = nm__libc_usable, .name = "libc", .flags = NM_ALLOC_STATIC,
    .alignment = NM__LIBC_ALIGN, NM__LIBC_PLAIN};

nm_allocator_t *nm_allocator_libc(void) { return &nm__libc; }

/* ---- context-free functions from Python ------------------------------------------------- */
static void *nm__plain_malloc(void *ctx, size_t n) { return ((nm_plain_fns_t *)ctx)->malloc(n); }
static void *nm__plain_calloc(void *ctx, size_t n, size_t s) { return ((nm_plain_fns_t *)ctx)->calloc(n, s); }
static void *nm__plain_realloc(void *ctx, void *p, size_t n) { return ((nm_plain_fns_t *)ctx)->realloc(p, n); }
static void nm__plain_free(void *ctx, void *p) { ((nm_plain_fns_t *)ctx)->free(p); }
static void *nm__plain_memalign(void *ctx, size_t a, size_t n) {
    nm_plain_fns_t *f = (nm_plain_fns_t *)ctx;
    void *p = NULL;
    if (f->posix_memalign(&p, a, n) != 0) return NULL;
    if (NM_UNLIKELY((uintptr_t)p & (a - 1))) {
        /* Debian's mimalloc 2.0.9 returns under-aligned blocks when the size is a multiple of an
         * alignment >= 256 (seen here); asking for one more byte avoids its faulty path. */
        f->free(p);
        p = NULL;
        if (n == SIZE_MAX || f->posix_memalign(&p, a, n + 1) != 0) return NULL;
        if ((uintptr_t)p & (a - 1)) {
            f->free(p);
            _nm_set_error(NM_ERR_UNSUPPORTED, "backend returned a block not aligned to %zu", a);
            return NULL;
        }
    }
    return p;
}
static size_t nm__plain_usable(void *ctx, const void *p) { return ((nm_plain_fns_t *)ctx)->usable_size((void *)p); }

static void *nm__plainh_malloc(void *ctx, size_t n) {
    if (n > NM_MAX_ALLOC - NM__HDR) return NULL;
    return nm__finish(((nm_plain_fns_t *)ctx)->malloc(n + NM__HDR), 0, n);
}
static void *nm__plainh_calloc(void *ctx, size_t n, size_t s) {
    n *= s;
    if (n > NM_MAX_ALLOC - NM__HDR) return NULL;
    return nm__finish(((nm_plain_fns_t *)ctx)->calloc(1, n + NM__HDR), 0, n);
}
static void *nm__plainh_memalign(void *ctx, size_t a, size_t n) {
    if (n > NM_MAX_ALLOC - NM__HDR - a) return NULL;
    return nm__finish(((nm_plain_fns_t *)ctx)->malloc(n + a + NM__HDR), a, n);
}
static void nm__plainh_free(void *ctx, void *p) { ((nm_plain_fns_t *)ctx)->free(nm__raw_of(p)); }
static void *nm__plainh_realloc(void *ctx, void *p, size_t n) {
    nm__hdr_t *h = nm__hdr_of(p);
    void *q;
    if (n > NM_MAX_ALLOC - NM__HDR) return NULL;
    if (h->offset == NM__HDR) return nm__finish(((nm_plain_fns_t *)ctx)->realloc(nm__raw_of(p), n + NM__HDR), 0, n);
    q = nm__plainh_malloc(ctx, n);
    if (q) {
        memcpy(q, p, h->size < n ? h->size : n);
        nm__plainh_free(ctx, p);
    }
    return q;
}
static size_t nm__hdr_usable(void *ctx, const void *p) { (void)ctx; return nm__hdr_of(p)->size; }

nm_allocator_t *nm_allocator_from_plain(const nm_plain_fns_t *fns, const char *name) {
    nm_allocator_t *a;
    int headered;
    if (fns == NULL || !fns->malloc || !fns->calloc || !fns->realloc || !fns->free) {
        _nm_set_error(NM_ERR_INVALID, "nm_allocator_from_plain: malloc, calloc, realloc and free are required");
        return NULL;
    }
    a = _nm_table_new(name, sizeof(nm_plain_fns_t));
    if (a == NULL) return NULL;
    memcpy(a->ctx, fns, sizeof *fns);
    headered = fns->posix_memalign == NULL || fns->usable_size == NULL;
    if (headered) {
        a->malloc = nm__plainh_malloc; a->calloc = nm__plainh_calloc; a->realloc = nm__plainh_realloc;
        a->free = nm__plainh_free; a->memalign = nm__plainh_memalign; a->usable_size = nm__hdr_usable;
        a->flags |= NM_ALLOC_EXACT_SIZE;
        a->alignment = NM__HDR_ALIGN(NM_MALLOC_ALIGN); /* the functions' malloc promises what C's does */
    } else {
        a->malloc = nm__plain_malloc; a->calloc = nm__plain_calloc; a->realloc = nm__plain_realloc;
        a->free = nm__plain_free; a->memalign = nm__plain_memalign; a->usable_size = nm__plain_usable;
        a->plain_malloc = fns->malloc; a->plain_free = fns->free; /* called directly by the front door */
    }
    return a;
}

/* ---- Windows heaps ---------------------------------------------------------------------- */
#if defined(_WIN32) && !defined(_WIN64)
#  define NM_STDCALL __stdcall
#else
#  define NM_STDCALL
#endif
#define NM_HEAP_ZERO_MEMORY 0x00000008u
typedef void *(NM_STDCALL *nm__heap_alloc_t)(void *heap, uint32_t flags, size_t size);
typedef void *(NM_STDCALL *nm__heap_realloc_t)(void *heap, uint32_t flags, void *p, size_t size);
typedef int(NM_STDCALL *nm__heap_free_t)(void *heap, uint32_t flags, void *p);

#define NM__WH(ctx) ((nm_winheap_fns_t *)(ctx))
static void *nm__wh_alloc(void *ctx, size_t n, size_t a, uint32_t flags) {
    size_t extra = NM__HDR + (a > NM__HDR ? a : 0);
    if (n > NM_MAX_ALLOC - extra) return NULL;
    return nm__finish(((nm__heap_alloc_t)NM__WH(ctx)->heap_alloc)(NM__WH(ctx)->heap, flags, n + extra), a, n);
}
static void *nm__wh_malloc(void *ctx, size_t n) { return nm__wh_alloc(ctx, n, 0, 0); }
static void *nm__wh_calloc(void *ctx, size_t n, size_t s) { return nm__wh_alloc(ctx, n * s, 0, NM_HEAP_ZERO_MEMORY); }
static void *nm__wh_memalign(void *ctx, size_t a, size_t n) { return nm__wh_alloc(ctx, n, a, 0); }
static void nm__wh_free(void *ctx, void *p) {
    ((nm__heap_free_t)NM__WH(ctx)->heap_free)(NM__WH(ctx)->heap, 0, nm__raw_of(p));
}
static void *nm__wh_realloc(void *ctx, void *p, size_t n) {
    nm__hdr_t *h = nm__hdr_of(p);
    void *q;
    if (n > NM_MAX_ALLOC - NM__HDR) return NULL;
    if (h->offset == NM__HDR)
        return nm__finish(((nm__heap_realloc_t)NM__WH(ctx)->heap_realloc)(NM__WH(ctx)->heap, 0, nm__raw_of(p), n + NM__HDR), 0, n);
    q = nm__wh_malloc(ctx, n);
    if (q) {
        memcpy(q, p, h->size < n ? h->size : n);
        nm__wh_free(ctx, p);
    }
    return q;
}

nm_allocator_t *nm_allocator_from_winheap(const nm_winheap_fns_t *fns, const char *name) {
    nm_allocator_t *a;
    if (fns == NULL || !fns->heap || !fns->heap_alloc || !fns->heap_realloc || !fns->heap_free) {
        _nm_set_error(NM_ERR_INVALID, "nm_allocator_from_winheap: heap, HeapAlloc, HeapReAlloc and HeapFree are required");
        return NULL;
    }
    a = _nm_table_new(name, sizeof(nm_winheap_fns_t));
    if (a == NULL) return NULL;
    memcpy(a->ctx, fns, sizeof *fns);
    a->malloc = nm__wh_malloc; a->calloc = nm__wh_calloc; a->realloc = nm__wh_realloc;
    a->free = nm__wh_free; a->memalign = nm__wh_memalign; a->usable_size = nm__hdr_usable;
    a->flags |= NM_ALLOC_EXACT_SIZE;
    /* HeapAlloc: MEMORY_ALLOCATION_ALIGNMENT, 2 * sizeof(void *) (8 on win32, 16 on win64) */
    a->alignment = NM__HDR_ALIGN(2 * sizeof(void *));
    return a;
}

/* ---- macOS malloc zones ----------------------------------------------------------------- */
/* The head of malloc_zone_t (<malloc/malloc.h>, unchanged since its first version): two reserved
 * words, then the zone's size function -- which returns a block's size, or 0 when the block is
 * not the zone's, without asking any other zone (malloc_size() asks each registered zone). */
typedef struct nm__zone_head {
    void *reserved1, *reserved2;
    size_t (*size)(void *zone, const void *p);
} nm__zone_head_t;

typedef struct nm__zone_ctx {
    nm_zone_fns_t f;
    size_t (*zone_size)(void *zone, const void *p); /* the zone's own; NULL: f.size (malloc_size) */
} nm__zone_ctx_t;

#define NM__Z(ctx) (&((nm__zone_ctx_t *)(ctx))->f)
static void *nm__z_malloc(void *ctx, size_t n) {
    return ((void *(*)(void *, size_t))NM__Z(ctx)->zone_malloc)(NM__Z(ctx)->zone, n);
}
static void *nm__z_calloc(void *ctx, size_t n, size_t s) {
    return ((void *(*)(void *, size_t, size_t))NM__Z(ctx)->zone_calloc)(NM__Z(ctx)->zone, n, s);
}
static void *nm__z_realloc(void *ctx, void *p, size_t n) {
    return ((void *(*)(void *, void *, size_t))NM__Z(ctx)->zone_realloc)(NM__Z(ctx)->zone, p, n);
}
static void nm__z_free(void *ctx, void *p) {
    ((void (*)(void *, void *))NM__Z(ctx)->zone_free)(NM__Z(ctx)->zone, p);
}
static void *nm__z_memalign(void *ctx, size_t a, size_t n) {
    return ((void *(*)(void *, size_t, size_t))NM__Z(ctx)->zone_memalign)(NM__Z(ctx)->zone, a, n);
}
static size_t nm__z_usable(void *ctx, const void *p) { /* on every nm_free: one direct call */
    nm__zone_ctx_t *z = (nm__zone_ctx_t *)ctx;
    return z->zone_size(z->f.zone, p);
}
static size_t nm__z_usable_global(void *ctx, const void *p) {
    return ((size_t(*)(const void *))NM__Z(ctx)->size)(p);
}

nm_allocator_t *nm_allocator_from_zone(const nm_zone_fns_t *fns, const char *name) {
    nm_allocator_t *a;
    nm__zone_ctx_t *z;
    size_t (*zone_size)(void *, const void *);
    if (fns == NULL || !fns->zone || !fns->zone_malloc || !fns->zone_calloc || !fns->zone_realloc ||
        !fns->zone_free || !fns->zone_memalign) {
        _nm_set_error(NM_ERR_INVALID, "nm_allocator_from_zone: zone, its malloc, calloc, realloc, free and memalign are required");
        return NULL;
    }
    zone_size = ((const nm__zone_head_t *)fns->zone)->size;
    if (zone_size == NULL && fns->size == NULL) {
        _nm_set_error(NM_ERR_INVALID, "nm_allocator_from_zone: the zone has no size function and no malloc_size was given");
        return NULL;
    }
    a = _nm_table_new(name, sizeof(nm__zone_ctx_t));
    if (a == NULL) return NULL;
    z = (nm__zone_ctx_t *)a->ctx;
    memcpy(&z->f, fns, sizeof *fns);
    z->zone_size = zone_size;
    a->malloc = nm__z_malloc; a->calloc = nm__z_calloc; a->realloc = nm__z_realloc;
    a->free = nm__z_free; a->memalign = nm__z_memalign;
    a->usable_size = zone_size ? nm__z_usable : nm__z_usable_global;
    a->alignment = 16; /* every macOS zone (and malloc) returns 16-byte aligned blocks */
    return a;
}
