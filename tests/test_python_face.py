"""The Python face's contracts that are not about crashing (those are in test_hostile.py):
tracemalloc attribution, bounded site caches, the NumPy handler's ownership, close()."""
from __future__ import annotations

import gc
import sys
import tracemalloc

import pytest

import nativemem
from nativemem import _core
from nativemem.debug import TRACEMALLOC_DOMAIN


@pytest.mark.parametrize("make", [lambda: nativemem.allocator("libc"), lambda: nativemem.DebugAllocator()])
def test_tracemalloc_attributes_native_blocks_to_the_callers_line(make):
    a = make()
    tracemalloc.start(5)
    try:
        buf = a.malloc(123_457); line = sys._getframe().f_lineno  # noqa: E702
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, TRACEMALLOC_DOMAIN)])
        traces = [t for t in snap.traces if t.size == 123_457]
        assert len(traces) == 1
        top = traces[0].traceback[-1]  # most recent frame last
        assert top.filename == __file__ and top.lineno == line
        buf.free()
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, TRACEMALLOC_DOMAIN)])
        assert not [t for t in snap.traces if t.size == 123_457]  # untracked at free
    finally:
        tracemalloc.stop()


def test_site_caches_are_bounded_and_die_with_code():
    d = nativemem.DebugAllocator()
    _core._sites_clear()
    for i in range(20_000):  # distinct code objects, distinct texts (file names)
        exec(compile("b = d.malloc(8); b.free()", f"<snippet {i}>", "exec"), {"d": d})
    st = _core.site_cache_stats()
    assert st["cached_sites"] <= 8192 and st["cached_codes"] <= 1024
    texts = st["texts"]
    for i in range(20_000):  # distinct code objects, the same text: no new strings
        exec(compile("b = d.malloc(8); b.free()", "<same>", "exec"), {"d": d})
    assert _core.site_cache_stats()["texts"] <= texts + 1


def test_site_names_the_callers_frames_not_nativemems():
    d = nativemem.DebugAllocator(traceback_depth=2)

    def inner():
        return d.malloc(8)
    b = inner()
    (lk,) = [x for x in d.leaks() if x.address == b.address]
    assert "in inner" in lk.traceback[0] and __file__ in lk.traceback[0]
    assert "test_site_names_the_callers_frames" in lk.traceback[1]
    b.free()
    pool = nativemem.ObjectPool(None, __import__("ctypes").c_int64 * 2, checked=True)
    o = pool.new(); line = sys._getframe().f_lineno  # noqa: E702
    (po,) = pool.live_objects()
    assert f"{__file__}:{line}" in po.site  # ObjectPool.new (inside nativemem) is skipped
    pool.delete(o)


def test_numpy_handler_drops_its_allocator_with_its_last_array():
    np = pytest.importorskip("numpy")
    import weakref
    a = nativemem.allocator("libc")
    ref = weakref.ref(a)
    with nativemem.numpy_allocator(a):
        arr = np.zeros(1000)
    assert a.stats().live_blocks == 1
    del a
    gc.collect()
    assert ref() is not None  # the array's handler holds it
    del arr
    gc.collect()
    assert ref() is None


def test_close_refuses_new_work_and_frees_later():
    for make in (lambda: nativemem.allocator("libc"), lambda: nativemem.Arena(1 << 20),
                 lambda: nativemem.DebugAllocator()):
        a = make()
        b = a.malloc(64)
        a.close()
        a.close()
        assert a.closed
        for op in (lambda: a.malloc(1), lambda: a.calloc(1, 1), lambda: a.memalign(16, 1), lambda: a.stats(),
                   lambda: a.cdata):
            with pytest.raises(nativemem.ClosedError):
                op()
        b.write(b"still usable")
        b.free()  # the table went with it
    with nativemem.StringTable() as t:
        h = t.intern("x")
    with pytest.raises(nativemem.ClosedError):
        t.intern("y")
    assert str(h) == "x"
    h.release()


def test_corruption_found_by_numpys_free_is_a_warning_and_raised_by_check():
    np = pytest.importorskip("numpy")
    import ctypes
    import warnings
    d = nativemem.DebugAllocator()
    with nativemem.numpy_allocator(d):
        arr = np.zeros(10, dtype=np.uint8)
    ctypes.memset(arr.ctypes.data + 10, 0x41, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del arr
        gc.collect()
    found = [w for w in caught if issubclass(w.category, nativemem.CorruptionWarning)]
    assert len(found) == 1 and "offset 10" in str(found[0].message)
    with pytest.raises(nativemem.BufferOverflowError):
        d.check()
    d.check()  # reported once


def test_corruption_found_by_a_finalizer_is_a_warning():
    import ctypes
    import warnings
    d = nativemem.DebugAllocator()
    b = d.malloc(16)
    ctypes.memset(b.address + 16, 0x41, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del b
    assert [w for w in caught if issubclass(w.category, nativemem.CorruptionWarning)]
    with pytest.raises(nativemem.BufferOverflowError):
        d.check()  # and kept for the next check()


def test_double_free_of_a_buffer_names_its_allocation_and_first_free():
    d = nativemem.DebugAllocator()
    b = d.malloc(8); at = sys._getframe().f_lineno  # noqa: E702
    b.free(); freed = sys._getframe().f_lineno  # noqa: E702
    with pytest.raises(nativemem.DoubleFreeError) as ei:
        b.free()
    msg = str(ei.value)
    assert f"{__file__}:{at}" in msg and f"{__file__}:{freed}" in msg and "at py:" not in msg


def test_checked_pool_messages_show_sites_without_the_marker():
    p = nativemem.Pool(32, checked=True)
    x = p.alloc(); at = sys._getframe().f_lineno  # noqa: E702
    p.free(x)
    with pytest.raises(nativemem.DoubleFreeError) as ei:
        p.free(x)
    assert f"{__file__}:{at}" in str(ei.value) and "at py:" not in str(ei.value)
