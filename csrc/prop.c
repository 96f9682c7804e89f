/* prop.c -- the property tree (Movian's props): parents hold references on their children.
 *
 * Two lifetimes, as in Movian: the atomic refcount keeps a prop's MEMORY alive; destroy() ends
 * its CONTENT: it is unlinked from its parent, its value and children are released (children are
 * destroyed too, by a walk that needs no stack however deep the tree) and it becomes a zombie
 * that refuses use while references remain.  The memory goes back to the prop's allocator with
 * the last reference, poisoned with 0xDD.  Every prop draws its memory, name and value from an
 * allocator (given at creation, or its parent's, or the C library's).  Structure changes take
 * one tree mutex (Movian's prop_mutex); references are atomic.
 */
#include "nm_internal.h"

struct nm_prop {
    nm_refcount_t ref;
    nm_allocator_t *a;          /* the prop, its name and its value come from here */
    nm_prop_t *parent, *first_child, *last_child, *next, *prev;
    int type;
    int64_t i;
    double f;
    char *data;
    size_t len;
    char *name;
    size_t name_len;
};

static nm_mutex_t nm__tree = NM_MUTEX_INIT;
static nm_atomic_t nm__prop_live;
/* Across fork() the tree lock is taken first of all nativemem's locks: allocators' locks are
 * taken inside it (platform.h). */
static nm_atfork_t nm__tree_fork = {.lock = nm_atfork_mutex_lock, .unlock = nm_atfork_mutex_unlock,
                                    .arg = &nm__tree, .rank = NM_ATFORK_FIRST};

static void nm__prop_destroy0(nm_prop_t *p);

/* The memory's end: called by the refcount when the last reference goes. */
static void nm__prop_free(void *arg) {
    nm_prop_t *p = (nm_prop_t *)arg;
    if (p->type != NM_PROP_ZOMBIE) { /* dropped without destroy: release its content first */
        nm_mutex_lock(&nm__tree);
        nm__prop_destroy0(p);
        nm_mutex_unlock(&nm__tree);
    }
    nm_allocator_t *a = p->a;
    nm_ref_trace_disable(&p->ref);
    memset(p, 0xDD, sizeof *p);
    nm_atomic_add_relaxed(&nm__prop_live, -1);
    nm_free(a, p); /* may finish the allocator's deferred destroy: nothing of it is used after */
}

static void nm__value_clear(nm_prop_t *p) {
    if (p->data) nm_free(p->a, p->data);
    p->data = NULL;
    p->len = 0;
    p->type = NM_PROP_VOID;
}

/* Release a prop's value and name and make it a zombie (tree lock held). */
static void nm__prop_end(nm_prop_t *p) {
    nm__value_clear(p);
    if (p->name) nm_free(p->a, p->name);
    p->name = NULL;
    p->type = NM_PROP_ZOMBIE;
}

/* End a prop's content (tree lock held): children first, then unlink and release.
 *
 * Iterative, depth first, with no stack of its own: the tree is the stack.  The walk detaches
 * the current prop's first child and descends into it (its parent link kept, to come back up);
 * a prop with no children left is ended, loses its parent link and the reference its parent
 * held (which may free it), and the walk returns to that parent.  So a chain a million deep
 * costs no C stack, and the order is the recursive one: each child's subtree in sibling order,
 * a child ended after its own children. */
static void nm__prop_destroy0(nm_prop_t *p) {
    nm_prop_t *cur = p;
    for (;;) {
        nm_prop_t *c = cur->first_child;
        if (c != NULL) {
            cur->first_child = c->next;
            if (c->next) c->next->prev = NULL;
            else cur->last_child = NULL;
            c->next = c->prev = NULL;
            if (c->type != NM_PROP_ZOMBIE) {
                cur = c; /* c->parent == cur: the way back up */
            } else {     /* (not expected: destroy unlinks a prop from its parent) */
                c->parent = NULL;
                nm_ref_release_at(&c->ref, __FILE__, __LINE__);
            }
            continue;
        }
        if (cur == p) break;
        c = cur;
        cur = c->parent;
        c->parent = NULL;
        nm__prop_end(c);
        nm_ref_release_at(&c->ref, __FILE__, __LINE__); /* the parent's hold; c is a zombie now */
    }
    if (p->parent) {
        nm_prop_t *par = p->parent;
        if (p->prev) p->prev->next = p->next;
        else par->first_child = p->next;
        if (p->next) p->next->prev = p->prev;
        else par->last_child = p->prev;
        p->parent = p->next = p->prev = NULL;
        nm__prop_end(p);
        nm_ref_release_at(&p->ref, __FILE__, __LINE__); /* drop the parent's hold (never the last: caller holds one) */
        return;
    }
    nm__prop_end(p);
}

