"""``python -m nativemem check [--json FILE] [--traceback-depth N] script.py [args]``.

Runs the script with a DebugAllocator as nativemem's default allocator (so pools, COW buffers
and ``nativemem.allocator()`` use it), then prints the blocks still allocated, grouped by Python
allocation site, and any corruption found.  Exits 1 when there were leaks or corruption (2 for a
usage error; the script's own failure is reported and also exits 1), so it can gate CI.
"""
from __future__ import annotations

import argparse
import json
import runpy
import sys
from typing import Any, Dict, List, Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nativemem check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    ap.add_argument("--traceback-depth", type=int, default=1, metavar="N", help="Python frames per site")
    ap.add_argument("--quarantine", type=int, default=1024, help="freed blocks held back to catch writes after free")
    ap.add_argument("script")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    ns = ap.parse_args(list(argv) if argv is not None else None)

    import nativemem
    dbg = nativemem.DebugAllocator(traceback_depth=max(1, ns.traceback_depth), quarantine=max(0, ns.quarantine))
    old = nativemem.set_default_allocator(dbg)
    errors: List[str] = []
    old_argv = sys.argv
    sys.argv = [ns.script] + list(ns.args)
    script_failed = False
    try:
        runpy.run_path(ns.script, run_name="__main__")
    except SystemExit as exc:
        script_failed = exc.code not in (None, 0)
    except nativemem.NativeMemError as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    except BaseException as exc:  # the script's own failure
        import traceback
        traceback.print_exc()
        script_failed = True
        del exc
    finally:
        sys.argv = old_argv
        nativemem.set_default_allocator(old)
    import gc
    gc.collect()  # objects the script dropped free their blocks now
    try:
        dbg.check()
    except nativemem.NativeMemError as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    try:
        dbg.flush()
    except nativemem.NativeMemError as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    report: Dict[str, Any] = dbg.report_json()
    report["errors_found"] = errors
    report["script_failed"] = script_failed
    out = sys.stderr
    if report["leaked_blocks"]:
        dbg.report(file=out)
    for e in errors:
        print(f"nativemem check: {e}", file=out)
    if not report["leaked_blocks"] and not errors:
        print(f"nativemem check: no leaks, no corruption ({report['total_allocs']} allocations, "
              f"peak {report['peak_bytes']} bytes)", file=out)
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if (report["leaked_blocks"] or errors or script_failed) else 0
