"""Regenerate benchmarks/README.md from a fresh full run (jemalloc loaded when installed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def _groups(rows):
    out = {}
    for r in rows:
        out.setdefault((r.area, r.workload), {})[r.contender] = r
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        # Everything on glibc first; then jemalloc's rows from runs where only nativemem uses it
        # (--tunables: LD_PRELOAD would make jemalloc the "libc" reference too).  Each jemalloc
        # ratio is to the libc row of its own run.
        out = os.path.join(tmp, "main.json")
        subprocess.check_call([sys.executable, "-m", "nativemem", "bench", "--json", out], stdout=subprocess.DEVNULL)
        with open(out) as f:
            data = json.load(f)
        for area in ("backends", "pool"):
            extra = os.path.join(tmp, f"je-{area}.json")
            rc = subprocess.call([sys.executable, "-m", "nativemem", "run", "--backend", "jemalloc", "--tunables", "--",
                                  "-m", "nativemem", "bench", "--only", area, "--json", extra],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if rc != 0:
                print(f"jemalloc rows for {area} skipped (jemalloc not loadable here)")
                continue
            with open(extra) as f:
                je = json.load(f)
            rows = data["rows"]
            for r in je["rows"]:
                if r["contender"] != "jemalloc":
                    continue
                r["contender"] = "jemalloc (own run, ratio to that run's libc)"
                idx = max(i for i, x in enumerate(rows) if (x["area"], x["workload"]) == (r["area"], r["workload"]))
                rows.insert(idx + 1, r)
            data["machine"]["backends"].update(je["machine"]["backends"])
    from nativemem.bench import Row, render_table
    rows = [Row(**r) for r in data["rows"]]
    ours = ("pool", "arena", "nativemem", "debug", "nm_refcount", "StringTable", "CowBuffer", "make_writable")
    losses = [r for r in rows if r.ratio and r.ratio > 1.0 and r.contender.startswith(ours)]
    better = {}
    for r in rows:
        key = (r.area, r.workload)
        if r.ratio and (key not in better or r.ratio < better[key].ratio):
            better[key] = r
    with open(os.path.join(HERE, "README.md.head")) as f:
        head = f.read()
    lines = [head.rstrip(), ""]
    for (area, wl), group in _groups(rows).items():
        table, raw = group.get("libc"), group.get("raw libc (no table)")
        if table and raw:
            lines.append(f"- {area} / {wl}: nativemem's table (statistics, usable-size bookkeeping) makes glibc "
                         f"{table.median_ns:.1f} ns against {raw.median_ns:.1f} ns called directly "
                         f"({table.median_ns / raw.median_ns:.1f}x).")
    for r in losses:
        best = better[(r.area, r.workload)]
        lines.append(f"- {r.area} / {r.workload}: {r.contender} at {r.median_ns:.1f} ns is {r.ratio:.2f}x "
                     f"{r.reference}; fastest here: {best.contender} ({best.median_ns:.1f} ns).")
    lines += ["", "## Results", "", render_table(rows, data["machine"], markdown=True), ""]
    with open(os.path.join(HERE, "README.md"), "w") as f:
        f.write("\n".join(lines))
    print(f"wrote benchmarks/README.md ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
