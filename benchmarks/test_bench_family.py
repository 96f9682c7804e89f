"""Debug allocator, refcount, interning, COW and the NumPy handler (pytest-benchmark)."""
from __future__ import annotations

import sys

import pytest

import nativemem
from nativemem._ffi import ffi, lib


def test_debug_vs_base(benchmark):
    base = nativemem.allocator("libc")
    d = nativemem.DebugAllocator(base=base)
    benchmark.group = "C 64B pair: debug allocator vs base"
    benchmark(lambda: lib.nm_bench_pairs(d.cdata, 64, 20_000, ffi.NULL))


def test_base_pair(benchmark):
    base = nativemem.allocator("libc")
    benchmark.group = "C 64B pair: debug allocator vs base"
    benchmark(lambda: lib.nm_bench_pairs(base.cdata, 64, 20_000, ffi.NULL))


@pytest.mark.parametrize("who", ["libc", "debug"])
def test_debug_mixed_sizes(benchmark, who):
    # sizes 16..512 with 256 live blocks: the recycled block rarely fits, fills grow with size
    base = nativemem.allocator("libc")
    a = base if who == "libc" else nativemem.DebugAllocator(base=base)
    benchmark.group = "C mixed sizes 16-512B: debug allocator vs base"
    benchmark(lambda: lib.nm_bench_mix(a.cdata, 16, 512, 256, 10_000, 7, ffi.NULL))


def test_refcount_pair(benchmark):
    benchmark.group = "refcount inc+dec"
    benchmark(lambda: lib.nm_ref_bench_pairs(200_000))


def test_raw_atomic_pair(benchmark):
    benchmark.group = "refcount inc+dec"
    benchmark(lambda: lib.nm_bench_atomic_pairs(200_000))


@pytest.mark.parametrize("entries", [1_000, 100_000, 1_000_000])
def test_intern_hits(benchmark, entries):
    benchmark.group = "intern hit"
    benchmark.pedantic(lambda: lib.nm_strtab_bench_hits(lib.nm_allocator_libc(), entries, 100_000), rounds=3)


def test_python_intern(benchmark):
    t = nativemem.StringTable()
    keep = t.intern("k")
    benchmark.group = "Python intern"
    benchmark(lambda: t.intern("k").release())
    keep.release()


def test_sys_intern(benchmark):
    benchmark.group = "Python intern"
    benchmark(lambda: sys.intern("k"))


def test_cow_make_writable(benchmark):
    benchmark.group = "COW make_writable (sole owner)"
    benchmark(lambda: lib.nm_cow_bench_make_writable(lib.nm_allocator_libc(), 64, 100_000))


def test_numpy_handler(benchmark):
    np = pytest.importorskip("numpy")
    a = nativemem.allocator("libc")

    def run():
        with nativemem.numpy_allocator(a):
            for _ in range(100):
                np.empty(1024)
    benchmark.group = "numpy.empty x100"
    benchmark(run)


def test_numpy_default(benchmark):
    np = pytest.importorskip("numpy")

    def run():
        for _ in range(100):
            np.empty(1024)
    benchmark.group = "numpy.empty x100"
    benchmark(run)
