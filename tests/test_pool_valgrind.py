"""Valgrind memcheck sees inside pools: a seeded use-after-free is reported with a stack through
nativemem's pool code, and correct use reports no error in nativemem frames."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

import nativemem

from conftest import SRC_DIR, memcheck_reports

PROG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pool_valgrind_prog.py")
VALGRIND = shutil.which("valgrind")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed"),
    pytest.mark.skipif(not nativemem.build_info()["valgrind"],
                       reason="nativemem was built without valgrind/memcheck.h (no client requests)"),
]

NATIVE_FRAME = re.compile(r"pool\.c|alloc\.c|backends\.c|nativemem[./]_native|\bnm_pool_|\bnm__")


def memcheck(mode: str) -> tuple[str, list[str]]:
    env = dict(os.environ, PYTHONMALLOC="malloc", PYTHONPATH=SRC_DIR)
    r = subprocess.run([VALGRIND, "--tool=memcheck", "--num-callers=40", sys.executable, PROG, mode],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, memcheck_reports(r.stderr)


def test_correct_use_reports_nothing_in_nativemem():
    out, errors = memcheck("ok")
    assert "done" in out
    ours = [e for e in errors if NATIVE_FRAME.search(e)]
    assert ours == [], "\n\n".join(ours)


def test_seeded_use_after_free_is_reported():
    out, errors = memcheck("uaf")
    assert "read 7" in out
    uaf = [e for e in errors if e.startswith("Invalid read") and NATIVE_FRAME.search(e)]
    assert uaf, "memcheck did not report the use-after-free:\n\n" + "\n\n".join(errors)
    assert re.search(r"nm_pool|nm__alloc|nm__chunk|pool\.c", uaf[0]), uaf[0]
