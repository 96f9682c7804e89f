"""DebugAllocator: one test per bug class, naming the Python line of the allocation."""
from __future__ import annotations

import ctypes
import gc
import json
import signal
import sys
import threading
import tracemalloc

import pytest

import nativemem
from nativemem import (BufferOverflowError, BufferUnderflowError, DebugAllocator, DoubleFreeError, InvalidFreeError,
                       ReallocFreedError, UseAfterFreeError)
from nativemem._ffi import ffi, lib
from nativemem.debug import TRACEMALLOC_DOMAIN
from conftest import run_python

HERE = __file__.rsplit("/", 1)[-1]


def lineno():
    return sys._getframe(1).f_lineno


def test_overflow_by_one_byte_is_caught_at_free():
    d = DebugAllocator()
    buf = d.malloc(10); line = lineno()  # noqa: E702
    ctypes.memset(buf.address + 10, 0x41, 1)
    with pytest.raises(BufferOverflowError) as ei:
        buf.free()
    msg = str(ei.value)
    assert f"{HERE}:{line}" in msg and hex(buf._last_address) in msg and "10 bytes" in msg and "offset 10" in msg
    assert d.stats().live_blocks == 0  # the block was still released


def test_underflow_is_caught():
    d = DebugAllocator()
    buf = d.malloc(32); line = lineno()  # noqa: E702
    ctypes.memset(buf.address - 3, 0, 1)
    with pytest.raises(BufferUnderflowError) as ei:
        d.check()
    assert f"{HERE}:{line}" in str(ei.value) and "offset -3" in str(ei.value)
    with pytest.raises(BufferUnderflowError):
        buf.free()


def test_write_after_free_is_caught_by_check_with_both_sites():
    d = DebugAllocator()
    buf = d.malloc(48); line = lineno()  # noqa: E702
    addr = buf.address
    buf.free(); free_line = lineno()  # noqa: E702
    ctypes.memset(addr + 7, 0x55, 1)
    with pytest.raises(UseAfterFreeError) as ei:
        d.check()
    msg = str(ei.value)
    assert f"{HERE}:{line}" in msg and f"{HERE}:{free_line}" in msg and "offset 7" in msg


def test_write_after_free_is_caught_when_leaving_the_quarantine():
    d = DebugAllocator(quarantine=2)
    buf = d.malloc(16); line = lineno()  # noqa: E702
    addr = buf.address
    buf.free()
    ctypes.memset(addr, 0, 1)
    with pytest.raises(UseAfterFreeError) as ei:
        for _ in range(3):
            d.malloc(8).free()
    assert f"{HERE}:{line}" in str(ei.value)


def test_a_block_leaving_the_quarantine_is_recycled_for_its_size():
    d = DebugAllocator(quarantine=1)
    a = d.malloc(40)
    a_addr = a.address
    a.free()                 # a: quarantined
    b = d.malloc(40)         # nothing recycled yet: fresh memory
    b_addr = b.address
    assert b_addr != a_addr
    b.free()                 # b quarantined; a leaves the quarantine (poison verified) and is kept
    c = d.malloc(40)         # same size: a's memory again, as a new block
    assert c.address == a_addr
    assert c.read() == b"\xcb" * 40  # the new-block pattern, not the 0xDD poison
    other = d.malloc(41)     # another size is not served from the recycled block
    assert other.address not in (a_addr, b_addr)
    st = d.debug_stats()
    assert st.live_blocks == 2 and st.quarantined_blocks == 1
    c.free()
    other.free()
    assert d.leaks() == []
    d.check()


def test_recycled_block_still_catches_double_free_and_write_after_free():
    d = DebugAllocator(quarantine=1)
    t = d.cdata
    p = lib.nm_malloc_at(t, 24, b"victim.c", 7)
    q = lib.nm_malloc_at(t, 24, b"other.c", 9)
    lib.nm_site_set(b"freer.c", 11)
    assert lib.nm_free_checked(t, p) == 0
    lib.nm_site_set(ffi.NULL, 0)
    assert lib.nm_free_checked(t, q) == 0   # p leaves the quarantine and is recycled
    assert lib.nm_free_checked(t, p) == lib.NM_ERR_DOUBLE_FREE
    msg = ffi.string(lib.nm_last_error_message()).decode()
    assert "already freed" in msg and "victim.c:7" in msg and "freer.c:11" in msg
    ffi.cast("unsigned char *", p)[5] = 0    # a write into the recycled (still poisoned) block
    with pytest.raises(UseAfterFreeError) as ei:
        d.check()
    assert "victim.c:7" in str(ei.value) and "offset 5" in str(ei.value)
    lib.nm_clear_error()


