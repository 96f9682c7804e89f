"""NumPy (NEP 49) data-memory handler on nativemem allocators."""
from __future__ import annotations

import ctypes
import gc

import pytest

import nativemem

np = pytest.importorskip("numpy")
try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import get_handler_name


def test_arrays_come_from_the_allocator_inside_the_block():
    a = nativemem.allocator("libc")
    before = get_handler_name()
    with nativemem.numpy_allocator(a):
        assert get_handler_name().startswith("nativemem")
        x = np.zeros((100, 100))
        y = np.empty(10, np.int32)
        z = x.copy()
    assert get_handler_name() == before
    assert a.stats().live_blocks == 3 and a.stats().live_bytes >= 2 * 80000
    assert get_handler_name(x).startswith("nativemem")
    x += 1
    assert z.sum() == 0 and x.sum() == 10000
    outside = np.zeros(10)
    assert get_handler_name(outside) == before
    del x, y, z
    gc.collect()
    assert a.stats().live_blocks == 0


def test_debug_allocator_catches_overflow_past_an_array():
    d = nativemem.DebugAllocator()
    with nativemem.numpy_allocator(d):
        arr = np.zeros(64, np.uint8)
    ctypes.memset(arr.ctypes.data + 64, 0xFF, 1)  # a C extension writing one byte too far
    with pytest.raises(nativemem.BufferOverflowError) as ei:
        d.check()
    assert "64 bytes" in str(ei.value) and "offset 64" in str(ei.value)
    del arr
    gc.collect()
    from nativemem._ffi import lib
    lib.nm_clear_error()
    assert d.stats().live_blocks == 0


def test_bad_argument():
    with pytest.raises(TypeError):
        with nativemem.numpy_allocator("libc"):
            pass
