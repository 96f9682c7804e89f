"""Pools against the backends, in C and from Python."""
from __future__ import annotations

import nativemem
from nativemem._ffi import ffi, lib


def test_pool_c_pairs(benchmark):
    pool = nativemem.Pool(64)
    benchmark.group = "C 64B pair"
    benchmark(lambda: lib.nm_pool_bench_pairs(pool.cdata, 20_000))


def test_libc_c_pairs(benchmark):
    a = nativemem.allocator("libc")
    benchmark.group = "C 64B pair"
    benchmark(lambda: lib.nm_bench_pairs(a.cdata, 64, 20_000, ffi.NULL))


def test_pool_python_pair(benchmark):
    pool = nativemem.Pool(64)
    benchmark.group = "Python 64B pair"
    benchmark(lambda: pool.free(pool.alloc()))


def test_pool_python_batch(benchmark):
    pool = nativemem.Pool(64)
    benchmark.group = "Python 1000 objects"
    benchmark(lambda: pool.free_many(pool.alloc_many(1000)))


def test_pool_two_threads(benchmark):
    pool = nativemem.Pool(64)
    benchmark.group = "C 2 threads cross-thread frees"
    benchmark.pedantic(lambda: lib.nm_bench_pool_larson(pool.cdata, 1000, 50_000, 2, ffi.NULL), rounds=5)
