"""Backend probes say only what they checked, and never change the process's allocator (issue 15).

- macOS: a jemalloc/mimalloc dylib may register itself as the default malloc zone when loaded
  (Homebrew's jemalloc does), so there they are probed in a child process; a library whose load
  changed the child's malloc zones is refused, one that did not is loaded only when an allocator
  on it is made.  The child-process probe runs here on Linux too (``_PROBE_IN_CHILD``), with the
  real libraries; the zone verdict is fed a macOS child's answer.
- Windows: the heap's mode is what HeapQueryInformation reports, and a failed or ineffective
  HeapSetInformation is said as such (Wine reports 0 after enabling the LFH succeeds).
"""
import ctypes
import importlib
import json
import os
import sys

import pytest

from conftest import run_python

B = importlib.import_module("nativemem.backends")  # nativemem.backends is also a function

LINUX = sys.platform.startswith("linux")

# In a fresh interpreter: probe with the child-process path on, list what the process maps, then
# make an allocator on each available one (which loads it) and map again.
CHILD_MODE = r"""
import json, importlib, nativemem
B = importlib.import_module("nativemem.backends")
B._PROBE_IN_CHILD.update(jemalloc=True, mimalloc=True)
maps = lambda: open("/proc/self/maps").read()
out = {}
infos = {i.name: i for i in nativemem.backends()}
mapped = maps()
for name in ("jemalloc", "mimalloc"):
    i = infos[name]
    out[name] = {"available": i.available, "version": i.version, "reason": i.reason,
                 "mapped_after_probe": "lib" + name in mapped}
for name in ("jemalloc", "mimalloc"):
    if out[name]["available"]:
        a = nativemem.allocator(name)
        b = a.malloc(100); b.free()
        out[name]["mapped_after_allocator"] = "lib" + name in maps()
print(json.dumps(out))
"""

IN_PROCESS = r"""
import json, nativemem
print(json.dumps({i.name: {"available": i.available, "version": i.version, "reason": i.reason}
                  for i in nativemem.backends()}))
"""


