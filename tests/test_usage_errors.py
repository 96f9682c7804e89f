"""Bad arguments to RefCount: each raises the specific NativeMemError, naming the argument, and
nothing is left half-built."""
from __future__ import annotations

import copy
import pickle

import pytest

import nativemem as nm
from nativemem import errors as E
from nativemem.refcount import MAX_TRACE_CAPACITY


@pytest.mark.parametrize("trace", [True, False])
@pytest.mark.parametrize("bad", [-1, -(2 ** 70), 0, MAX_TRACE_CAPACITY + 1, 2 ** 64, 10 ** 30])
def test_trace_capacity_out_of_range(bad, trace):
    with pytest.raises(E.InvalidSizeError, match=r"trace_capacity must be between 1 and 65536") as ei:
        nm.RefCount(trace=trace, trace_capacity=bad)
    assert isinstance(ei.value, ValueError)  # catchable as the builtin too


@pytest.mark.parametrize("trace", [True, False])
@pytest.mark.parametrize("bad", [1.5, 8.0, "8", None, b"8", [8], True, False])
def test_trace_capacity_wrong_type(bad, trace):
    with pytest.raises(E.InvalidTypeError, match="trace_capacity must be an integer") as ei:
        nm.RefCount(trace=trace, trace_capacity=bad)
    assert isinstance(ei.value, TypeError)


def test_trace_capacity_limits_accepted():
    for cap in (1, MAX_TRACE_CAPACITY):
        r = nm.RefCount(trace=True, trace_capacity=cap)
        r.retain()
        r.release()
        assert len(r.trace()) == min(cap, 2)

    class Idx:  # any __index__ integer, as for sizes
        def __index__(self):
            return 3
    assert nm.RefCount(trace=True, trace_capacity=Idx()).count == 1


@pytest.mark.parametrize("bad", [1, 0, "yes", "", None, 1.0, [True]])
def test_trace_must_be_bool(bad):
    with pytest.raises(E.InvalidTypeError, match="trace must be a bool"):
        nm.RefCount(trace=bad)


@pytest.mark.parametrize("bad", [42, "f", b"", 1.5, [len]])
def test_destructor_must_be_callable(bad):
    with pytest.raises(E.InvalidTypeError, match="destructor must be callable") as ei:
        nm.RefCount(bad)
    assert type(bad).__name__ in str(ei.value)


def test_destructor_that_raises_leaves_the_count_consistent():
    calls = []

    def boom():
        calls.append(1)
        raise KeyError("from the destructor")

    for trace in (False, True):
        calls.clear()
        r = nm.RefCount(boom, trace=trace)
        r.retain()
        assert r.release() is False
        with pytest.raises(KeyError, match="from the destructor"):
            r.release()
        assert r.count == 0 and not r.is_immortal and calls == [1]
        with pytest.raises(nm.RefcountError, match="below zero"):
            r.release()
        assert r.is_immortal and calls == [1]  # pinned: never run again
        r2 = nm.RefCount(boom)
        with pytest.raises(KeyError):
            r2.release()
        with pytest.raises(nm.RefcountError, match="increment from zero"):
            r2.retain()
        assert calls == [1, 1]


def test_refcount_cannot_be_copied_or_pickled():
    destroyed = []
    r = nm.RefCount(lambda: destroyed.append(1), trace=True)
    r.retain()
    for op in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(E.InvalidTypeError, match="cannot be copied"):
            op(r)
    assert r.count == 2 and len(r.trace()) == 1
    assert not r.release() and r.release() and destroyed == [1]
