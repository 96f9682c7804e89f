/* backends.c -- allocators over real allocators: the C library, context-free malloc-style
 * functions handed in from Python (jemalloc, mimalloc), Windows heaps and macOS malloc zones.
 * Only the C library's own headers are included (for malloc_usable_size / malloc_size): the other
 * backends' functions come from the facade's ctypes look-ups (kernel32, libSystem, a dlopen'ed
 * library) as plain pointers. */
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

/* ---- headered blocks: one adapter for every backend that needs it ---------------------- *
 * For allocators without an aligned allocation that frees with the plain free, or without a way
 * to ask a block's size (the Windows CRT, Windows heaps, malloc-style functions handed in without
 * posix_memalign or usable_size) every block carries a header in front (two size_t: 16 bytes on
 * 64-bit, 8 on 32-bit): the distance back to the raw block and the requested size.  A plain
 * block's user pointer is exactly one header in (no padding the raw request did not pay for: the
 * raw block may be only 8-aligned, as HeapAlloc's and the CRT's are on 32-bit Windows), so such an
 * allocator promises min(raw alignment, header size); aligned blocks pad before the header.
 *
 * The adapter's context starts with a pointer to the raw operations of the allocator underneath. */
typedef struct nm__hdr { size_t offset; size_t size; } nm__hdr_t;
#define NM__HDR ((size_t)sizeof(nm__hdr_t))
/* The alignment of a plain headered block whose raw block has alignment `raw` (powers of two). */
#define NM__HDR_ALIGN(raw) ((raw) < NM__HDR ? (raw) : NM__HDR)

typedef struct nm__raw_ops {
    void *(*alloc)(void *ctx, size_t n, int zero);  /* a raw block of n bytes (zeroed: zero != 0) */
    void *(*realloc)(void *ctx, void *raw, size_t n);
    void (*free)(void *ctx, void *raw);
    size_t align;                                    /* what every raw block is aligned to        */
} nm__raw_ops_t;
#define NM__RAW(ctx) (*(const nm__raw_ops_t *const *)(ctx))

NM_INLINE nm__hdr_t *nm__hdr_of(const void *user) { return (nm__hdr_t *)((char *)user - NM__HDR); }
NM_INLINE void *nm__raw_of(const void *user) { return (char *)user - nm__hdr_of(user)->offset; }
/* Padding an aligned block needs in front of its header: none when the raw block's own alignment
 * already gives `alignment` one header in. */
NM_INLINE size_t nm__pad(const nm__raw_ops_t *r, size_t alignment) {
    return alignment <= NM__HDR_ALIGN(r->align) ? 0 : alignment;
}
/* `alignment` 0: a plain block; else the raw request paid for nm__pad(alignment). */
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
static void *nm__h_alloc(void *ctx, size_t n, size_t alignment, int zero) {
    const nm__raw_ops_t *r = NM__RAW(ctx);
    size_t extra = NM__HDR + nm__pad(r, alignment);
    if (n > NM_MAX_ALLOC - extra) return NULL;
    return nm__finish(r->alloc(ctx, n + extra, zero), alignment, n);
}
static void *nm__h_malloc(void *ctx, size_t n) { return nm__h_alloc(ctx, n, 0, 0); }
static void *nm__h_calloc(void *ctx, size_t n, size_t s) { return nm__h_alloc(ctx, n * s, 0, 1); } /* n*s: checked by nm_calloc */
static void *nm__h_memalign(void *ctx, size_t a, size_t n) { return nm__h_alloc(ctx, n, a, 0); }
static void nm__h_free(void *ctx, void *p) { NM__RAW(ctx)->free(ctx, nm__raw_of(p)); }
static void *nm__h_realloc(void *ctx, void *p, size_t n) {
    nm__hdr_t *h = nm__hdr_of(p);
    void *q;
    if (n > NM_MAX_ALLOC - NM__HDR) return NULL;
    if (h->offset == NM__HDR) return nm__finish(NM__RAW(ctx)->realloc(ctx, nm__raw_of(p), n + NM__HDR), 0, n);
    q = nm__h_malloc(ctx, n); /* an aligned block: a plain one now */
    if (q) {
        memcpy(q, p, h->size < n ? h->size : n);
        nm__h_free(ctx, p);
    }
    return q;
}
static size_t nm__h_usable(void *ctx, const void *p) { (void)ctx; return nm__hdr_of(p)->size; }
#define NM__HEADERED_OPS(raw_align)                                                                   \
    { nm__h_malloc, nm__h_calloc, nm__h_realloc, nm__h_free, nm__h_memalign, nm__h_usable, NULL,      \
      NM__HDR_ALIGN(raw_align), NM_OPS_EXACT_SIZE }

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
static const nm_allocator_ops_t nm__libc_ops = {nm__libc_malloc, nm__libc_calloc, nm__libc_realloc, nm__libc_free,
                                                nm__libc_memalign, nm__libc_usable, NULL, 0, 0};
