"""The Python face against what Python users already have, in one run (compare within a group)."""
from __future__ import annotations

import sys
import tracemalloc

import pytest

import nativemem


def test_buffer_pair(benchmark):
    a = nativemem.allocator("libc")
    benchmark.group = "Python 64B block: allocate + free"
    benchmark(lambda: a.malloc(64).free())


def test_bytearray(benchmark):
    benchmark.group = "Python 64B block: allocate + free"
    benchmark(lambda: bytearray(64))


def test_numpy_empty(benchmark):
    np = pytest.importorskip("numpy")
    benchmark.group = "Python 64B block: allocate + free"
    benchmark(lambda: np.empty(64, np.uint8))


def test_pool_pair(benchmark):
    pool = nativemem.Pool(64)
    alloc, free = pool.alloc, pool.free
    benchmark.group = "Python fixed-size object: allocate + free"
    benchmark(lambda: free(alloc()))


def test_cymem_address(benchmark):
    cymem = pytest.importorskip("cymem.cymem")
    benchmark.group = "Python fixed-size object: allocate + free"
    benchmark(lambda: cymem.Address(1, 64))


def test_debug_pair(benchmark):
    d = nativemem.DebugAllocator()
    benchmark.group = "Python: who allocated this block?"
    benchmark(lambda: d.malloc(64).free())


def test_bytearray_under_tracemalloc(benchmark):
    benchmark.group = "Python: who allocated this block?"
    tracemalloc.start()
    try:
        benchmark(lambda: bytearray(64))
    finally:
        tracemalloc.stop()


def test_intern_hit(benchmark):
    t = nativemem.StringTable()
    keep = t.intern("a-key")
    benchmark.group = "Python interning: hit"
    benchmark(lambda: t.intern("a-key").release())
    keep.release()


def test_sys_intern(benchmark):
    benchmark.group = "Python interning: hit"
    benchmark(lambda: sys.intern("a-key"))
