"""Fixed-size pools: API, flags, misuse, threads, checked mode."""
from __future__ import annotations

import ctypes
import gc
import threading
import warnings

import pytest
from cffi import FFI

import nativemem
from nativemem import ClosedError, DoubleFreeError, InvalidFreeError, ObjectPool, Pool, UseAfterFreeError
from nativemem._ffi import ffi, lib


# These tests write into freed pool memory on purpose; an ASan build rightly aborts on that.
SEEDS_BUGS = pytest.mark.skipif(nativemem.build_info()["asan"],
                                reason="deliberate write/read of freed memory: AddressSanitizer aborts")


def addr(p):
    return int(ffi.cast("uintptr_t", p))


@pytest.mark.parametrize("alignment", [8, 16, 64, 256, 4096])
def test_alignment_and_zeroing(alignment):
    with Pool(40, alignment=alignment, objects_per_chunk=16) as pool:
        objs = [pool.alloc() for _ in range(50)]
        assert len({addr(o) for o in objs}) == 50
        for o in objs:
            assert addr(o) % alignment == 0
            assert bytes(pool.view(o)) == bytes(40)
            pool.view(o)[:] = b"\xff" * 40
        for o in objs:
            pool.free(o)
        again = [pool.alloc() for _ in range(50)]
        assert all(bytes(pool.view(o)) == bytes(40) for o in again)  # zeroed on reuse
        pool.free_many(again)


def test_unzeroed_pool_keeps_contents():
    with Pool(32, zero=False) as pool:
        o = pool.alloc()
        pool.view(o)[:4] = b"abcd"
        pool.free(o)
        o2 = pool.alloc()
        assert addr(o2) == addr(o)  # LIFO reuse from the thread's magazine
        pool.free(o2)


def test_stats_are_exact():
    pool = Pool(64, objects_per_chunk=100)
    objs = [pool.alloc() for _ in range(250)]
    st = pool.stats()
    assert (st.allocations, st.frees, st.live, st.peak) == (250, 0, 250, 250)
    assert st.chunks >= 2 and st.reserved_bytes >= 250 * 64
    for o in objs[:100]:
        pool.free(o)
    st = pool.stats()
    assert (st.allocations, st.frees, st.live, st.peak) == (250, 100, 150, 250)
    pool.free_many(objs[100:])
    assert pool.stats().live == 0
    pool.close()


def test_free_accepts_int_addresses_and_rejects_bad_pointers():
    pool = Pool(48)
    o = pool.alloc()
    pool.free(addr(o))
    with pytest.raises(DoubleFreeError):
        pool.free(o)
    with pytest.raises(DoubleFreeError):
        pool.free(addr(o))
    o = pool.alloc()
    with pytest.raises(InvalidFreeError):
        pool.free(addr(o) + 8)  # inside an object: not a boundary
    with pytest.raises(InvalidFreeError):
        pool.free(ffi.new("char[64]"))  # foreign memory
    other = Pool(48)
    o2 = other.alloc()
    with pytest.raises(InvalidFreeError):
        pool.free(o2)  # another pool's object
    for bad in (0, 1, 12345, 2 ** 64 - 1):
        with pytest.raises(InvalidFreeError):
            pool.free(bad)
    for bad in (-1, 2 ** 64):
        with pytest.raises(InvalidFreeError):
            pool.free(bad)
    for bad in (None, "x", 1.5, b"ab"):
        with pytest.raises(TypeError):
            pool.free(bad)
    assert pool.owns(o) and not pool.owns(o2) and not pool.owns(12345) and not pool.owns(-5)
    pool.free(o)
    assert not pool.owns(o)
    other.free(o2)
    st = pool.stats()
    assert st.live == 0 and st.allocations == st.frees == 2


