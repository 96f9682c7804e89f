/* cow.c -- copy-on-write buffers: Movian's buf_t and buf_make_writable, made general.
 *
 * A refcounted block of bytes (inline after the header, or adopted memory with a destructor).
 * make_writable returns the buffer itself when the caller holds the only reference (no
 * allocation, no copy), else a private copy and the caller's reference on the original dropped.
 */
#include "nm_internal.h"

struct nm_cow {
    intptr_t refs;           /* atomic */
    nm_allocator_t *a;
    size_t size;
    char *data;
    nm_cow_free_fn free_fn;  /* adopted memory: how to release it */
    void *free_arg;
    uint32_t magic;
    char inline_data[1];
};

#define NM__CMAGIC 0x434f5721u

static nm_cow_t *nm__cow_new(nm_allocator_t *a, size_t size, int zero) {
    nm_cow_t *c;
    size_t bytes;
    if (a == NULL) a = nm_allocator_libc();
    if (size > NM_MAX_ALLOC - sizeof(nm_cow_t)) {
        _nm_set_error(NM_ERR_OVERFLOW, "copy-on-write buffer of %zu bytes is too large", size);
        return NULL;
    }
    bytes = offsetof(nm_cow_t, inline_data) + size + 1;
    c = (nm_cow_t *)(zero ? nm_calloc(a, 1, bytes) : nm_malloc(a, bytes));
    if (c == NULL) return NULL;
    c->refs = 1;
    c->a = a;
    c->size = size;
    c->data = c->inline_data;
    c->data[size] = '\0'; /* handy for strings, as Movian's buf_create */
    c->free_fn = NULL;
    c->free_arg = NULL;
    c->magic = NM__CMAGIC;
    return c;
}

nm_cow_t *nm_cow_create(nm_allocator_t *a, size_t size) { return nm__cow_new(a, size, 1); }

nm_cow_t *nm_cow_create_copy(nm_allocator_t *a, const void *data, size_t size) {
    nm_cow_t *c = nm__cow_new(a, size, 0);
    if (c && size) memcpy(c->data, data, size);
    return c;
}

nm_cow_t *nm_cow_adopt(nm_allocator_t *a, void *data, size_t size, nm_cow_free_fn free_fn, void *arg) {
    nm_cow_t *c = nm__cow_new(a, 0, 0);
    if (c == NULL) return NULL;
    c->data = (char *)data;
    c->size = size;
    c->free_fn = free_fn;
    c->free_arg = arg;
    return c;
}

nm_cow_t *nm_cow_retain(nm_cow_t *c) {
    nm_atomic_add_relaxed(&c->refs, 1);
    return c;
}

int nm_cow_release(nm_cow_t *c) {
    intptr_t n;
    if (c->magic != NM__CMAGIC) return _nm_set_error(NM_ERR_INVALID_FREE, "release of %p: not a live buffer", (void *)c);
    n = nm_atomic_add_release(&c->refs, -1);
    if (n > 0) return 0;
    if (n < 0) return _nm_set_error(NM_ERR_REFCOUNT, "buffer %p released more often than retained", (void *)c);
    nm_atomic_fence_acquire();
    if (c->free_fn) c->free_fn(c->free_arg, c->data);
    c->magic = 0;
    nm_free(c->a, c);
    return 1;
}

nm_cow_t *nm_cow_make_writable(nm_cow_t *c) {
    nm_cow_t *copy;
    if (nm_atomic_load_acquire(&c->refs) == 1) return c; /* sole owner: no one else can retain it */
    copy = nm_cow_create_copy(c->a, c->data, c->size);
    if (copy == NULL) return NULL;
    nm_cow_release(c);
    return copy;
}

void *nm_cow_data(nm_cow_t *c) { return c->data; }
size_t nm_cow_size(const nm_cow_t *c) { return c->size; }
intptr_t nm_cow_refs(const nm_cow_t *c) { return nm_atomic_load_relaxed((nm_atomic_t *)&c->refs); }
