"""Allocator backends found at run time.

Each backend is probed with ctypes: the library is located, loaded, asked to prove its identity
(jemalloc answers ``mallctl("version")``, mimalloc ``mi_version()``, a Windows heap reports its
heap mode with ``HeapQueryInformation``, a macOS zone its name), and its function addresses are
handed to C as an ``nm_allocator_t`` table.  The ctypes libraries and function objects are kept
alive for the life of the process, since C holds their addresses.

Probing never changes the process's own allocator.  On macOS a jemalloc or mimalloc dylib may
register itself as the default malloc zone when it is loaded (Homebrew's jemalloc does: no symbol
prefix, zone allocator on), which would move CPython and every extension onto it mid-process; so
there they are probed in a child process, which reports the library's identity and whether loading
it changed the process's malloc zones.  One that does is refused (unless it is already in the
process, e.g. through DYLD_INSERT_LIBRARIES); one that does not is loaded only when an allocator on
it is asked for, never by :func:`backends`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import json
import platform
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import errors as E
from ._ffi import check_ptr, ffi, lib
from .allocator import Allocator

__all__ = ["BackendInfo", "backends", "allocator", "default_backend_name", "get_default_allocator",
           "set_default_allocator", "JEMALLOC_TLS_TUNABLE", "BACKEND_NAMES", "find_library"]

JEMALLOC_TLS_TUNABLE = "glibc.rtld.optional_static_tls=65536"


@dataclass(frozen=True)
class BackendInfo:
    """What nativemem found for one backend."""
    name: str
    available: bool
    version: Optional[str] = None
    path: Optional[str] = None
    reason: Optional[str] = None  # why unavailable, and the remedy

    def __str__(self) -> str:
        if self.available:
            return f"{self.name}: {self.version or '?'} ({self.path or 'built in'})"
        return f"{self.name}: unavailable: {self.reason}"


class _Loaded:
    """A probed backend: its info and, when available, its base C table (never destroyed) -- or,
    for a library probed in a child process, how to load it when a table is first needed."""

    def __init__(self, info: BackendInfo, table: Any = None, keepalive: Any = None,
                 loader: Optional[Callable[[], "_Loaded"]] = None) -> None:
        self.info = info
        self.table = table
        self.keepalive = keepalive
        self.loader = loader

    def get_table(self) -> Any:
        """The base table, loading the library into this process first if it was probed in a
        child (caller holds _lock)."""
        if self.table is None and self.loader is not None:
            got = self.loader()
            if not got.info.available or got.table is None:
                raise E.BackendUnavailableError(f"backend {self.info.name!r} could not be loaded: {got.info.reason}")
            self.table, self.keepalive, self.loader = got.table, got.keepalive, None
        return self.table


_lock = threading.RLock()
_cache: Dict[str, _Loaded] = {}
_keep: List[Any] = []  # ctypes objects C points at: kept for the process lifetime


# ---- locating shared libraries ---------------------------------------------------------------
def _lib_dirs() -> List[str]:
    dirs = []
    for var in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"):
        dirs += [d for d in os.environ.get(var, "").split(os.pathsep) if d]
    machine = platform.machine()
    dirs += [f"/usr/lib/{machine}-linux-gnu", f"/lib/{machine}-linux-gnu", "/usr/lib64", "/usr/lib",
             "/usr/local/lib", "/opt/homebrew/lib", "/usr/local/opt/jemalloc/lib", "/usr/local/opt/mimalloc/lib",
             "/opt/local/lib"]
    return dirs


def find_library(stem: str) -> Optional[str]:
    """Full path of ``lib<stem>`` (shared library), or None."""
    if sys.platform == "win32":
        found = ctypes.util.find_library(stem)
        return found
    patterns = [f"lib{stem}.so*", f"lib{stem}.*dylib"]
    for d in _lib_dirs():
        for pat in patterns:
            hits = sorted(glob.glob(os.path.join(d, pat)))
            if hits:
                return os.path.realpath(hits[0]) if not hits[0].endswith(".so") else hits[0]
    name = ctypes.util.find_library(stem)
    return name


def _loaded_path(stem: str) -> Optional[str]:
    """Path of lib<stem> if it is already mapped into this process (LD_PRELOAD, linked)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if line.strip() else ""
                base = os.path.basename(path)
                if base.startswith(f"lib{stem}.") and (".so" in base or base.endswith(".dylib")):
                    return path
    except OSError:
        pass
    return None