@pytest.mark.parametrize("zero", [True, False])
def test_odd_and_interior_pointers_next_to_the_remembered_object(zero):
    """A thread remembers one object: the one it allocated last (freed without a lookup), or, with
    bit 0 of the same word set, the one it freed last (the next allocation takes it).  An odd
    pointer one past it must not pass for either: each is refused, and the object is untouched."""
    with Pool(64, zero=zero) as pool:
        o = pool.alloc()  # the last allocated
        for bad in (addr(o) + 1, addr(o) + 8, addr(o) - 1):
            with pytest.raises(InvalidFreeError):
                pool.free(bad)
        assert pool.owns(o)
        pool.free(o)  # now the hot object
        for bad in (addr(o) + 1, addr(o) | 1):
            with pytest.raises(InvalidFreeError):
                pool.free(bad)
        with pytest.raises(DoubleFreeError):
            pool.free(o)
        again = pool.alloc()
        assert addr(again) == addr(o) and pool.owns(again)
        other = pool.alloc()
        assert addr(other) != addr(o)
        pool.free(again)
        pool.free(other)
        st = pool.stats()
        assert (st.allocations, st.frees, st.live) == (3, 3, 0)


def test_alloc_many_free_many():
    pool = Pool(16)
    objs = pool.alloc_many(1000)
    assert len({addr(o) for o in objs}) == 1000 and pool.stats().live == 1000
    pool.free_many(objs[:500])
    with pytest.raises(DoubleFreeError):
        pool.free_many(objs[:10] + objs[500:])  # the valid ones are still freed
    assert pool.stats().live == 0
    assert len(pool.alloc_many(0)) == 0
    pool.free_many([])
    with pytest.raises(ValueError):
        pool.alloc_many(-1)


def test_batch_free_across_interleaved_chunks_keeps_every_list_whole():
    """free_many pushes onto a chunk's free list with its head in a local, written back when the
    batch moves to another chunk and at its end; alloc_many pops the same way.  Interleave four
    chunks, put a duplicate and the thread's hot object in the batch: every object must come back
    exactly once, from the same chunks (a lost write-back would strand objects: a new chunk)."""
    with Pool(64, objects_per_chunk=32, zero=False) as pool:
        per = pool.objects_per_chunk
        objs = [pool.alloc() for _ in range(4 * per)]  # four chunks, every slot handed out
        assert pool.stats().chunks == 4
        order = [objs[k * per + i] for i in range(per) for k in range(4)]  # A B C D A B C D ...
        pool.free(order[0])  # the hot object, freed singly
        with pytest.raises(DoubleFreeError):
            pool.free_many(order + [order[7]])  # order[0] and order[7] twice: refused, the rest freed
        st = pool.stats()
        assert (st.live, st.allocations, st.frees) == (0, 4 * per, 4 * per)
        pool.check()
        again = pool.alloc_many(4 * per)
        assert sorted(addr(o) for o in again) == sorted(addr(o) for o in objs)
        assert pool.stats().chunks == 4 and pool.stats().live == 4 * per
        pool.free_many(again[::2])
        pool.free_many(again[1::2])
        again2 = pool.alloc_many(4 * per)
        assert sorted(addr(o) for o in again2) == sorted(addr(o) for o in objs)
        pool.free_many(again2)
        pool.check()


@SEEDS_BUGS
def test_batch_alloc_reports_a_corrupt_link_and_stays_usable():
    """alloc_many's run leaves a slot whose link fails a check at the head for the full path,
    which reports it: the objects before it are handed out, nothing after it is followed."""
    pool = Pool(64, objects_per_chunk=8, zero=False)
    objs = pool.alloc_many(6)
    pool.free_many(objs)  # the list: objs[5], objs[4], ..., objs[0]
    ctypes.memmove(addr(objs[3]), (ctypes.c_char * 8).from_buffer_copy(b"\x11" * 8), 8)
    with pytest.raises(nativemem.HeapCorruptionError, match="free list corrupt"):
        pool.alloc_many(6)
    st = pool.stats()
    # objs[5] and objs[4] were handed out, counted, and given back by the call that raised
    assert (st.live, st.allocations, st.frees) == (0, 8, 8)
    x = pool.alloc_many(3)  # still usable: the two given back, then fresh slots
    assert not {addr(o) for o in x} & {addr(o) for o in objs[:4]}


