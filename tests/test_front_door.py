"""The front door's fast path for plain backends (libc, mimalloc): blocks counted exactly with
and without byte accounting (NM_STATS_BLOCKS), and the deferred destroy intact."""
import threading

import pytest

import nativemem
from nativemem._ffi import ffi, lib

PLAIN = [b.name for b in nativemem.backends() if b.available and b.name in ("libc", "mimalloc", "jemalloc")]


def _table(name, blocks_only):
    base = nativemem.allocator(name)  # alive until cloned (cdata holds no reference)
    a = lib.nm_allocator_clone(base.cdata, ffi.NULL)
    assert a != ffi.NULL
    assert lib.nm_allocator_get_stats_mode(a) == lib.NM_STATS_BLOCKS  # C's default
    if not blocks_only:
        assert lib.nm_allocator_set_stats(a, lib.NM_STATS_BYTES) == lib.NM_OK
    return a


def _stats(a):
    st = ffi.new("nm_alloc_stats_t *")
    lib.nm_allocator_stats(a, st)
    return st


@pytest.mark.parametrize("name", PLAIN)
@pytest.mark.parametrize("blocks_only", [False, True])
def test_counts_exact(name, blocks_only):
    a = _table(name, blocks_only)
    try:
        ps = [lib.nm_malloc(a, n) for n in (0, 1, 64, 1000)]
        ps.append(lib.nm_calloc(a, 3, 40))
        ps.append(lib.nm_memalign(a, 64, 100))
        ps[2] = lib.nm_realloc(a, ps[2], 5000)
        st = _stats(a)
        assert st.live_blocks == 6 and st.total_allocs == 6 and st.total_frees == 0
        if blocks_only:
            assert st.live_bytes == 0 and st.peak_bytes == 0
        else:
            assert st.live_bytes >= 1 + 1 + 5000 + 1000 + 120 + 100 and st.peak_bytes >= st.live_bytes
        for p in ps:
            lib.nm_free(a, p)
        st = _stats(a)
        assert st.live_blocks == 0 and st.live_bytes == 0 and st.total_frees == 6
        # errors still reported on the fast path
        assert lib.nm_malloc(a, 2**63 + 5) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_OVERFLOW
        assert lib.nm_calloc(a, 2**62, 8) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_OVERFLOW
        assert _stats(a).failures == 2
        lib.nm_clear_error()
    finally:
        lib.nm_allocator_destroy(a)


@pytest.mark.parametrize("name", PLAIN)
@pytest.mark.parametrize("blocks_only", [False, True])
def test_destroy_deferred_until_last_free_from_threads(name, blocks_only):
    for _ in range(20):
        a = _table(name, blocks_only)
        blocks = [lib.nm_malloc(a, 32) for _ in range(200)]
        lib.nm_allocator_destroy(a)  # deferred: blocks are live
        halves = [blocks[::2], blocks[1::2]]

        def free_all(ps):
            for p in ps:
                lib.nm_free(a, p)
        ts = [threading.Thread(target=free_all, args=(h,)) for h in halves]
        for t in ts:
            t.start()
        for t in ts:
            t.join()  # the last free destroyed the table (ASan/Valgrind runs see a leak or a use after free otherwise)


def test_stats_mode_is_set_before_the_first_allocation():
    base = nativemem.allocator("libc")
    a = lib.nm_allocator_clone(base.cdata, ffi.NULL)
    try:
        assert lib.nm_allocator_set_stats(a, 7) == lib.NM_ERR_INVALID
        assert lib.nm_allocator_set_stats(a, lib.NM_STATS_BYTES) == lib.NM_OK
        p = lib.nm_malloc(a, 10)
        assert lib.nm_allocator_set_stats(a, lib.NM_STATS_BLOCKS) == lib.NM_ERR_BUSY  # counts would lie
        assert lib.nm_allocator_get_stats_mode(a) == lib.NM_STATS_BYTES
        lib.nm_free(a, p)
    finally:
        lib.nm_allocator_destroy(a)
    off = lib.nm_allocator_clone(base.cdata, ffi.NULL)
    try:  # OFF is final: what it allocated was never counted
        assert lib.nm_allocator_set_stats(off, lib.NM_STATS_OFF) == lib.NM_OK
        assert lib.nm_allocator_get_stats_mode(off) == lib.NM_STATS_OFF
        assert lib.nm_allocator_set_stats(off, lib.NM_STATS_BLOCKS) == lib.NM_ERR_BUSY
        assert lib.nm_allocator_set_stats(off, lib.NM_STATS_OFF) == lib.NM_OK
    finally:
        lib.nm_allocator_destroy(off)
    assert lib.nm_allocator_set_stats(lib.nm_allocator_libc(), lib.NM_STATS_BYTES) == lib.NM_ERR_UNSUPPORTED
    d = nativemem.DebugAllocator()
    assert lib.nm_allocator_set_stats(d.cdata, lib.NM_STATS_BLOCKS) == lib.NM_ERR_UNSUPPORTED
    lib.nm_clear_error()


def test_python_allocators_count_exact_bytes():
    for a in (nativemem.allocator("libc"), nativemem.Arena(1 << 20)):
        assert lib.nm_allocator_get_stats_mode(a.cdata) == lib.NM_STATS_BYTES
        b = a.malloc(100)
        assert a.stats().live_bytes >= 100
        b.free()


def test_block_counts_exact_across_many_threads():
    """More threads than owned slots (31): the rest share the atomic slot; counts stay exact."""
    base = nativemem.allocator("libc")
    a = lib.nm_allocator_clone(base.cdata, ffi.NULL)
    try:
        def work():
            for _ in range(500):
                lib.nm_free(a, lib.nm_malloc(a, 32))
        ts = [threading.Thread(target=work) for _ in range(40)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        st = _stats(a)
        assert st.total_allocs == 40 * 500 and st.total_frees == 40 * 500 and st.live_blocks == 0
    finally:
        lib.nm_allocator_destroy(a)
