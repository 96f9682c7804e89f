/* nm_refcount.h -- atomic reference counts with destructors, saturation and per-object tracing (refcount.c). */
#ifndef NM_REFCOUNT_H
#define NM_REFCOUNT_H

#include "nm_alloc.h"

/* ---- reference counts (kernel refcount_t semantics) -------------------------------------- */
typedef struct nm_ref_trace nm_ref_trace_t;
typedef void (*nm_ref_destroy_fn)(void *arg);

typedef struct nm_refcount {
    intptr_t count;            /* atomic; at or past INTPTR_MAX / 2: immortal or saturated (never freed) */
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
int nm_ref_retain(nm_refcount_t *r);
int nm_ref_retain_at(nm_refcount_t *r, const char *file, int line);
/* 1 when this dropped the last reference (the destructor has run), 0 otherwise, or
 * NM_ERR_REFCOUNT on underflow (the object is then pinned, never destroyed twice). */
int nm_ref_release(nm_refcount_t *r);
int nm_ref_release_at(nm_refcount_t *r, const char *file, int line);
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

#endif /* NM_REFCOUNT_H */