def test_close_warns_with_live_objects_and_refuses_use():
    pool = Pool(24, checked=True)
    o = pool.alloc()
    with pytest.warns(ResourceWarning, match=r"1 live object"):
        pool.close()
    assert pool.closed
    for op in (pool.alloc, lambda: pool.free(o), pool.stats, lambda: pool.alloc_many(2), pool.live_objects):
        with pytest.raises(ClosedError):
            op()
    pool.close()  # idempotent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Pool(8) as p2:
            p2.free(p2.alloc())


def test_bad_constructor_arguments():
    for kwargs in ({"object_size": 0}, {"object_size": -1}, {"object_size": 8, "objects_per_chunk": 0}):
        with pytest.raises(ValueError):
            Pool(**kwargs)
    for align in (0, 3, 24, 8192):
        with pytest.raises(ValueError):
            Pool(8, alignment=align)
    with pytest.raises(TypeError):
        Pool("8")
    with pytest.raises(TypeError):
        Pool(8, allocator="libc")
    with pytest.raises(OverflowError):
        Pool(2 ** 62, objects_per_chunk=2 ** 20)


def test_checked_mode_records_sites_and_finds_leaks():
    pool = Pool(32, checked=True)
    a = pool.alloc()  # line A
    b = pool.alloc()
    live = pool.live_objects()
    assert {o.address for o in live} == {addr(a), addr(b)}
    assert all("test_pool.py" in o.site and "test_checked_mode_records_sites" in o.site for o in live)
    pool.free(a)
    assert [o.address for o in pool.leaks()] == [addr(b)]
    pool.free(b)
    assert pool.leaks() == []
    pool.close()


@SEEDS_BUGS
def test_checked_mode_detects_write_after_free():
    pool = Pool(64, checked=True, objects_per_chunk=4)
    o = pool.alloc()
    ptr = addr(o)
    pool.free(o)
    ctypes.memset(ptr + 20, 0x41, 4)  # a write after free
    with pytest.raises(UseAfterFreeError) as ei:
        for _ in range(8):  # the damaged slot is handed out again within a few allocations
            pool.alloc()
    msg = str(ei.value)
    assert hex(ptr) in msg and "byte 20" in msg and "test_pool.py" in msg


@SEEDS_BUGS
def test_hardened_free_list_reports_corruption():
    pool = Pool(64, checked=True, objects_per_chunk=8)
    objs = [pool.alloc() for _ in range(4)]
    for o in objs:
        pool.free(o)
    # overwrite the encoded next pointer of the list head (the last freed object)
    ctypes.memmove(addr(objs[-1]), (ctypes.c_char * 8).from_buffer_copy(b"\x11" * 8), 8)
    with pytest.raises(nativemem.HeapCorruptionError) as ei:
        for _ in range(4):
            pool.alloc()
    assert "free list corrupt" in str(ei.value)
    x = pool.alloc()  # still usable: fresh slots are carved
    pool.free(x)


def test_bughunt_mode_one_block_per_object():
    base = nativemem.allocator("libc")
    pool = Pool(100, bughunt=True, allocator=base)
    objs = [pool.alloc() for _ in range(10)]
    assert base.stats().live_blocks >= 10 and pool.stats().chunks == 10
    o = objs.pop()
    pool.free(o)
    with pytest.raises(DoubleFreeError):
        pool.free(o)
    with pytest.raises(InvalidFreeError):
        pool.free(ffi.new("char[100]"))
    assert len(pool.live_objects()) == 9
    pool.free_many(objs)
    assert pool.stats().live == 0
    pool.close()


