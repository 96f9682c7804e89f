"""OOM fault injection: fail the k-th allocation for every k along a scenario.

Each failure must surface as MemoryError, nothing may leak (the base allocator's statistics
return to zero once everything is released) and every structure must stay usable."""
from __future__ import annotations

import gc

import pytest

import nativemem
from nativemem import Arena, CowBuffer, DebugAllocator, Pool, StringTable
from nativemem._ffi import ffi, lib
from nativemem._testing import FaultyAllocator


def scenario(fa, objs):
    """Build and use every structure on `fa`; `objs` collects what exists so far."""
    objs["pool"] = Pool(48, allocator=fa, objects_per_chunk=8)
    objs["pool_objs"] = objs["pool"].alloc_many(20)
    objs["buf"] = fa.malloc(100)
    fa.realloc(objs["buf"], 5000)
    objs["cbuf"] = fa.calloc(10, 10)
    objs["table"] = StringTable(allocator=fa)
    objs["interned"] = []
    for i in range(40):
        objs["interned"].append(objs["table"].intern(f"string-{i}"))
    objs["debug"] = DebugAllocator(base=fa, quarantine=4)
    objs["dbuf"] = [objs["debug"].malloc(64) for _ in range(3)]
    objs["cow"] = CowBuffer(b"copy me", allocator=fa)
    shared = objs["cow"].share()
    objs["cow2"] = shared
    objs["cow2"] = shared.make_writable()
    objs["arena"] = Arena(1 << 16, allocator=fa)
    objs["abuf"] = objs["arena"].malloc(100)


def exercise(objs):
    """Every structure that exists still works."""
    if "pool" in objs:
        p = objs["pool"]
        p.free(p.alloc())
    if "table" in objs:
        objs["table"].intern("after").release()
    if "debug" in objs:
        objs["debug"].malloc(8).free()
        objs["debug"].check()
    if "arena" in objs:
        objs["arena"].malloc(10).free()
        objs["arena"].check()
    if "cow" in objs and not objs["cow"].released:
        assert bytes(objs["cow"]) == b"copy me"


def cleanup(objs):
    for key in ("abuf", "buf", "cbuf"):
        b = objs.pop(key, None)
        if b is not None and not b.freed:
            b.free()
    for b in objs.pop("dbuf", []):
        b.free()
    for h in objs.pop("interned", []):
        h.release()
    for key in ("cow", "cow2"):
        c = objs.pop(key, None)
        if c is not None and not c.released:
            c.release()
    if "pool" in objs:
        objs["pool"].free_many(objs.pop("pool_objs", []))
        objs.pop("pool").close()
    objs.clear()
    gc.collect()


def test_every_allocation_failure_along_the_scenario():
    base = nativemem.allocator("libc")
    fa = FaultyAllocator(base)
    objs = {}
    scenario(fa, objs)
    total = fa.requests
    cleanup(objs)
    assert total > 50 and base.stats().live_blocks == 0
    survived = 0
    for k in range(1, total + 1):
        fa.arm(k)
        objs = {}
        try:
            scenario(fa, objs)
        except MemoryError as exc:
            assert isinstance(exc, nativemem.NativeMemError)
            survived += 1
        fa.arm(0)
        assert fa.failures <= 1
        exercise(objs)
        cleanup(objs)
        st = base.stats()
        assert st.live_blocks == 0 and st.live_bytes == 0, (k, st)
    assert survived >= total * 0.9  # nearly every request is on a path that must report
    print(f"faults injected: {total}, surfaced as MemoryError: {survived}")


def test_c_level_faults_return_null_and_set_the_error():
    fa = lib.nm_allocator_faulty(lib.nm_allocator_libc(), 1)
    try:
        assert lib.nm_malloc(fa, 10) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_NOMEM
        lib.nm_clear_error()
        p = lib.nm_malloc(fa, 10)
        assert p != ffi.NULL
        lib.nm_faulty_set(fa, 1)
        assert lib.nm_realloc(fa, p, 1000) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_NOMEM
        lib.nm_clear_error()
        lib.nm_free(fa, p)  # the original block is untouched by a failed realloc
        pool = lib.nm_pool_create(fa, 32, 16, 0)
        assert pool != ffi.NULL
        lib.nm_faulty_set(fa, 1)
        assert lib.nm_pool_alloc(pool) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_NOMEM
        lib.nm_clear_error()
        q = lib.nm_pool_alloc(pool)
        assert q != ffi.NULL and lib.nm_pool_free(pool, q) == 0
        lib.nm_pool_destroy(pool)
    finally:
        lib.nm_allocator_destroy(fa)