def test_flush_gives_every_freed_block_back_to_base():
    base = lib.nm_allocator_clone(lib.nm_allocator_libc(), b"counted libc")
    try:
        t = lib.nm_debug_create_ex(base, 0, 4)
        ptrs = [lib.nm_malloc(t, 100) for _ in range(6)]
        for p in ptrs:
            lib.nm_free(t, p)
        st = ffi.new("nm_alloc_stats_t *")
        lib.nm_allocator_stats(base, st)
        assert st.live_blocks == 5  # four quarantined, one recycled
        assert lib.nm_debug_flush(t) == 0
        lib.nm_allocator_stats(base, st)
        assert st.live_blocks == 0 and st.live_bytes == 0
        lib.nm_allocator_destroy(t)
    finally:
        lib.nm_allocator_destroy(base)


def test_quarantine_is_bounded_in_bytes_too():
    d = DebugAllocator(quarantine=1000, quarantine_bytes=10_000)
    for _ in range(50):
        d.malloc(1000).free()
    st = d.debug_stats()
    assert st.quarantined_bytes <= 10_000 and st.quarantined_blocks == 10
    big = d.malloc(50_000)
    big.free()  # larger than the bound: leaves at once, its poison checked, the rest with it
    st = d.debug_stats()
    assert st.quarantined_bytes == 0 and st.quarantined_blocks == 0
    # nor is it kept as the recycled block (which counts against the bound too): back in base
    assert d.stats().live_bytes == 0
    with pytest.raises(ValueError):
        DebugAllocator(quarantine_bytes=-1)
    unbounded = DebugAllocator(quarantine=64, quarantine_bytes=0)
    for _ in range(64):
        unbounded.malloc(100_000).free()
    assert unbounded.debug_stats().quarantined_blocks == 64


def test_double_free_and_invalid_free_at_c_level():
    d = DebugAllocator()
    t = d.cdata
    p = lib.nm_malloc_at(t, 8, ffi.NULL, 0)
    assert lib.nm_free_checked(t, p) == 0
    assert lib.nm_free_checked(t, p) == lib.NM_ERR_DOUBLE_FREE
    assert "already freed" in ffi.string(lib.nm_last_error_message()).decode()
    other = lib.nm_malloc(lib.nm_allocator_libc(), 8)
    assert lib.nm_free_checked(t, other) == lib.NM_ERR_INVALID_FREE
    assert lib.nm_free_checked(t, ffi.cast("void *", 12345)) == lib.NM_ERR_INVALID_FREE
    assert lib.nm_realloc(t, p, 10) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_REALLOC_FREED
    lib.nm_clear_error()
    lib.nm_free(lib.nm_allocator_libc(), other)
    st = d.stats()
    assert st.live_blocks == 0 and st.total_frees == 1
    d.check()


def test_python_level_double_free_and_realloc_of_freed():
    d = DebugAllocator()
    b = d.malloc(8)
    b.free()
    with pytest.raises(DoubleFreeError):
        b.free()
    with pytest.raises(UseAfterFreeError):
        d.realloc(b, 10)
    assert issubclass(ReallocFreedError, UseAfterFreeError)


def test_realloc_moves_and_keeps_contents():
    d = DebugAllocator()
    b = d.malloc(10)
    b.write(b"0123456789")
    old = b.address
    d.realloc(b, 100)
    assert b.address != old and b.read(0, 10) == b"0123456789"
    ctypes.memset(old, 1, 1)  # the old block is in the quarantine
    with pytest.raises(UseAfterFreeError):
        d.check()


def test_new_blocks_are_filled_and_calloc_zeroes():
    d = DebugAllocator()
    assert bytes(d.malloc(8)) == b"\xcb" * 8
    assert bytes(d.calloc(2, 4)) == bytes(8)
    b = d.memalign(4096, 100)
    assert b.address % 4096 == 0
    d.check()


def test_leaks_snapshot_and_report():
    d = DebugAllocator(traceback_depth=2)
    keep = [d.malloc(100) for _ in range(3)]; line = lineno()  # noqa: E702
    mark = d.snapshot()
    more = d.malloc(5000)
    leaks = d.leaks()
    assert len(leaks) == 4 and [lk.serial for lk in leaks] == sorted(lk.serial for lk in leaks)
    assert leaks[0].traceback[0].endswith(f"{HERE}:{line} in <listcomp>") or f"{HERE}:{line}" in leaks[0].traceback[0]
    assert len(leaks[0].traceback) == 2 and leaks[0].c_site is None
    assert [lk.address for lk in d.leaks(since=mark)] == [more.address]
    text = d.report()
    assert text.splitlines()[1].strip().startswith("5000 bytes")  # largest first
    js = d.report_json()
    assert js["leaked_blocks"] == 4 and js["leaked_bytes"] == 5300 and js["sites"][0]["bytes"] == 5000
    json.dumps(js)
    for b in keep + [more]:
        b.free()
    assert d.leaks() == []