def test_pool_on_other_allocators_returns_its_memory():
    for name in [b.name for b in nativemem.backends() if b.available] + ["arena"]:
        base = nativemem.Arena(8 << 20) if name == "arena" else nativemem.allocator(name)
        pool = Pool(128, allocator=base)
        objs = pool.alloc_many(3000)
        assert base.stats().live_blocks >= 2
        pool.free_many(objs)
        pool.close()
        assert base.stats().live_blocks == 0, name


def test_threads_with_cross_thread_frees():
    pool = Pool(48, objects_per_chunk=512)
    n_threads, rounds = 4, 25_000
    handoff = [[] for _ in range(n_threads)]
    locks = [threading.Lock() for _ in range(n_threads)]
    seen_live = set()
    seen_lock = threading.Lock()
    errors = []

    def work(i):
        try:
            mine = []
            for r in range(rounds):
                o = pool.alloc()
                a = addr(o)
                with seen_lock:
                    assert a not in seen_live, "object handed out twice"
                    seen_live.add(a)
                mine.append(a)
                if len(mine) >= 8:
                    with locks[(i + 1) % n_threads]:
                        handoff[(i + 1) % n_threads].extend(mine)
                    mine = []
                with locks[i]:
                    theirs, handoff[i][:] = handoff[i][:], []
                for t in theirs:
                    with seen_lock:
                        seen_live.discard(t)
                    pool.free(t)  # freed by a thread other than the allocating one
            for t in mine:
                with seen_lock:
                    seen_live.discard(t)
                pool.free(t)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    for lst in handoff:
        for t in lst:
            with seen_lock:
                seen_live.discard(t)
            pool.free(t)
    st = pool.stats()
    assert st.allocations == n_threads * rounds and st.frees == st.allocations and st.live == 0
    assert not seen_live
    pool.close()


