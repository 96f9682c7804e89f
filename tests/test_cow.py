"""Copy-on-write buffers and strings."""
from __future__ import annotations

import sys

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

import nativemem
from conftest import machine_settings
from nativemem import BufferInUseError, CowBuffer, CowString


def test_share_and_detach():
    a = CowBuffer(b"hello")
    b = a.share()
    assert a.address == b.address and a.refcount == b.refcount == 2
    assert a.view().readonly and b.view().readonly
    c = b.make_writable()
    assert c is not b and b.released and c.address != a.address
    assert a.refcount == 1 and c.refcount == 1
    c.view()[0:1] = b"J"
    assert bytes(c) == b"Jello" and bytes(a) == b"hello"


def test_sole_owner_make_writable_is_free():
    alloc = nativemem.allocator("libc")
    a = CowBuffer(1000, allocator=alloc)
    before = alloc.stats().total_allocs
    w = a.make_writable()
    assert w is a and alloc.stats().total_allocs == before  # no allocation, no copy
    mv = w.view()
    assert not mv.readonly and bytes(mv[:4]) == bytes(4)
    mv[:4] = b"abcd"
    del mv
    assert bytes(w)[:4] == b"abcd"
    w.release()
    assert alloc.stats().live_blocks == 0


def test_views_do_not_dangle():
    a = CowBuffer(b"xyz")
    mv = a.view()
    with pytest.raises(BufferInUseError):
        a.share()  # a writable view is out
    with pytest.raises(BufferInUseError):
        a.release()
    del mv
    b = a.share()
    b.release()
    a.release()
    with pytest.raises(nativemem.RefcountError):
        a.release()
    with pytest.raises(nativemem.UseAfterFreeError):
        bytes(a)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="PEP 688 needs Python >= 3.12")
def test_memoryview_protocol():
    a = CowBuffer(b"abc")
    assert bytes(memoryview(a)) == b"abc"


def test_cow_string():
    s = CowString("héllo")
    t = s.share()
    assert str(t) == "héllo" and t == "héllo" and s == t
    u = t.make_writable()
    u.view()[0:1] = b"H"
    assert str(u) == "Héllo" and str(s) == "héllo"
    with pytest.raises(TypeError):
        CowString(3.5)
    with pytest.raises(ValueError):
        CowString("\udc80")


def test_bad_input():
    size_t_limit = 1 << (nativemem._ffi.ffi.sizeof("size_t") * 8)
    for bad in (-1, size_t_limit):
        with pytest.raises((ValueError, OverflowError)):
            CowBuffer(bad)
    for bad in (None, 1.5, "text"):
        with pytest.raises(TypeError):
            CowBuffer(bad)
    # the largest size a buffer with its header may have: past any 64-bit address space; a
    # 32-bit process may find one such block, never three
    held = []
    with pytest.raises(MemoryError):
        for _ in range(3):
            held.append(CowBuffer(nativemem._ffi.MAX_ALLOC - 4096))
    del held


class CowMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    def __init__(self):
        super().__init__()
        self.alloc = nativemem.allocator("libc")
        self.live = {}  # handle -> expected bytes

    @rule(target=handles, data=st.binary(max_size=64))
    def create(self, data):
        h = CowBuffer(data, allocator=self.alloc)
        self.live[h] = data
        return h

    @rule(target=handles, h=handles)
    def share(self, h):
        if h.released:
            return h
        s = h.share()
        self.live[s] = self.live[h]
        return s

    @rule(target=handles, h=handles, byte=st.integers(0, 255))
    def write(self, h, byte):
        if h.released:
            return h
        w = h.make_writable()
        data = self.live.pop(h)
        if w is not h:
            assert h.released
        if len(w):
            w.view()[0] = byte
            data = bytes([byte]) + data[1:]
        self.live[w] = data
        return w

    @rule(h=handles)
    def release(self, h):
        if not h.released:
            h.release()
            self.live.pop(h)

    @invariant()
    def contents(self):
        for h, data in self.live.items():
            assert bytes(h) == data
        groups = {}
        for h in self.live:
            groups.setdefault(h.address, []).append(h)
        for hs in groups.values():
            assert all(h.refcount == len(hs) for h in hs)
        assert self.alloc.stats().live_blocks == len(groups)


CowMachine.TestCase.settings = machine_settings(40)
test_cow_state_machine = CowMachine.TestCase
