/* refcount.c -- atomic reference counts with the Linux kernel's refcount_t semantics.
 *
 * Relaxed increment; release decrement with an acquire fence before the destructor (so the
 * destructor sees every write made under a reference).  Counts in [NM__PINNED, ...) are
 * "pinned": immortal objects live there, and a count that overflows or is misused (increment
 * from zero, decrement below zero) is moved there, so the object leaks instead of being freed
 * twice.  Every misuse is reported (thread error + optional hook).  Tracing per object is free
 * unless switched on.
 */
#include "nm_internal.h"

#include <stdio.h>

#define NM__PINNED    ((intptr_t)(INTPTR_MAX / 2))
#define NM__PIN_VALUE ((intptr_t)(NM__PINNED + INTPTR_MAX / 8)) /* far from both range ends */

struct nm_ref_trace {
    nm_mutex_t lock;
    size_t cap, n;          /* n: events recorded in total */
    nm_ref_event_t ev[1];
};

static nm_ref_error_hook_fn nm__ref_hook;

void nm_ref_set_error_hook(nm_ref_error_hook_fn hook) { nm__ref_hook = hook; }

void nm_ref_init(nm_refcount_t *r, nm_ref_destroy_fn destroy, void *arg) {
    r->count = 1;
    r->destroy = destroy;
    r->arg = arg;
    r->trace = NULL;
}

void nm_ref_make_immortal(nm_refcount_t *r) { nm_atomic_store_relaxed(&r->count, NM__PIN_VALUE); }
int nm_ref_is_immortal(const nm_refcount_t *r) { return nm_atomic_load_relaxed((nm_atomic_t *)&r->count) >= NM__PINNED; }
intptr_t nm_ref_count(const nm_refcount_t *r) { return nm_atomic_load_relaxed((nm_atomic_t *)&r->count); }

static void nm__trace(nm_refcount_t *r, const char *file, int line, int op, intptr_t count) {
    nm_ref_trace_t *t = r->trace;
    nm_ref_event_t *e;
    nm_mutex_lock(&t->lock);
    e = &t->ev[t->n++ % t->cap];
    e->file = file;
    e->line = line;
    e->op = op;
    e->count = count;
    nm_mutex_unlock(&t->lock);
}

/* Describe the trace (newest last) into the error message. */
static NM_NOINLINE int nm__ref_error(nm_refcount_t *r, int kind, intptr_t seen, const char *file, int line) {
    char msg[448];
    size_t off;
    const char *what = kind == NM_REF_ERR_INC_FROM_ZERO ? "increment from zero (use after free)"
                       : kind == NM_REF_ERR_UNDERFLOW   ? "decrement below zero (underflow)"
                                                        : "overflow (saturated; the object is now pinned)";
    nm_atomic_store_relaxed(&r->count, NM__PIN_VALUE); /* never destroyed twice, never revived */
    off = (size_t)snprintf(msg, sizeof msg, "refcount %p: %s at %s:%d (count was %lld)", (void *)r, what,
                           file ? file : "?", line, (long long)seen);
    if (r->trace && off < sizeof msg) {
        nm_ref_trace_t *t = r->trace;
        size_t i, first = t->n > t->cap ? t->n - t->cap : 0;
        nm_mutex_lock(&t->lock);
        off += (size_t)snprintf(msg + off, sizeof msg - off, "; trace:");
        for (i = first; i < t->n && off < sizeof msg; i++) {
            nm_ref_event_t *e = &t->ev[i % t->cap];
            off += (size_t)snprintf(msg + off, sizeof msg - off, " %s %s:%d->%lld;", e->op > 0 ? "inc" : "dec",
                                    e->file ? e->file : "?", e->line, (long long)e->count);
        }
        nm_mutex_unlock(&t->lock);
    }
    _nm_set_error(NM_ERR_REFCOUNT, "%s", msg);
    if (nm__ref_hook) nm__ref_hook(r, kind, msg);
    return NM_ERR_REFCOUNT;
}

int nm_ref_retain_at(nm_refcount_t *r, const char *file, int line) {
    intptr_t n = nm_atomic_add_relaxed(&r->count, 1);
    if (NM_UNLIKELY(n <= 1 || n >= NM__PINNED)) {
        if (n == 1) return nm__ref_error(r, NM_REF_ERR_INC_FROM_ZERO, 0, file, line);
        if (n == NM__PINNED) return nm__ref_error(r, NM_REF_ERR_OVERFLOW, n - 1, file, line);
        if (n <= 0) return nm__ref_error(r, NM_REF_ERR_INC_FROM_ZERO, n - 1, file, line);
        return NM_OK; /* pinned: immortal or saturated, nothing to count */
    }
    if (NM_UNLIKELY(r->trace != NULL)) nm__trace(r, file, line, +1, n);
    return NM_OK;
}

int nm_ref_release_at(nm_refcount_t *r, const char *file, int line) {
    intptr_t n = nm_atomic_add_release(&r->count, -1);
    if (NM_LIKELY(n > 0 && n < NM__PINNED)) {
        if (NM_UNLIKELY(r->trace != NULL)) nm__trace(r, file, line, -1, n);
        return 0;
    }
    if (n >= NM__PINNED) return 0;
    if (n < 0) return nm__ref_error(r, NM_REF_ERR_UNDERFLOW, n + 1, file, line);
    /* n == 0: the last reference; see every write made under the others before destroying */
    nm_atomic_fence_acquire();
    if (r->trace != NULL) nm__trace(r, file, line, -1, 0);
    if (r->destroy) r->destroy(r->arg);
    return 1;
}

int nm_ref_retain(nm_refcount_t *r) { return nm_ref_retain_at(r, _nm_site_file, _nm_site_line); }
int nm_ref_release(nm_refcount_t *r) { return nm_ref_release_at(r, _nm_site_file, _nm_site_line); }

int nm_ref_trace_enable(nm_refcount_t *r, size_t capacity) {
    nm_ref_trace_t *t;
    size_t bytes;
    if (capacity == 0 || capacity > 65536) return _nm_set_error(NM_ERR_INVALID, "trace capacity must be 1..65536");
    if (r->trace) return NM_OK;
    bytes = sizeof(nm_ref_trace_t) + (capacity - 1) * sizeof(nm_ref_event_t);
    t = (nm_ref_trace_t *)nm_calloc(nm_allocator_libc(), 1, bytes);
    if (t == NULL) return NM_ERR_NOMEM;
    nm_mutex_init(&t->lock);
    t->cap = capacity;
    r->trace = t;
    return NM_OK;
}

void nm_ref_trace_disable(nm_refcount_t *r) {
    nm_ref_trace_t *t = r->trace;
    if (t == NULL) return;
    r->trace = NULL;
    nm_mutex_destroy(&t->lock);
    nm_free(nm_allocator_libc(), t);
}

size_t nm_ref_trace_get(nm_refcount_t *r, nm_ref_event_t *out, size_t cap) {
    nm_ref_trace_t *t = r->trace;
    size_t i, first, n = 0;
    if (t == NULL) return 0;
    nm_mutex_lock(&t->lock);
    first = t->n > t->cap ? t->n - t->cap : 0;
    for (i = first; i < t->n; i++, n++)
        if (n < cap) out[n] = t->ev[i % t->cap];
    nm_mutex_unlock(&t->lock);
    return n;
}
