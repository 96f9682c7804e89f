"""Regenerate the benchmark table from a fresh full run.

The canonical file is src/nativemem/BENCHMARKS.md (shipped in the wheel as nativemem/BENCHMARKS.md);
benchmarks/README.md points there.  One run measures everything: where jemalloc cannot be loaded
into Python (Debian's libjemalloc), its rows come from the bench's child process, in the same run
(rows marked [child]).  Options: --plot FILE.png also writes the chart of that run."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET = os.path.join(ROOT, "src", "nativemem", "BENCHMARKS.md")

from nativemem.bench import SCHEMA, Row, render_table  # noqa: E402  (the nativemem installed here: pip install -e .)


def _groups(rows: Sequence[Row]) -> Dict[Tuple[str, str], Dict[str, Row]]:
    out: Dict[Tuple[str, str], Dict[str, Row]] = {}
    for r in rows:
        out.setdefault((r.area, r.workload), {})[r.contender] = r
    return out


# Why each kind of loss happens: (area, words of the workload, start of the contender) -> cause.
CAUSES: List[Tuple[Tuple[str, str, str], str]] = [
    (("backends", "larson", "arena"), "one heap behind one lock (as Movian's PS3 heap) once a thread's striped "
     "cache of small blocks is empty or full: two threads then take turns on the lock and pass the heap's lines "
     "between cores"),
    (("backends", "malloc+free", "arena, striped"), "a striped arena's pair finds the thread's stripe (its "
     "counter slot, from thread-local storage) and takes that stripe's spinlock, on top of the checks; an arena one "
     "thread at a time uses goes to the heap's lock directly"),
    (("backends", "malloc+free", "arena"), "a free checks the block's header against its boundary tags and claims "
     "it with a compare-and-swap (of two racing frees one is told it is a double free); over five runs of this build "
     "the 64-byte pair was 1.00-1.09x libc, the spread between runs being the process's layout"),
    (("backends", "random sizes", "arena"), "TLSF with boundary tags: blocks above the caches (512 B) are "
     "searched for, split and merged on every call"),
    (("backends", "batch", "arena"), "the caches keep 8 blocks per size: the rest of a 256-block batch goes "
     "through TLSF's split and merge"),
    (("pool", "pair", "pool, unchecked"), "no check, but still an out-of-line call each way that finds the "
     "thread's cache (one thread-local compare: the thread's last pool) and keeps exact allocation and free "
     "counts; jemalloc's pair is the same shape without per-pool counts"),
    (("pool", "pair", "pool, not zeroed"), "the checks a malloc does not make: the object's bit in its chunk's "
     "allocation bitmap, set on alloc and tested (with the remote-free bit) and cleared on free, which catches "
     "double and foreign frees; the chunk header's magic; exact per-thread counts and peak"),
    (("pool", "pair", "pool"), "the same checks as \"pool, not zeroed\", and the object zeroed (a Pool zeroes by "
     "default: malloc does not)"),
    (("pool", "larson", "pool"), "a free from another thread sets a bit in the chunk's atomic remote bitmap (the "
     "double-free check), which the owner folds back into its free list later; the unchecked mode only pushes"),
    (("debug", "mixed", "debug"), "work on cold memory, measured one piece at a time: the 0xDD fill of the "
     "freed block (live for 256 operations, so not in cache) ~9.5 ns, the poison check of the block leaving the "
     "quarantine ~8.5 ns, the 0xCB fill of a new block ~6 ns, the first read of the freed block's canary ~8 ns, "
     "the base's malloc and free through the front door ~20 ns, two lock acquisitions ~4 ns; about 935 "
     "instructions a pair against libc's 250"),
    (("debug", "64B", "debug"), "canaries, poison fill and check, the record hash, under one lock"),
    (("refcount", "", "nm_refcount"), "the saturation and zero checks around the atomic"),
    (("interning", "Python", "StringTable"), "sys.intern is a dict probe inside the interpreter; a StringTable hit "
     "takes its shard's lock, counts a reference and makes an Interned handle"),
    (("cow", "Python", "CowBuffer"), "a handle object per call against one bytearray copy"),
    (("python", "", "nativemem DebugAllocator"), "the caller's site for the malloc and the free, and the debug "
     "allocator's checks"),
    (("python", "", "nativemem Pool.alloc"), "two bound-method calls and an address as a Python int"),
    (("python", "", "nativemem"), "a Python object per block, as bytearray; within a few ns of it"),
    (("numpy", "", "nativemem"), "within the noise of NumPy's own allocation path"),
]


def _cause(r: Row) -> str:
    for (area, words, contender), why in CAUSES:
        if r.area == area and words in r.workload and r.contender.startswith(contender):
            return f" Cause: {why}."
    return ""


def render(data: dict, head: str) -> str:
    """The Markdown file for one run's JSON (``python -m nativemem bench --json``)."""
    rows = [Row(**r) for r in data["rows"]]
    ours = ("pool", "arena", "nativemem", "debug", "nm_refcount", "StringTable", "CowBuffer", "make_writable")
    losses = [r for r in rows if r.ratio and r.ratio > 1.0 and r.contender.startswith(ours)]
    better: Dict[Tuple[str, str], Row] = {}
    for r in rows:
        key = (r.area, r.workload)
        if r.ratio and not r.contender.endswith("(control)") and (key not in better or r.ratio < (better[key].ratio or 0)):
            better[key] = r
    lines: List[str] = [head.rstrip(), ""]
    for (area, wl), group in _groups(rows).items():
        table, raw = group.get("libc"), group.get("raw libc (no table)")
        blocks = group.get("libc, blocks only")
        if table and raw:
            lines.append(f"- {area} / {wl}: glibc through nativemem's front door is {table.median_ns:.1f} ns with "
                         f"exact byte counts (the Python face's mode: two locked atomics and a malloc_usable_size "
                         f"call per operation) against {raw.median_ns:.1f} ns called directly "
                         f"({table.median_ns / raw.median_ns:.2f}x)"
                         + (f"; {blocks.median_ns:.1f} ns ({blocks.median_ns / raw.median_ns:.2f}x) with block "
                            f"counts, the C default: one more call level, an indirect call and the counter slot"
                            if blocks else "") + ".")
    # the pools against the fastest general allocator called directly (raw jemalloc, else raw mimalloc)
    for (area, wl), group in _groups(rows).items():
        ref = group.get("raw jemalloc (no table)") or group.get("raw mimalloc (no table)")
        if area != "pool" or ref is None:
            continue
        floor = group.get("raw free list (floor)")
        for name in ("pool", "pool, not zeroed", "pool, unchecked"):
            r = group.get(name)
            if r is not None and r.median_ns > ref.median_ns:
                lines.append(f"- {area} / {wl}: {name} at {r.median_ns:.1f} ns is {r.median_ns / ref.median_ns:.2f}x "
                             f"{ref.contender}{' [child]' if ref.process == 'child' else ''} ({ref.median_ns:.1f} ns: "
                             f"its malloc and free called directly)." + _cause(r)
                             + (f" The floor, a bare per-thread free list in out-of-line functions, is "
                                f"{floor.median_ns:.1f} ns." if floor is not None else ""))
    for r in losses:
        best = better[(r.area, r.workload)]
        where = " [child]" if best.process == "child" else ""
        lines.append(f"- {r.area} / {r.workload}: {r.contender}{' [child]' if r.process == 'child' else ''} at "
                     f"{r.median_ns:.1f} ns is {r.ratio:.2f}x {r.reference}; fastest here: {best.contender}{where} "
                     f"({best.median_ns:.1f} ns)." + _cause(r))
    lines += ["", "## Results", "", render_table(rows, data["machine"], markdown=True, notes=data.get("notes", ())), ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plot", metavar="FILE.png", help="also write the chart of this run (needs matplotlib)")
    ap.add_argument("--reps", type=int, help="repetitions per contender (default: the bench's, 9)")
    ap.add_argument("--from-json", metavar="FILE", help="render an existing --json file instead of running")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "bench.json")
            cmd = [sys.executable, "-m", "nativemem", "bench", "--json", out] + (["--plot", args.plot] if args.plot else [])
            cmd += ["--reps", str(args.reps)] if args.reps else []
            subprocess.check_call(cmd, stdout=subprocess.DEVNULL)
            with open(out) as f:
                data = json.load(f)
    if data.get("schema") != SCHEMA:
        print(f"regenerate: expected schema {SCHEMA}, got {data.get('schema')!r}", file=sys.stderr)
        return 1
    with open(os.path.join(HERE, "README.md.head")) as f:
        head = f.read()
    text = render(data, head)
    with open(TARGET, "w") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(TARGET, ROOT)} ({len(data['rows'])} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
