"""Hypothesis state machine: random malloc/calloc/memalign/realloc/free/write/read sequences on
every backend, checked against a Python model of each block's contents and the allocator stats."""
from __future__ import annotations

import os

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

import nativemem
from conftest import machine_settings



def make_machine(backend: str):
    class AllocatorMachine(RuleBasedStateMachine):
        buffers = Bundle("buffers")

        def __init__(self) -> None:
            super().__init__()
            self.alloc = nativemem.Arena(8 << 20) if backend == "arena" else nativemem.allocator(backend)
            self.model = {}  # id(buf) -> bytearray of expected contents (None = unknown bytes)
            self.freed = []

        @rule(target=buffers, size=st.integers(0, 5000))
        def malloc(self, size):
            b = self.alloc.malloc(size)
            self.model[id(b)] = bytearray(size)
            b.write(bytes(size))
            return b

        @rule(target=buffers, n=st.integers(0, 64), size=st.integers(0, 64))
        def calloc(self, n, size):
            b = self.alloc.calloc(n, size)
            assert bytes(b) == bytes(n * size)
            self.model[id(b)] = bytearray(n * size)
            return b

        @rule(target=buffers, shift=st.integers(3, 13), size=st.integers(0, 3000))
        def memalign(self, shift, size):
            b = self.alloc.memalign(1 << shift, size)
            assert b.address % (1 << shift) == 0
            b.write(bytes(size))
            self.model[id(b)] = bytearray(size)
            return b

        @rule(buf=buffers, data=st.binary(min_size=1, max_size=200), where=st.floats(0, 1))
        def write(self, buf, data, where):
            if buf.freed:
                with pytest.raises(nativemem.UseAfterFreeError):
                    buf.write(data)
                return
            m = self.model[id(buf)]
            if len(data) > len(m):
                with pytest.raises(ValueError):
                    buf.write(data, 0 if len(m) == 0 else len(m))
                data = data[:len(m)]
            off = int(where * (len(m) - len(data)))
            buf.write(data, off)
            m[off:off + len(data)] = data

        @rule(buf=buffers)
        def read(self, buf):
            if buf.freed:
                with pytest.raises(nativemem.UseAfterFreeError):
                    buf.read()
                return
            assert bytes(buf) == bytes(self.model[id(buf)])

        @rule(buf=buffers, size=st.integers(0, 20000))
        def realloc(self, buf, size):
            if buf.freed:
                with pytest.raises(nativemem.UseAfterFreeError):
                    self.alloc.realloc(buf, size)
                return
            m = self.model[id(buf)]
            self.alloc.realloc(buf, size)
            keep = min(size, len(m))
            assert buf.read(0, keep) == bytes(m[:keep])
            new = bytearray(size)
            new[:keep] = m[:keep]
            buf.write(bytes(new[keep:]), keep)
            self.model[id(buf)] = new

        @rule(buf=buffers)
        def free(self, buf):
            if buf.freed:
                with pytest.raises(nativemem.DoubleFreeError):
                    buf.free()
                return
            buf.free()
            self.freed.append(buf)

        @rule(buf=buffers)
        def view_roundtrip(self, buf):
            if buf.freed:
                return
            mv = buf.view()
            assert mv.tobytes() == bytes(self.model[id(buf)])
            if len(mv):
                mv[0] = (mv[0] + 1) % 256
                self.model[id(buf)][0] = mv[0]
            with pytest.raises(nativemem.BufferInUseError):
                buf.free()
            mv.release()

        @invariant()
        def stats_balance(self):
            st_ = self.alloc.stats()
            live = len(self.model) - len(self.freed)
            assert st_.live_blocks == live
            assert st_.total_allocs - st_.total_frees == live
            if backend == "arena":
                self.alloc.check()

    AllocatorMachine.TestCase.settings = machine_settings(50)
    return AllocatorMachine


def _backends():
    names = [b.name for b in nativemem.backends() if b.available]
    if hasattr(nativemem, "Arena"):
        names.append("arena")
    return names


@pytest.mark.parametrize("backend", _backends())
def test_allocator_state_machine(backend):
    machine = make_machine(backend)
    machine.TestCase("runTest").runTest()
