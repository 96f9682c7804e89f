"""python -m nativemem bench: every area of nativemem measured against its peers.

Every figure is measured the same way for every contender, in one run: a warm-up, then several
repetitions with the contenders interleaved round-robin (so drift on a shared machine hits all
alike), reported as the median and the spread (min..max) in nanoseconds per operation, and as a
ratio to a reference measured in the same run: glibc malloc through the table (C level) or
bytearray (Python level).  C-level loops run inside C (csrc/bench.c), so FFI cost does not
hide the allocator.

jemalloc: glibc cannot load Debian's libjemalloc into a running Python ("cannot allocate memory
in static TLS block").  Its rows (nativemem's jemalloc backend through the table, jemalloc called
directly, and the handler and Buffer rows on it) are then measured in a long-lived child process
started with GLIBC_TUNABLES=glibc.rtld.optional_static_tls=65536, in the same round-robin: the
child is asked over a pipe for each of its measurements in turn, so every row comes from this run.
Those rows are marked [child], with a "(control)" row per workload: the reference measured again
in the child, to show how the two processes compare.  Ratios are to this process's reference.
Without jemalloc the rows are absent and a note says why.

Progress goes to stderr: on a terminal one line rewritten in place; otherwise (a CI log, a pipe)
a "bench: N/M measurements, T s" line every few seconds, and a line at the start and at the end.

JSON schema (--json):

    {"schema": "nativemem-bench/2", "machine": {...}, "quick": bool, "notes": [str],
     "rows": [{"area", "workload", "contender", "level": "C"|"python", "median_ns", "min_ns",
               "max_ns", "reps", "ratio", "reference", "ops", "process": "main"|"child"}]}
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ._ffi import ffi, lib

__all__ = ["Row", "Workload", "Result", "run", "measure", "render_table", "legend", "benchmarks_path", "quick_comparison", "main",
           "plot", "AREAS", "CHILD_AREAS", "SCHEMA", "ChildError"]

SCHEMA = "nativemem-bench/2"
AREAS = ("backends", "pool", "debug", "refcount", "interning", "cow", "numpy", "python")


@dataclass
class Row:
    area: str
    workload: str
    contender: str
    level: str
    median_ns: float
    min_ns: float
    max_ns: float
    reps: int
    ratio: Optional[float] = None
    reference: Optional[str] = None
    ops: int = 0
    process: str = "main"  # "child": measured in the jemalloc child process (see the module doc)


@dataclass
class Workload:
    """One workload: several contenders measured interleaved; ``fns[name]()`` returns ns/op."""
    area: str
    name: str
    level: str
    reference: str
    fns: Dict[str, Callable[..., float]] = field(default_factory=dict)  # called with no argument
    ops: Dict[str, int] = field(default_factory=dict)
    where: Dict[str, str] = field(default_factory=dict)  # contender -> "child" when measured there


def _machine() -> Dict[str, Any]:
    import nativemem
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "nativemem": nativemem.__version__,
            "backends": {b.name: b.version for b in nativemem.backends() if b.available}}


# ---- contenders ------------------------------------------------------------------------------
def _allocators() -> Dict[str, Any]:
    import nativemem
    out: Dict[str, Any] = {}
    for b in nativemem.backends():
        if b.available:
            out[b.name] = nativemem.allocator(b.name)
    out["arena"] = nativemem.Arena(64 << 20)
    return out


def _direct_fns() -> Dict[str, Any]:
    """malloc/free of the backends loaded at run time as C function pointers, so their pair can
    be measured called directly (no table) in the same run as through the table."""
    from .backends import _fn_addr, _load
    out: Dict[str, Any] = {}
    for name, (m, f) in {"mimalloc": ("mi_malloc", "mi_free"), "jemalloc": ("malloc", "free")}.items():
        loaded = _load(name)
        libh = loaded.keepalive
        if not loaded.info.available or libh is None:
            continue
        if name == "jemalloc":  # a je_-prefixed build names its functions je_malloc, je_free
            prefix = "je_" if not hasattr(libh, "mallctl") and hasattr(libh, "je_mallctl") else ""
            m, f = prefix + m, prefix + f
        out[name] = (ffi.cast("void *(*)(size_t)", _fn_addr(getattr(libh, m))),
                     ffi.cast("void (*)(void *)", _fn_addr(getattr(libh, f))))
    return out


def _c_workloads(quick: bool, only: Optional[str]) -> List[Workload]:
    import nativemem
    scale = 1 if quick else 5
    allocs = _allocators()
    ws: List[Workload] = []
    keep: List[Any] = []

    def pairs(a: Any, size: int, n: int, ops_sink: Dict[str, int], key: str) -> Callable[[], float]:
        def f() -> float:
            o = ffi.new("uint64_t *")
            r: float = lib.nm_bench_pairs(a.cdata, size, n, o)
            ops_sink[key] = int(o[0])
            return r
        return f

    if only in (None, "backends"):
        direct = _direct_fns()
        # the same backends counting blocks only (NM_STATS_BLOCKS: no usable_size per call)
        blocks_only: Dict[str, Any] = {}
        for name in ("libc", "mimalloc", "jemalloc"):
            if name in allocs:
                b = nativemem.allocator(name)
                if lib.nm_allocator_set_stats(b.cdata, lib.NM_STATS_BLOCKS) != lib.NM_OK:
                    continue
                blocks_only[f"{name}, blocks only"] = b
        # An arena turns to its striped per-thread caches for good once two threads meet on its
        # lock (arena.c): the two-thread workloads get their own arena, so that "arena" stays the
        # arena one thread at a time uses, and "arena, striped" shows the single-thread cost of
        # an arena after contention.
        striped = nativemem.Arena(64 << 20)
        lib.nm_arena_testing_mt(striped.cdata, 1)
        threaded = {**allocs, "arena": nativemem.Arena(64 << 20)}
        keep += [direct, blocks_only, striped, threaded]
        sizes = (64,) if quick else (16, 64, 256, 4096)
        for size in sizes:
            w = Workload("backends", f"malloc+free {size}B", "C", "libc")
            for name, a in {**allocs, **blocks_only}.items():
                w.fns[name] = pairs(a, size, 200_000 * scale, w.ops, name)
            w.fns["arena, striped (after two threads met)"] = pairs(striped, size, 200_000 * scale, w.ops,
                                                                    "arena, striped (after two threads met)")
            w.fns["raw libc (no table)"] = (lambda s=size: lib.nm_bench_raw_libc_pairs(s, 200_000 * scale))
            for name, (m, f) in direct.items():
                w.fns[f"raw {name} (no table)"] = (lambda s=size, m=m, f=f: lib.nm_bench_raw_fn_pairs(
                    m, f, s, 200_000 * scale))
            ws.append(w)
        w = Workload("backends", "batch 256 allocs then 256 frees (64B)", "C", "libc")
        for name, a in allocs.items():
            w.fns[name] = (lambda a=a, name=name, w=w: _with_ops(w, name, lambda o: lib.nm_bench_batch(
                a.cdata, 64, 256, 400 * scale, o)))
        ws.append(w)
        w = Workload("backends", "random sizes 8-1024B, 1000 live", "C", "libc")
        for name, a in allocs.items():
            w.fns[name] = (lambda a=a, name=name, w=w: _with_ops(w, name, lambda o: lib.nm_bench_mix(
                a.cdata, 8, 1024, 1000, 100_000 * scale, 42, o)))
        ws.append(w)
        if not quick:
            w = Workload("backends", "larson-like, 2 threads, cross-thread frees", "C", "libc")
            for name, a in threaded.items():
                w.fns[name] = (lambda a=a, name=name, w=w: _with_ops(w, name, lambda o: lib.nm_bench_larson(
                    a.cdata, 16, 256, 1000, 100_000, 2, o)))
            ws.append(w)
            w = Workload("backends", "producer/consumer, 2 threads (64B)", "C", "libc")
            for name, a in allocs.items():
                if name == "arena":
                    continue
                w.fns[name] = (lambda a=a, name=name, w=w: _with_ops(w, name, lambda o: lib.nm_bench_prodcons(
                    a.cdata, 64, 100_000, o)))
            ws.append(w)
    if only in (None, "pool"):
        pool = nativemem.Pool(64)
        keep.append(pool)
        # Pool zeroes by default; malloc does not: the like-for-like row against the raw pairs
        pool_nz = nativemem.Pool(64, zero=False)
        keep.append(pool_nz)
        upool = _UncheckedPool(64)  # NM_POOL_UNCHECKED: C only (validated code), no Python face
        keep.append(upool)
        libc = allocs["libc"]
        w = Workload("pool", "alloc+free pair (64B)", "C", "libc")
        w.fns["pool"] = lambda: lib.nm_pool_bench_pairs(pool.cdata, 200_000 * scale)
        w.fns["pool, not zeroed"] = lambda: lib.nm_pool_bench_pairs(pool_nz.cdata, 200_000 * scale)
        w.fns["pool, unchecked"] = lambda: lib.nm_pool_bench_pairs(upool.p, 200_000 * scale)
        for name, a in allocs.items():
            if name != "arena":
                w.fns[name] = pairs(a, 64, 200_000 * scale, w.ops, name)
        # what a C program that links an allocator gets: its pair called directly, no table
        pool_direct = _direct_fns()
        keep.append(pool_direct)
        w.fns["raw libc (no table)"] = lambda: lib.nm_bench_raw_libc_pairs(64, 200_000 * scale)
        w.fns["raw free list (floor)"] = lambda: lib.nm_bench_raw_freelist_pairs(64, 200_000 * scale)
        for name, (m, f) in pool_direct.items():
            w.fns[f"raw {name} (no table)"] = (lambda m=m, f=f: lib.nm_bench_raw_fn_pairs(m, f, 64, 200_000 * scale))
        ws.append(w)
        w = Workload("pool", "batch 256 allocs then 256 frees (64B)", "C", "libc")
        w.fns["pool"] = lambda: lib.nm_pool_bench_batch(pool.cdata, 256, 400 * scale)
        w.fns["pool, not zeroed"] = lambda: lib.nm_pool_bench_batch(pool_nz.cdata, 256, 400 * scale)
        w.fns["pool, unchecked"] = lambda: lib.nm_pool_bench_batch(upool.p, 256, 400 * scale)
        for name, a in allocs.items():
            if name != "arena":
                w.fns[name] = (lambda a=a, name=name, w=w: _with_ops(w, name, lambda o: lib.nm_bench_batch(
                    a.cdata, 64, 256, 400 * scale, o)))
        ws.append(w)
        if not quick:
            w = Workload("pool", "larson-like, 2 threads, cross-thread frees (64B)", "C", "libc")
            w.fns["pool"] = lambda: _with_ops(w, "pool", lambda o: lib.nm_bench_pool_larson(pool.cdata, 1000, 100_000, 2, o))
            w.fns["pool, unchecked"] = lambda: _with_ops(w, "pool, unchecked", lambda o: lib.nm_bench_pool_larson(
                upool.p, 1000, 100_000, 2, o))
            for name, a in allocs.items():
                if name != "arena":
                    w.fns[name] = (lambda a=a, name=name, w=w: _with_ops(w, name, lambda o: lib.nm_bench_larson(
                        a.cdata, 64, 64, 1000, 100_000, 2, o)))
            ws.append(w)
        del libc
    for w in ws:
        w._keep = (allocs, keep)  # type: ignore[attr-defined]
    return ws


class _UncheckedPool:
    """An NM_POOL_UNCHECKED pool for the bench rows (the C API's; destroyed with this object)."""

    def __init__(self, size: int) -> None:
        self.p = lib.nm_pool_create(ffi.NULL, size, 256, lib.NM_POOL_UNCHECKED)
        if self.p == ffi.NULL:
            raise MemoryError("cannot create an unchecked pool")

    def __del__(self) -> None:
        p, self.p = getattr(self, "p", ffi.NULL), ffi.NULL
        if p != ffi.NULL:
            lib.nm_pool_destroy(p)


def _family_workloads(quick: bool, only: Optional[str]) -> List[Workload]:
    """Debug allocator, refcount, interning, COW and the NumPy handler, each against its reference."""
    import sys as _sys

    import nativemem
    scale = 1 if quick else 4
    ws: List[Workload] = []
    libc = nativemem.allocator("libc")
    if only in (None, "debug"):
        dbg = nativemem.DebugAllocator(base=libc)
        dbg0 = nativemem.DebugAllocator(base=libc, quarantine=0)
        w = Workload("debug", "malloc+free 64B, debug vs its base", "C", "libc")
        w.fns["libc"] = lambda: lib.nm_bench_pairs(libc.cdata, 64, 50_000 * scale, ffi.NULL)
        w.fns["debug (quarantine 1024)"] = lambda: lib.nm_bench_pairs(dbg.cdata, 64, 50_000 * scale, ffi.NULL)
        w.fns["debug (no quarantine)"] = lambda: lib.nm_bench_pairs(dbg0.cdata, 64, 50_000 * scale, ffi.NULL)
        w._keep = (dbg, dbg0)  # type: ignore[attr-defined]
        ws.append(w)
        # Sizes that vary defeat the recycled block, and the fills and poison checks grow with
        # the size: the other end of the debug allocator's cost.
        w = Workload("debug", "mixed sizes 16-512B, 256 live, debug vs its base", "C", "libc")
        w.fns["libc"] = lambda: lib.nm_bench_mix(libc.cdata, 16, 512, 256, 20_000 * scale, 7, ffi.NULL)
        w.fns["debug (quarantine 1024)"] = lambda: lib.nm_bench_mix(dbg.cdata, 16, 512, 256, 20_000 * scale, 7,
                                                                    ffi.NULL)
        w.fns["debug (no quarantine)"] = lambda: lib.nm_bench_mix(dbg0.cdata, 16, 512, 256, 20_000 * scale, 7,
                                                                  ffi.NULL)
        w._keep = (dbg, dbg0)  # type: ignore[attr-defined]
        ws.append(w)
    if only in (None, "refcount"):
        w = Workload("refcount", "inc+dec pair", "C", "raw atomic")
        w.fns["raw atomic"] = lambda: lib.nm_bench_atomic_pairs(2_000_000 * scale)
        w.fns["nm_refcount"] = lambda: lib.nm_ref_bench_pairs(2_000_000 * scale)
        ws.append(w)
    if only in (None, "interning"):
        w = Workload("interning", "intern hit + release", "C", "1k entries")
        sizes = (1_000, 100_000) if quick else (1_000, 100_000, 1_000_000)
        for n in sizes:
            label = f"{n // 1000}k entries" if n < 1_000_000 else "1M entries"
            w.fns[label] = (lambda n=n: lib.nm_strtab_bench_hits(libc.cdata, n, 200_000 * scale))
        # the physical floor of a random lookup: one dependent load in a 64 MB region (compare 1M)
        w.fns["one dependent load, 64 MB (floor)"] = lambda: lib.nm_bench_dependent_load(64 << 20, 200_000 * scale)
        ws.append(w)
        if not quick:
            # where this machine's effective cache ends (the 100k row's data is ~9 MB: bench keys
            # 2.8 MB, buckets 1.4 MB, entries 4.8 MB): the same chase through smaller regions
            w = Workload("interning", "one dependent load by region size (where the cache ends)", "C", "256 KB")
            for kb in (256, 1024, 2048, 4096, 8192, 16384, 32768):
                label = f"{kb} KB" if kb < 1024 else f"{kb // 1024} MB"
                w.fns[label] = (lambda kb=kb: lib.nm_bench_dependent_load(kb << 10, 200_000 * scale))
            ws.append(w)
        t = nativemem.StringTable()
        keep = t.intern("a-key")
        words = [f"w{i}" for i in range(1000)]
        for x in words:
            _sys.intern(x)
        w = Workload("interning", "intern a hit from Python", "python", "sys.intern")
        w.fns["sys.intern"] = lambda: _per_call(lambda: _sys.intern("a-key"), 20_000 * scale)
        w.fns["StringTable.intern+release"] = lambda: _per_call(lambda: t.intern("a-key").release(), 20_000 * scale)
        w._keep = (t, keep)  # type: ignore[attr-defined]
        ws.append(w)
    if only in (None, "cow"):
        w = Workload("cow", "make_writable, sole owner (64B)", "C", "refcount inc+dec")
        w.fns["refcount inc+dec"] = lambda: lib.nm_ref_bench_pairs(1_000_000 * scale)
        w.fns["make_writable"] = lambda: lib.nm_cow_bench_make_writable(libc.cdata, 64, 1_000_000 * scale)
        ws.append(w)
        buf = nativemem.CowBuffer(64)
        w = Workload("cow", "make_writable from Python", "python", "bytearray copy")
        data = bytearray(64)
        w.fns["bytearray copy"] = lambda: _per_call(lambda: bytearray(data), 20_000 * scale)
        w.fns["CowBuffer.make_writable (sole owner)"] = lambda: _per_call(buf.make_writable, 20_000 * scale)
        w._keep = buf  # type: ignore[attr-defined]
        ws.append(w)
    if only in (None, "numpy"):
        try:
            import numpy as np
            have_numpy = True
        except ImportError:
            have_numpy = False
        if have_numpy:
            w = Workload("numpy", "numpy.empty(1024) data from the handler", "python", "NumPy default")
            w.fns["NumPy default"] = lambda: _per_call(lambda: np.empty(1024), 20_000 * scale)

            def with_handler(a: Any) -> Callable[[], float]:
                def run() -> float:
                    with nativemem.numpy_allocator(a):
                        return _per_call(lambda: np.empty(1024), 20_000 * scale)
                return run
            for b in nativemem.backends():
                if b.available:
                    w.fns[f"nativemem {b.name}"] = with_handler(nativemem.allocator(b.name))
            ws.append(w)
    return ws


def _with_ops(w: Workload, name: str, call: Callable[[Any], float]) -> float:
    o = ffi.new("uint64_t *")
    r = call(o)
    w.ops[name] = int(o[0])
    return r


def _per_call(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n


def _ctypes_libc() -> Any:
    """The C library of the "ctypes malloc+free" row: the one the libc backend calls.  On Windows
    that is the Universal CRT (ucrtbase.dll: CPython and the extension are built against it), not
    the legacy msvcrt.dll, a different heap; elsewhere the process's own symbols."""
    if sys.platform == "win32":
        return ctypes.CDLL("ucrtbase")
    return ctypes.CDLL(None)


def _py_workloads(quick: bool) -> List[Workload]:
    import nativemem
    n = 20_000 if quick else 100_000
    ws: List[Workload] = []
    w = Workload("python", "64-byte block: allocate + free", "python", "bytearray")
    w.fns["bytearray"] = lambda: _per_call(lambda: bytearray(64), n)
    w.fns["cffi ffi.new"] = lambda: _per_call(lambda: ffi.new("char[64]"), n)
    libc = nativemem.allocator("libc")
    cfloor = libc.cdata
    w.fns["cffi nm_malloc+nm_free (floor)"] = lambda: _per_call(lambda: lib.nm_free(cfloor, lib.nm_malloc(cfloor, 64)), n)
    c = _ctypes_libc()
    c.malloc.restype = ctypes.c_void_p
    c.malloc.argtypes = [ctypes.c_size_t]
    c.free.argtypes = [ctypes.c_void_p]
    w.fns["ctypes malloc+free"] = lambda: _per_call(lambda: c.free(c.malloc(64)), n)
    for b in nativemem.backends():
        if b.available:
            a = nativemem.allocator(b.name)
            w.fns[f"nativemem {b.name} Buffer"] = (lambda a=a: _per_call(lambda: a.malloc(64).free(), n))
    dbg = nativemem.DebugAllocator(base=libc)  # records the Python site of every malloc and free
    # compiled under a name outside the package, as user code is: sites are the first frame
    # outside nativemem, and this module is inside it
    user_pair = eval(compile("lambda: dbg.malloc(64).free()", "<user code>", "eval"), {"dbg": dbg})
    w.fns["nativemem DebugAllocator Buffer"] = lambda: _per_call(user_pair, n)

    def traced_bytearray() -> float:
        # what Python offers for finding who allocated what: tracemalloc over bytearray
        import tracemalloc
        was = tracemalloc.is_tracing()
        if not was:
            tracemalloc.start()
        try:
            return _per_call(lambda: bytearray(64), n)
        finally:
            if not was:
                tracemalloc.stop()
    w.fns["bytearray under tracemalloc"] = traced_bytearray
    w._keep = (dbg,)  # type: ignore[attr-defined]
    pool = nativemem.Pool(64)
    w.fns["nativemem Pool.alloc/free"] = lambda: _per_call(lambda: pool.free(pool.alloc()), n)

    def many() -> float:
        t0 = time.perf_counter_ns()
        for _ in range(n // 1000):
            pool.free_many(pool.alloc_many(1000))
        return (time.perf_counter_ns() - t0) / (n // 1000 * 1000)
    w.fns["nativemem Pool alloc_many/free_many (per object)"] = many
    try:
        import numpy as np
        w.fns["numpy.empty(64, uint8)"] = lambda: _per_call(lambda: np.empty(64, np.uint8), n)
    except ImportError:
        pass
    try:
        from cymem.cymem import Address
        w.fns["cymem Address"] = lambda: _per_call(lambda: Address(64, 1), n)
    except ImportError:
        pass
    w._keep = (libc, pool)  # type: ignore[attr-defined]
    ws.append(w)
    return ws


# ---- the jemalloc child process --------------------------------------------------------------
#: Areas whose workloads compare allocators: there the jemalloc rows belong.
CHILD_AREAS = ("backends", "pool", "numpy", "python")
#: What the jemalloc child process's environment adds (glibc: room for jemalloc's static TLS).
CHILD_ENV_NOTE = "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=65536"
CHILD_TIMEOUT = 600.0  # seconds for one answer of the child (its longest loop takes well under one)


class ChildError(RuntimeError):
    """The jemalloc child process failed, exited or did not answer."""


def _is_jemalloc(contender: str) -> bool:
    return "jemalloc" in contender


def _build_workloads(quick: bool, only: Optional[str]) -> List[Workload]:
    workloads: List[Workload] = []
    if only in (None, "backends", "pool"):
        workloads += _c_workloads(quick, only)
    if only in (None, "debug", "refcount", "interning", "cow", "numpy"):
        workloads += _family_workloads(quick, only)
    if only in (None, "python"):
        workloads += _py_workloads(quick)
    return workloads


def _child_plan(only: Optional[str]) -> Tuple[str, str]:
    """Where the jemalloc rows come from: ("here", ""), ("child", "") or ("absent", why)."""
    from .backends import _load, find_library
    if only is not None and only not in CHILD_AREAS:
        return "none", ""
    info = _load("jemalloc").info
    if info.available:
        return "here", ""
    if not sys.platform.startswith("linux"):
        return "absent", f"jemalloc rows absent: {info.reason}"
    if find_library("jemalloc") is None:
        return "absent", "jemalloc rows absent: libjemalloc not found (apt-get install libjemalloc2, dnf install jemalloc)"
    return "child", ""


def _child_env() -> Dict[str, str]:
    from .backends import JEMALLOC_TLS_TUNABLE
    env = dict(os.environ)
    tun = env.get("GLIBC_TUNABLES", "")
    if "optional_static_tls" not in tun:
        env["GLIBC_TUNABLES"] = (tun + ":" if tun else "") + JEMALLOC_TLS_TUNABLE
    env.pop("NATIVEMEM_BACKEND", None)
    return env


# the child imports this very nativemem: its directory goes first on sys.path unless already there
_CHILD_CODE = ("import sys; p = sys.argv[1]; p in sys.path or sys.path.insert(0, p); "
               "from nativemem.bench import _child_main; sys.exit(_child_main())")


class _Child:
    """The long-lived child process that measures the jemalloc rows, one request at a time.

    Protocol: JSON lines on its stdin and on a copy of its original stdout (its own stdout and
    stderr go to a temporary file, shown when it fails).  {"op": "setup", "quick", "only"} ->
    {"ok", "version", "rows": [[area, workload, contender], ...]} or {"ok": false, "reason"};
    {"op": "run", "i": n} -> {"ok", "ns", "ops"}; {"op": "quit"}."""

    def __init__(self, env: Optional[Dict[str, str]] = None) -> None:
        import subprocess
        import tempfile
        self.err = tempfile.TemporaryFile()
        self.dead: Optional[str] = None
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, env=env or _child_env())

    def _stderr_tail(self) -> str:
        try:
            self.err.seek(0)
            text = self.err.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return text.splitlines()[-1][-300:] if text else ""

    def ask(self, msg: Dict[str, Any], timeout: float = CHILD_TIMEOUT) -> Dict[str, Any]:
        import select
        if self.dead:
            raise ChildError(self.dead)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        timed_out, why = False, "a garbled answer"
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            timed_out = not ready
            line = self.proc.stdout.readline() if ready else b""
        except (OSError, ValueError) as exc:
            line, why = b"", f"{type(exc).__name__}: {exc}"
        try:
            got = json.loads(line) if line else None
        except ValueError:
            got = None
        if not isinstance(got, dict):
            code = self.proc.poll()
            self._stop()
            if timed_out:
                why = "no answer in %.0f s" % timeout
            elif code is not None or not line:
                code = self.proc.returncode if code is None else code
                why = f"it exited with status {code}"
            tail = self._stderr_tail()
            self.dead = f"the jemalloc child process failed ({why}{': ' + tail if tail else ''})"
            raise ChildError(self.dead)
        return got

    def close(self) -> None:
        self._stop()
        self.err.close()

    def _stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass


def _child_main() -> int:
    """The child's side of _Child's protocol (run as ``python -c``)."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else written to stdout cannot garble the protocol
    try:  # NumPy (C++) before jemalloc: a libstdc++ loaded after Debian's jemalloc takes jemalloc's
        import numpy  # noqa: F401  operator new/delete and frees glibc blocks with them (README)
    except ImportError:
        pass
    from .backends import _load
    items: List[Tuple[Workload, str]] = []
    workloads: List[Workload] = []
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg.get("op")
        if op == "quit":
            break
        if op == "setup":
            info = _load("jemalloc").info
            if not info.available:
                answer: Dict[str, Any] = {"ok": False, "reason": f"jemalloc rows absent: in a child process "
                                                                   f"with {CHILD_ENV_NOTE}: {info.reason}"}
            else:
                only = msg.get("only")
                workloads = [w for w in _build_workloads(bool(msg.get("quick")), only) if w.area in CHILD_AREAS]
                rows: List[List[str]] = []
                for w in workloads:
                    names = [n for n in w.fns if _is_jemalloc(n)]
                    if names and w.reference in w.fns:
                        names.append(w.reference)  # the control: the reference measured here too
                    for n in names:
                        items.append((w, n))
                        rows.append([w.area, w.name, n])
                answer = {"ok": True, "version": info.version, "rows": rows}
        elif op == "run":
            w, n = items[int(msg["i"])]
            try:
                answer = {"ok": True, "ns": float(w.fns[n]()), "ops": w.ops.get(n, 0)}
            except Exception as exc:
                answer = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
        else:
            answer = {"ok": False, "reason": f"unknown op {op!r}"}
        proto.write(json.dumps(answer) + "\n")
        proto.flush()
    return 0


def _control_name(reference: str) -> str:
    return f"{reference} (control)"


def _attach_child(child: _Child, workloads: Sequence[Workload], quick: bool, only: Optional[str]) -> str:
    """Ask the child for its rows and add them to ``workloads`` as contenders measured there;
    returns the child's jemalloc version (raises ChildError with the reason when it has none)."""
    got = child.ask({"op": "setup", "quick": quick, "only": only})
    if not got.get("ok"):
        raise ChildError(str(got.get("reason")))
    by_key = {(w.area, w.name): w for w in workloads}
    for i, (area, wname, contender) in enumerate(got["rows"]):
        w = by_key.get((area, wname))
        if w is None:
            continue
        label = _control_name(contender) if contender == w.reference else contender

        def remote(i: int = i, w: Workload = w, label: str = label) -> float:
            ans = child.ask({"op": "run", "i": i})
            if not ans.get("ok"):
                raise ChildError(f"the jemalloc child process could not measure {label!r}: {ans.get('reason')}")
            w.ops[label] = int(ans.get("ops") or 0)
            return float(ans["ns"])
        w.fns[label] = remote
        w.where[label] = "child"
    return str(got.get("version"))


# ---- running -------------------------------------------------------------------------------
@dataclass
class Result:
    """Everything one run produced: the rows, notes on absent rows, the child's backends."""
    rows: List[Row]
    notes: List[str]
    child_backends: Dict[str, str]


def run(quick: bool = True, only: Optional[str] = None, reps: Optional[int] = None,
        progress: Optional[Callable[[str], None]] = None, notes: Optional[List[str]] = None) -> List[Row]:
    """Measure every workload (optionally one AREA) and return rows with ratios.  Why rows are
    absent (jemalloc not installed, its child process failed) is appended to ``notes``."""
    def step(done: int, total: int, label: str) -> None:
        if progress:
            progress(f"[{done}/{total}] {label}")
    res = measure(quick, only, reps, step)
    if notes is not None:
        notes.extend(res.notes)
    return res.rows


def measure(quick: bool = True, only: Optional[str] = None, reps: Optional[int] = None,
            step: Optional[Callable[[int, int, str], None]] = None, child_env: Optional[Dict[str, str]] = None
            ) -> Result:
    """run() with everything: ``step(done, total, label)`` after each measurement; ``child_env``
    replaces the jemalloc child's environment (tests)."""
    if only is not None and only not in AREAS:
        raise ValueError(f"unknown area {only!r}; choose from {', '.join(AREAS)}")
    reps = reps or (5 if quick else 9)
    workloads = _build_workloads(quick, only)
    notes: List[str] = []
    child_backends: Dict[str, str] = {}
    plan, why = _child_plan(only)
    child: Optional[_Child] = None
    if plan == "absent":
        notes.append(why)
    elif plan == "child" or child_env is not None:
        child = _Child(child_env)
        try:
            child_backends["jemalloc"] = _attach_child(child, workloads, quick, only) + " (child process)"
        except ChildError as exc:
            notes.append(str(exc))
            child.close()
            child = None
    try:
        rows = _measure(workloads, reps, step, notes)
    finally:
        if child is not None:
            child.close()
    return Result(rows, notes, child_backends)


def _measure(workloads: Sequence[Workload], reps: int, step: Optional[Callable[[int, int, str], None]],
             notes: List[str]) -> List[Row]:
    rows: List[Row] = []
    total = sum(len(w.fns) for w in workloads) * (reps + 1)
    done = 0
    for w in workloads:
        samples: Dict[str, List[float]] = {k: [] for k in w.fns}
        dropped: set[str] = set()
        for rep in range(reps + 1):  # rep 0 is the warm-up
            for name, fn in w.fns.items():  # interleaved round-robin (the child's rows included)
                done += 1
                if name in dropped:
                    continue
                try:
                    v = fn()
                except ChildError as exc:
                    dropped.add(name)
                    if str(exc) not in notes:
                        notes.append(str(exc))
                    continue
                if rep:
                    samples[name].append(v)
                if step:
                    step(done, total, f"{w.area}: {w.name}: {name}")
        ref = statistics.median(samples[w.reference]) if samples.get(w.reference) else None
        for name, vals in samples.items():
            if name in dropped or not vals:
                continue
            med = statistics.median(vals)
            rows.append(Row(w.area, w.name, name, w.level, med, min(vals), max(vals), len(vals),
                            (med / ref) if ref and med > 0 else None, w.reference, w.ops.get(name, 0),
                            w.where.get(name, "main")))
    return rows


def _label(r: Row) -> str:
    return r.contender + (" [child]" if r.process == "child" else "")


def legend(rows: Sequence[Row]) -> List[str]:
    """The lines that explain the [child] rows (none when there are none)."""
    if not any(r.process == "child" for r in rows):
        return []
    return [f"[child]: measured in a child process started with {CHILD_ENV_NOTE} (glibc cannot load "
            f"jemalloc into this one), interleaved with this process's rows in the same rounds; ratios are "
            f"to this process's reference; \"(control)\" is the reference measured again in the child."]


def render_table(rows: Sequence[Row], machine: Optional[Dict[str, Any]] = None, markdown: bool = False,
                 notes: Sequence[str] = ()) -> str:
    out: List[str] = []
    if machine:
        out.append(f"{machine['platform']} | {machine['cpu']} | {machine['cores']} cores | Python {machine['python']}")
        out.append("backends: " + ", ".join(f"{k} {v}" for k, v in machine["backends"].items()))
        out.append("")
    foot = legend(rows) + list(notes)
    if markdown:
        out.append("| area | workload | contender | median ns/op | spread (min..max) | ratio |")
        out.append("|---|---|---|---:|---:|---:|")
        for r in rows:
            ratio = f"{r.ratio:.2f}x {r.reference}" if r.ratio is not None else "-"
            out.append(f"| {r.area} | {r.workload} | {_label(r)} | {r.median_ns:.1f} | "
                       f"{r.min_ns:.1f}..{r.max_ns:.1f} | {ratio} |")
        if foot:
            out.append("")
            out += foot
        return "\n".join(out)
    last = None
    for r in rows:
        if (r.area, r.workload) != last:
            out.append(f"{r.area} / {r.workload} ({r.level} level, ratio to {r.reference}):")
            last = (r.area, r.workload)
        ratio = f"{r.ratio:6.2f}x" if r.ratio is not None else "     -"
        out.append(f"  {_label(r):<52} {r.median_ns:9.1f} ns  [{r.min_ns:.1f}..{r.max_ns:.1f}]  {ratio}")
    if foot:
        out.append("")
        out += foot
    return "\n".join(out)


def benchmarks_path() -> str:
    """The benchmark results shipped with the package (nativemem/BENCHMARKS.md; benchmarks/README.md
    in the source tree points at it)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "BENCHMARKS.md")


def quick_comparison(file: Any = None) -> None:
    """The short comparison ``python -m nativemem`` prints: a malloc+free pair per backend, in C."""
    import nativemem
    file = file or sys.stdout
    allocs = _allocators()
    n = 200_000
    samples: Dict[str, List[float]] = {k: [] for k in allocs}
    pool = nativemem.Pool(64)
    samples["pool (64B objects)"] = []
    for _ in range(6):
        for name, a in allocs.items():
            samples[name].append(lib.nm_bench_pairs(a.cdata, 64, n, ffi.NULL))
        samples["pool (64B objects)"].append(lib.nm_pool_bench_pairs(pool.cdata, n))
    med = {k: statistics.median(v[1:]) for k, v in samples.items()}
    ref = med["libc"]
    print("quick comparison: 64-byte malloc+free pair, timed in C, median of 5 (lower is better):", file=file)
    print("  " + "   ".join(f"{k} {v:.1f} ns ({v / ref:.2f}x)" for k, v in med.items()), file=file)
    # the same from Python, against what Python users already have (interleaved, median of 5)
    libc = nativemem.allocator("libc")
    ppool = nativemem.Pool(64, allocator=libc)
    alloc, free, malloc = ppool.alloc, ppool.free, libc.malloc
    py: Dict[str, Callable[[], Any]] = {
        "bytearray(64)": lambda: bytearray(64),
        "Buffer malloc+free": lambda: malloc(64).free(),
        "Pool alloc+free": lambda: free(alloc()),
    }
    pys: Dict[str, List[float]] = {k: [] for k in py}
    for _ in range(6):
        for k, fn in py.items():
            pys[k].append(_per_call(fn, 20_000))
    pmed = {k: statistics.median(v[1:]) for k, v in pys.items()}
    pref = pmed["bytearray(64)"]
    print("  from Python, 64 bytes (ratio to bytearray(64)):", file=file)
    print("  " + "   ".join(f"{k} {v:.0f} ns ({v / pref:.2f}x)" for k, v in pmed.items()), file=file)
    print(f"  full benchmarks: python -m nativemem bench [--quick]; a full run's table: {benchmarks_path()}", file=file)
    pool.close()
    ppool.close()


PROGRESS_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


class _Progress:
    """Progress on stderr: on a terminal one line rewritten in place; otherwise (a CI log, a
    pipe) a line every PROGRESS_EVERY seconds, plus one at the start and one at the end."""

    def __init__(self, stream: Any = None, every: float = PROGRESS_EVERY, tty: Optional[bool] = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every
        self.t0 = time.monotonic()
        self.last = self.t0
        self.done = self.total = 0

    def start(self, what: str) -> None:
        if not self.tty:
            self._line(f"bench: started: {what}")

    def __call__(self, done: int, total: int, label: str) -> None:
        self.done, self.total = done, total
        if self.tty:
            self.stream.write("\r\033[K" + f"[{done}/{total}] {label}"[:120])
            self.stream.flush()
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line(f"bench: {done}/{total} measurements, {now - self.t0:.0f} s ({label})")

    def finish(self, rows: int) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
        else:
            self._line(f"bench: done: {rows} rows from {self.total} measurements in "
                       f"{time.monotonic() - self.t0:.0f} s")

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nativemem bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer workloads and repetitions (well under a minute)")
    ap.add_argument("--json", metavar="FILE", help="write the rows and machine info as JSON")
    ap.add_argument("--plot", metavar="FILE.png", help="one chart per area of ns/op on a log axis, with the "
                                                       "spread and the ratios (needs matplotlib)")
    ap.add_argument("--only", choices=AREAS, help="one area")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per contender (after one warm-up)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("nativemem bench: --plot needs matplotlib: pip install 'nativemem[plot]'", file=sys.stderr)
            return 2
    progress = _Progress()
    progress.start(f"{'quick' if args.quick else 'full'} run, areas: {args.only or ', '.join(AREAS)}")
    machine = _machine()
    res = measure(quick=args.quick, only=args.only, reps=args.reps, step=progress)
    progress.finish(len(res.rows))
    machine["backends"].update(res.child_backends)
    print(render_table(res.rows, machine, markdown=args.markdown, notes=res.notes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema": SCHEMA, "machine": machine, "quick": args.quick, "notes": res.notes,
                       "rows": [asdict(r) for r in res.rows]}, f, indent=1)
    if args.plot:
        plot(res.rows, args.plot)
    return 0


def plot(rows: Sequence[Row], path: str) -> None:
    """A PNG with one chart per area: median ns/op on a log axis, min..max whiskers over the
    repetitions, each bar labelled with its ratio to the workload's reference; the reference's
    bar is dark, rows measured in the jemalloc child process are hatched."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    areas: Dict[str, Dict[str, List[Row]]] = {}
    for r in rows:
        areas.setdefault(r.area, {}).setdefault(r.workload, []).append(r)
    if not areas:
        raise ValueError("no rows to plot")
    heights = [sum(len(rs) + 1 for rs in ws.values()) for ws in areas.values()]
    fig, axes = plt.subplots(len(areas), 1, figsize=(11, 0.26 * sum(heights) + 1.2 * len(areas)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    palette = [c for c in plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2"])
               if str(c).lower() not in ("#7f7f7f", "gray", "grey")] or ["C0"]  # grey is the reference's
    for ax, (area, ws) in zip(axes[:, 0], areas.items()):
        ys: List[float] = []
        labels: List[str] = []
        y = 0.0
        all_rows: List[Row] = []
        colors: List[Any] = []
        hatches: List[str] = []
        for k, (wname, rs) in enumerate(ws.items()):
            labels.append(f"{wname} (vs {rs[0].reference})")
            ys.append(y)
            y += 1
            for r in rs:
                ys.append(y)
                labels.append("  " + _label(r))
                all_rows.append(r)
                ref = r.contender == r.reference and r.process == "main"
                colors.append("0.25" if ref else palette[k % len(palette)])
                hatches.append("//" if r.process == "child" else "")
                y += 1
        bar_y = [yy for yy, lab in zip(ys, labels) if lab.startswith("  ")]
        med = [r.median_ns for r in all_rows]
        err = [[r.median_ns - r.min_ns for r in all_rows], [r.max_ns - r.median_ns for r in all_rows]]
        bars = ax.barh(bar_y, med, color=colors, height=0.75, xerr=err, error_kw={"elinewidth": 0.8, "capsize": 2})
        for b, h in zip(bars, hatches):
            if h:
                b.set_hatch(h)
                b.set_edgecolor("white")
        ax.set_xscale("log")
        top = max(r.max_ns for r in all_rows)
        low = min(max(r.min_ns, 1e-3) for r in all_rows)
        ax.set_xlim(low / 2, top * 6)
        for yy, r in zip(bar_y, all_rows):
            text = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
            ax.text(r.max_ns * 1.08, yy, f"{text}  ({r.median_ns:.1f} ns)", va="center", fontsize=7)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=7)
        for tick, lab in zip(ax.get_yticklabels(), labels):
            if not lab.startswith("  "):
                tick.set_fontweight("bold")
        ax.invert_yaxis()
        ax.set_xlabel("ns per operation (log scale; whiskers: min..max over the repetitions; lower is better)",
                      fontsize=8)
        ax.set_title(f"{area}: median ns/op, ratio to each workload's reference written at each bar", fontsize=9)
        ax.grid(axis="x", which="both", alpha=0.25)
        if any(r.process == "child" for r in all_rows):
            ax.legend(handles=[Patch(facecolor="0.6", hatch="//", edgecolor="white",
                                     label=f"measured in the jemalloc child process ({CHILD_ENV_NOTE})")],
                      fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
