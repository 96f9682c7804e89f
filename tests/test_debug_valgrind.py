"""Valgrind memcheck and the debug allocator: correct use reports no error in nativemem frames;
an overflow into a canary is reported by memcheck itself (the canaries are redzones)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

import nativemem
from conftest import SRC_DIR

VALGRIND = shutil.which("valgrind")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed"),
    pytest.mark.skipif(not nativemem.build_info()["valgrind"], reason="built without valgrind/memcheck.h"),
]

PROG = textwrap.dedent("""
    import ctypes, sys, nativemem as nm
    d = nm.DebugAllocator(quarantine=8)
    bufs = [d.malloc(n) for n in (1, 10, 100, 1000, 5000)]
    for b in bufs:
        b.write(b"x" * b.size)
        assert bytes(b) == b"x" * b.size
    c = d.calloc(10, 10); d.realloc(c, 500); c.write(b"y" * 500)
    a = d.memalign(256, 300); a.write(b"z" * 300)
    d.check()
    for b in bufs + [c, a]:
        b.free()
    for i in range(50):
        d.malloc(i + 1).free()
    d.check(); d.flush()
    if sys.argv[1] == "overflow":
        b = d.malloc(16)
        ctypes.memset(b.address + 16, 0, 1)
    print("done")
""")

OURS = re.compile(r"debug\.c|alloc\.c|nativemem\._native|_native\.abi3|nm_debug|nm__d")


def memcheck(tmp_path, mode):
    prog = tmp_path / "prog.py"
    prog.write_text(PROG)
    import nativemem.debug as dbgmod
    supp = dbgmod.suppressions_path()
    env = dict(os.environ, PYTHONMALLOC="malloc", PYTHONPATH=SRC_DIR)
    r = subprocess.run([VALGRIND, f"--suppressions={supp}", "--num-callers=40", sys.executable, str(prog), mode],
                       env=env, capture_output=True, text=True, timeout=300)
    assert "done" in r.stdout, r.stderr[-3000:]
    blocks = re.split(r"==\d+== \n", r.stderr)
    return [b for b in blocks if re.search(r"(Invalid|uninitialised|Conditional jump|Mismatched)", b)]


def test_correct_use_reports_nothing_in_nativemem(tmp_path):
    errors = memcheck(tmp_path, "ok")
    ours = [e for e in errors if OURS.search(re.split(r"Address 0x|Uninitialised value was created", e)[0])]
    assert ours == [], "\n\n".join(ours)


def test_overflow_into_a_canary_is_reported_by_memcheck(tmp_path):
    errors = memcheck(tmp_path, "overflow")
    assert any("Invalid write of size 1" in e for e in errors), "\n\n".join(errors)[-3000:]
