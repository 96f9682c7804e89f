"""The pytest plugin (``--nativemem-leaks``) end to end: inner pytest runs in subprocesses
(pytester's subprocess mode), so each has its own native state."""
from __future__ import annotations

import re
import textwrap

import pytest

from conftest import SRC_DIR

pytest_plugins = ["pytester"]


def _entry_point_installed() -> bool:
    from importlib import metadata
    return any(ep.value == "nativemem.pytest_plugin" for ep in metadata.entry_points().select(group="pytest11"))


@pytest.fixture
def run(pytester, monkeypatch):
    """run(source, *args): write test_inner.py and run pytest on it with the plugin on, under -W error."""
    monkeypatch.setenv("PYTHONPATH", SRC_DIR)
    load = [] if _entry_point_installed() else ["-p", "nativemem.pytest_plugin"]

    def go(source: str, *args: str, leaks: bool = True):
        pytester.path.joinpath("test_inner.py").write_text(textwrap.dedent(source).lstrip("\n"))
        opts = ["-p", "no:cacheprovider", "-W", "error", "-rfE"] + load + (["--nativemem-leaks"] if leaks else [])
        r = pytester.runpytest_subprocess(*opts, *args, timeout=120)
        text = r.stdout.str() + r.stderr.str()
        assert "PluggyTeardownRaisedWarning" not in text and "INTERNALERROR" not in text, text
        return r, text
    return go


def at(source: str, needle: str, test: str) -> str:
    """'test_inner.py:N in test' for the line of ``source`` (as run) that contains ``needle``."""
    lines = textwrap.dedent(source).lstrip("\n").splitlines()
    n = next(i for i, text in enumerate(lines, 1) if needle in text)
    return f"test_inner.py:{n} in {test}"


def allocated_at(section: str, site: str) -> int:
    """How many lines of ``section`` say 'allocated at <path ending in site>'."""
    return len(re.findall(r"allocated at \S*" + re.escape(site) + "$", section, re.M))


def _section(text: str, test: str) -> str:
    """The failure section of one test in pytest's output."""
    m = re.search(r"_+ " + re.escape(test) + r" _+\n(.*?)(?=\n_{3,} |\n=+ )", text, re.S)
    assert m, f"no failure section for {test}:\n{text}"
    return m.group(1)


def _no_internals(section: str) -> None:
    for bad in ("_pytest", "pluggy", "<unknown>", "pytest_plugin.py"):
        assert bad not in section, (bad, section)


BASIC = """
        import nativemem, pytest
        KEEP = []

        def test_clean():
            nativemem.allocator().malloc(8).free()

        def test_leaks():
            KEEP.append(nativemem.allocator().malloc(77))

        def test_frees_everything():
            bufs = [nativemem.allocator().malloc(n) for n in range(1, 20)]
            for b in bufs:
                b.free()
            p = nativemem.Pool(16)
            p.free(p.alloc())
            p.close()
            a = nativemem.Arena(1 << 16)
            a.malloc(5).free()
            d = nativemem.DebugAllocator()
            d.malloc(3).free()
            lib = nativemem.allocator("libc")
            del [lib.malloc(4) for _ in range(3)][:]  # dropped Buffers are freed by their finalizers

        @pytest.mark.nativemem_leaks(allow=1)
        def test_allowed():
            KEEP.append(nativemem.allocator().malloc(5))

        @pytest.mark.nativemem_leaks(allow=1)
        def test_over_allowance():
            KEEP.append(nativemem.allocator("libc").malloc(5))
            KEEP.append(nativemem.allocator().malloc(6))
"""


def test_default_allocator_leak_names_the_line_and_clean_tests_pass(run):
    r, text = run(BASIC)
    assert r.ret == 1, text
    r.assert_outcomes(passed=3, failed=2)
    sec = _section(text, "test_leaks")
    assert "77 bytes" in sec and at(BASIC, "malloc(77)", "test_leaks") in sec
    _no_internals(sec)
    sec = _section(text, "test_over_allowance")
    assert "2 native block(s)" in sec and "allowed: 1" in sec
    assert at(BASIC, "\"libc\").malloc(5)", "test_over_allowance") in sec and at(BASIC, "malloc(6)", "test_over_allowance") in sec
    _no_internals(sec)


