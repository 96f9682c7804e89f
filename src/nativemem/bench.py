"""python -m nativemem bench: every area of nativemem measured against its peers.

Every figure is measured the same way for every contender, in one run: a warm-up, then several
repetitions with the contenders interleaved round-robin (so drift on a shared machine hits all
alike), reported as the median and the spread (min..max) in nanoseconds per operation, and as a
ratio to a reference measured in the same run: glibc malloc through the table (C level) or
bytearray (Python level).  C-level loops run inside C (csrc/bench.c), so FFI cost does not
hide the allocator.

JSON schema (--json):

    {"schema": "nativemem-bench/1", "machine": {...}, "quick": bool,
     "rows": [{"area", "workload", "contender", "level": "C"|"python", "median_ns", "min_ns",
               "max_ns", "reps", "ratio", "reference", "ops"}]}
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
from typing import Any, Callable, Dict, List, Optional, Sequence

from ._ffi import ffi, lib

__all__ = ["Row", "Workload", "run", "render_table", "quick_comparison", "main", "AREAS", "SCHEMA"]

SCHEMA = "nativemem-bench/1"
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


@dataclass
class Workload:
    """One workload: several contenders measured interleaved; ``fns[name]()`` returns ns/op."""
    area: str
    name: str
    level: str
    reference: str
    fns: Dict[str, Callable[..., float]] = field(default_factory=dict)  # called with no argument
    ops: Dict[str, int] = field(default_factory=dict)


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
    for name, (m, f) in {"mimalloc": ("mi_malloc", "mi_free")}.items():
        loaded = _load(name)
        libh = loaded.keepalive
        if not loaded.info.available or libh is None:
            continue
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
        for name in ("libc", "mimalloc"):
            if name in allocs:
                b = nativemem.allocator(name)
                if lib.nm_allocator_set_stats(b.cdata, lib.NM_STATS_BLOCKS) != lib.NM_OK:
                    continue
                blocks_only[f"{name}, blocks only"] = b
        keep += [direct, blocks_only]
        sizes = (64,) if quick else (16, 64, 256, 4096)
        for size in sizes:
            w = Workload("backends", f"malloc+free {size}B", "C", "libc")
            for name, a in {**allocs, **blocks_only}.items():
                w.fns[name] = pairs(a, size, 200_000 * scale, w.ops, name)
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
            for name, a in allocs.items():
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
        libc = allocs["libc"]
        w = Workload("pool", "alloc+free pair (64B)", "C", "libc")
        w.fns["pool"] = lambda: lib.nm_pool_bench_pairs(pool.cdata, 200_000 * scale)
        for name, a in allocs.items():
            if name != "arena":
                w.fns[name] = pairs(a, 64, 200_000 * scale, w.ops, name)
        ws.append(w)
        w = Workload("pool", "batch 256 allocs then 256 frees (64B)", "C", "libc")
        w.fns["pool"] = lambda: lib.nm_pool_bench_batch(pool.cdata, 256, 400 * scale)
        for name, a in allocs.items():
            if name != "arena":
                w.fns[name] = (lambda a=a, name=name, w=w: _with_ops(w, name, lambda o: lib.nm_bench_batch(
                    a.cdata, 64, 256, 400 * scale, o)))
        ws.append(w)
        if not quick:
            w = Workload("pool", "larson-like, 2 threads, cross-thread frees (64B)", "C", "libc")
            w.fns["pool"] = lambda: _with_ops(w, "pool", lambda o: lib.nm_bench_pool_larson(pool.cdata, 1000, 100_000, 2, o))
            for name, a in allocs.items():
                if name != "arena":
                    w.fns[name] = (lambda a=a, name=name, w=w: _with_ops(w, name, lambda o: lib.nm_bench_larson(
                        a.cdata, 64, 64, 1000, 100_000, 2, o)))
            ws.append(w)
        del libc
    for w in ws:
        w._keep = (allocs, keep)  # type: ignore[attr-defined]
    return ws


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


# ---- running -------------------------------------------------------------------------------
def run(quick: bool = True, only: Optional[str] = None, reps: Optional[int] = None,
        progress: Optional[Callable[[str], None]] = None) -> List[Row]:
    """Measure every workload (optionally one AREA) and return rows with ratios."""
    if only is not None and only not in AREAS:
        raise ValueError(f"unknown area {only!r}; choose from {', '.join(AREAS)}")
    reps = reps or (5 if quick else 9)
    workloads: List[Workload] = []
    if only in (None, "backends", "pool"):
        workloads += _c_workloads(quick, only)
    if only in (None, "debug", "refcount", "interning", "cow", "numpy"):
        workloads += _family_workloads(quick, only)
    if only in (None, "python"):
        workloads += _py_workloads(quick)
    rows: List[Row] = []
    total = sum(len(w.fns) for w in workloads) * (reps + 1)
    done = 0
    for w in workloads:
        samples: Dict[str, List[float]] = {k: [] for k in w.fns}
        for rep in range(reps + 1):  # rep 0 is the warm-up
            for name, fn in w.fns.items():  # interleaved round-robin
                v = fn()
                if rep:
                    samples[name].append(v)
                done += 1
                if progress:
                    progress(f"[{done}/{total}] {w.area}: {w.name}: {name}")
        ref = statistics.median(samples[w.reference]) if w.reference in samples else None
        for name, vals in samples.items():
            med = statistics.median(vals)
            rows.append(Row(w.area, w.name, name, w.level, med, min(vals), max(vals), len(vals),
                            (med / ref) if ref and med > 0 else None, w.reference, w.ops.get(name, 0)))
    return rows


def render_table(rows: Sequence[Row], machine: Optional[Dict[str, Any]] = None, markdown: bool = False) -> str:
    out: List[str] = []
    if machine:
        out.append(f"{machine['platform']} | {machine['cpu']} | {machine['cores']} cores | Python {machine['python']}")
        out.append("backends: " + ", ".join(f"{k} {v}" for k, v in machine["backends"].items()))
        out.append("")
    if markdown:
        out.append("| area | workload | contender | median ns/op | spread (min..max) | ratio |")
        out.append("|---|---|---|---:|---:|---:|")
        for r in rows:
            ratio = f"{r.ratio:.2f}x {r.reference}" if r.ratio is not None else "-"
            out.append(f"| {r.area} | {r.workload} | {r.contender} | {r.median_ns:.1f} | "
                       f"{r.min_ns:.1f}..{r.max_ns:.1f} | {ratio} |")
        return "\n".join(out)
    last = None
    for r in rows:
        if (r.area, r.workload) != last:
            out.append(f"{r.area} / {r.workload} ({r.level} level, ratio to {r.reference}):")
            last = (r.area, r.workload)
        ratio = f"{r.ratio:6.2f}x" if r.ratio is not None else "     -"
        out.append(f"  {r.contender:<48} {r.median_ns:9.1f} ns  [{r.min_ns:.1f}..{r.max_ns:.1f}]  {ratio}")
    return "\n".join(out)


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
    print("  full benchmarks: python -m nativemem bench [--quick] (see benchmarks/README.md)", file=file)
    pool.close()
    ppool.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nativemem bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer workloads and repetitions (well under a minute)")
    ap.add_argument("--json", metavar="FILE", help="write the rows and machine info as JSON")
    ap.add_argument("--plot", metavar="FILE.png", help="bar chart of the ratios (needs matplotlib)")
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
    tty = sys.stderr.isatty()

    def progress(msg: str) -> None:
        if tty:
            sys.stderr.write("\r\033[K" + msg[:120])
            sys.stderr.flush()

    machine = _machine()
    rows = run(quick=args.quick, only=args.only, reps=args.reps, progress=progress)
    if tty:
        sys.stderr.write("\r\033[K")
    print(render_table(rows, machine, markdown=args.markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema": SCHEMA, "machine": machine, "quick": args.quick,
                       "rows": [asdict(r) for r in rows]}, f, indent=1)
    if args.plot:
        _plot(rows, args.plot)
    return 0


def _plot(rows: Sequence[Row], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups: Dict[str, List[Row]] = {}
    for r in rows:
        groups.setdefault(f"{r.area}: {r.workload}", []).append(r)
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.2 * len(groups)), squeeze=False)
    for ax, (title, rs) in zip(axes[:, 0], groups.items()):
        ax.barh([r.contender for r in rs], [r.ratio or 0 for r in rs])
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(f"{title} (ratio to {rs[0].reference}, lower is better)", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