def _fn_addr(fn: Any) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value or 0


def _plain_table(libh: Any, names: Dict[str, str], label: str) -> Any:
    fns = ffi.new("nm_plain_fns_t *")
    for field, sym in names.items():
        if sym is None:
            continue
        fn = getattr(libh, sym)
        _keep.append(fn)
        setattr(fns, field, ffi.cast(ffi.typeof(getattr(fns, field)), _fn_addr(fn)))
    name = ffi.new("char[]", label.encode())
    _keep.append(name)
    return check_ptr(lib.nm_allocator_from_plain(fns, name), f"cannot build the {label} table")


# ---- probes ----------------------------------------------------------------------------------
def _probe_libc() -> _Loaded:
    table = lib.nm_allocator_libc()
    if sys.platform.startswith("linux"):
        try:
            version = "glibc " + os.confstr("CS_GNU_LIBC_VERSION").split()[-1]  # type: ignore[union-attr]
        except (ValueError, OSError, AttributeError):
            version = " ".join(platform.libc_ver()) or "libc"
        path = _loaded_path("c")
        try:  # LD_PRELOAD (jemalloc, tcmalloc...) interposes malloc: say who really serves "libc"
            glob_malloc = _fn_addr(ctypes.CDLL(None).malloc)
            if path and glob_malloc != _fn_addr(ctypes.CDLL(path).malloc):
                version += " (malloc interposed by LD_PRELOAD: " + (os.environ.get("LD_PRELOAD") or "?").strip() + ")"
        except (OSError, AttributeError):
            pass
    elif sys.platform == "darwin":
        version, path = "libSystem " + platform.mac_ver()[0], "/usr/lib/libSystem.B.dylib"
    elif sys.platform == "win32":
        version, path = "Windows CRT", ctypes.util.find_library("ucrtbase") or "msvcrt"
    else:
        version, path = " ".join(platform.libc_ver()) or "libc", None
    return _Loaded(BackendInfo("libc", True, version, path), table)


def _jemalloc_remedy(path: str) -> str:
    return (f"{path} cannot be loaded after Python has started (glibc: 'cannot allocate memory in "
            f"static TLS block'). Start the program with the environment that makes it loadable: "
            f"`python -m nativemem run --backend jemalloc -- script.py` (sets LD_PRELOAD={path}), "
            f"or set LD_PRELOAD (or GLIBC_TUNABLES={JEMALLOC_TLS_TUNABLE}) yourself before Python starts")


# ---- probing in a child process (macOS: loading may switch the process's malloc zone) ---------
#: Backends probed in a child process rather than loaded into this one.
_PROBE_IN_CHILD = {"jemalloc": sys.platform == "darwin", "mimalloc": sys.platform == "darwin"}

