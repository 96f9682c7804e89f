"""Bad input everywhere: wrong types, negative/huge/overflowing sizes, bad alignments, foreign
and freed pointers (cdata and int), use after close, and one object hammered from several
threads.  Each call raises a NativeMemError subclass (never crashes) and the object stays usable."""
from __future__ import annotations

import threading

import pytest

import nativemem as nm
from nativemem._ffi import ffi

BAD_SIZES = [-1, -(2 ** 70), 2 ** 64, 2 ** 200, 1.5, "8", None, True, [1], b"1"]
BAD_ALIGN = [0, 3, 12, 24, -8, 2 ** 65, 1.0, "64"]


def _raises(call):
    with pytest.raises(nm.NativeMemError):
        call()


@pytest.mark.parametrize("bad", BAD_SIZES)
def test_sizes_everywhere(bad):
    a = nm.allocator("libc")
    ar = nm.Arena(1 << 16)
    d = nm.DebugAllocator()
    for alloc in (a, ar, d):
        _raises(lambda: alloc.malloc(bad))
        _raises(lambda: alloc.calloc(bad, 1))
        _raises(lambda: alloc.calloc(1, bad))
        _raises(lambda: alloc.memalign(64, bad))
        b = alloc.malloc(8)
        _raises(lambda: alloc.realloc(b, bad))
        _raises(lambda: b.read(bad))
        _raises(lambda: b.write(b"x", bad))
        b.free()
        assert alloc.stats().live_blocks == 0
    _raises(lambda: nm.Pool(bad))
    _raises(lambda: nm.Pool(8, objects_per_chunk=bad))
    _raises(lambda: nm.Arena(bad))
    if not isinstance(bad, bytes):  # bytes are valid CowBuffer contents
        _raises(lambda: nm.CowBuffer(bad))
    _raises(lambda: nm.DebugAllocator(quarantine=bad))
    p = nm.Pool(16)
    _raises(lambda: p.alloc_many(bad))


@pytest.mark.parametrize("bad", BAD_ALIGN)
def test_alignments_everywhere(bad):
    for alloc in (nm.allocator("libc"), nm.Arena(1 << 16), nm.DebugAllocator()):
        _raises(lambda: alloc.memalign(bad, 16))
    _raises(lambda: nm.Pool(16, alignment=bad))


def test_foreign_and_freed_pointers():
    pool = nm.Pool(32)
    other = nm.Pool(32)
    live = pool.alloc()
    freed = pool.alloc()
    pool.free(freed)
    foreign = [other.alloc(), ffi.new("char[32]"), 0, 1, 12345, 2 ** 63, -1, 2 ** 64,
               int(ffi.cast("uintptr_t", live)) + 1]
    for f in foreign:
        _raises(lambda: pool.free(f))
    _raises(lambda: pool.free(freed))
    _raises(lambda: pool.free(int(ffi.cast("uintptr_t", freed))))
    for bad in (None, "x", 1.5, object()):
        _raises(lambda: pool.free(bad))
    pool.free(live)
    assert pool.stats().live == 0


def test_use_after_close_and_release():
    p = nm.Pool(8)
    p.close()
    for call in (p.alloc, lambda: p.free(0), p.stats, lambda: p.alloc_many(1), lambda: p.free_many([1]),
                 lambda: p.owns(1), lambda: p.view(1), p.live_objects, p.leaks):
        _raises(call)
    t = nm.StringTable()
    h = t.intern("x")
    h.release()
    for call in (h.release, lambda: h.address, lambda: bytes(h), lambda: h.refcount):
        _raises(call)
    c = nm.CowBuffer(b"abc")
    c.release()
    for call in (c.release, c.share, c.make_writable, c.view, lambda: bytes(c), lambda: len(c)):
        _raises(call)
    pr = nm.Prop("p")
    pr.destroy()
    for call in (pr.destroy, lambda: pr.value, lambda: setattr(pr, "value", 1), lambda: pr.children,
                 lambda: nm.Prop("c", pr)):
        _raises(call)
    pr.release()
    _raises(pr.retain)


def test_wrong_types_everywhere():
    _raises(lambda: nm.allocator(42))
    _raises(lambda: nm.allocator("nope"))
    _raises(lambda: nm.set_default_allocator("libc"))
    _raises(lambda: nm.set_oom_policy(None))
    _raises(lambda: nm.set_oom_policy("sometimes"))
    _raises(lambda: nm.Arena(1 << 16, allocator=3))
    _raises(lambda: nm.DebugAllocator(base=3))
    _raises(lambda: nm.Pool(8, allocator="x"))
    _raises(lambda: nm.StringTable(allocator="x"))
    _raises(lambda: nm.intern(3))
    _raises(lambda: nm.CowBuffer(3.0))
    _raises(lambda: nm.CowString(b"bytes"))
    _raises(lambda: nm.RefCount(destructor=3))
    _raises(lambda: nm.Prop(name=3))
    _raises(lambda: nm.Prop(parent=3))
    a = nm.allocator("libc")
    _raises(lambda: a.free("buffer"))
    _raises(lambda: a.realloc(None, 8))
    b = a.malloc(4)
    _raises(lambda: b.write(12345))
    b.free()


def test_one_object_from_many_threads():
    """Racing frees of the same objects: exactly one wins each, the rest raise, nothing crashes."""
    pool = nm.Pool(24)
    a = nm.allocator("libc")
    d = nm.DebugAllocator()
    objs = pool.alloc_many(300)
    bufs = [a.malloc(16) for _ in range(300)] + [d.malloc(16) for _ in range(300)]
    wins = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def hammer():
        barrier.wait()
        for o in objs:
            try:
                pool.free(o)
                with lock:
                    wins[0] += 1
            except nm.NativeMemError:
                pass
        for b in bufs:
            try:
                b.free()
            except nm.NativeMemError:
                pass

    ts = [threading.Thread(target=hammer) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert wins[0] == 300 and pool.stats().live == 0
    assert a.stats().live_blocks == 0 and d.stats().live_blocks == 0
    pool.free(pool.alloc())  # still usable