def test_threads_batches_100k_ops_each():
    """4 threads x 100k operations (alloc_many/free_many, half freed by another thread)."""
    pool = Pool(64, objects_per_chunk=256)
    n_threads, batch, rounds = 4, 500, 100  # 4 x 100 x (500 allocs + 500 frees)
    live, live_lock = set(), threading.Lock()
    inbox = [[] for _ in range(n_threads)]
    errors = []
    barrier = threading.Barrier(n_threads)

    def work(i):
        try:
            barrier.wait()
            for _ in range(rounds):
                objs = pool.alloc_many(batch)
                addrs = [addr(o) for o in objs]
                with live_lock:
                    assert live.isdisjoint(addrs) and len(set(addrs)) == batch, "object handed out twice"
                    live.update(addrs)
                    inbox[(i + 1) % n_threads].append(addrs[batch // 2:])
                    theirs = inbox[i][:]
                    inbox[i].clear()
                    for lst in theirs:
                        live.difference_update(lst)
                    live.difference_update(addrs[:batch // 2])
                pool.free_many(objs[:batch // 2])
                for lst in theirs:
                    pool.free_many(lst)  # cross-thread frees, as int addresses
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    for lst in inbox:
        for x in lst:
            pool.free_many(x)
    st = pool.stats()
    assert st.allocations == n_threads * batch * rounds == st.frees and st.live == 0
    assert pool.live_objects() == []
    pool.close()


def test_c_level_threads_many_operations():
    pool = Pool(64)
    ops = ffi.new("uint64_t *")
    assert lib.nm_bench_pool_larson(pool.cdata, 2000, 200_000, 4, ops) > 0
    assert ops[0] == 800_000
    st = pool.stats()
    assert st.live == 0 and st.allocations == st.frees >= 800_000
    pool.close()


def test_objects_of_exited_threads_are_not_stranded():
    pool = Pool(32, objects_per_chunk=64)

    def work():
        objs = [pool.alloc() for _ in range(40)]
        for o in objs:
            pool.free(o)  # these sit in this thread's magazine

    for _ in range(20):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    st = pool.stats()
    assert st.live == 0 and st.allocations == 800
    assert st.chunks <= 2  # magazines of exited threads were returned and reused
    pool.close()


def test_object_pool_with_cffi_struct():
    uffi = FFI()
    uffi.cdef("struct point { double x, y; int tag; };")
    op = ObjectPool(uffi, "struct point")
    p = op.new()
    assert uffi.typeof(p) is uffi.typeof("struct point *")
    assert (p.x, p.y, p.tag) == (0.0, 0.0, 0)
    p.x, p.tag = 1.5, 7
    assert bytes(op.pool.view(int(uffi.cast("uintptr_t", p)))[:8]) == bytes(ctypes.c_double(1.5))
    op.delete(p)
    with pytest.raises(DoubleFreeError):
        op.delete(p)
    with pytest.raises(TypeError):
        op.delete("nope")
    with pytest.raises(TypeError):
        ObjectPool(uffi, "struct nosuch")
    assert op.stats().live == 0
    op.close()


def test_object_pool_with_ctypes_structure():
    class Point(ctypes.Structure):
        _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double)]

    with ObjectPool(None, Point) as op:
        pts = [op.new() for _ in range(10)]
        for i, pt in enumerate(pts):
            assert pt.x == 0.0
            pt.x = i
        assert [pt.x for pt in pts] == list(range(10))
        assert all(ctypes.addressof(pt) % 64 == 0 for pt in pts)
        for pt in pts:
            op.delete(pt)
        assert op.stats().live == 0


def test_forgotten_pool_is_destroyed():
    base = nativemem.allocator("libc")
    pool = Pool(64, allocator=base)
    pool.alloc_many(10)
    del pool
    gc.collect()
    assert base.stats().live_blocks == 0


def test_objects_of_exited_threads_freed_elsewhere_are_reused():
    pool = Pool(32, objects_per_chunk=64)
    held = []

    def work():
        held.extend(pool.alloc_many(50))  # the thread exits still owning these objects

    for _ in range(8):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    chunks = pool.stats().chunks
    assert pool.stats().live == 400
    pool.free_many(held)  # frees into chunks whose owner thread is gone
    st = pool.stats()
    assert st.live == 0 and st.frees == 400
    for _ in range(5):  # orphaned chunks are adopted, not replaced
        again = pool.alloc_many(400)
        assert len({addr(o) for o in again}) == 400
        pool.free_many(again)
    # (Python's join() returns just before the exited thread's TLS destructor hands its last
    # chunks back, so the main thread may add a few chunks once, but never keeps growing)
    assert pool.stats().chunks <= 2 * chunks
    assert pool.stats().live == 0
    pool.close()


@pytest.mark.parametrize("flags", [0, lib.NM_POOL_CHECKED])
def test_freeing_the_object_allocated_last_keeps_every_check(flags):
    """The free of the object a thread allocated last skips the chunk lookup, not the checks: a
    second free and a free after another thread freed it are reported."""
    p = lib.nm_pool_create(ffi.NULL, 64, 64, flags | lib.NM_POOL_QUIET)
    try:
        a = lib.nm_pool_alloc(p)
        assert lib.nm_pool_free(p, a) == 0
        assert lib.nm_pool_free(p, a) == lib.NM_ERR_DOUBLE_FREE
        b = lib.nm_pool_alloc(p)  # the last object again, then freed by another thread first
        rc = []
        th = threading.Thread(target=lambda: rc.append(lib.nm_pool_free(p, b)))
        th.start()
        th.join()
        assert rc == [0]
        assert lib.nm_pool_free(p, b) == lib.NM_ERR_DOUBLE_FREE
        c = lib.nm_pool_alloc(p)
        d = lib.nm_pool_alloc(p)
        assert lib.nm_pool_free(p, c) == 0  # not the last one: the lookup path
        assert lib.nm_pool_free(p, d) == 0
        st = ffi.new("nm_pool_stats_t *")
        lib.nm_pool_stats(p, st)
        assert st.live == 0 and st.allocations == st.frees == 4
        lib.nm_clear_error()
    finally:
        lib.nm_pool_destroy(p)
