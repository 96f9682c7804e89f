/* nm_prop.h -- the property tree, Movian's props: parents hold their children (prop.c). */
#ifndef NM_PROP_H
#define NM_PROP_H

#include "nm_alloc.h"

/* ---- property tree (Movian's props: parents hold their children) ----------------------------- */
typedef struct nm_prop nm_prop_t;
enum nm_prop_type { NM_PROP_VOID = 0, NM_PROP_INT = 1, NM_PROP_FLOAT = 2, NM_PROP_STRING = 3,
                    NM_PROP_BYTES = 4, NM_PROP_ZOMBIE = 5 };
typedef struct nm_prop_value {
    int type;
    int64_t i;
    double f;
    const char *data;  /* string/bytes: a copy, freed by nm_prop_value_clear            */
    size_t len;
    nm_allocator_t *allocator; /* where `data` came from (the prop's allocator)         */
} nm_prop_value_t;
/* A new prop (one memory reference for the caller), child of parent when not NULL (the parent
 * then holds a reference on it).  The prop, its name and its values are drawn from `a`; NULL
 * means the parent's allocator, or the C library's for a root.  `a` must outlive the prop: an
 * allocator that counts blocks (any but NM_STATS_OFF) defers its destruction until its last
 * block, so the prop's own memory keeps it.  NULL with the error set on failure. */
nm_prop_t *nm_prop_create(nm_allocator_t *a, nm_prop_t *parent, const char *name, size_t name_len);
/* The allocator the prop draws from. */
nm_allocator_t *nm_prop_allocator(nm_prop_t *p);
int nm_prop_set_int(nm_prop_t *p, int64_t v);
int nm_prop_set_float(nm_prop_t *p, double v);
int nm_prop_set_data(nm_prop_t *p, int type, const char *data, size_t len);
int nm_prop_set_void(nm_prop_t *p);
/* The value; string/bytes values are copied: release the copy with nm_prop_value_clear(out). */
int nm_prop_get(nm_prop_t *p, nm_prop_value_t *out);
/* Frees a value's copied data (from nm_prop_get) and zeroes *v; safe on a zeroed value. */
void nm_prop_value_clear(nm_prop_value_t *v);
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
int nm_prop_retain(nm_prop_t *p);
/* 1 when the memory was freed, 0 otherwise, NM_ERR_REFCOUNT on underflow. */
int nm_prop_release(nm_prop_t *p);
intptr_t nm_prop_refs(nm_prop_t *p);
/* Props alive (memory not yet freed), for tests and leak checks. */
intptr_t nm_prop_live_count(void);

#endif /* NM_PROP_H */
