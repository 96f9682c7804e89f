/* nm_refcount.h -- atomic reference counts, the property tree, interning and copy-on-write
 * buffers (refcount.c, prop.c, strtab.c, cow.c); included by nativemem.h. */
#ifndef NM_REFCOUNT_H
#define NM_REFCOUNT_H

/* ---- reference counts (kernel refcount_t semantics) -------------------------------------- */
typedef struct nm_ref_trace nm_ref_trace_t;
typedef void (*nm_ref_destroy_fn)(void *arg);

typedef struct nm_refcount {
    intptr_t count;            /* atomic; >= NM_REF_PINNED: immortal or saturated (never freed) */
    nm_ref_destroy_fn destroy; /* called once, by the thread that drops the last reference     */
    void *arg;
    nm_ref_trace_t *trace;     /* per-object trace (nm_ref_trace_enable), or NULL              */
} nm_refcount_t;

enum nm_ref_errors {
    NM_REF_ERR_INC_FROM_ZERO = 1, /* increment of a freed object (use after free)               */
    NM_REF_ERR_UNDERFLOW = 2,     /* decrement below zero                                        */
    NM_REF_ERR_OVERFLOW = 3       /* count reached the saturation limit; the object is pinned    */
};

/* Start at 1 (the creator's reference), as Movian's refcount_init. */
void nm_ref_init(nm_refcount_t *r, nm_ref_destroy_fn destroy, void *arg);
/* Immortal: increments and decrements are ignored and the destructor never runs. */
void nm_ref_make_immortal(nm_refcount_t *r);
int nm_ref_is_immortal(const nm_refcount_t *r);
/* NM_OK or NM_ERR_REFCOUNT (increment from zero; overflow saturates). */
int nm_ref_inc(nm_refcount_t *r);
int nm_ref_inc_at(nm_refcount_t *r, const char *file, int line);
/* 1 when this dropped the last reference (the destructor has run), 0 otherwise, or
 * NM_ERR_REFCOUNT on underflow (the object is then pinned, never destroyed twice). */
int nm_ref_dec(nm_refcount_t *r);
int nm_ref_dec_at(nm_refcount_t *r, const char *file, int line);
intptr_t nm_ref_count(const nm_refcount_t *r);
/* Error hook, called with the object, the kind (nm_ref_errors) and the message. */
typedef void (*nm_ref_error_hook_fn)(nm_refcount_t *r, int kind, const char *message);
void nm_ref_set_error_hook(nm_ref_error_hook_fn hook);
/* Per-object tracing (Movian's PROP_REF_TRACE): the last `capacity` inc/dec with site and new
 * count.  Free of cost unless enabled. */
int nm_ref_trace_enable(nm_refcount_t *r, size_t capacity);
void nm_ref_trace_disable(nm_refcount_t *r);
typedef struct nm_ref_event { const char *file; int line; int op; intptr_t count; } nm_ref_event_t;
/* op: +1 inc, -1 dec.  Fills up to cap events, oldest first; returns the number recorded. */
size_t nm_ref_trace_get(nm_refcount_t *r, nm_ref_event_t *out, size_t cap);
/* Loops for the benchmark: ns per inc+dec pair on a refcount, and on a raw atomic word. */
double nm_ref_bench_pairs(size_t iterations);

/* ---- string interning ------------------------------------------------------------------------ */
typedef struct nm_strtab nm_strtab_t;
typedef struct nm_strtab_stats {
    size_t entries, capacity, bytes, shards;
    uint64_t lookups, hits, inserts, removals;
} nm_strtab_stats_t;

nm_strtab_t *nm_strtab_create(nm_allocator_t *a);
/* Frees every entry; returns how many were still referenced. */
size_t nm_strtab_destroy(nm_strtab_t *t);
/* The interned copy of s[0..len) (NUL-terminated, may contain NULs), with one more reference.
 * Equal strings give the same pointer. NULL on out-of-memory. */
