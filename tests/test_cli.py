"""`python -m nativemem`: the diagnostic command never crashes and never misleads; --help reads
as terminal text.  Each case runs the real command in a subprocess, with a timeout."""
from __future__ import annotations

import re
import sys

import pytest

import nativemem
from conftest import run_python
from nativemem.backends import BACKEND_NAMES

TIMEOUT = 120


def nm(args, env_extra=None):
    return run_python(["-m", "nativemem"] + list(args), env_extra=env_extra, timeout=TIMEOUT)


def assert_no_traceback(r):
    assert "Traceback (most recent call last)" not in r.stdout + r.stderr, r.stdout + r.stderr


def assert_table(r):
    for name in BACKEND_NAMES:
        assert re.search(rf"^  \[(yes|no |err)\] {re.escape(name)} ", r.stdout, re.M), r.stdout


def _unavailable_here():
    """A backend that cannot exist on this platform (its probe says why)."""
    return {"linux": "zone", "darwin": "heap", "win32": "zone"}.get(sys.platform, "heap")


@pytest.mark.parametrize("cmd", [[], ["info"]], ids=["no-command", "info"])
def test_unavailable_backend_prints_table_and_why(cmd):
    name = _unavailable_here()
    r = nm(cmd, {"NATIVEMEM_BACKEND": name})
    assert_no_traceback(r)
    assert r.returncode == 1, r.stdout + r.stderr
    assert_table(r)
    reason = next(b.reason for b in nativemem.backends() if b.name == name)
    assert f"default: none: NATIVEMEM_BACKEND='{name}' requests a backend that is unavailable here" in r.stdout
    assert reason in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [f"nativemem: NATIVEMEM_BACKEND='{name}' requests a backend that is unavailable here: {reason}"]
    assert "quick comparison: skipped" in r.stdout


def test_jemalloc_that_cannot_load_does_not_crash():
    """Debian's jemalloc cannot be loaded after Python started (static TLS): the diagnostic command
    used to end in a traceback from the quick comparison."""
    info = next(b for b in nativemem.backends() if b.name == "jemalloc")
    if info.available:
        pytest.skip("jemalloc loads in this process (preloaded or a build without static TLS)")
    r = nm([], {"NATIVEMEM_BACKEND": "jemalloc"})
    assert_no_traceback(r)
    assert r.returncode == 1
    assert_table(r)
    assert "default: none: NATIVEMEM_BACKEND='jemalloc' requests a backend that is unavailable here" in r.stdout
    assert info.reason in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_invalid_backend_value_is_not_printed_as_the_default():
    r = nm(["info", "--no-bench"], {"NATIVEMEM_BACKEND": "foo"})
    assert_no_traceback(r)
    assert r.returncode == 1
    assert_table(r)
    assert "default: foo" not in r.stdout
    assert "NATIVEMEM_BACKEND='foo' is not a valid backend name" in r.stdout
    assert "NATIVEMEM_BACKEND='foo' is not a valid backend name" in r.stderr
    for name in BACKEND_NAMES:
        assert name in r.stderr


def test_valid_default_exits_zero():
    r = nm(["info", "--no-bench"], {"NATIVEMEM_BACKEND": "libc"})
    assert_no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert "default: libc (from NATIVEMEM_BACKEND)" in r.stdout
    assert r.stderr == ""


def test_run_rejects_an_unknown_backend(tmp_path):
    script = tmp_path / "x.py"
    script.write_text("open(__file__ + '.ran', 'w').close()\n")
    r = nm(["run", "--backend", "foo", "--", str(script)])
    assert r.returncode == 2
    assert "invalid choice: 'foo'" in r.stderr
    assert not (tmp_path / "x.py.ran").exists()


def test_run_refuses_a_backend_unavailable_on_this_platform(tmp_path):
    script = tmp_path / "x.py"
    script.write_text("open(__file__ + '.ran', 'w').close()\n")
    name = _unavailable_here()
    r = nm(["run", "--backend", name, "--", str(script)])
    assert_no_traceback(r)
    assert r.returncode == 2
    assert f"backend '{name}' is unavailable here" in r.stderr
    assert not (tmp_path / "x.py.ran").exists()


def test_run_sets_the_backend_for_the_script(tmp_path):
    script = tmp_path / "x.py"
    script.write_text("import os, nativemem\n"
                      "print(os.environ['NATIVEMEM_BACKEND'], nativemem.get_default_allocator().backend)\n")
    r = nm(["run", "--backend", "libc", "--", str(script)])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["libc", "libc"]


def test_help_is_terminal_text():
    r = nm(["--help"])
    assert r.returncode == 0
    out = r.stdout
    assert "``" not in out and ":func:" not in out and ":class:" not in out
    assert "documented in their modules" not in out
    for cmd in ("info", "run", "bench", "check"):
        lines = [ln for ln in out.splitlines() if re.match(rf"^\s+{cmd}\s{{2,}}\S", ln)]
        assert len(lines) == 1, (cmd, out)
    assert "NATIVEMEM_BACKEND" in out
    assert max(len(ln) for ln in out.splitlines()) <= 100


def test_run_help_documents_its_arguments():
    r = nm(["run", "--help"])
    assert r.returncode == 0
    out = r.stdout
    assert "``" not in out
    assert re.search(r"--backend NAME\s+the backend to run on", out)
    for name in BACKEND_NAMES:
        assert name in out
    assert re.search(r"-- COMMAND \.\.\.\s+what to run", out)
    assert "--tunables" in out


@pytest.mark.parametrize("cmd,option", [("info", "--no-bench"), ("bench", "--quick"), ("check", "--json")])
def test_command_help_is_terminal_text(cmd, option):
    r = nm([cmd, "--help"])
    assert r.returncode == 0, r.stderr
    assert "``" not in r.stdout and "::\n" not in r.stdout and option in r.stdout
