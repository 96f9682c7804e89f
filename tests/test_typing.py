"""Typing: ``mypy --strict`` is clean on the package, and the stub of the C module nativemem._core
(src/nativemem/_core.pyi) matches what the extension really defines (mypy's stubtest)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("mypy", reason="mypy is not installed (pip install '.[test]')")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "src", "nativemem")
CONFIG = os.path.join(ROOT, "pyproject.toml")


@pytest.mark.skipif(not os.path.isdir(PKG), reason="needs the source tree (src/nativemem)")
def test_mypy_strict_is_clean(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path),
                        "--config-file", CONFIG, PKG], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_core_stub_matches_the_extension(tmp_path):
    allow = tmp_path / "allowlist.txt"
    entries = []
    if sys.version_info < (3, 12):
        # the buffer protocol shows as __buffer__/__release_buffer__ methods from Python 3.12 on
        # only; the stub declares them so that type checkers take these objects as buffers
        entries.append("nativemem._core.(Buffer|ViewType).__(release_)?buffer__")
    if sys.version_info >= (3, 13):
        # made with PyCFunction_NewEx(def, NULL, ...) (csrc/python/sites.c): 3.13 gives such a
        # METH_NOARGS function the text signature "(self, /)", although it takes no argument
        entries.append("nativemem._core.site_cache_stats")
    allow.write_text("".join(e + "\n" for e in entries))
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "nativemem._core", "--allowlist", str(allow),
                        "--mypy-config-file", CONFIG], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