def _run(code, **env):
    r = run_python(["-c", code], env_extra=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/maps")
@pytest.mark.parametrize("tunables", [False, True], ids=["plain", "glibc-tunables"])
def test_probing_in_a_child_loads_nothing_into_this_process(tunables):
    if B.find_library("jemalloc") is None and B.find_library("mimalloc") is None:
        pytest.skip("neither libjemalloc nor libmimalloc installed (apt-get install libjemalloc2 libmimalloc2.0)")
    env = {"GLIBC_TUNABLES": B.JEMALLOC_TLS_TUNABLE} if tunables else {}
    child = _run(CHILD_MODE, **env)
    direct = _run(IN_PROCESS, **env)
    for name in ("jemalloc", "mimalloc"):
        c, d = child[name], direct[name]
        assert not c["mapped_after_probe"], f"{name} was loaded into the process by backends()"
        # the same verdict as loading it here (the child sees the same environment)
        assert c["available"] == d["available"], (c, d)
        if d["available"]:
            assert c["version"].startswith(d["version"].split(" ")[0])
            assert "probed in a child process" in c["version"]
            assert c["mapped_after_allocator"]  # loaded when an allocator on it was made
        elif B.find_library(name) is not None:
            assert c["reason"] == d["reason"] or "static TLS" in d["reason"] and "static TLS" in c["reason"]


def _macos_like(monkeypatch, name, child_answer, path="/opt/homebrew/lib/libjemalloc.2.dylib"):
    """Probe `name` as on macOS, the child's answer given; loading it in-process fails the test
    until `allow_load` is set."""
    state = {"allow_load": False, "loaded": []}
    real_cdll = ctypes.CDLL

    def cdll(p, *a, **k):
        if p == path:
            if not state["allow_load"]:
                raise AssertionError(f"{p} loaded into the process by the probe")
            state["loaded"].append(p)
            raise OSError("test: not really loadable here")
        return real_cdll(p, *a, **k)

    monkeypatch.setitem(B._PROBE_IN_CHILD, name, True)
    monkeypatch.setattr(B, "find_library", lambda stem: path if stem == name else None)
    monkeypatch.setattr(B, "_loaded_path", lambda stem: None)
    monkeypatch.setattr(B, "_in_process", lambda p: False)
    monkeypatch.setattr(B, "_child_probe", lambda p, kind: dict(child_answer))
    monkeypatch.setattr(B.ctypes, "CDLL", cdll)
    return state


HOMEBREW_JEMALLOC = {"prefix": "", "version": "5.3.0-0-g54eaed1d8b56b1aa528be3bdd1877e59c56fa90c",
                     "zones_before": 2, "zone0_before": "0x1040 DefaultMallocZone",
                     "zones_after": 3, "zone0_after": "0x2080 jemalloc_zone"}


def test_a_jemalloc_that_registers_a_zone_is_refused_unloaded(monkeypatch):
    state = _macos_like(monkeypatch, "jemalloc", HOMEBREW_JEMALLOC)
    got = B._probe_jemalloc()
    assert not got.info.available and got.table is None and got.loader is None
    assert got.info.version == "5.3.0"
    assert "registers itself as a malloc zone" in got.info.reason
    assert "DYLD_INSERT_LIBRARIES=/opt/homebrew/lib/libjemalloc.2.dylib" in got.info.reason
    assert state["loaded"] == []


@pytest.mark.parametrize("change", [{"zones_after": 3}, {"zone0_after": "0x2080 jemalloc_zone"}])
def test_any_change_of_the_zones_counts(monkeypatch, change):
    answer = dict(HOMEBREW_JEMALLOC, zones_after=2, zone0_after=HOMEBREW_JEMALLOC["zone0_before"])
    answer.update(change)
    _macos_like(monkeypatch, "jemalloc", answer)
    assert not B._probe_jemalloc().info.available


def test_a_library_that_leaves_the_zones_alone_is_loaded_only_for_an_allocator(monkeypatch):
    answer = dict(HOMEBREW_JEMALLOC, prefix="je_", zones_after=2, zone0_after=HOMEBREW_JEMALLOC["zone0_before"])
    state = _macos_like(monkeypatch, "jemalloc", answer)
    got = B._probe_jemalloc()
    assert got.info.available and got.table is None and got.loader is not None
    assert "probed in a child process: it registers no malloc zone" in got.info.version
    assert state["loaded"] == []
    state["allow_load"] = True  # an allocator on it: loaded now (here the load fails, and says so)
    with pytest.raises(B.E.BackendUnavailableError, match="could not be loaded"):
        got.get_table()
    assert state["loaded"] == ["/opt/homebrew/lib/libjemalloc.2.dylib"]


def test_mimalloc_is_probed_the_same_way(monkeypatch):
    path = "/opt/homebrew/lib/libmimalloc.dylib"
    answer = {"version_number": 217, "zones_before": 2, "zone0_before": "0x1 DefaultMallocZone",
              "zones_after": 3, "zone0_after": "0x2 mimalloc"}
    _macos_like(monkeypatch, "mimalloc", answer, path=path)
    got = B._probe_mimalloc()
    assert not got.info.available and got.info.version == "2.1.7"
    assert "registers itself as a malloc zone" in got.info.reason


def test_child_failures_are_reported_not_raised(monkeypatch):
    _macos_like(monkeypatch, "jemalloc", {"error": "dlopen(x): image not found"})
    got = B._probe_jemalloc()
    assert not got.info.available and "probed in a child process" in got.info.reason
    _macos_like(monkeypatch, "jemalloc", {"prefix": None})
    assert "not jemalloc" in B._probe_jemalloc().info.reason


def test_the_child_probe_itself_reports_a_library_it_cannot_load():
    got = B._child_probe("/nonexistent/libjemalloc.so.2", "jemalloc")  # a real child process
    assert "error" in got and "libjemalloc" in got["error"]
    if not sys.platform == "darwin":
        assert got["zones_before"] is None  # zones exist on macOS only


@pytest.mark.skipif(not hasattr(os, "RTLD_NOLOAD"), reason="needs RTLD_NOLOAD")
def test_in_process_check_loads_nothing():
    assert not B._in_process("/nonexistent/libnothing.so")
    if LINUX:
        before = open("/proc/self/maps").read()
        path = B.find_library("mimalloc") or B.find_library("jemalloc")
        if path and os.path.basename(path).split(".")[0] not in before:
            assert not B._in_process(path)
            assert os.path.basename(path) not in open("/proc/self/maps").read()


# ---- Windows heaps: the mode as HeapQueryInformation reports it -------------------------------
def _fake_kernel32(set_ok=True, state=0, query_ok=True):
    """kernel32's heap functions as ctypes function pointers over Python stand-ins (the table
    builder takes their addresses; the allocation functions are never called here)."""
    calls = {"set": 0}
    BOOL, HANDLE = ctypes.c_int, ctypes.c_void_p

    def heap_set(heap, cls, info, size):
        calls["set"] += 1
        assert cls == 0 and ctypes.c_ulong.from_address(info).value == 2
        return 1 if set_ok else 0

    def heap_query(heap, cls, info, size, ret):
        if not query_ok:
            return 0
        ctypes.c_ulong.from_address(info).value = state
        return 1

    class K32:
        HeapCreate = ctypes.CFUNCTYPE(HANDLE, ctypes.c_ulong, ctypes.c_size_t, ctypes.c_size_t)(lambda f, a, b: 0x1000)
        GetProcessHeap = ctypes.CFUNCTYPE(HANDLE)(lambda: 0x2000)
        HeapSetInformation = ctypes.CFUNCTYPE(BOOL, HANDLE, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)(heap_set)
        HeapQueryInformation = ctypes.CFUNCTYPE(BOOL, HANDLE, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
                                                ctypes.c_void_p)(heap_query)
        HeapAlloc = HeapReAlloc = HeapFree = HeapSize = ctypes.CFUNCTYPE(ctypes.c_void_p)(lambda: None)
    return K32, calls


@pytest.mark.parametrize("state", [0, 2])
def test_private_heap_mode_is_what_the_heap_reports(state):
    k32, calls = _fake_kernel32(state=state)
    got = B._probe_heap_on(k32, False, "Windows 10.0.19045")
    assert got.info.available and calls["set"] == 1
    if state == 2:
        assert got.info.version == ("Windows 10.0.19045 LFH (HeapCompatibilityInformation = 2); "
                                    "enabled with HeapSetInformation")
    else:  # Wine: HeapSetInformation succeeds, the heap still reports 0 -- said, not claimed as LFH
        assert "LFH (" not in got.info.version
        assert got.info.version == ("Windows 10.0.19045 standard heap (HeapCompatibilityInformation = 0); "
                                    "HeapSetInformation(LFH) succeeded, yet the heap does not report the LFH")


def test_private_heap_says_when_enabling_the_lfh_failed(monkeypatch):
    monkeypatch.setattr(B.ctypes, "get_last_error", lambda: 87, raising=False)
    k32, _ = _fake_kernel32(set_ok=False, state=0)
    got = B._probe_heap_on(k32, False, "Windows 10.0.19045")
    assert got.info.version.endswith("enabling the LFH failed (HeapSetInformation error 87)")
    k32, _ = _fake_kernel32(query_ok=False)
    got = B._probe_heap_on(k32, False, "Windows 10.0.19045")
    assert "heap mode unknown (HeapQueryInformation failed: error 87)" in got.info.version
    assert "LFH (" not in got.info.version


def test_process_heap_is_not_reconfigured():
    k32, calls = _fake_kernel32(state=2)
    got = B._probe_heap_on(k32, True, "Windows 10.0.19045")
    assert calls["set"] == 0
    assert got.info.version == "Windows 10.0.19045 LFH (HeapCompatibilityInformation = 2)"


def test_heap_backend_is_unavailable_off_windows():
    if sys.platform == "win32":
        pytest.skip("on Windows")
    assert not B._probe_heap(False).info.available


# ---- the bench's "ctypes malloc+free" row calls the C library the libc backend uses -----------
def test_bench_ctypes_row_uses_the_ucrt_on_windows(monkeypatch):
    bench = importlib.import_module("nativemem.bench")
    opened = []
    monkeypatch.setattr(bench.ctypes, "CDLL", lambda name, *a, **k: opened.append(name) or object())
    monkeypatch.setattr(bench.sys, "platform", "win32")
    bench._ctypes_libc()
    monkeypatch.setattr(bench.sys, "platform", "linux")
    bench._ctypes_libc()
    assert opened == ["ucrtbase", None]
    assert "cdll.msvcrt" not in open(bench.__file__).read()