static nm__slot_t nm__libc_slots[NM__SLOTS];
static nm_allocator_t nm__libc = {
    .slots = nm__libc_slots,
    .malloc = nm__libc_malloc, .calloc = nm__libc_calloc, .realloc = nm__libc_realloc, .free = nm__libc_free,
    .memalign = nm__libc_memalign, .usable_size = nm__libc_usable, .ops = &nm__libc_ops, .name = "libc",
    .flags = NM__F_STATIC | NM__F_NO_BYTE_STATS, .alignment = NM_MALLOC_ALIGN,
    .plain_malloc = malloc, .plain_free = free}; /* called directly by the front door */
#else
/* No way to free aligned blocks with free() or to ask a block's size: headers. */
static void *nm__crt_alloc(void *ctx, size_t n, int zero) { (void)ctx; return zero ? calloc(1, n) : malloc(n); }
static void *nm__crt_realloc(void *ctx, void *raw, size_t n) { (void)ctx; return realloc(raw, n); }
static void nm__crt_free(void *ctx, void *raw) { (void)ctx; free(raw); }
static const nm__raw_ops_t nm__crt_raw = {nm__crt_alloc, nm__crt_realloc, nm__crt_free, NM_MALLOC_ALIGN};
static const nm__raw_ops_t *const nm__crt_ctx = &nm__crt_raw;
static const nm_allocator_ops_t nm__libc_ops = NM__HEADERED_OPS(NM_MALLOC_ALIGN);
static nm__slot_t nm__libc_slots[NM__SLOTS];
static nm_allocator_t nm__libc = {
    .slots = nm__libc_slots,
    .malloc = nm__h_malloc, .calloc = nm__h_calloc, .realloc = nm__h_realloc, .free = nm__h_free,
    .memalign = nm__h_memalign, .usable_size = nm__h_usable, .ctx = (void *)&nm__crt_ctx, .ops = &nm__libc_ops,
    .name = "libc", .flags = NM__F_STATIC | NM__F_EXACT_SIZE | NM__F_NO_BYTE_STATS, .alignment = NM__HDR_ALIGN(NM_MALLOC_ALIGN)};
#endif

nm_allocator_t *nm_allocator_libc(void) { return &nm__libc; }

/* ---- context-free functions from Python ------------------------------------------------- */
typedef struct nm__plain_ctx {
    const nm__raw_ops_t *raw; /* the headered adapter's, when headered */
    nm_plain_fns_t f;
} nm__plain_ctx_t;
#define NM__PF(ctx) (&((nm__plain_ctx_t *)(ctx))->f)

