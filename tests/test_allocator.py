"""Allocator and Buffer on every backend available here (and the arena)."""
from __future__ import annotations

import ctypes
import gc
import sys
import threading

import pytest

import nativemem
from nativemem import (BufferInUseError, DoubleFreeError, InvalidAlignmentError, InvalidFreeError,
                       InvalidSizeError, InvalidTypeError, NativeMemError, SizeOverflowError,
                       UseAfterFreeError)

PTR = ctypes.sizeof(ctypes.c_void_p)


def test_malloc_write_read_free(alloc):
    buf = alloc.malloc(100)
    assert len(buf) == buf.size == 100 and buf.allocator is alloc and not buf.freed
    assert buf.address % 8 == 0
    buf.write(b"hello", 10)
    assert buf.read(10, 5) == b"hello"
    ctypes.memmove(buf.address, b"x" * 100, 100)
    assert bytes(buf) == b"x" * 100
    buf.free()
    assert buf.freed


def test_calloc_zeroes(alloc):
    # dirty memory first so a non-zeroing calloc would be seen
    for _ in range(4):
        b = alloc.malloc(4096)
        b.write(b"\xab" * 4096)
        b.free()
    buf = alloc.calloc(64, 64)
    assert buf.size == 4096 and bytes(buf) == bytes(4096)
    buf.free()


@pytest.mark.parametrize("alignment", [PTR, 16, 64, 256, 4096, 65536])
def test_memalign(alloc, alignment):
    bufs = [alloc.memalign(alignment, n) for n in (1, 100, alignment, 2 * alignment, 5000)]
    for b in bufs:
        assert b.address % alignment == 0
        b.write(b"\x5a" * b.size)
    for b in bufs:
        assert bytes(b) == b"\x5a" * b.size
        b.free()


def test_realloc_keeps_contents(alloc):
    buf = alloc.malloc(16)
    buf.write(bytes(range(16)))
    assert alloc.realloc(buf, 100_000) is buf and buf.size == 100_000
    assert buf.read(0, 16) == bytes(range(16))
    alloc.realloc(buf, 8)
    assert bytes(buf) == bytes(range(8))
    a = alloc.memalign(4096, 64)
    a.write(b"q" * 64)
    alloc.realloc(a, 9000)
    assert a.read(0, 64) == b"q" * 64
    a.free()
    buf.free()


def test_zero_size_blocks_are_unique(alloc):
    a, b = alloc.malloc(0), alloc.malloc(0)
    assert a.size == 0 and a.address != b.address and bytes(a) == b""
    a.free(), b.free()


def test_stats_track_blocks(alloc):
    s0 = alloc.stats()
    bufs = [alloc.malloc(1000) for _ in range(10)]
    s1 = alloc.stats()
    assert s1.live_blocks - s0.live_blocks == 10
    assert s1.total_allocs - s0.total_allocs == 10
    assert s1.live_bytes - s0.live_bytes >= 10_000
    assert s1.peak_bytes >= s1.live_bytes
    for b in bufs:
        b.free()
    s2 = alloc.stats()
    assert s2.live_blocks == s0.live_blocks and s2.live_bytes == s0.live_bytes
    assert s2.total_frees - s0.total_frees == 10
    assert s2.peak_bytes >= s1.live_bytes


def test_double_free_and_use_after_free(alloc):
    buf = alloc.malloc(32)
    addr = buf.address
    buf.free()
    with pytest.raises(DoubleFreeError) as ei:
        buf.free()
    assert hex(addr) in str(ei.value)
    with pytest.raises(DoubleFreeError):
        alloc.free(buf)
    for op in (lambda: buf.address, buf.view, buf.read, lambda: buf.write(b"x"), lambda: buf.cdata,
               lambda: alloc.realloc(buf, 64), buf.__enter__):
        with pytest.raises(UseAfterFreeError):
            op()
    assert alloc.stats().live_blocks == 0