static int nm__zombie(nm_prop_t *p, const char *what) {
    return _nm_set_error(NM_ERR_CLOSED, "%s on prop %p: the prop was destroyed (zombie)", what, (void *)p);
}

nm_prop_t *nm_prop_create(nm_allocator_t *a, nm_prop_t *parent, const char *name, size_t name_len) {
    nm_prop_t *p;
    char *nm = NULL;
    nm_atfork_register(&nm__tree_fork); /* once; never while holding a lock the handlers take */
    nm_mutex_lock(&nm__tree);
    if (parent && parent->type == NM_PROP_ZOMBIE) {
        nm__zombie(parent, "create child");
        goto fail;
    }
    if (a == NULL) a = parent ? parent->a : nm_allocator_libc();
    if (name) {
        nm = (char *)nm_malloc(a, name_len + 1);
        if (nm == NULL) goto fail;
        memcpy(nm, name, name_len);
        nm[name_len] = '\0';
    }
    p = (nm_prop_t *)nm_malloc(a, sizeof *p);
    if (p == NULL) {
        if (nm) nm_free(a, nm);
        goto fail;
    }
    memset(p, 0, sizeof *p);
    nm_ref_init(&p->ref, nm__prop_free, p);
    p->a = a;
    p->name = nm;
    p->name_len = name_len;
    nm_atomic_add_relaxed(&nm__prop_live, 1);
    if (parent) {
        nm_ref_retain_at(&p->ref, __FILE__, __LINE__); /* the parent's hold on its child */
        p->parent = parent;
        p->prev = parent->last_child;
        if (parent->last_child) parent->last_child->next = p;
        else parent->first_child = p;
        parent->last_child = p;
    }
    nm_mutex_unlock(&nm__tree);
    return p;
fail:
    nm_mutex_unlock(&nm__tree);
    return NULL;
}

int nm_prop_set_int(nm_prop_t *p, int64_t v) {
    int rc = NM_OK;
    nm_mutex_lock(&nm__tree);
    if (p->type == NM_PROP_ZOMBIE) rc = nm__zombie(p, "set");
    else { nm__value_clear(p); p->type = NM_PROP_INT; p->i = v; }
    nm_mutex_unlock(&nm__tree);
    return rc;
}

int nm_prop_set_float(nm_prop_t *p, double v) {
    int rc = NM_OK;
    nm_mutex_lock(&nm__tree);
    if (p->type == NM_PROP_ZOMBIE) rc = nm__zombie(p, "set");
    else { nm__value_clear(p); p->type = NM_PROP_FLOAT; p->f = v; }
    nm_mutex_unlock(&nm__tree);
    return rc;
}

int nm_prop_set_void(nm_prop_t *p) {
    int rc = NM_OK;
    nm_mutex_lock(&nm__tree);
    if (p->type == NM_PROP_ZOMBIE) rc = nm__zombie(p, "set");
    else nm__value_clear(p);
    nm_mutex_unlock(&nm__tree);
    return rc;
}

int nm_prop_set_data(nm_prop_t *p, int type, const char *data, size_t len) {
    char *copy;
    int rc = NM_OK;
    if (type != NM_PROP_STRING && type != NM_PROP_BYTES) return _nm_set_error(NM_ERR_INVALID, "bad prop data type %d", type);
    copy = (char *)nm_malloc(p->a, len + 1); /* p->a is set once, at creation: no lock needed */
    if (copy == NULL) return NM_ERR_NOMEM;
    if (len) memcpy(copy, data, len);
    copy[len] = '\0';
    nm_mutex_lock(&nm__tree);
    if (p->type == NM_PROP_ZOMBIE) {
        rc = nm__zombie(p, "set");
        nm_free(p->a, copy);
    } else {
        nm__value_clear(p);
        p->type = type;
        p->data = copy;
        p->len = len;
    }
    nm_mutex_unlock(&nm__tree);
    return rc;
}