static void *nm__plain_malloc(void *ctx, size_t n) { return NM__PF(ctx)->malloc(n); }
static void *nm__plain_calloc(void *ctx, size_t n, size_t s) { return NM__PF(ctx)->calloc(n, s); }
static void *nm__plain_realloc(void *ctx, void *p, size_t n) { return NM__PF(ctx)->realloc(p, n); }
static void nm__plain_free(void *ctx, void *p) { NM__PF(ctx)->free(p); }
static void *nm__plain_memalign(void *ctx, size_t a, size_t n) {
    nm_plain_fns_t *f = NM__PF(ctx);
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
static size_t nm__plain_usable(void *ctx, const void *p) { return NM__PF(ctx)->usable_size((void *)p); }
static const nm_allocator_ops_t nm__plain_ops = {nm__plain_malloc, nm__plain_calloc, nm__plain_realloc,
                                                 nm__plain_free, nm__plain_memalign, nm__plain_usable, NULL, 0, 0};

static void *nm__plainr_alloc(void *ctx, size_t n, int zero) { return zero ? NM__PF(ctx)->calloc(1, n) : NM__PF(ctx)->malloc(n); }
static void *nm__plainr_realloc(void *ctx, void *raw, size_t n) { return NM__PF(ctx)->realloc(raw, n); }
static void nm__plainr_free(void *ctx, void *raw) { NM__PF(ctx)->free(raw); }
/* the functions' malloc promises what C's does */
static const nm__raw_ops_t nm__plain_raw = {nm__plainr_alloc, nm__plainr_realloc, nm__plainr_free, NM_MALLOC_ALIGN};
static const nm_allocator_ops_t nm__plainh_ops = NM__HEADERED_OPS(NM_MALLOC_ALIGN);

nm_allocator_t *nm_allocator_from_plain(const nm_plain_fns_t *fns, const char *name) {
    nm_allocator_t *a;
    nm__plain_ctx_t *c;
    int headered;
    if (fns == NULL || !fns->malloc || !fns->calloc || !fns->realloc || !fns->free) {
        _nm_set_error(NM_ERR_INVALID, "nm_allocator_from_plain: malloc, calloc, realloc and free are required");
        return NULL;
    }
    headered = fns->posix_memalign == NULL || fns->usable_size == NULL;
    a = _nm_allocator_make(name, headered ? &nm__plainh_ops : &nm__plain_ops, sizeof(nm__plain_ctx_t), 0);
    if (a == NULL) return NULL;
    c = (nm__plain_ctx_t *)a->ctx;
    c->raw = &nm__plain_raw;
    c->f = *fns;
    if (!headered) { /* called directly by the front door */
        a->plain_malloc = fns->malloc;
        a->plain_free = fns->free;
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

typedef struct nm__wh_ctx {
    const nm__raw_ops_t *raw;
    nm_winheap_fns_t f;
} nm__wh_ctx_t;
#define NM__WH(ctx) (&((nm__wh_ctx_t *)(ctx))->f)
static void *nm__whr_alloc(void *ctx, size_t n, int zero) {
    return ((nm__heap_alloc_t)NM__WH(ctx)->heap_alloc)(NM__WH(ctx)->heap, zero ? NM_HEAP_ZERO_MEMORY : 0, n);
}
static void *nm__whr_realloc(void *ctx, void *raw, size_t n) {
    return ((nm__heap_realloc_t)NM__WH(ctx)->heap_realloc)(NM__WH(ctx)->heap, 0, raw, n);
}
static void nm__whr_free(void *ctx, void *raw) { ((nm__heap_free_t)NM__WH(ctx)->heap_free)(NM__WH(ctx)->heap, 0, raw); }
/* HeapAlloc: MEMORY_ALLOCATION_ALIGNMENT, 2 * sizeof(void *) (8 on win32, 16 on win64) */
static const nm__raw_ops_t nm__wh_raw = {nm__whr_alloc, nm__whr_realloc, nm__whr_free, 2 * sizeof(void *)};
static const nm_allocator_ops_t nm__wh_ops = NM__HEADERED_OPS(2 * sizeof(void *));

nm_allocator_t *nm_allocator_from_winheap(const nm_winheap_fns_t *fns, const char *name) {
    nm_allocator_t *a;
    nm__wh_ctx_t *c;
    if (fns == NULL || !fns->heap || !fns->heap_alloc || !fns->heap_realloc || !fns->heap_free) {
        _nm_set_error(NM_ERR_INVALID, "nm_allocator_from_winheap: heap, HeapAlloc, HeapReAlloc and HeapFree are required");
        return NULL;
    }
    a = _nm_allocator_make(name, &nm__wh_ops, sizeof(nm__wh_ctx_t), 0);
    if (a == NULL) return NULL;
    c = (nm__wh_ctx_t *)a->ctx;
    c->raw = &nm__wh_raw;
    c->f = *fns;
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

/* every macOS zone (and malloc) returns 16-byte aligned blocks */
static const nm_allocator_ops_t nm__zone_ops = {nm__z_malloc, nm__z_calloc, nm__z_realloc, nm__z_free,
                                                nm__z_memalign, nm__z_usable, NULL, 16, 0};
static const nm_allocator_ops_t nm__zone_global_ops = {nm__z_malloc, nm__z_calloc, nm__z_realloc, nm__z_free,
                                                       nm__z_memalign, nm__z_usable_global, NULL, 16, 0};

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
    a = _nm_allocator_make(name, zone_size ? &nm__zone_ops : &nm__zone_global_ops, sizeof(nm__zone_ctx_t), 0);
    if (a == NULL) return NULL;
    z = (nm__zone_ctx_t *)a->ctx;
    memcpy(&z->f, fns, sizeof *fns);
    z->zone_size = zone_size;
    return a;
}
