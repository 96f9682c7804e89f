"""Backends, C level (loops inside C) and Python level (Buffer), with bytearray as reference."""
from __future__ import annotations

import pytest

from nativemem._ffi import ffi, lib


@pytest.mark.parametrize("size", [16, 64, 256, 4096])
def test_c_pairs(benchmark, allocator, size):
    benchmark.group = f"C malloc+free {size}B (ns/op = extra_info)"
    ns = benchmark(lambda: lib.nm_bench_pairs(allocator.cdata, size, 20_000, ffi.NULL))
    benchmark.extra_info["ns_per_pair"] = lib.nm_bench_pairs(allocator.cdata, size, 100_000, ffi.NULL)


def test_c_mix(benchmark, allocator):
    benchmark.group = "C random sizes 8-1024B"
    benchmark(lambda: lib.nm_bench_mix(allocator.cdata, 8, 1024, 1000, 20_000, 7, ffi.NULL))


def test_python_buffer_pair(benchmark, allocator):
    benchmark.group = "Python 64B allocate+free"
    benchmark(lambda: allocator.malloc(64).free())


def test_python_bytearray_reference(benchmark):
    benchmark.group = "Python 64B allocate+free"
    benchmark(lambda: bytearray(64))