# Run as `python -I -c _CHILD_PROBE PATH KIND`: loads PATH, asks its identity, and reports the
# process's malloc zones (macOS: their count and zone 0, the one malloc uses) before and after.
_CHILD_PROBE = r"""
import ctypes, json, sys
path, kind = sys.argv[1], sys.argv[2]

def zones():
    if sys.platform != "darwin":
        return None, None
    ls = ctypes.CDLL("/usr/lib/libSystem.B.dylib")
    ls.malloc_get_all_zones.argtypes = [ctypes.c_uint, ctypes.c_void_p,
                                        ctypes.POINTER(ctypes.POINTER(ctypes.c_void_p)), ctypes.POINTER(ctypes.c_uint)]
    ls.malloc_get_all_zones.restype = ctypes.c_int
    ls.malloc_get_zone_name.argtypes = [ctypes.c_void_p]
    ls.malloc_get_zone_name.restype = ctypes.c_char_p
    arr, n = ctypes.POINTER(ctypes.c_void_p)(), ctypes.c_uint(0)
    if ls.malloc_get_all_zones(0, None, ctypes.byref(arr), ctypes.byref(n)) != 0 or n.value == 0:
        return None, None
    name = ls.malloc_get_zone_name(arr[0]) or b"?"
    return n.value, "%#x %s" % (arr[0] or 0, name.decode("utf-8", "replace"))

out = {}
out["zones_before"], out["zone0_before"] = zones()
try:
    h = ctypes.CDLL(path)
except OSError as exc:
    out["error"] = str(exc)
else:
    if kind == "jemalloc":
        prefix = next((p for p in ("", "je_") if hasattr(h, p + "mallctl")), None)
        out["prefix"] = prefix
        if prefix is not None:
            m = getattr(h, prefix + "mallctl")
            m.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p,
                          ctypes.c_size_t]
            ver, sz = ctypes.c_char_p(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_char_p))
            if m(b"version", ctypes.byref(ver), ctypes.byref(sz), None, 0) == 0 and ver.value:
                out["version"] = ver.value.decode()
    elif hasattr(h, "mi_version"):
        h.mi_version.restype = ctypes.c_int
        out["version_number"] = h.mi_version()
    out["zones_after"], out["zone0_after"] = zones()
print(json.dumps(out))
"""


def _child_probe(path: str, kind: str) -> Dict[str, Any]:
    """What a child process found loading ``path`` (see _CHILD_PROBE); {"error": ...} on failure."""
    try:
        r = subprocess.run([sys.executable, "-I", "-c", _CHILD_PROBE, path, kind], capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"the child process probing it failed: {exc}"}
    lines = r.stdout.strip().splitlines()
    try:
        got = json.loads(lines[-1]) if lines else None
    except ValueError:
        got = None
    if not isinstance(got, dict):
        tail = (r.stderr.strip() or r.stdout.strip())[-300:]
        return {"error": f"the child process probing it exited with status {r.returncode}: {tail}"}
    return got


def _registers_zone(res: Dict[str, Any]) -> bool:
    """True when loading the library changed the child's malloc zones (count, or zone 0)."""
    before, after = res.get("zones_before"), res.get("zones_after")
    if before is None or after is None:
        return False
    return bool(before != after or res.get("zone0_before") != res.get("zone0_after"))


def _zone_reason(name: str, path: str, version: str) -> str:
    return (f"{path} ({name} {version}) registers itself as a malloc zone when it is loaded (found by a "
            f"child process: loading it changed the process's malloc zones; Homebrew's {name} does), which "
            f"would move this whole process -- CPython, NumPy -- onto {name} mid-run; nativemem does not load "
            f"it. To run on {name}: start the program with DYLD_INSERT_LIBRARIES={path} (the whole process on "
            f"{name}, consistently), or use a build without the zone (jemalloc: --with-jemalloc-prefix=je_ "
            f"--disable-zone-allocator; mimalloc: -DMI_OVERRIDE=OFF)")


def _in_process(path: str) -> bool:
    """True when ``path`` is already loaded in this process (checked without loading it)."""
    mode = getattr(os, "RTLD_NOLOAD", None)
    if mode is None:
        return False
    try:
        ctypes.CDLL(path, mode=mode)
    except OSError:
        return False
    return True