/* Copies scalars; string/bytes values are copied into a block from the prop's allocator (so they
 * stay valid after the lock is released), which nm_prop_value_clear frees. */
int nm_prop_get(nm_prop_t *p, nm_prop_value_t *out) {
    int rc = NM_OK;
    memset(out, 0, sizeof *out);
    nm_mutex_lock(&nm__tree);
    if (p->type == NM_PROP_ZOMBIE) {
        rc = nm__zombie(p, "get");
    } else {
        out->type = p->type;
        out->i = p->i;
        out->f = p->f;
        if (p->data) {
            char *copy = (char *)nm_malloc(p->a, p->len + 1);
            if (copy == NULL) rc = NM_ERR_NOMEM;
            else {
                memcpy(copy, p->data, p->len + 1);
                out->data = copy;
                out->len = p->len;
                out->allocator = p->a;
            }
        }
    }
    nm_mutex_unlock(&nm__tree);
    return rc;
}

intptr_t nm_prop_name(nm_prop_t *p, char *buf, size_t cap) {
    intptr_t n;
    nm_mutex_lock(&nm__tree);
    if (p->type == NM_PROP_ZOMBIE) n = nm__zombie(p, "name");
    else if (p->name == NULL) n = NM_ERR_INVALID; /* no name (not an error: nothing is reported) */
    else {
        n = (intptr_t)p->name_len;
        if (buf && cap) {
            size_t k = p->name_len < cap - 1 ? p->name_len : cap - 1;
            memcpy(buf, p->name, k);
            buf[k] = '\0';
        }
    }
    nm_mutex_unlock(&nm__tree);
    return n;
}

nm_prop_t *nm_prop_parent(nm_prop_t *p) {
    nm_prop_t *par;
    nm_mutex_lock(&nm__tree);
    par = p->parent;
    if (par) nm_ref_retain_at(&par->ref, __FILE__, __LINE__);
    nm_mutex_unlock(&nm__tree);
    return par;
}

intptr_t nm_prop_children(nm_prop_t *p, nm_prop_t **out, size_t cap) {
    intptr_t n = 0;
    nm_prop_t *c;
    nm_mutex_lock(&nm__tree);
    if (p->type == NM_PROP_ZOMBIE) {
        n = nm__zombie(p, "children");
    } else {
        for (c = p->first_child; c; c = c->next, n++)
            if ((size_t)n < cap) {
                nm_ref_retain_at(&c->ref, __FILE__, __LINE__);
                out[n] = c;
            }
    }
    nm_mutex_unlock(&nm__tree);
    return n;
}

int nm_prop_destroy(nm_prop_t *p) {
    int rc = NM_OK;
    nm_mutex_lock(&nm__tree);
    if (p->type == NM_PROP_ZOMBIE) rc = nm__zombie(p, "destroy");
    else nm__prop_destroy0(p);
    nm_mutex_unlock(&nm__tree);
    return rc;
}

int nm_prop_is_zombie(nm_prop_t *p) {
    int z;
    nm_mutex_lock(&nm__tree);
    z = p->type == NM_PROP_ZOMBIE;
    nm_mutex_unlock(&nm__tree);
    return z;
}

int nm_prop_retain(nm_prop_t *p) { return nm_ref_retain(&p->ref); }
int nm_prop_release(nm_prop_t *p) { return nm_ref_release(&p->ref); }
intptr_t nm_prop_refs(nm_prop_t *p) { return nm_ref_count(&p->ref); }
intptr_t nm_prop_live_count(void) { return nm_atomic_load_relaxed(&nm__prop_live); }

void nm_prop_value_clear(nm_prop_value_t *v) {
    if (v->data != NULL && v->allocator != NULL) nm_free(v->allocator, (void *)v->data);
    memset(v, 0, sizeof *v);
}

nm_allocator_t *nm_prop_allocator(nm_prop_t *p) { return p->a; }
