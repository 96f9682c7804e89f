"""AddressSanitizer builds (NATIVEMEM_CFLAGS=-fsanitize=address, run with libasan preloaded):
free and never-used pool objects are poisoned, live ones are not."""
from __future__ import annotations

import ctypes

import pytest

import nativemem
from nativemem._ffi import ffi

pytestmark = pytest.mark.skipif(not nativemem.build_info()["asan"],
                                reason="nativemem was not built with -fsanitize=address")


@pytest.mark.parametrize("checked", [False, True])
def test_asan_poisoning(checked):
    is_poisoned = ctypes.CDLL(None).__asan_address_is_poisoned
    is_poisoned.argtypes, is_poisoned.restype = [ctypes.c_void_p], ctypes.c_int
    pool = nativemem.Pool(48, checked=checked, allocator=nativemem.allocator("libc"))
    x = pool.alloc()
    a = int(ffi.cast("uintptr_t", x))
    assert [is_poisoned(a + i) for i in (0, 8, 47)] == [0, 0, 0]
    pool.free(x)
    assert [is_poisoned(a + i) for i in (0, 8, 47)] == [1, 1, 1]
    assert is_poisoned(a + 64 * 5)  # a slot never handed out
    y = pool.alloc()
    assert is_poisoned(int(ffi.cast("uintptr_t", y))) == 0
    pool.free(y)
    pool.check()
    pool.close()