def _probe_in_child(name: str, path: str, load: Callable[[], _Loaded]) -> _Loaded:
    """Probe ``path`` in a child process; available only when loading it leaves malloc alone, and
    then loaded into this process (by ``load``) only when an allocator on it is made."""
    res = _child_probe(path, name)
    how = "probed in a child process"
    err = res.get("error")
    if err:
        if name == "jemalloc" and "static TLS" in str(err):
            return _Loaded(BackendInfo(name, False, path=path, reason=_jemalloc_remedy(path)))
        return _Loaded(BackendInfo(name, False, path=path, reason=f"cannot load {path} ({how}): {err}"))
    if name == "jemalloc":
        if res.get("prefix") is None:
            return _Loaded(BackendInfo(name, False, path=path, reason=f"{path} has no mallctl: not jemalloc ({how})"))
        version = str(res.get("version") or "")
        if not version:
            return _Loaded(BackendInfo(name, False, path=path, reason=f"mallctl('version') failed ({how})"))
        version = version.split("-")[0]
    else:
        v = res.get("version_number")
        if not isinstance(v, int):
            return _Loaded(BackendInfo(name, False, path=path, reason=f"{path} has no mi_version: not mimalloc ({how})"))
        version = f"{v // 100}.{(v % 100) // 10}.{v % 10}"
    if _registers_zone(res):
        return _Loaded(BackendInfo(name, False, version, path, reason=_zone_reason(name, path, version)))
    zones = ": it registers no malloc zone" if res.get("zones_after") is not None else ""
    return _Loaded(BackendInfo(name, True, f"{version} ({how}{zones}; loaded into this process when an "
                                            f"allocator on it is made)", path), loader=load)


def _probe_jemalloc() -> _Loaded:
    preloaded = _loaded_path("jemalloc")
    path = preloaded or find_library("jemalloc")
    if not path:
        hint = {"linux": "apt-get install libjemalloc2 (Debian/Ubuntu) or dnf install jemalloc",
                "darwin": "brew install jemalloc"}.get(sys.platform[:6] if sys.platform != "darwin" else "darwin",
                                                       "install jemalloc")
        return _Loaded(BackendInfo("jemalloc", False, reason=f"libjemalloc not found; {hint}"))
    if _PROBE_IN_CHILD.get("jemalloc") and not preloaded and not _in_process(path):
        return _probe_in_child("jemalloc", path, lambda: _load_jemalloc(path, False))
    return _load_jemalloc(path, preloaded is not None or _in_process(path))


def _load_jemalloc(path: str, preloaded: bool) -> _Loaded:
    try:
        libh = ctypes.CDLL(path)
    except OSError as exc:
        if "static TLS" in str(exc):
            return _Loaded(BackendInfo("jemalloc", False, path=path, reason=_jemalloc_remedy(path)))
        return _Loaded(BackendInfo("jemalloc", False, path=path, reason=f"cannot load {path}: {exc}"))
    prefix = next((p for p in ("", "je_") if hasattr(libh, p + "mallctl")), None)
    if prefix is None:
        return _Loaded(BackendInfo("jemalloc", False, path=path, reason=f"{path} has no mallctl: not jemalloc"))
    mallctl = getattr(libh, prefix + "mallctl")
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p,
                        ctypes.c_size_t]
    ver = ctypes.c_char_p()
    sz = ctypes.c_size_t(ctypes.sizeof(ver))
    if mallctl(b"version", ctypes.byref(ver), ctypes.byref(sz), None, 0) != 0 or not ver.value:
        return _Loaded(BackendInfo("jemalloc", False, path=path, reason="mallctl('version') failed"))
    version = ver.value.decode().split("-")[0]
    names = {"malloc": "malloc", "calloc": "calloc", "realloc": "realloc", "free": "free",
             "posix_memalign": "posix_memalign", "usable_size": "malloc_usable_size"}
    table = _plain_table(libh, {k: prefix + v for k, v in names.items()}, "jemalloc")
    _keep.append(libh)
    how = " (preloaded)" if preloaded else ""
    return _Loaded(BackendInfo("jemalloc", True, version + how, path), table, libh)


def _probe_mimalloc() -> _Loaded:
    preloaded = _loaded_path("mimalloc")
    path = preloaded or find_library("mimalloc")
    if not path:
        hint = {"linux": "apt-get install libmimalloc2.0 (Debian/Ubuntu)",
                "darwin": "brew install mimalloc"}.get("darwin" if sys.platform == "darwin" else "linux",
                                                      "install mimalloc")
        if sys.platform == "win32":
            hint = "put mimalloc.dll on PATH"
        return _Loaded(BackendInfo("mimalloc", False, reason=f"libmimalloc not found; {hint}"))
    if _PROBE_IN_CHILD.get("mimalloc") and not preloaded and not _in_process(path):
        return _probe_in_child("mimalloc", path, lambda: _load_mimalloc(path))
    return _load_mimalloc(path)


