"""Nothing in nativemem assumes more alignment than its base allocator promises (issue 15, item 1).

``nm_allocator_align8`` (csrc/faulty.c, a test aid like the fault-injecting allocator) wraps libc
and hands out blocks only 8-byte aligned -- each 8 bytes past a 16-byte boundary, as HeapAlloc and
the CRT may on 32-bit Windows -- and says so (``nm_allocator_alignment``: 8).  A guard word after
every block is verified when the block is freed: a structure that placed anything past the end
of a base block (the debug allocator's tail canary once did, by 8 bytes) is reported, as an
exception where the free can raise and a CorruptionWarning where it cannot.  The debug allocator,
pools and arenas run on it here, and stacked on one another.
"""
import ctypes
import gc
import warnings

import pytest

from nativemem import errors as E
from nativemem._ffi import check_ptr, ffi, lib
from nativemem.allocator import Allocator
from nativemem.arena import Arena
from nativemem.debug import DebugAllocator
from nativemem.pool import Pool

PTR = ffi.sizeof("void *")


def align8() -> Allocator:
    table = check_ptr(lib.nm_allocator_align8(ffi.NULL), "cannot create the align8 test allocator")
    return Allocator(table, name="align8", owned=True, backend="align8")


def alignment(a: Allocator) -> int:
    return int(lib.nm_allocator_alignment(a.cdata))


@pytest.fixture
def no_corruption_warnings():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield
    corrupt = [str(w.message) for w in seen if issubclass(w.category, E.CorruptionWarning)]
    assert corrupt == []


def test_align8_blocks_are_only_8_aligned_and_say_so():
    a = align8()
    assert alignment(a) == 8
    bufs = [a.malloc(n) for n in range(0, 200, 7)]
    assert all(b.address % 16 == 8 for b in bufs)
    for b in bufs:
        b.free()
    m = a.memalign(64, 10)
    assert m.address % 64 == 0
    m.free()
    a.close()


def test_align8_reports_a_write_past_a_block():
    a = align8()
    b = a.malloc(10)
    ctypes.memset(b.address + 10, 0x41, 1)  # past the block: the guard word
    with pytest.raises(E.BufferOverflowError, match="align8 test allocator"):
        b.free()
    a.close()


def test_alignment_of_every_kind_of_table():
    libc_align = int(lib.nm_allocator_alignment(lib.nm_allocator_libc()))
    assert libc_align in (8, 16) and libc_align >= PTR  # alignof(max_align_t)
    a = align8()
    d = DebugAllocator(a)
    ar = Arena(1 << 16, allocator=a)
    assert alignment(d) == 16 and alignment(ar) == 16
    d.close()
    ar.close()
    a.close()


@pytest.mark.parametrize("quarantine", [0, 16])
def test_debug_allocator_on_an_8_aligned_base(no_corruption_warnings, quarantine):
    a = align8()
    d = DebugAllocator(a, quarantine=quarantine)
    bufs = []
    for i in range(300):
        size = i % 100
        if i % 3 == 0:
            align = 16 << (i % 5)
            b = d.memalign(align, size)
            assert b.address % align == 0
        else:
            b = d.malloc(size) if i % 3 == 1 else d.calloc(1, size)
            assert b.address % 16 == 0
        if size:
            ctypes.memset(b.address, 0x5A, size)  # to the last byte: the tail canary lies in base's block
        bufs.append(b)
    for i in range(0, 300, 2):
        bufs[i] = d.realloc(bufs[i], i % 7 * 13)
    for b in bufs:
        b.free()  # raises when align8 finds its guard damaged
    d.check()
    d.close()
    assert a.stats().live_blocks == 0
    a.close()


@pytest.mark.parametrize("mode", ["plain", "checked", "bughunt"])
def test_pools_on_an_8_aligned_base(no_corruption_warnings, mode):
    a = align8()
    align = PTR
    while align <= 4096:
        size = 24 + align // 2
        pool = Pool(size, objects_per_chunk=8, alignment=align, allocator=a,
                    checked=mode == "checked", bughunt=mode == "bughunt")
        objs = [pool.alloc() for _ in range(40)]
        assert all(o % align == 0 for o in objs)
        for o in objs:
            ctypes.memset(o, 0x33, size)
        for o in objs:
            pool.free(o)
        pool.close()
        align *= 2
    assert a.stats().live_blocks == 0
    a.close()


def test_arena_on_an_8_aligned_base(no_corruption_warnings):
    a = align8()
    ar = Arena(1 << 16, allocator=a)
    bufs = []
    while True:
        try:
            b = ar.malloc(1000)
        except MemoryError:
            break
        ctypes.memset(b.address, 0x77, 1000)
        bufs.append(b)
    assert 40 < len(bufs) < 70
    for b in bufs:
        b.free()
    ar.check()
    ar.close()
    assert a.stats().live_blocks == 0
    a.close()


def _stack_on(a: Allocator) -> None:
    ar = Arena(1 << 20, allocator=a)
    d = DebugAllocator(ar)
    pool = Pool(40, allocator=d, checked=True)
    objs = [pool.alloc() for _ in range(500)]
    for o in objs:
        ctypes.memset(o, 1, 40)
        pool.free(o)
    pool.close()
    bufs = [d.malloc(n) for n in range(1, 64)]
    for b in bufs:
        ctypes.memset(b.address, 2, len(b))
        b.free()
    d.check()
    d.close()
    ar.check()
    ar.close()


def test_stacked_on_an_8_aligned_base(no_corruption_warnings):
    a = align8()
    _stack_on(a)
    gc.collect()  # the arena's region goes back to align8 (its guard checked) with its last user
    assert a.stats().live_blocks == 0
    a.close()
