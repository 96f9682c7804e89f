/* pool_bughunt.h -- private: a pool's bughunt mode (NM_POOL_BUGHUNT), one backend block per
 * object so that external checkers (ASan, Valgrind, the debug allocator) see each object.  Chosen
 * once, at pool creation: a pool in this mode hands every call to these functions. */
#ifndef NM_POOL_BUGHUNT_H
#define NM_POOL_BUGHUNT_H

#include "nm_internal.h"

typedef struct nm__bh nm__bh_t;

/* Objects of `object_size` bytes aligned to `alignment` from `a`, zeroed when `zero`; `lock` (the
 * pool's, already registered for fork safety) guards the map.  NULL with the error set. */
nm__bh_t *_nm_bh_create(nm_allocator_t *a, size_t object_size, size_t alignment, int zero, nm_mutex_t *lock);
/* Frees every object still live, and the map. */
void _nm_bh_destroy(nm__bh_t *bh);
void *_nm_bh_alloc(nm__bh_t *bh, const char *file, int line);
/* NM_OK, NM_ERR_INVALID_FREE or NM_ERR_DOUBLE_FREE (nothing freed then). */
int _nm_bh_free(nm__bh_t *bh, void *p);
int _nm_bh_owns(nm__bh_t *bh, const void *p);
void _nm_bh_stats(nm__bh_t *bh, nm_pool_stats_t *out);
size_t _nm_bh_live_objects(nm__bh_t *bh, nm_pool_object_t *out, size_t n);

#endif /* NM_POOL_BUGHUNT_H */
