"""The bounded arena: TLSF inside one region."""
from __future__ import annotations

import random
import threading

import pytest

import nativemem
from nativemem import Arena
from nativemem._ffi import ffi, lib


def test_full_arena_raises_memory_error_and_recovers():
    ar = Arena(1 << 20)
    bufs = []
    with pytest.raises(MemoryError):
        while True:
            bufs.append(ar.malloc(10_000))
    assert 90 <= len(bufs) <= 105
    st = ar.arena_stats()
    assert st.largest_free < 10_000 + 32
    ar.check()
    for b in bufs:
        b.free()
    st = ar.arena_stats()
    # every block merged back into one
    assert st.used_blocks == 0 and st.free_blocks == 1 and st.largest_free == st.capacity
    big = ar.malloc(st.capacity - 64)
    big.free()


def test_coalescing_after_fragmentation():
    ar = Arena(1 << 20)
    rng = random.Random(7)
    bufs = [ar.malloc(rng.randint(1, 3000)) for _ in range(200)]
    rng.shuffle(bufs)
    for b in bufs[::2]:
        b.free()
    ar.check()
    assert ar.arena_stats().free_blocks > 10
    for b in bufs[1::2]:
        b.free()
    ar.check()
    st = ar.arena_stats()
    assert st.free_blocks == 1 and st.largest_free == st.capacity


def test_stats_and_histograms_match_allocations():
    ar = Arena(4 << 20)
    sizes = [100] * 10 + [5000] * 3 + [70_000]
    bufs = [ar.malloc(n) for n in sizes]
    st = ar.arena_stats()
    assert st.used_blocks == len(sizes)
    assert sum(st.used_histogram.values()) == len(sizes)
    assert st.used_histogram[128] == 10          # 100 + 32-byte header -> 144 bytes, bin [128, 256)
    assert st.used_histogram[4096] == 3
    assert st.used_histogram[65536] == 1
    assert st.used_bytes + st.free_bytes == st.capacity
    assert ar.stats().live_blocks == len(sizes) and ar.stats().live_bytes == sum(sizes)
    report = ar.histogram_report()
    assert "capacity" in report and "65536" in report
    for b in bufs:
        b.free()


def test_realloc_grows_in_place_when_the_neighbour_is_free():
    ar = Arena(1 << 20)
    a = ar.malloc(1000)
    b = ar.malloc(1000)
    addr = a.address
    b.free()
    a.write(b"z" * 1000)
    ar.realloc(a, 1800)
    assert a.address == addr and a.read(0, 1000) == b"z" * 1000
    c = ar.malloc(100)  # now a cannot grow in place
    ar.realloc(a, 100_000)
    assert a.address != addr and a.read(0, 1000) == b"z" * 1000
    ar.check()
    a.free(), c.free()


def test_memalign_inside_the_arena():
    ar = Arena(1 << 20)
    bufs = [ar.memalign(1 << s, 100) for s in range(4, 13)]
    for s, b in zip(range(4, 13), bufs):
        assert b.address % (1 << s) == 0
    ar.check()
    for b in bufs:
        b.free()
    ar.check()
    assert ar.arena_stats().free_blocks == 1


def test_foreign_and_double_free_at_c_level_leave_the_arena_consistent():
    ar = Arena(1 << 16)
    t = ar.cdata
    p = lib.nm_malloc(t, 100)
    libc_block = lib.nm_malloc(lib.nm_allocator_libc(), 100)
    for bad, code in ((libc_block, lib.NM_ERR_INVALID_FREE),
                      (ffi.cast("char *", p) + 16, lib.NM_ERR_INVALID_FREE),
                      (ffi.cast("char *", p) + 1, lib.NM_ERR_INVALID_FREE)):
        assert lib.nm_free_checked(t, bad) == code
    assert lib.nm_free_checked(t, p) == 0
    assert lib.nm_free_checked(t, p) == lib.NM_ERR_DOUBLE_FREE
    assert lib.nm_realloc(t, p, 10) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_REALLOC_FREED
    lib.nm_clear_error()
    ar.check()
    st = ar.stats()
    assert st.live_blocks == 0 and st.total_frees == 1
    lib.nm_free(lib.nm_allocator_libc(), libc_block)


