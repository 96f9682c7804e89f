"""`python -m nativemem check` and the pytest plugin, end to end in subprocesses."""
from __future__ import annotations

import json
import re
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


def test_pytest_plugin_fails_a_test_that_corrupts_memory(tmp_path):
    # The overflow is found when the forgotten Buffer is freed by its finalizer: nothing can
    # raise there, so it must still fail the test (CorruptionWarning, and the debug allocator's
    # error count).
    (tmp_path / "test_y.py").write_text(textwrap.dedent("""
        import ctypes, nativemem

        def test_overflow():
            b = nativemem.allocator().malloc(16)
            ctypes.memset(b.address + 16, 0x41, 1)
            del b

        def test_fine():
            nativemem.allocator().malloc(16).free()
    """))
    load = [] if _entry_point_installed() else ["-p", "nativemem.pytest_plugin"]
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider"] + load + [str(tmp_path / "test_y.py"), "--nativemem-leaks"]
    r = run_python(args, cwd=str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 failed, 1 passed" in r.stdout
    assert "corruption" in r.stdout and "test_overflow" in r.stdout


# -- usage errors, silent corruption, report hygiene --------------------------------------------

def _check(args, cwd=None):
    return run_python(["-m", "nativemem", "check"] + [str(a) for a in args], timeout=60, cwd=cwd)


def test_check_missing_script_is_a_usage_error(tmp_path):
    r = _check(["missing.py"], cwd=str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert "nativemem check: cannot run missing.py: No such file" in r.stderr
    assert "Traceback" not in r.stderr and "no leaks" not in r.stderr
    r = _check([tmp_path], cwd=str(tmp_path))  # a directory without __main__.py
    assert r.returncode == 2 and "cannot run" in r.stderr and "Traceback" not in r.stderr


def test_check_unwritable_json_fails_before_running_the_script(tmp_path):
    marker = tmp_path / "ran"
    script = tmp_path / "s.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    for target in (tmp_path / "nonexistent" / "x.json", tmp_path):  # missing directory; a directory
        r = _check(["--json", target, script])
        assert r.returncode == 2, r.stderr
        assert f"cannot write the JSON report to {target}" in r.stderr and "Traceback" not in r.stderr
        assert not marker.exists()  # refused before the script ran
    r = _check(["--json", tmp_path / "ok.json", script])  # a good path is probed, not left empty
    assert r.returncode == 0 and marker.exists() and json.loads((tmp_path / "ok.json").read_text())


def test_check_json_write_failing_at_the_end_exits_2(tmp_path):
    # The script removes the report's directory: the write at the end fails.
    d = tmp_path / "out"
    d.mkdir()
    script = tmp_path / "s.py"
    script.write_text(f"import os\nos.rmdir({str(d)!r})\n")
    r = _check(["--json", d / "r.json", script])
    assert r.returncode == 2, r.stderr
    assert "cannot write the JSON report to" in r.stderr and "Traceback" not in r.stderr


def test_check_json_path_is_relative_to_the_starting_directory(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    script = tmp_path / "s.py"
    script.write_text("import os\nos.chdir('elsewhere')\n")
    r = _check(["--json", "r.json", script], cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r.json").exists() and not (tmp_path / "elsewhere" / "r.json").exists()


def test_check_rejects_out_of_range_options(tmp_path):
    from nativemem._ffi import MAX_ALLOC
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    for opt, value, low in [("--quarantine", 10 ** 30, 0), ("--quarantine", -1, 0), ("--quarantine", MAX_ALLOC + 1, 0),
                            ("--traceback-depth", 0, 1), ("--traceback-depth", -3, 1),
                            ("--traceback-depth", 10 ** 30, 1)]:
        r = _check([f"{opt}={value}", script])
        assert r.returncode == 2, (opt, value, r.stderr)
        assert f"argument {opt}: must be between {low} and {MAX_ALLOC}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and "no leaks" not in r.stderr
    r = _check(["--quarantine", "many", script])
    assert r.returncode == 2 and "argument --quarantine: invalid integer: 'many'" in r.stderr
    r = _check(["--quarantine", "0", "--traceback-depth", "1", script])
    assert r.returncode == 0, r.stderr


FINALIZER_OVERFLOW = textwrap.dedent("""
    import ctypes, nativemem
    b = nativemem.allocator().malloc(16)
    ctypes.memset(b.address + 16, 0x41, 1)
    del b
""")

SWALLOWED_OVERFLOW = textwrap.dedent("""
    import ctypes, nativemem
    b = nativemem.allocator().malloc(16)
    ctypes.memset(b.address + 16, 0x41, 1)
    try:
        b.free()
    except nativemem.BufferOverflowError:
        print("swallowed")
""")


def test_check_overflow_freed_by_a_finalizer_is_not_silent(tmp_path):
    for name, text in (("fin.py", FINALIZER_OVERFLOW), ("swallow.py", SWALLOWED_OVERFLOW)):
        script = tmp_path / name
        script.write_text(text)
        out = tmp_path / "r.json"
        r = _check(["--json", out, script])
        assert r.returncode == 1, (name, r.stderr)
        assert "no corruption" not in r.stderr
        assert "buffer overflow" in r.stderr.lower() or "corruption error(s) found by the debug allocator" in r.stderr
        data = json.loads(out.read_text())
        assert data["errors_found"] and data["leaked_blocks"] == 0


WARNS = textwrap.dedent("""
    import gc, warnings, nativemem
    warnings.warn("buffer overflow: block 0x1 (16 bytes), during the run", nativemem.CorruptionWarning)
    warnings.warn("buffer overflow: block 0x1 (16 bytes), during the run", nativemem.CorruptionWarning)  # same line

    class Cycle:
        def __del__(self):
            warnings.warn("write after free: found by the final collection", nativemem.CorruptionWarning)

    gc.disable()
    c = Cycle()
    c.self = c
    del c
""")


def test_check_counts_and_shows_every_corruption_warning(tmp_path):
    script = tmp_path / "warns.py"
    script.write_text(WARNS)
    out = tmp_path / "r.json"
    r = _check(["--json", out, script])
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("CorruptionWarning: buffer overflow: block 0x1") == 4  # shown twice, reported twice
    assert "CorruptionWarning: write after free: found by the final collection" in r.stderr
    assert "no corruption" not in r.stderr
    found = json.loads(out.read_text())["errors_found"]
    assert len(found) == 3 and all(f.startswith("CorruptionWarning: ") for f in found)


def test_check_counts_escaping_and_unraisable_nativemem_errors(tmp_path):
    script = tmp_path / "esc.py"
    script.write_text(textwrap.dedent("""
        import nativemem
        class Holder:
            def __del__(self):
                raise nativemem.DoubleFreeError("double free in a finalizer")
        h = Holder()
        del h
        nativemem.allocator().malloc(-1)
    """))
    out = tmp_path / "r.json"
    r = _check(["--json", out, script])
    assert r.returncode == 1
    assert "InvalidSizeError" in r.stderr and "DoubleFreeError: double free in a finalizer" in r.stderr
    data = json.loads(out.read_text())
    assert len(data["errors_found"]) == 2 and data["script_failed"]


def test_check_sites_have_no_runpy_frames(tmp_path):
    script = tmp_path / "deep.py"
    script.write_text(textwrap.dedent("""
        import builtins, nativemem
        def inner():
            return nativemem.allocator().malloc(24)
        def outer():
            return inner()
        builtins.keep = [nativemem.allocator().malloc(8), outer()]
    """))
    out = tmp_path / "r.json"
    r = _check(["--traceback-depth", "3", "--json", out, script])
    assert r.returncode == 1
    assert "<frozen" not in r.stderr and "runpy.py" not in r.stderr and "checkcli.py" not in r.stderr, r.stderr
    sites = {g["site"]: g["traceback"] for g in json.loads(out.read_text())["sites"]}
    assert [f.split(" in ")[1] for f in sites[next(s for s in sites if "inner" in s)]] == ["inner", "outer", "<module>"]
    assert [f.split(" in ")[1] for f in sites[next(s for s in sites if "<module>" in s)]] == ["<module>"]


def test_check_script_failure_is_not_reported_as_clean(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys\nsys.exit('giving up')\n")
    r = _check([script])
    assert r.returncode == 1
    assert "giving up" in r.stderr and "the script failed" in r.stderr and "no leaks, no corruption" not in r.stderr


def test_check_script_imports_its_siblings(tmp_path):
    (tmp_path / "helper_mod_for_check.py").write_text("VALUE = 7\n")
    script = tmp_path / "main.py"
    script.write_text("import helper_mod_for_check\nassert helper_mod_for_check.VALUE == 7\n")
    r = _check([script])  # cwd is not the script's directory
    assert r.returncode == 0, r.stderr


# -- still reachable (Valgrind's distinction) ------------------------------------------------------

def _shown(size: int, blocks: int, site: str, text: str) -> bool:
    """A report line: ``size`` bytes in ``blocks`` block(s) at (the script's path ending in) ``site``."""
    return re.search(rf"\b{size} bytes in +{blocks} block\(s\) at \S*\b{re.escape(site)}", text) is not None


REACHABLE = textwrap.dedent("""
    import nativemem
    KEEP = nativemem.allocator().malloc(100)
    TABLE = {"a": nativemem.allocator().calloc(3, 8)}

    def helper():  # a function: the globals are in a reference cycle through it
        return KEEP

    P = nativemem.Pool(32)
    obj = P.alloc()
    nativemem.allocator().malloc(5).free()
""")


def test_check_lists_blocks_held_by_the_scripts_globals_as_still_reachable(tmp_path):
    script = tmp_path / "reach.py"
    script.write_text(REACHABLE)
    out = tmp_path / "r.json"
    r = _check(["--json", out, script])
    assert r.returncode == 0, r.stderr
    assert "still reachable from the script's globals" in r.stderr
    assert _shown(100, 1, "reach.py:3 in <module>", r.stderr)
    assert _shown(24, 1, "reach.py:4 in <module>", r.stderr)
    assert "<unknown>" not in r.stderr  # the pool's chunks are named for what they are
    assert "no leaks, no corruption" in r.stderr
    data = json.loads(out.read_text())
    assert data["leaked_blocks"] == 0
    reach = data["still_reachable"]
    assert reach["blocks"] >= 2 and all(any(g["site"].endswith(site) for g in reach["sites"])
                                 for site in ("reach.py:3 in <module>", "reach.py:4 in <module>"))


def test_check_still_reachable_after_a_script_failure(tmp_path):
    # The globals of a script that raised are dropped too (its traceback holds them).
    script = tmp_path / "boom.py"
    script.write_text("import nativemem\nKEEP = nativemem.allocator().malloc(40)\nraise RuntimeError('boom')\n")
    r = _check([script])
    assert r.returncode == 1 and "the script failed" in r.stderr, r.stderr
    assert _shown(40, 1, "boom.py:2 in <module>", r.stderr) and "still reachable" in r.stderr
    assert "still allocated" not in r.stderr


C_LEVEL_LEAK = textwrap.dedent("""
    import ctypes, sys, nativemem
    REGISTRY = []
    sys.modules["builtins"].cache = REGISTRY           # a list on a module that outlives the script
    REGISTRY.append(nativemem.allocator().malloc(64))
    b = nativemem.allocator().malloc(32)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(b))   # a reference taken from C, never given back
    KEEP = nativemem.allocator().malloc(100)           # only reachable: not a leak
""")


def test_check_blocks_surviving_the_dropped_namespace_are_leaks(tmp_path):
    script = tmp_path / "cleak.py"
    script.write_text(C_LEVEL_LEAK)
    out = tmp_path / "r.json"
    r = _check(["--json", out, script])
    assert r.returncode == 1, r.stderr
    assert "2 block(s), 96 bytes still allocated" in r.stderr
    assert _shown(64, 1, "cleak.py:5 in <module>", r.stderr)
    assert _shown(32, 1, "cleak.py:6 in <module>", r.stderr)
    assert _shown(100, 1, "cleak.py:8 in <module>", r.stderr)  # listed as still reachable
    data = json.loads(out.read_text())
    assert data["leaked_blocks"] == 2 and data["leaked_bytes"] == 96
    assert data["still_reachable"]["blocks"] == 1 and data["still_reachable"]["bytes"] == 100


def test_check_counts_leaks_of_other_allocators(tmp_path):
    # A block of nativemem.allocator("libc") kept past the end (it has no debug records: counted)
    script = tmp_path / "other.py"
    script.write_text(textwrap.dedent("""
        import builtins, nativemem
        lib = nativemem.allocator("libc")
        builtins.kept = [lib.malloc(10), lib.malloc(20)]
        REACHABLE_ONLY = lib.malloc(30)
        lib.malloc(40).free()
    """))
    out = tmp_path / "r.json"
    r = _check(["--json", out, script])
    assert r.returncode == 1, r.stderr
    assert "2 Buffer(s) of allocator 'libc'" in r.stderr and "no leaks" not in r.stderr
    assert json.loads(out.read_text())["other_allocators"][0]["blocks"] == 2
