"""NM_POOL_UNCHECKED (C API only: the Python Pool never makes one): a per-thread free list whose
counts stay exact across threads, spills and refills, and which refuses what it cannot do."""
import os
import threading
import time

from nativemem._ffi import ffi, lib


def _stats(pool):
    st = ffi.new("nm_pool_stats_t *")
    lib.nm_pool_stats(pool, st)
    return st


def test_counts_reuse_and_zeroing():
    pool = lib.nm_pool_create(ffi.NULL, 40, 16, lib.NM_POOL_UNCHECKED | lib.NM_POOL_ZERO)
    assert pool != ffi.NULL
    try:
        objs = [lib.nm_pool_alloc(pool) for _ in range(100)]
        assert len({int(ffi.cast("uintptr_t", o)) for o in objs}) == 100
        for o in objs:
            assert lib.nm_pool_owns(pool, o)
            ffi.memmove(o, b"\xAB" * 40, 40)
        st = _stats(pool)
        assert st.allocations == 100 and st.live == 100 and st.peak >= 100 and st.reserved_bytes >= 100 * 40
        for o in objs:
            assert lib.nm_pool_free(pool, o) == lib.NM_OK
        again = lib.nm_pool_alloc(pool)           # reused, and zeroed
        assert bytes(ffi.buffer(again, 40)) == b"\0" * 40
        assert lib.nm_pool_free(pool, again) == lib.NM_OK
        st = _stats(pool)
        assert st.allocations == 101 and st.frees == 101 and st.live == 0
        assert not lib.nm_pool_owns(pool, ffi.cast("void *", 16))
    finally:
        lib.nm_pool_destroy(pool)


def _os_threads_gone(tids, timeout=10.0):
    """True once the OS threads `tids` have exited (Linux: /proc), False where that cannot be seen.
    threading's join returns when the Python thread state is gone, before the OS thread runs its
    TLS destructors -- where a pool's thread-exit callback hands the thread's cache back."""
    if not os.path.isdir("/proc/self/task"):
        return False
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/self/task/{t}") for t in tids):
        assert time.monotonic() < deadline, "threads did not exit"
        time.sleep(0.001)
    return True


def test_batches_and_cross_thread_frees_keep_counts_exact():
    pool = lib.nm_pool_create(ffi.NULL, 64, 32, lib.NM_POOL_UNCHECKED)
    try:
        n = 2000
        arr = ffi.new("void *[]", n)
        assert lib.nm_pool_alloc_many(pool, arr, n) == n
        errors = []

        tids = []

        def free_half(lo, hi):  # another thread frees what this one allocated: spills to the shared list
            tids.append(threading.get_native_id())
            try:
                assert lib.nm_pool_free_many(pool, arr + lo, hi - lo) == lib.NM_OK
            except AssertionError as e:  # pragma: no cover
                errors.append(e)

        ts = [threading.Thread(target=free_half, args=(i * n // 4, (i + 1) * n // 4)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors
        st = _stats(pool)
        assert st.allocations == n and st.frees == n and st.live == 0
        reserved = st.reserved_bytes
        exited = _os_threads_gone(tids)  # their caches are in the shared list only once they have
        assert lib.nm_pool_alloc_many(pool, arr, n) == n  # taken back from the shared list: no new chunks
        if exited:
            assert _stats(pool).reserved_bytes == reserved
        assert lib.nm_pool_free_many(pool, arr, n) == lib.NM_OK
    finally:
        lib.nm_pool_destroy(pool)


def test_refusals():
    lib.nm_clear_error()
    for bad in (lib.NM_POOL_UNCHECKED | lib.NM_POOL_CHECKED, lib.NM_POOL_UNCHECKED | lib.NM_POOL_BUGHUNT):
        assert lib.nm_pool_create(ffi.NULL, 32, 16, bad) == ffi.NULL
        assert lib.nm_last_error() == lib.NM_ERR_INVALID
    pool = lib.nm_pool_create(ffi.NULL, 32, 16, lib.NM_POOL_UNCHECKED)
    try:
        o = lib.nm_pool_alloc(pool)
        out = ffi.new("nm_pool_object_t[4]")
        assert lib.nm_pool_live_objects(pool, out, 4) == 0 and lib.nm_last_error() == lib.NM_ERR_UNSUPPORTED
        assert lib.nm_pool_free(pool, ffi.NULL) == lib.NM_ERR_INVALID_FREE
        assert lib.nm_pool_free(pool, o) == lib.NM_OK
    finally:
        lib.nm_pool_destroy(pool)
