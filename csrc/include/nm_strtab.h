/* nm_strtab.h -- string interning with reference counts, sharded (strtab.c). */
#ifndef NM_STRTAB_H
#define NM_STRTAB_H

#include "nm_alloc.h"

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

#endif /* NM_STRTAB_H */