def test_foreign_buffer_refused(alloc):
    other = nativemem.allocator("libc")
    buf = other.malloc(10)
    with pytest.raises(InvalidFreeError):
        alloc.free(buf)
    with pytest.raises(InvalidFreeError):
        alloc.realloc(buf, 20)
    assert not buf.freed
    buf.free()
    for bad in (None, 123, b"abc", bytearray(3)):
        with pytest.raises(InvalidTypeError):
            alloc.free(bad)
        with pytest.raises(InvalidTypeError):
            alloc.realloc(bad, 1)


def test_context_manager_and_finalizer(alloc):
    with alloc.malloc(64) as buf:
        buf.write(b"abc")
    assert buf.freed
    before = alloc.stats().live_blocks
    b = alloc.malloc(128)
    assert alloc.stats().live_blocks == before + 1
    del b
    gc.collect()
    assert alloc.stats().live_blocks == before


def test_views_are_zero_copy_and_block_free(alloc):
    buf = alloc.malloc(64)
    mv = buf.view()
    assert not mv.readonly and mv.nbytes == 64 and mv.format == "B"
    mv[0:3] = b"abc"
    assert buf.read(0, 3) == b"abc"
    sub = mv[10:20]
    del mv
    with pytest.raises(BufferInUseError):
        buf.free()
    with pytest.raises(BufferError):  # also a builtin BufferError
        buf.free()
    # realloc within the usable size is allowed (it cannot move); beyond raises
    alloc.realloc(buf, 32)
    with pytest.raises(BufferInUseError):
        alloc.realloc(buf, 1 << 20)
    del sub
    alloc.realloc(buf, 1 << 20)
    buf.free()


def test_ctypes_from_buffer(alloc):
    buf = alloc.calloc(4, 4)
    arr = (ctypes.c_uint32 * 4).from_buffer(buf.view())
    arr[2] = 0xDEADBEEF
    assert buf.read(8, 4) == (0xDEADBEEF).to_bytes(4, sys.byteorder)
    with pytest.raises(BufferInUseError):
        buf.free()
    del arr
    gc.collect()
    buf.free()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="PEP 688 __buffer__ needs Python >= 3.12")
def test_pep688_memoryview(alloc):
    buf = alloc.malloc(8)
    mv = memoryview(buf)
    mv[:] = b"12345678"
    assert bytes(buf) == b"12345678"
    with pytest.raises(BufferInUseError):
        buf.free()
    mv.release()
    buf.free()


def test_numpy_array_interface(alloc):
    np = pytest.importorskip("numpy")
    buf = alloc.calloc(1, 16)
    arr = np.asarray(buf)
    assert arr.shape == (16,) and arr.dtype == np.uint8
    arr[3] = 7
    assert buf.read(3, 1) == b"\x07"
    assert arr.__array_interface__["data"][0] == buf.address
    with pytest.raises(BufferInUseError):
        buf.free()
    del arr
    buf.free()


@pytest.mark.parametrize("bad", [-1, -(2 ** 70)])
def test_negative_sizes(alloc, bad):
    with pytest.raises(InvalidSizeError):
        alloc.malloc(bad)
    with pytest.raises(ValueError):
        alloc.calloc(bad, 1)
    with pytest.raises(ValueError):
        alloc.calloc(1, bad)
    with pytest.raises(ValueError):
        alloc.memalign(16, bad)


@pytest.mark.parametrize("bad", [1.5, "10", None, True, b"1", [1]])
def test_non_integer_sizes(alloc, bad):
    for call in (lambda: alloc.malloc(bad), lambda: alloc.calloc(bad, 2), lambda: alloc.calloc(2, bad),
                 lambda: alloc.memalign(bad, 8), lambda: alloc.memalign(16, bad)):
        with pytest.raises(TypeError) as ei:
            call()
        assert isinstance(ei.value, NativeMemError)