def test_c_sites_are_reported():
    d = DebugAllocator()
    p = lib.nm_malloc_at(d.cdata, 7, b"widget.c", 42)
    (leak,) = d.leaks()
    assert leak.c_site == "widget.c:42" and leak.traceback == [] and leak.size == 7
    lib.nm_free(d.cdata, p)


def test_tracemalloc_sees_native_blocks():
    tracemalloc.start()
    try:
        d = DebugAllocator()
        b = d.malloc(123_456)
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, TRACEMALLOC_DOMAIN)])
        assert sum(s.size for s in snap.statistics("lineno")) == 123_456
        b.free()
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, TRACEMALLOC_DOMAIN)])
        assert sum(s.size for s in snap.statistics("lineno")) == 0
    finally:
        tracemalloc.stop()


def test_pools_and_arenas_run_on_a_debug_allocator():
    d = DebugAllocator()
    pool = nativemem.Pool(64, allocator=d)
    objs = pool.alloc_many(100)
    assert d.stats().live_blocks >= 1
    pool.free_many(objs)
    pool.close()
    ar = nativemem.Arena(1 << 20, allocator=d)
    ar.malloc(10).free()
    del ar
    gc.collect()
    assert d.stats().live_blocks == 0
    d.check()


def test_threads_share_one_debug_allocator():
    d = DebugAllocator(quarantine=64)
    errors = []

    def work(seed):
        try:
            held = []
            for i in range(2000):
                held.append(d.malloc(1 + (i * seed) % 300))
                if len(held) > 16:
                    held.pop(0).free()
            for b in held:
                b.free()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(s,)) for s in range(1, 5)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    st = d.debug_stats()
    assert st.live_blocks == 0 and st.total_allocs == st.total_frees == 8000 and d.leaks() == []
    d.check()


def test_guard_pages_fault_on_overflow():
    if sys.platform == "win32":
        pytest.skip("the subprocess expects a POSIX signal")
    code = ("import ctypes, nativemem as n\n"
            "d = n.DebugAllocator(guard_pages=True)\n"
            "b = d.malloc(4096)\n"
            "ctypes.memset(b.address, 1, 4096)\n"
            "print('inside ok', flush=True)\n"
            "ctypes.memset(b.address + 4096, 1, 1)\n"
            "print('not reached')\n")
    r = run_python(["-c", code])
    assert "inside ok" in r.stdout and "not reached" not in r.stdout
    assert r.returncode in (-signal.SIGSEGV, -signal.SIGBUS)


def test_guard_pages_fault_on_read_after_free():
    if sys.platform == "win32":
        pytest.skip("the subprocess expects a POSIX signal")
    code = ("import ctypes, nativemem as n\n"
            "d = n.DebugAllocator(guard_pages=True)\n"
            "b = d.malloc(100); a = b.address; b.free()\n"
            "print('freed', flush=True)\n"
            "ctypes.string_at(a, 1)\n"
            "print('not reached')\n")
    r = run_python(["-c", code])
    assert "freed" in r.stdout and "not reached" not in r.stdout
    assert r.returncode in (-signal.SIGSEGV, -signal.SIGBUS)


def test_guard_page_blocks_work_normally():
    d = DebugAllocator(guard_pages=True, quarantine=4)
    bufs = [d.malloc(n) for n in (1, 17, 4096, 10_000)]
    for b in bufs:
        b.write(b"x" * b.size)
    d.check()
    for b in bufs:
        b.free()
    b = d.malloc(5)
    ctypes.memset(b.address + 5, 0, 1)  # inside the slack before the guard page: a canary catches it
    with pytest.raises(BufferOverflowError):
        b.free()


def test_bad_arguments():
    with pytest.raises(TypeError):
        DebugAllocator(base="libc")
    with pytest.raises(ValueError):
        DebugAllocator(traceback_depth=0)
    with pytest.raises(ValueError):
        DebugAllocator(quarantine=-1)
    with pytest.raises(ValueError):
        DebugAllocator(quarantine=1 << 30)
    d = DebugAllocator()
    with pytest.raises(ValueError):
        d.leaks(since=-1)
