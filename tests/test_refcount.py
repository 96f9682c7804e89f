"""RefCount: kernel refcount_t semantics, destructor exactly once, tracing."""
from __future__ import annotations

import threading

import pytest

from nativemem import RefCount, RefcountError
from nativemem._ffi import ffi, lib


def test_starts_at_one_and_destroys_once():
    calls = []
    r = RefCount(lambda: calls.append(1))
    assert r.count == 1
    r.retain()
    assert r.count == 2 and r.release() is False and calls == []
    assert r.release() is True and calls == [1]


def test_underflow_increment_from_zero_are_errors_and_pin():
    calls = []
    r = RefCount(lambda: calls.append(1))
    assert r.release()
    with pytest.raises(RefcountError, match="increment from zero"):
        r.retain()
    r2 = RefCount()
    assert r2.release() is True
    with pytest.raises(RefcountError) as ei:
        r2.release()
    assert "below zero" in str(ei.value)
    assert calls == [1]  # never destroyed twice
    assert r.is_immortal  # pinned after misuse


def test_overflow_saturates():
    r = RefCount()
    intptr_max = (1 << (ffi.sizeof("intptr_t") * 8 - 1)) - 1  # this platform's, 32-bit included
    r._r.count = intptr_max // 2 - 1  # just below the limit
    with pytest.raises(RefcountError, match="overflow"):
        r.retain()
    assert r.is_immortal and r.release() is False


def test_immortal():
    calls = []
    r = RefCount.immortal()
    r._destructor = lambda: calls.append(1)
    for _ in range(10):
        r.release()
    r.retain()
    assert r.is_immortal and calls == []


def test_trace_records_sites_and_is_in_the_underflow_error():
    r = RefCount(trace=True, trace_capacity=4)
    r.retain()
    r.release()
    ev = r.trace()
    assert [e.op for e in ev] == ["retain", "release"] and [e.count for e in ev] == [2, 1]
    assert all("test_refcount.py" in e.site for e in ev)
    r.release()
    with pytest.raises(RefcountError) as ei:
        r.release()
    assert "trace:" in str(ei.value) and "test_refcount.py" in str(ei.value)
    for _ in range(10):
        r2 = RefCount(trace=True, trace_capacity=4)
    assert len(r2.trace()) == 0
    for _ in range(6):
        r2.retain()
    assert len(r2.trace()) == 4  # bounded ring


def test_destructor_exactly_once_under_threads():
    for _ in range(20):
        calls = []
        r = RefCount(lambda: calls.append(1))
        n = 8
        for _ in range(n * 100):
            r.retain()
        barrier = threading.Barrier(n)
        wins = []

        def drop():
            barrier.wait()
            for _ in range(100):
                if r.release():
                    wins.append(1)

        ts = [threading.Thread(target=drop) for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert r.count == 1 and not wins
        assert r.release() and calls == [1]


def test_c_level_hook_reports_errors():
    seen = []

    @ffi.callback("void(nm_refcount_t *, int, const char *)")
    def hook(ref, kind, msg):
        seen.append((kind, ffi.string(msg).decode()))

    lib.nm_ref_set_error_hook(hook)
    try:
        r = ffi.new("nm_refcount_t *")
        lib.nm_ref_init(r, ffi.NULL, ffi.NULL)
        assert lib.nm_ref_release(r) == 1
        assert lib.nm_ref_release(r) == lib.NM_ERR_REFCOUNT
        assert seen and seen[0][0] == lib.NM_REF_ERR_UNDERFLOW
    finally:
        lib.nm_ref_set_error_hook(ffi.NULL)
        lib.nm_clear_error()


def test_bad_arguments():
    with pytest.raises(TypeError):
        RefCount(destructor=42)
    with pytest.raises(ValueError):
        RefCount(trace=True, trace_capacity=0)
