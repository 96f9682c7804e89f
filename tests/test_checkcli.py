"""`python -m nativemem check` and the pytest plugin, end to end in subprocesses."""
from __future__ import annotations

import json
import textwrap

from conftest import run_python

LEAKY = textwrap.dedent("""
    import nativemem
    a = nativemem.allocator()
    keep = a.malloc(1234)          # leaked on purpose
    a.malloc(10).free()
    pool_buf = a.calloc(2, 8)
    pool_buf.free()
    import builtins; builtins.keep = keep
""")

OVERFLOW = textwrap.dedent("""
    import ctypes, nativemem
    b = nativemem.allocator().malloc(16)
    ctypes.memset(b.address + 16, 0, 2)
    b.free()
""")

CLEAN = textwrap.dedent("""
    import nativemem
    with nativemem.allocator().malloc(100) as b:
        b.write(b"ok")
    p = nativemem.Pool(32)
    p.free(p.alloc())
    p.close()
""")


def test_check_reports_leaks_with_sites(tmp_path):
    script = tmp_path / "leaky.py"
    script.write_text(LEAKY)
    out = tmp_path / "r.json"
    r = run_python(["-m", "nativemem", "check", "--json", str(out), str(script)])
    assert r.returncode == 1
    assert "1234 bytes" in r.stderr and "leaky.py:4" in r.stderr
    data = json.loads(out.read_text())
    assert data["leaked_blocks"] == 1 and data["leaked_bytes"] == 1234 and "leaky.py:4" in data["sites"][0]["site"]


def test_check_reports_overflow(tmp_path):
    script = tmp_path / "over.py"
    script.write_text(OVERFLOW)
    r = run_python(["-m", "nativemem", "check", str(script)])
    assert r.returncode == 1
    assert "BufferOverflowError" in r.stderr and "over.py:3" in r.stderr


def test_check_clean_script_exits_zero(tmp_path):
    script = tmp_path / "clean.py"
    script.write_text(CLEAN)
    r = run_python(["-m", "nativemem", "check", str(script)])
    assert r.returncode == 0, r.stderr
    assert "no leaks, no corruption" in r.stderr


PLUGIN_TESTS = textwrap.dedent("""
    import nativemem, pytest
    KEEP = []

    def test_clean():
        nativemem.allocator().malloc(8).free()

    def test_leaks():
        KEEP.append(nativemem.allocator().malloc(77))

    @pytest.mark.nativemem_leaks(allow=1)
    def test_allowed():
        KEEP.append(nativemem.allocator().malloc(5))
""")


def _entry_point_installed() -> bool:
    from importlib import metadata
    eps = metadata.entry_points()
    group = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", [])
    return any(ep.value == "nativemem.pytest_plugin" for ep in group)


def test_pytest_plugin_fails_leaking_tests(tmp_path):
    (tmp_path / "test_x.py").write_text(PLUGIN_TESTS)
    load = [] if _entry_point_installed() else ["-p", "nativemem.pytest_plugin"]  # installed: the entry point
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider"] + load + [str(tmp_path / "test_x.py")]
    r = run_python(args + ["--nativemem-leaks"], cwd=str(tmp_path))
    assert r.returncode == 1, r.stdout
    assert "1 failed, 2 passed" in r.stdout
    assert "test_leaks" in r.stdout and "77 bytes" in r.stdout and "test_x.py:9" in r.stdout
    r = run_python(args, cwd=str(tmp_path))  # off unless asked
    assert r.returncode == 0 and "3 passed" in r.stdout