def _load_mimalloc(path: str) -> _Loaded:
    try:
        libh = ctypes.CDLL(path)
    except OSError as exc:
        return _Loaded(BackendInfo("mimalloc", False, path=path, reason=f"cannot load {path}: {exc}"))
    if not hasattr(libh, "mi_version"):
        return _Loaded(BackendInfo("mimalloc", False, path=path, reason=f"{path} has no mi_version: not mimalloc"))
    libh.mi_version.restype = ctypes.c_int
    v = libh.mi_version()
    version = f"{v // 100}.{(v % 100) // 10}.{v % 10}"
    names = {"malloc": "mi_malloc", "calloc": "mi_calloc", "realloc": "mi_realloc", "free": "mi_free",
             "posix_memalign": "mi_posix_memalign", "usable_size": "mi_usable_size"}
    table = _plain_table(libh, names, "mimalloc")
    _keep.append(libh)
    return _Loaded(BackendInfo("mimalloc", True, version, path), table, libh)


def _kernel32() -> Any:
    from ctypes import wintypes
    k32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined,unused-ignore]  # (Windows only)
    k32.HeapCreate.restype = wintypes.HANDLE
    k32.HeapCreate.argtypes = [wintypes.DWORD, ctypes.c_size_t, ctypes.c_size_t]
    k32.GetProcessHeap.restype = wintypes.HANDLE
    k32.HeapSetInformation.argtypes = [wintypes.HANDLE, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    k32.HeapSetInformation.restype = wintypes.BOOL
    k32.HeapQueryInformation.argtypes = [wintypes.HANDLE, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
                                         ctypes.POINTER(ctypes.c_size_t)]
    k32.HeapQueryInformation.restype = wintypes.BOOL
    return k32


def _winheap_table(k32: Any, heap: int, label: str) -> Any:
    fns = ffi.new("nm_winheap_fns_t *")
    fns.heap = ffi.cast("void *", heap)
    for field, sym in (("heap_alloc", "HeapAlloc"), ("heap_realloc", "HeapReAlloc"),
                       ("heap_free", "HeapFree"), ("heap_size", "HeapSize")):
        fn = getattr(k32, sym)
        _keep.append(fn)
        setattr(fns, field, ffi.cast("void *", _fn_addr(fn)))
    name = ffi.new("char[]", label.encode())
    _keep.append(name)
    return check_ptr(lib.nm_allocator_from_winheap(fns, name), f"cannot build the {label} table")


def _lfh_state(k32: Any, heap: int) -> Tuple[Optional[int], int]:
    """(HeapCompatibilityInformation, 0), or (None, the error) when HeapQueryInformation fails."""
    info = ctypes.c_ulong(0)
    if not k32.HeapQueryInformation(heap, 0, ctypes.byref(info), ctypes.sizeof(info), None):
        return None, _last_error()
    return info.value, 0


def _last_error() -> int:
    get = getattr(ctypes, "get_last_error", None)  # Windows only
    return int(get()) if get is not None else 0


_HEAP_MODES = {0: "standard heap", 1: "look-aside heap", 2: "LFH"}


def _describe_heap(set_result: Optional[Tuple[bool, int]], state: Optional[int], query_error: int) -> str:
    """The heap's mode as verified: what HeapQueryInformation reports, and what became of the
    request to enable the Low Fragmentation Heap (``set_result``: (succeeded, error); None when
    none was made).  Never says LFH unless the heap reports it."""
    if state is None:
        mode = f"heap mode unknown (HeapQueryInformation failed: error {query_error})"
    else:
        mode = f"{_HEAP_MODES.get(state, 'heap mode ' + str(state))} (HeapCompatibilityInformation = {state})"
    if set_result is None:
        return mode
    ok, err = set_result
    if not ok:
        return f"{mode}; enabling the LFH failed (HeapSetInformation error {err})"
    if state != 2:
        return f"{mode}; HeapSetInformation(LFH) succeeded, yet the heap does not report the LFH"
    return f"{mode}; enabled with HeapSetInformation"


def _probe_heap(process: bool) -> _Loaded:
    name = "process-heap" if process else "heap"
    if sys.platform != "win32":
        return _Loaded(BackendInfo(name, False, reason="Windows heaps (HeapAlloc) exist only on Windows"))
    try:
        k32 = _kernel32()
    except (OSError, AttributeError) as exc:
        return _Loaded(BackendInfo(name, False, reason=f"kernel32 heap functions unavailable: {exc}"))
    ver = sys.getwindowsversion()  # type: ignore[attr-defined,unused-ignore]  # (Windows only)
    return _probe_heap_on(k32, process, f"Windows {ver.major}.{ver.minor}.{ver.build}")


def _probe_heap_on(k32: Any, process: bool, windows: str) -> _Loaded:
    """The heap backend over kernel32 functions ``k32`` (ctypes), its mode as checked."""
    name = "process-heap" if process else "heap"
    try:
        heap = k32.GetProcessHeap() if process else k32.HeapCreate(0, 0, 0)
        if not heap:
            what = "GetProcessHeap" if process else "HeapCreate"
            return _Loaded(BackendInfo(name, False, reason=f"{what} failed: error {_last_error()}"))
        set_result: Optional[Tuple[bool, int]] = None
        if not process:
            lfh = ctypes.c_ulong(2)  # HeapCompatibilityInformation = 2: Low Fragmentation Heap
            ok = bool(k32.HeapSetInformation(heap, 0, ctypes.byref(lfh), ctypes.sizeof(lfh)))
            set_result = (ok, 0 if ok else _last_error())
        state, query_error = _lfh_state(k32, heap)
        table = _winheap_table(k32, heap, name)
    except (OSError, AttributeError) as exc:
        return _Loaded(BackendInfo(name, False, reason=f"kernel32 heap functions unavailable: {exc}"))
    _keep.append(k32)
    return _Loaded(BackendInfo(name, True, f"{windows} {_describe_heap(set_result, state, query_error)}",
                               "kernel32.dll"), table, k32)


def _probe_zone() -> _Loaded:
    if sys.platform != "darwin":
        return _Loaded(BackendInfo("zone", False, reason="malloc zones exist only on macOS"))
    path = "/usr/lib/libSystem.B.dylib"
    try:
        ls = ctypes.CDLL(path)
        ls.malloc_create_zone.restype = ctypes.c_void_p
        ls.malloc_create_zone.argtypes = [ctypes.c_size_t, ctypes.c_uint]
        ls.malloc_set_zone_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ls.malloc_get_zone_name.restype = ctypes.c_char_p
        ls.malloc_get_zone_name.argtypes = [ctypes.c_void_p]
        zone = ls.malloc_create_zone(0, 0)
        if not zone:
            return _Loaded(BackendInfo("zone", False, path=path, reason="malloc_create_zone failed"))
        zname = ctypes.create_string_buffer(b"nativemem")
        _keep.append(zname)
        ls.malloc_set_zone_name(zone, zname)
        got = ls.malloc_get_zone_name(zone)
        if got != b"nativemem":
            return _Loaded(BackendInfo("zone", False, path=path, reason=f"zone name check failed: {got!r}"))
        fns = ffi.new("nm_zone_fns_t *")
        fns.zone = ffi.cast("void *", zone)
        for field, sym in (("zone_malloc", "malloc_zone_malloc"), ("zone_calloc", "malloc_zone_calloc"),
                           ("zone_realloc", "malloc_zone_realloc"), ("zone_free", "malloc_zone_free"),
                           ("zone_memalign", "malloc_zone_memalign"), ("size", "malloc_size")):
            fn = getattr(ls, sym)
            _keep.append(fn)
            setattr(fns, field, ffi.cast("void *", _fn_addr(fn)))
        cname = ffi.new("char[]", b"zone")
        _keep.append(cname)
        table = check_ptr(lib.nm_allocator_from_zone(fns, cname), "cannot build the zone table")
    except (OSError, AttributeError) as exc:
        return _Loaded(BackendInfo("zone", False, path=path, reason=f"libSystem zone functions unavailable: {exc}"))
    _keep.append(ls)
    return _Loaded(BackendInfo("zone", True, f"macOS {platform.mac_ver()[0]} zone 'nativemem'", path), table, ls)


_PROBES: Dict[str, Callable[[], _Loaded]] = {
    "libc": _probe_libc,
    "jemalloc": _probe_jemalloc,
    "mimalloc": _probe_mimalloc,
    "heap": lambda: _probe_heap(False),
    "process-heap": lambda: _probe_heap(True),
    "zone": _probe_zone,
}

#: Every backend name nativemem knows (``NATIVEMEM_BACKEND`` and ``allocator(name)`` take one of
#: these), whether or not it is available on this machine.
BACKEND_NAMES: Tuple[str, ...] = tuple(_PROBES)


def _load(name: str) -> _Loaded:
    with _lock:
        got = _cache.get(name)
        if got is None:
            probe = _PROBES.get(name)
            if probe is None:
                raise E.BackendUnavailableError(
                    f"unknown backend {name!r}; known: {', '.join(_PROBES)}")
            got = _cache[name] = probe()
        return got


def backends() -> List[BackendInfo]:
    """Every backend nativemem knows, with availability, version, path, or why it is missing."""
    return [_load(name).info for name in _PROBES]


def _platform_order() -> List[str]:
    if sys.platform == "win32":
        return ["heap", "process-heap", "libc"]
    if sys.platform == "darwin":
        return ["zone", "libc"]
    return ["jemalloc", "mimalloc", "libc"]


def default_backend_name() -> str:
    """``NATIVEMEM_BACKEND`` if set, else the platform's best available backend."""
    env = os.environ.get("NATIVEMEM_BACKEND")
    if env:
        return env
    for name in _platform_order():
        if _load(name).info.available:
            return name
    return "libc"


def allocator(name: Optional[str] = None) -> Allocator:
    """An allocator on backend ``name`` with its own statistics.

    ``name=None`` returns the process default allocator (see :func:`set_default_allocator`);
    raises BackendUnavailableError (with the remedy) for a backend that is not available."""
    if name is None:
        return get_default_allocator()
    if not isinstance(name, str):
        raise E.InvalidTypeError(f"backend name must be a str, not {type(name).__name__}")
    if name == "arena":
        raise E.BackendUnavailableError("an arena has a size: use nativemem.Arena(size)")
    loaded = _load(name)
    if not loaded.info.available:
        raise E.BackendUnavailableError(f"backend {name!r} is unavailable: {loaded.info.reason}")
    with _lock:  # a backend probed in a child process is loaded into this one now, once
        base = loaded.get_table()
    table = check_ptr(lib.nm_allocator_clone(base, ffi.NULL), f"cannot create a {name} allocator")
    return Allocator(table, owned=True, keepalive=loaded, backend=name)


_default: Optional[Allocator] = None


def get_default_allocator() -> Allocator:
    """The allocator nativemem uses when none is given (pools, COW buffers, ...)."""
    global _default
    with _lock:
        if _default is None:
            _default = allocator(default_backend_name())
        return _default


def set_default_allocator(alloc: Optional[Allocator]) -> Optional[Allocator]:
    """Replace the process default allocator (None: back to the platform pick); returns the old one."""
    global _default
    if alloc is not None and not isinstance(alloc, Allocator):
        raise E.InvalidTypeError(f"expected an Allocator, not {type(alloc).__name__}")
    with _lock:
        old, _default = _default, alloc
        return old