# Sizes from this platform's size_t (32-bit builds: win32 wheels), not from a 64-bit one.
SIZE_T_BITS = nativemem._ffi.ffi.sizeof("size_t") * 8
MAX_ALLOC = nativemem._ffi.MAX_ALLOC  # PTRDIFF_MAX
SIZE_T_LIMIT = 1 << SIZE_T_BITS       # SIZE_MAX + 1


def test_overflowing_sizes(alloc):
    for n in (MAX_ALLOC + 1, SIZE_T_LIMIT, SIZE_T_LIMIT + 1, 2 ** 200):
        with pytest.raises(OverflowError):
            alloc.malloc(n)
    half = 1 << (SIZE_T_BITS // 2 + 1)  # each fits; their product does not
    with pytest.raises(SizeOverflowError):  # nmemb*size overflows size_t, caught in C
        alloc.calloc(half, half)
    with pytest.raises(SizeOverflowError):
        alloc.calloc(MAX_ALLOC // 2 + 1, 4)
    with pytest.raises(SizeOverflowError):
        alloc.memalign(4096, MAX_ALLOC - 10)
    b = alloc.malloc(8)
    with pytest.raises(OverflowError):
        alloc.realloc(b, SIZE_T_LIMIT)
    assert b.size == 8 and not b.freed
    b.free()
    assert alloc.stats().live_blocks == 0


@pytest.mark.parametrize("alignment", [0, 1, 3, 4, 12, 24, 48, 100])
def test_bad_alignment(alloc, alignment):
    with pytest.raises(InvalidAlignmentError):
        alloc.memalign(alignment, 16)


def test_out_of_memory_raises_and_recovers(alloc):
    # MAX_ALLOC bytes: past any 64-bit address space, so the first fails; a 32-bit process may
    # find one such block (half its address space), never three
    held = []
    with pytest.raises(MemoryError) as ei:
        for _ in range(3):
            held.append(alloc.malloc(MAX_ALLOC))
    for b in held:
        b.free()
    assert isinstance(ei.value, NativeMemError)
    assert alloc.stats().failures >= 1
    b = alloc.malloc(10)
    b.free()


def test_threads_share_an_allocator(alloc):
    errors = []

    def work(seed: int) -> None:
        try:
            held = []
            for i in range(2000):
                b = alloc.malloc(16 + (i * seed) % 2000)
                b.write(bytes([seed]) * 8)
                held.append(b)
                if len(held) > 32:
                    x = held.pop(0)
                    assert x.read(0, 8) == bytes([seed]) * 8
                    x.free()
            for x in held:
                x.free()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    st = alloc.stats()
    assert st.live_blocks == 0 and st.live_bytes == 0 and st.total_allocs == st.total_frees == 8000


def test_concurrent_double_free_is_one_free(alloc):
    for _ in range(50):
        buf = alloc.malloc(64)
        results = []
        barrier = threading.Barrier(4)

        def go():
            barrier.wait()
            try:
                buf.free()
                results.append("ok")
            except (DoubleFreeError, BufferInUseError):
                results.append("err")

        ts = [threading.Thread(target=go) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert results.count("ok") == 1
    assert alloc.stats().live_blocks == 0


def test_buffers_dying_in_a_cycle_with_their_allocator():
    """The garbage collector may finalize an Allocator and its Buffers together: the C table
    defers its destruction until its last block is freed, so this must not crash or leak."""
    libc = nativemem.allocator("libc")
    for _ in range(200):
        a = nativemem.allocator("libc")
        a.bufs = [a.malloc(64) for _ in range(5)]  # Allocator -> Buffers -> Allocator
        a.bufs.append(a)
        del a
    gc.collect()
    arena_cls = getattr(nativemem, "Arena", None)
    if arena_cls is not None:
        for _ in range(20):
            ar = arena_cls(1 << 20)
            ar.bufs = [ar.malloc(100) for _ in range(5)] + [ar]
            del ar
        gc.collect()
    b = libc.malloc(8)
    b.free()
