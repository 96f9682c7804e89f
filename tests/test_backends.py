"""Backend discovery, identity proofs, the default pick, the OOM policy and the CLI."""
from __future__ import annotations

import ctypes
import os
import sys

import pytest

import nativemem
import importlib

B = importlib.import_module("nativemem.backends")  # the module (nativemem.backends is the function)
from conftest import run_python

ALL = {"libc", "jemalloc", "mimalloc", "heap", "process-heap", "zone"}


def test_backends_report_every_backend():
    infos = nativemem.backends()
    assert {i.name for i in infos} == ALL
    for i in infos:
        assert isinstance(i, nativemem.BackendInfo)
        if i.available:
            assert i.version
        else:
            assert i.reason and len(i.reason) > 10
    libc = next(i for i in infos if i.name == "libc")
    assert libc.available


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc version check is Linux-only")
def test_libc_version_is_glibc():
    info = next(i for i in nativemem.backends() if i.name == "libc")
    assert info.version.startswith("glibc ") and info.version.split()[1] == os.confstr("CS_GNU_LIBC_VERSION").split()[1]


def test_mimalloc_version_is_proven():
    info = next(i for i in nativemem.backends() if i.name == "mimalloc")
    if not info.available:
        pytest.skip(info.reason)
    lib = ctypes.CDLL(info.path)
    v = lib.mi_version()
    assert info.version == f"{v // 100}.{(v % 100) // 10}.{v % 10}"
    a = nativemem.allocator("mimalloc")
    b = a.malloc(100)
    # the block really belongs to mimalloc: mi_usable_size knows it
    lib.mi_usable_size.restype = ctypes.c_size_t
    lib.mi_usable_size.argtypes = [ctypes.c_void_p]
    assert lib.mi_usable_size(b.address) >= 100
    b.free()


def test_jemalloc_unloadable_says_how_to_fix():
    info = next(i for i in nativemem.backends() if i.name == "jemalloc")
    if info.available:
        pytest.skip("jemalloc is loadable in this process")
    if info.path is None:
        assert "not found" in info.reason
        return
    assert "static TLS" in info.reason
    assert "python -m nativemem run --backend jemalloc" in info.reason
    with pytest.raises(nativemem.BackendUnavailableError) as ei:
        nativemem.allocator("jemalloc")
    assert "LD_PRELOAD" in str(ei.value)


_JEMALLOC_PROOF = r"""
import ctypes, nativemem, os, sys
info = next(i for i in nativemem.backends() if i.name == 'jemalloc')
assert info.available, info.reason
assert nativemem.default_backend_name() == 'jemalloc', nativemem.default_backend_name()
a = nativemem.allocator()
assert a.backend == 'jemalloc', a.backend
b = a.malloc(1000)
je = ctypes.CDLL(info.path)
je.malloc_usable_size.restype = ctypes.c_size_t
je.malloc_usable_size.argtypes = [ctypes.c_void_p]
# jemalloc's own metadata knows this block (it would crash or lie for a foreign pointer)
assert je.malloc_usable_size(b.address) >= 1000
v = ctypes.c_char_p(); sz = ctypes.c_size_t(8)
je.mallctl(b'version', ctypes.byref(v), ctypes.byref(sz), None, 0)
print('JEMALLOC', info.version, v.value.decode())
b.free()
"""


def test_run_backend_jemalloc_really_runs_on_jemalloc(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("the static-TLS remedy is for glibc")
    if B.find_library("jemalloc") is None:
        pytest.skip("libjemalloc not installed (apt-get install libjemalloc2)")
    script = tmp_path / "proof.py"
    script.write_text(_JEMALLOC_PROOF)
    for how in ([], ["--tunables"]):
        r = run_python(["-m", "nativemem", "run", "--backend", "jemalloc"] + how + ["--", str(script)])
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("JEMALLOC 5."), r.stdout
        if not how:
            assert "(preloaded)" in r.stdout


def test_allocator_suite_on_jemalloc(tmp_path):
    """The whole allocator test module again, in a process where jemalloc is loadable."""
    if not sys.platform.startswith("linux") or B.find_library("jemalloc") is None:
        pytest.skip("libjemalloc not installed (apt-get install libjemalloc2)")
    here = os.path.dirname(os.path.abspath(__file__))
    r = run_python(["-m", "nativemem", "run", "--backend", "jemalloc", "--", "-m", "pytest", "-q", "-x",
                    "-p", "no:cacheprovider", "-k", "jemalloc", os.path.join(here, "test_allocator.py")],
                   timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    import re
    m = re.search(r"(\d+) passed", r.stdout)
    assert m and int(m.group(1)) >= 30, r.stdout[-500:]  # every jemalloc case ran (PEP 688 may skip)


def test_default_pick_and_env(monkeypatch):
    name = nativemem.default_backend_name()
    assert name in ALL
    if sys.platform.startswith("linux"):
        avail = {i.name for i in nativemem.backends() if i.available}
        expect = next(n for n in ("jemalloc", "mimalloc", "libc") if n in avail)
        assert name == expect
    monkeypatch.setenv("NATIVEMEM_BACKEND", "libc")
    assert nativemem.default_backend_name() == "libc"


def test_unknown_backend_and_bad_names():
    with pytest.raises(nativemem.BackendUnavailableError):
        nativemem.allocator("no-such-allocator")
    with pytest.raises(TypeError):
        nativemem.allocator(42)
    for info in nativemem.backends():
        if not info.available:
            with pytest.raises(nativemem.BackendUnavailableError) as ei:
                nativemem.allocator(info.name)
            assert info.reason in str(ei.value)


def test_default_allocator_can_be_replaced():
    a = nativemem.allocator("libc")
    old = nativemem.set_default_allocator(a)
    try:
        assert nativemem.allocator() is a and nativemem.get_default_allocator() is a
    finally:
        nativemem.set_default_allocator(old)
    with pytest.raises(TypeError):
        nativemem.set_default_allocator("libc")


def test_each_allocator_has_its_own_stats():
    a, b = nativemem.allocator("libc"), nativemem.allocator("libc")
    x = a.malloc(10)
    assert a.stats().live_blocks == 1 and b.stats().live_blocks == 0
    x.free()


def test_oom_policy():
    assert nativemem.get_oom_policy() == "raise"
    with pytest.raises(ValueError):
        nativemem.set_oom_policy("explode")
    with pytest.raises(TypeError):
        nativemem.set_oom_policy(1)
    nativemem.set_oom_policy("raise")


def test_oom_policy_abort_aborts_with_a_message():
    # MAX_ALLOC (PTRDIFF_MAX of this platform's size_t): the first fails on 64-bit; a 32-bit
    # process may get one such block, never three
    r = run_python(["-c", "import nativemem as n; from nativemem._ffi import MAX_ALLOC; n.set_oom_policy('abort'); "
                          "a = n.allocator('libc'); held = [a.malloc(MAX_ALLOC) for _ in range(3)]"])
    assert r.returncode != 0
    if sys.platform != "win32":
        assert r.returncode < 0  # killed by SIGABRT
    assert "out of memory" in r.stderr and "abort" in r.stderr


def test_cli_info_lists_backends():
    r = run_python(["-m", "nativemem", "info", "--no-bench"])
    assert r.returncode == 0, r.stderr
    for name in ("libc", "jemalloc", "mimalloc", "heap", "zone"):
        assert name in r.stdout
    assert "default:" in r.stdout and "valgrind" in r.stdout


def test_cli_run_needs_a_command():
    r = run_python(["-m", "nativemem", "run", "--backend", "libc"])
    assert r.returncode == 2 and "usage" in r.stderr
