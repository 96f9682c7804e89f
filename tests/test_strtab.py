"""String interning: pointer equality, refcounts, races, odd strings, a state machine."""
from __future__ import annotations

import random
import threading

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import nativemem
from conftest import machine_settings
from nativemem import StringTable


def test_interned_equality_is_pointer_equality():
    t = StringTable()
    a, b, c = t.intern("hello"), t.intern(b"hello"), t.intern("world")
    assert a.address == b.address and a == b and a != c
    assert str(a) == "hello" and bytes(c) == b"world" and len(a) == 5
    assert a.refcount == 2 and t.refcount("hello") == 2 and len(t) == 2
    a.release()
    assert t.refcount("hello") == 1
    b.release()
    assert t.refcount("hello") == 0 and "hello" not in t and len(t) == 1
    with c:
        pass
    assert len(t) == 0 and c.released


def test_every_byte_of_every_length_counts():
    # the hash and the equality test read words (overlapping at the end): a difference in any
    # one byte, at any length, must make a different string
    t = StringTable()
    held = []
    for n in range(0, 70):
        base = bytes((i * 7 + n) % 251 + 1 for i in range(n))
        a = t.intern(base)
        b = t.intern(bytes(base))
        assert a.address == b.address
        held += [a, b]
        for k in range(n):
            other = bytearray(base)
            other[k] ^= 0x20
            c = t.intern(bytes(other))
            assert c.address != a.address and bytes(c) == bytes(other)
            held.append(c)
    for h in held:
        h.release()
    assert len(t) == 0


def test_odd_strings():
    t = StringTable()
    cases = ["", "a\x00b", "\x00", "é漢字🙂", "x" * 1_000_000]
    handles = [t.intern(s) for s in cases]
    for s, h in zip(cases, handles):
        assert str(h) == s and t.refcount(s) == 1
    raw = t.intern(b"\xff\xfe not utf-8")
    assert bytes(raw) == b"\xff\xfe not utf-8"
    with pytest.raises(ValueError):
        t.intern("\ud800")  # lone surrogate: refused clearly
    for bad in (None, 5, ["a"]):
        with pytest.raises(TypeError):
            t.intern(bad)
    for h in handles + [raw]:
        h.release()
    assert len(t) == 0


def test_release_twice_and_use_after_release():
    t = StringTable()
    h = t.intern("x")
    h.release()
    with pytest.raises(nativemem.RefcountError):
        h.release()
    with pytest.raises(nativemem.UseAfterFreeError):
        h.address
    with pytest.raises(nativemem.UseAfterFreeError):
        str(h)


def test_forgotten_handles_release_and_module_level_intern():
    t = StringTable()
    t.intern("temp")
    import gc
    gc.collect()
    assert len(t) == 0
    a = nativemem.intern("process-wide")
    b = nativemem.intern("process-wide")
    assert a == b and a.refcount >= 2


def test_stats_and_growth():
    t = StringTable()
    hs = [t.intern(f"k{i}") for i in range(5000)]
    st_ = t.stats()
    assert st_.entries == 5000 and st_.capacity >= 5000 and st_.inserts == 5000 and st_.bytes > 5000
    hs2 = [t.intern(f"k{i}") for i in range(0, 5000, 2)]
    assert t.stats().hits == 2500
    for h in hs + hs2:
        h.release()
    assert len(t) == 0 and t.stats().removals == 5000


def test_releases_leave_every_other_string_findable():
    # the tables are buckets of slots with overflow counts and no tombstones: a long random mix
    # of interns and releases, over tables grown from their first two buckets, with every string
    # of the universe checked against a model now and then (found with its count, or absent)
    rnd = random.Random(13)
    dbg = nativemem.DebugAllocator()
    t = StringTable(allocator=dbg)
    universe = [f"s{i}".encode() for i in range(3000)] + [b"", b"\x00", b"x" * 100, b"y" * 5000]
    held = {}
    for step in range(40_000):
        k = universe[rnd.randrange(rnd.choice((20, 400, len(universe))))]
        if rnd.random() < 0.55:
            held.setdefault(k, []).append(t.intern(k))
        elif held.get(k):
            held[k].pop().release()
            if not held[k]:
                del held[k]
        if step % 2000 == 1999:
            assert len(t) == len(held)
            for u in universe:
                n = len(held.get(u, ()))
                assert t.refcount(u) == n and (u in t) == (n > 0)
            dbg.check()
    for hs in held.values():
        a = hs[0].address
        assert all(h.address == a for h in hs)
        for h in hs:
            h.release()
    assert len(t) == 0 and t.stats().entries == 0
    dbg.check()


def test_intern_release_races_never_revive_a_dying_string():
    t = StringTable()
    keys = [f"key{i}" for i in range(20)]
    errors = []

    def work(seed):
        try:
            for i in range(5000):
                k = keys[(i * seed) % len(keys)]
                h = t.intern(k)
                assert str(h) == k and h.refcount >= 1
                h.release()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(s,)) for s in (1, 3, 7, 11)]
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    assert not errors and len(t) == 0


class TableMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.t = StringTable()
        self.held = []

    @rule(s=st.one_of(st.text(max_size=20), st.binary(max_size=20)))
    def intern(self, s):
        h = self.t.intern(s)
        self.held.append((s.encode() if isinstance(s, str) else s, h))

    @rule(i=st.integers(0, 1000))
    def release(self, i):
        if self.held:
            _, h = self.held.pop(i % len(self.held))
            h.release()

    @invariant()
    def model(self):
        counts = {}
        for k, _ in self.held:
            counts[k] = counts.get(k, 0) + 1
        assert len(self.t) == len(counts)
        for k, n in counts.items():
            assert self.t.refcount(k) == n
        by_key = {}
        for k, h in self.held:
            assert by_key.setdefault(k, h.address) == h.address


TableMachine.TestCase.settings = machine_settings(50)
test_string_table_state_machine = TableMachine.TestCase
