"""The property tree: parents hold children, zombies, values, threads."""
from __future__ import annotations

import gc
import threading

import pytest

import nativemem
from nativemem import ClosedError, Prop
from nativemem._ffi import lib


def live():
    gc.collect()
    return lib.nm_prop_live_count()


def test_tree_and_values():
    base = live()
    root = Prop("root")
    a = Prop("a", root, 1)
    b = Prop("b", root, 2.5)
    c = Prop("c", a, "text é")
    d = Prop(None, root, b"\x00raw")
    assert [p.name for p in root.children] == ["a", "b", None]
    assert a.value == 1 and b.value == 2.5 and c.value == "text é" and d.value == b"\x00raw"
    assert c.parent == a and a.parent == root and root.parent is None
    a.value = None
    assert a.value is None
    with pytest.raises(TypeError):
        a.value = [1]
    with pytest.raises(TypeError):
        a.value = True
    with pytest.raises(OverflowError):
        a.value = 2 ** 70
    del a, b, c, d
    assert live() == base + 5  # the parent holds its children
    root.destroy()
    del root
    assert live() == base


def test_zombie_refuses_use_and_memory_goes_with_the_last_reference():
    base = live()
    root = Prop("root")
    child = Prop("child", root, 5)
    extra = child.retain()
    assert child.refcount == 3  # parent, child handle, extra
    root.destroy()
    assert child.zombie and root.zombie
    for op in (lambda: child.value, lambda: child.name, lambda: child.children, child.destroy,
               lambda: setattr(child, "value", 1)):
        with pytest.raises(ClosedError):
            op()
    with pytest.raises(ClosedError):
        Prop("late", root)
    assert child.refcount == 2
    extra.release()
    with pytest.raises(ClosedError):
        extra.value
    del child, root
    assert live() == base


def test_dropping_a_root_without_destroy_frees_its_subtree():
    base = live()
    root = Prop("r")
    for i in range(10):
        Prop(f"c{i}", Prop(f"p{i}", root), i)
    assert live() == base + 21
    del root
    assert live() == base


def test_destroy_subtrees_while_threads_take_and_drop_references():
    base = live()
    for _ in range(5):
        root = Prop("root")
        subs = [Prop(f"s{i}", root) for i in range(8)]
        for s in subs:
            for j in range(5):
                Prop(f"leaf{j}", s, j)
        errors = []
        stop = threading.Event()

        def reader():
            try:
                while not stop.is_set():
                    for s in list(subs):
                        try:
                            for ch in s.children:
                                ch.retain().release()
                                _ = ch.value
                        except ClosedError:
                            pass
            except BaseException as exc:  # pragma: no cover
                errors.append(exc)

        ts = [threading.Thread(target=reader) for _ in range(3)]
        for t in ts:
            t.start()
        for s in subs:
            s.destroy()
        stop.set()
        for t in ts:
            t.join()
        assert not errors
        root.destroy()
        del subs, root, s
    assert live() == base


def test_bad_arguments():
    with pytest.raises(TypeError):
        Prop(5)
    with pytest.raises(TypeError):
        Prop("x", parent="root")
