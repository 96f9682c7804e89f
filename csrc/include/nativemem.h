/* nativemem.h -- the public C API of nativemem's core: every area header, in dependency order.
 * Include this, or only the area headers you use (each stands alone).  The private headers
 * (nm_internal.h, platform.h) live beside the sources in csrc/, not here. */
#ifndef NATIVEMEM_H
#define NATIVEMEM_H

#include "nm_alloc.h"    /* allocators, the front door, errors, statistics            */
#include "nm_backends.h" /* libc, jemalloc/mimalloc-style functions, Windows heaps, zones */
#include "nm_arena.h"    /* a bounded arena over one region                             */
#include "nm_debug.h"    /* the debug allocator                                         */
#include "nm_pool.h"     /* fixed-size object pools                                     */
#include "nm_refcount.h" /* atomic reference counts                                     */
#include "nm_strtab.h"   /* string interning                                            */
#include "nm_cow.h"      /* copy-on-write buffers                                       */
#include "nm_prop.h"     /* the property tree                                           */
#include "nm_numpy.h"    /* a NumPy data-memory handler over an allocator               */

#endif /* NATIVEMEM_H */
