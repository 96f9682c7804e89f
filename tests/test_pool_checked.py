"""Checked pools: each bug class is reported with the object's allocation site."""
from __future__ import annotations

import ctypes
import sys
import textwrap

import pytest

import nativemem
from nativemem import DoubleFreeError, HeapCorruptionError, InvalidFreeError, Pool, UseAfterFreeError
from nativemem._ffi import ffi, lib

from conftest import run_python


# These tests write into freed pool memory on purpose; an ASan build rightly aborts on that.
SEEDS_BUGS = pytest.mark.skipif(nativemem.build_info()["asan"],
                                reason="deliberate write/read of freed memory: AddressSanitizer aborts")


def addr(p):
    return int(ffi.cast("uintptr_t", p))


def test_double_free_names_site():
    pool = Pool(48, checked=True)
    o = pool.alloc()  # the site
    pool.free(o)
    with pytest.raises(DoubleFreeError) as ei:
        pool.free(o)
    msg = str(ei.value)
    assert hex(addr(o)) in msg and "test_pool_checked.py" in msg and "test_double_free_names_site" in msg
    pool.close()


@SEEDS_BUGS
def test_write_after_free_found_by_check_and_on_reuse():
    pool = Pool(64, checked=True, zero=False)
    o = pool.alloc()
    a = addr(o)
    pool.free(o)
    pool.check()  # intact
    ctypes.memset(a + 40, 0x00, 1)
    with pytest.raises(UseAfterFreeError) as ei:
        pool.check()
    assert hex(a) in str(ei.value) and "byte 40" in str(ei.value)
    assert "test_write_after_free_found_by_check_and_on_reuse" in str(ei.value)
    with pytest.raises(UseAfterFreeError):
        pool.alloc()  # LIFO: the damaged slot is the next one handed out; it is then retired
    o2 = pool.alloc()
    assert addr(o2) != a
    pool.free(o2)
    assert pool.stats().live == 0
    pool.close()


@SEEDS_BUGS
def test_poison_is_written_on_free():
    pool = Pool(32, checked=True)
    o = pool.alloc()
    pool.view(o)[:] = b"x" * 32
    a = addr(o)
    pool.free(o)
    raw = ctypes.string_at(a, 32)
    assert raw[ffi.sizeof("void *"):] == b"\xdd" * (32 - ffi.sizeof("void *"))
    pool.close()


def test_invalid_free_in_checked_mode():
    pool = Pool(48, checked=True)
    o = pool.alloc()
    with pytest.raises(InvalidFreeError) as ei:
        pool.free(addr(o) + 16)
    assert "not at the start" in str(ei.value)
    pool.free(o)
    pool.close()


@SEEDS_BUGS
def test_unchecked_free_list_corruption_is_reported_not_followed():
    pool = Pool(64, objects_per_chunk=8)
    objs = pool.alloc_many(3)
    pool.free_many(objs)
    ctypes.memset(addr(objs[-1]), 0x5A, 8)  # scribble over the head's encoded link
    with pytest.raises(HeapCorruptionError) as ei:
        for _ in range(3):
            pool.alloc()
    assert "free list corrupt" in str(ei.value)
    pool.free(pool.alloc())


def test_alloc_many_records_sites_and_leaks_warn_with_sites():
    pool = Pool(16, checked=True, name="widgets")
    objs = pool.alloc_many(3)
    leaks = pool.leaks()
    assert len(leaks) == 3 and all("test_alloc_many_records_sites" in o.site for o in leaks)
    pool.free(objs[0])
    with pytest.warns(ResourceWarning, match=r"(?s)'widgets' closed with 2 live.*test_pool_checked.py"):
        pool.close()


def test_c_site_and_destroy_leak_report():
    prog = textwrap.dedent("""
        import nativemem
        from nativemem._ffi import ffi, lib
        a = nativemem.get_default_allocator().cdata
        p = lib.nm_pool_create(a, 40, 64, lib.NM_POOL_CHECKED)
        site = ffi.new("char[]", b"widget.c")
        x = lib.nm_pool_alloc_at(p, site, 42)
        y = lib.nm_pool_alloc_at(p, site, 43)
        assert lib.nm_pool_free(p, y) == 0
        assert lib.nm_pool_free(p, y) == lib.NM_ERR_DOUBLE_FREE
        print(ffi.string(lib.nm_last_error_message()).decode())
        lib.nm_pool_destroy(p)
    """)
    r = run_python(["-c", prog])
    assert r.returncode == 0, r.stderr
    assert "double free" in r.stdout and "widget.c:43" in r.stdout
    assert "1 live object" in r.stderr and "widget.c:42" in r.stderr and "widget.c:43" not in r.stderr


def test_bughunt_checked_sites():
    pool = Pool(24, bughunt=True, checked=True)
    o = pool.alloc()
    pool.free(o)
    with pytest.raises(DoubleFreeError) as ei:
        pool.free(o)
    assert "test_bughunt_checked_sites" in str(ei.value)
    pool.close()