def test_arena_on_a_base_allocator():
    for name in [b.name for b in nativemem.backends() if b.available]:
        base = nativemem.allocator(name)
        ar = Arena(1 << 20, allocator=base)
        assert ar.base is base and base.stats().live_blocks == 1 and base.stats().live_bytes >= 1 << 20
        x = ar.malloc(1000)
        assert base.stats().live_blocks == 1  # blocks come from the region, not the base
        x.free()
        del ar, x
        import gc
        gc.collect()
        assert base.stats().live_blocks == 0  # region returned when the arena went away


def test_bad_arena_arguments():
    with pytest.raises(ValueError):
        Arena(100)
    with pytest.raises(ValueError):
        Arena(-1)
    with pytest.raises(TypeError):
        Arena("big")
    with pytest.raises(OverflowError):
        Arena(1 << 40)
    with pytest.raises(TypeError):
        Arena(1 << 20, allocator="libc")


def test_threads_share_one_arena():
    ar = Arena(16 << 20)
    errors = []

    def work(seed):
        rng = random.Random(seed)
        held = []
        try:
            for _ in range(3000):
                if held and rng.random() < 0.5:
                    b = held.pop(rng.randrange(len(held)))
                    assert b.read(0, 1) == bytes([seed])
                    b.free()
                else:
                    b = ar.malloc(rng.randint(1, 4000))
                    b.write(bytes([seed]))
                    held.append(b)
            for b in held:
                b.free()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(1, 5)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    ar.check()
    st = ar.stats()
    assert st.live_blocks == 0 and st.live_bytes == 0 and st.total_allocs == st.total_frees
    assert ar.arena_stats().free_blocks == 1


def test_arena_apis_refuse_other_allocators():
    libc = nativemem.allocator("libc")
    out = ffi.new("nm_arena_stats_t *")
    assert lib.nm_arena_stats(libc.cdata, out) == lib.NM_ERR_INVALID
    lib.nm_clear_error()


def _caches_never_cost_space(ar, size, free_all):
    """Fill `ar` with `size`-byte blocks and free them all with `free_all` (the caches keep some
    whole); a request that fits only once they are merged back must then succeed -- its failed
    search empties the caches (the capacity is read before: a walk would empty them first).  A
    cached block freed again is still a double free.  Returns the capacity."""
    t = ar.cdata
    cap = ar.arena_stats().capacity
    ps = []
    while True:
        p = lib.nm_malloc(t, size)
        if p == ffi.NULL:
            break
        ps.append(p)
    lib.nm_clear_error()
    free_all(ps)
    big = lib.nm_malloc(t, cap - 64)
    assert big != ffi.NULL, size
    lib.nm_free(t, big)
    ps = [lib.nm_malloc(t, size) for _ in range(20)]
    for p in ps:
        lib.nm_free(t, p)
    for p in ps[-3:]:  # in a cache: a second free is still a double free
        assert lib.nm_free_checked(t, p) == lib.NM_ERR_DOUBLE_FREE
        assert lib.nm_realloc(t, p, 8) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_REALLOC_FREED
        assert lib.nm_usable_size(t, p) == 0
    lib.nm_clear_error()
    return cap


