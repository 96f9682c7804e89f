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
        if table and raw:
            lines.append(f"- {area} / {wl}: nativemem's table (statistics, usable-size bookkeeping) makes glibc "
                         f"{table.median_ns:.1f} ns against {raw.median_ns:.1f} ns called directly "
                         f"({table.median_ns / raw.median_ns:.1f}x).")
    for r in losses:
        best = better[(r.area, r.workload)]
        where = " [child]" if best.process == "child" else ""
        lines.append(f"- {r.area} / {r.workload}: {r.contender}{' [child]' if r.process == 'child' else ''} at "
                     f"{r.median_ns:.1f} ns is {r.ratio:.2f}x {r.reference}; fastest here: {best.contender}{where} "
                     f"({best.median_ns:.1f} ns).")
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