const char *nm_strtab_intern(nm_strtab_t *t, const char *s, size_t len);
/* Take one more reference on an interned string (from nm_strtab_intern). */
void nm_strtab_retain(nm_strtab_t *t, const char *s);
/* Drop one reference; the entry leaves the table with its last one. NM_OK or NM_ERR_REFCOUNT. */
int nm_strtab_release(nm_strtab_t *t, const char *s);
size_t nm_strtab_strlen(const char *s);
intptr_t nm_strtab_refs(const char *s);
/* References held on the string equal to s[0..len), 0 when it is not interned. */
intptr_t nm_strtab_lookup_refs(nm_strtab_t *t, const char *s, size_t len);
size_t nm_strtab_count(nm_strtab_t *t);
void nm_strtab_stats(nm_strtab_t *t, nm_strtab_stats_t *out);
/* ns per intern hit (+ release) in a table holding `entries` strings. */
double nm_strtab_bench_hits(nm_allocator_t *a, size_t entries, size_t iterations);

/* ---- copy-on-write buffers (Movian's buf_t) -------------------------------------------------- */
typedef struct nm_cow nm_cow_t;
typedef void (*nm_cow_free_fn)(void *arg, void *data);
nm_cow_t *nm_cow_create(nm_allocator_t *a, size_t size);                 /* zeroed            */
nm_cow_t *nm_cow_create_copy(nm_allocator_t *a, const void *data, size_t size);
/* Wrap memory owned elsewhere; free_fn(arg, data) runs with the last reference. */
nm_cow_t *nm_cow_adopt(nm_allocator_t *a, void *data, size_t size, nm_cow_free_fn free_fn, void *arg);
nm_cow_t *nm_cow_retain(nm_cow_t *c);
/* 1 when this was the last reference (memory freed), 0 otherwise, NM_ERR_REFCOUNT on misuse. */
int nm_cow_release(nm_cow_t *c);
/* Sole owner: returns c itself (no allocation).  Shared: a private copy, and one reference on c
 * is released.  NULL on out-of-memory (c is then untouched). */
nm_cow_t *nm_cow_make_writable(nm_cow_t *c);
void *nm_cow_data(nm_cow_t *c);
size_t nm_cow_size(const nm_cow_t *c);
intptr_t nm_cow_refs(const nm_cow_t *c);
double nm_cow_bench_make_writable(nm_allocator_t *a, size_t size, size_t iterations);

/* ---- property tree (Movian's props: parents hold their children) ----------------------------- */
typedef struct nm_prop nm_prop_t;
enum nm_prop_type { NM_PROP_VOID = 0, NM_PROP_INT = 1, NM_PROP_FLOAT = 2, NM_PROP_STRING = 3,
                    NM_PROP_BYTES = 4, NM_PROP_ZOMBIE = 5 };
typedef struct nm_prop_value {
    int type;
    int64_t i;
    double f;
    const char *data;  /* string/bytes (valid while the caller holds a reference) */
    size_t len;
} nm_prop_value_t;
/* A new prop (one memory reference for the caller), child of parent when not NULL (the parent
 * then holds a reference on it).  Props come from a pool.  NULL with the error set on failure. */
nm_prop_t *nm_prop_create(nm_prop_t *parent, const char *name, size_t name_len);
int nm_prop_set_int(nm_prop_t *p, int64_t v);
int nm_prop_set_float(nm_prop_t *p, double v);
int nm_prop_set_data(nm_prop_t *p, int type, const char *data, size_t len);
int nm_prop_set_void(nm_prop_t *p);
/* String/bytes values are copied: free out->data with nm_free(nm_allocator_libc(), ...). */
int nm_prop_get(nm_prop_t *p, nm_prop_value_t *out);
/* Copies the name (NUL-terminated) into buf; returns its length, NM_ERR_INVALID when the prop
 * has no name, or NM_ERR_CLOSED for a zombie. */
intptr_t nm_prop_name(nm_prop_t *p, char *buf, size_t cap);
/* The parent with a new reference (NULL for a root or a zombie). */
nm_prop_t *nm_prop_parent(nm_prop_t *p);
/* Children with a new reference each; fills up to cap and returns the count (or an error). */
intptr_t nm_prop_children(nm_prop_t *p, nm_prop_t **out, size_t cap);
/* Unlink, release the value and every child (recursively), become a zombie. */
int nm_prop_destroy(nm_prop_t *p);
int nm_prop_is_zombie(nm_prop_t *p);
int nm_prop_ref_inc(nm_prop_t *p);
/* 1 when the memory was freed, 0 otherwise, NM_ERR_REFCOUNT on underflow. */
int nm_prop_ref_dec(nm_prop_t *p);
intptr_t nm_prop_refs(nm_prop_t *p);
/* Props alive (memory not yet freed), for tests and leak checks. */
intptr_t nm_prop_live_count(void);

#endif /* NM_REFCOUNT_H */