def test_quick_cache_never_costs_space():
    """Small freed blocks are kept whole for the next request of their size; a request that only
    fits once they are merged back still succeeds, for malloc and memalign alike."""
    for size in (16, 100, 400):
        ar = Arena(1 << 16)
        t = ar.cdata

        def free_all(ps):
            for p in ps:  # the last 8 of each size stay whole in the cache
                lib.nm_free(t, p)

        cap = _caches_never_cost_space(ar, size, free_all)
        q = lib.nm_memalign(t, 4096, cap // 2)  # needs the cached blocks merged
        assert q != ffi.NULL
        lib.nm_free(t, q)
        ar.check()
        st = ar.arena_stats()
        assert st.free_blocks == 1 and st.largest_free == st.capacity


def _mt(ar):
    """The arena as after two threads met on its lock: small blocks go through striped caches."""
    assert lib.nm_arena_testing_mt(ar.cdata, 1) == 1
    return ar


def test_an_arena_becomes_mt_only_under_contention():
    ar = Arena(1 << 20)
    for _ in range(1000):
        ar.malloc(64).free()
    assert lib.nm_arena_testing_mt(ar.cdata, 0) == 0  # one thread: never
    assert lib.nm_arena_testing_mt(lib.nm_allocator_libc(), 0) == -1
    lib.nm_clear_error()


def test_striped_caches_never_cost_space():
    """Blocks freed by other threads sit in those threads' stripes; a request that fits only
    once every stripe is merged back still succeeds, and a walk sees them merged."""
    for size in (16, 100, 400):
        ar = _mt(Arena(1 << 16))
        t = ar.cdata

        def free_some(part):
            for p in part:
                assert lib.nm_free_checked(t, p) == 0

        def free_all(ps):  # two other threads free two thirds: their stripes keep some whole
            parts = [ps[i::3] for i in range(3)]
            ths = [threading.Thread(target=free_some, args=(part,)) for part in parts[:2]]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            free_some(parts[2])

        _caches_never_cost_space(ar, size, free_all)
        ar.check()
        st = ar.arena_stats()
        assert st.free_blocks == 1 and st.largest_free == st.capacity
        s = ar.stats()
        assert s.live_blocks == 0 and s.live_bytes == 0


def test_mt_arena_cross_thread_frees_keep_counts_exact():
    ar = _mt(Arena(8 << 20))
    t = ar.cdata
    n_threads, rounds = 4, 4000
    slots = [ffi.NULL] * 512
    lock = threading.Lock()
    errors = []

    def work(seed):
        rng = random.Random(seed)
        try:
            for _ in range(rounds):
                p = lib.nm_malloc(t, rng.randint(1, 600))
                assert p != ffi.NULL
                ffi.cast("unsigned char *", p)[0] = seed
                k = rng.randrange(len(slots))
                with lock:
                    old, slots[k] = slots[k], p
                if old != ffi.NULL:
                    assert lib.nm_free_checked(t, old) == 0
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    ths = [threading.Thread(target=work, args=(i,)) for i in range(1, n_threads + 1)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert not errors
    live = [p for p in slots if p != ffi.NULL]
    assert ar.stats().live_blocks == len(live)
    ar.check()
    for p in live:
        lib.nm_free(t, p)
    st = ar.stats()
    assert st.live_blocks == 0 and st.live_bytes == 0 and st.total_allocs == st.total_frees == n_threads * rounds
    ar.check()
    assert ar.arena_stats().free_blocks == 1


def test_racing_double_free_has_exactly_one_winner():
    """Two threads free the same block at once (the GIL is released in the call): one frees it,
    the other is told it is a double free; the block is never cached twice."""
    ar = _mt(Arena(1 << 20))
    t = ar.cdata
    barrier = threading.Barrier(2)
    results = [None, None]
    box = [ffi.NULL]

    def free_it(i):
        barrier.wait()
        results[i] = lib.nm_free_checked(t, box[0])

    for _ in range(300):
        box[0] = lib.nm_malloc(t, 48)
        ths = [threading.Thread(target=free_it, args=(i,)) for i in range(2)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        assert sorted(results) == sorted([0, lib.NM_ERR_DOUBLE_FREE]), results
    lib.nm_clear_error()
    seen = {int(ffi.cast("uintptr_t", lib.nm_malloc(t, 48))) for _ in range(64)}
    assert len(seen) == 64  # no block handed out twice
    ar.check()