KINDS = """
        import nativemem
        KEEP = []
        LIBC = nativemem.allocator("libc")   # made before the test, used by it
        POOL = nativemem.Pool(24)

        def test_libc():
            KEEP.append(nativemem.allocator("libc").malloc(10))

        def test_module_level_allocator():
            KEEP.append(LIBC.calloc(3, 4))

        def test_pool():
            p = nativemem.Pool(32)
            KEEP.append(p)
            p.alloc()  # unchecked

        def test_module_level_pool():
            POOL.alloc_many(2)

        def test_checked_pool():
            p = nativemem.Pool(48, checked=True)
            KEEP.append(p)
            p.alloc()  # checked

        def test_arena():
            a = nativemem.Arena(1 << 20)
            KEEP.append(a.malloc(12))

        def test_debug_allocator():
            d = nativemem.DebugAllocator()
            KEEP.append(d.malloc(13))

        def test_object_pool():
            import ctypes
            class Point(ctypes.Structure):
                _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int)]
            op = nativemem.ObjectPool(None, Point)
            KEEP.append(op.new())
"""


def test_leaks_from_every_kind_of_allocator_and_pool_are_caught(run):
    r, text = run(KINDS)
    assert r.ret == 1, text
    r.assert_outcomes(failed=8)
    sec = _section(text, "test_libc")
    assert "10 bytes" in sec and "allocator 'libc'" in sec and at(KINDS, "malloc(10)", "test_libc") in sec
    sec = _section(text, "test_module_level_allocator")
    assert "12 bytes" in sec and at(KINDS, "calloc(3, 4)", "test_module_level_allocator") in sec
    sec = _section(text, "test_pool")
    assert "pool 'pool32'" in sec and "1 object(s)" in sec and at(KINDS, "Pool(32)", "test_pool") in sec
    assert allocated_at(sec, at(KINDS, "p.alloc()  # unchecked", "test_pool")) == 1
    sec = _section(text, "test_module_level_pool")
    assert "pool 'pool24'" in sec and "2 object(s)" in sec and at(KINDS, "Pool(24)", "<module>") in sec
    assert allocated_at(sec, at(KINDS, "alloc_many(2)", "test_module_level_pool")) == 2
    sec = _section(text, "test_checked_pool")
    assert "pool 'pool48'" in sec and allocated_at(sec, at(KINDS, "p.alloc()  # checked", "test_checked_pool")) == 1
    sec = _section(text, "test_arena")
    assert "12 bytes" in sec and "allocator 'arena'" in sec and at(KINDS, "malloc(12)", "test_arena") in sec
    sec = _section(text, "test_debug_allocator")
    assert "13 bytes" in sec and "allocator 'debug'" in sec and at(KINDS, "malloc(13)", "test_debug_allocator") in sec
    sec = _section(text, "test_object_pool")
    assert "1 object(s)" in sec and at(KINDS, "ObjectPool(None, Point)", "test_object_pool") in sec
    assert allocated_at(sec, at(KINDS, "op.new()", "test_object_pool")) == 1
    for name in ("test_libc", "test_module_level_allocator", "test_pool", "test_module_level_pool",
                 "test_checked_pool", "test_arena", "test_debug_allocator", "test_object_pool"):
        _no_internals(_section(text, name))


def test_pools_kept_without_live_objects_and_earlier_blocks_are_not_leaks(run):
    r, text = run("""
        import nativemem
        KEEP = []
        EARLY = [nativemem.allocator("libc").malloc(8)]   # allocated before any test

        def test_pool_kept_empty():
            p = nativemem.Pool(32)
            KEEP.append(p)          # its control block and cached chunk are the pool's own memory
            p.free(p.alloc())

        def test_frees_an_earlier_block():
            EARLY.pop().free()

        def test_swap_is_still_a_leak():
            KEEP.append(nativemem.allocator("libc").malloc(9))   # one freed above does not hide it
    """)
    r.assert_outcomes(passed=2, failed=1)
    sec = _section(text, "test_swap_is_still_a_leak")
    assert "9 bytes" in sec and "test_inner.py:" in sec and "in test_swap_is_still_a_leak" in sec


def test_plugin_is_off_unless_asked(run):
    r, text = run("""
        import nativemem
        KEEP = []

        def test_leaks():
            KEEP.append(nativemem.allocator("libc").malloc(10))
    """, leaks=False)
    r.assert_outcomes(passed=1)
