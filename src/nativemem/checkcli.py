"""python -m nativemem check: run a script under the debug allocator; report leaks and corruption.

Runs the script with a DebugAllocator as nativemem's default allocator (so pools, COW buffers
and nativemem.allocator() use it), then prints the blocks still allocated, grouped by Python
allocation site, and any corruption found.

As Valgrind does, blocks the script's own module globals still held when it ended are listed as
"still reachable" (with their sites) without failing: the script's namespace is then dropped
(cleared, and garbage collected) and only the blocks alive after that are leaks.  Exits 1 when there were leaks or corruption (2 for a
usage error: a script that cannot be read, a bad option, a JSON report that cannot be written;
the script's own failure is reported and also exits 1), so it can gate CI.

Corruption is never silent: besides the errors check() and flush() raise at the end, it
counts every nativemem.CorruptionWarning emitted while the script runs (they are still shown
on stderr), every NativeMemError the script lets escape or that is raised where it cannot
propagate (a finalizer), and any error the debug allocator counted that never reached the user
(a free() whose exception the script swallowed).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import runpy
import sys
import traceback
import types
import warnings
import zipfile
from types import FrameType
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Type

_FRAME_FILE = re.compile(r"^(.*):\d+ in ")


def _int_option(lowest: int) -> Callable[[str], int]:
    """An argparse ``type=``: an integer in [lowest, MAX_ALLOC], else an error naming the limits."""
    from ._ffi import MAX_ALLOC

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
        if not lowest <= n <= MAX_ALLOC:
            raise argparse.ArgumentTypeError(
                f"must be between {lowest} and {MAX_ALLOC} (the largest size nativemem accepts), not {n}")
        return n
    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def _script_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be run (None when it can be opened)."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "__main__.py")):
            return f"cannot run {path}: it is a directory without __main__.py"
        return None
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        return f"cannot run {path}: {exc.strerror or exc}"
    return None


def _json_problem(path: str) -> Optional[str]:
    """Why the JSON report could not be written to ``path`` (None when it can); leaves no file."""
    existed = os.path.lexists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        return f"cannot write the JSON report to {path}: {exc.strerror or exc}"
    if not existed:
        try:
            os.unlink(path)
        except OSError:
            pass
    return None


def _harness_frame(frame: str, harness_files: "set[str]") -> bool:
    """A frame of the machinery that runs the script (runpy, this module), not of the script."""
    m = _FRAME_FILE.match(frame)
    file = m.group(1) if m else frame
    if file.startswith("<frozen "):
        return True
    try:
        return os.path.normcase(os.path.abspath(file)) in harness_files
    except (OSError, ValueError):
        return False


def _clean_sites(report: Dict[str, Any], depth: int) -> None:
    """Drop runpy's and check's own frames from every site's traceback, keeping ``depth`` frames."""
    harness = {os.path.normcase(os.path.abspath(f)) for f in
               (__file__, os.path.join(os.path.dirname(__file__), "__main__.py"), getattr(runpy, "__file__", None))
               if f}
    for g in report["sites"]:
        tb = g.get("traceback") or []
        kept = [f for f in tb if not _harness_frame(f, harness)]
        g["traceback"] = (kept or tb[:1])[:depth]


def _site_lines(sites: List[Dict[str, Any]], limit: int) -> List[str]:
    lines = []
    for g in sites[:limit]:
        lines.append(f"  {g['bytes']:>10} bytes in {g['blocks']:>5} block(s) at {g['site']}")
        for frame in g["traceback"][1:]:
            lines.append(f"{'':>36}{frame}")
    if len(sites) > limit:
        lines.append(f"  ... {len(sites) - limit} more sites")
    return lines


def _format_leaks(report: Dict[str, Any], limit: int = 20) -> str:
    # as DebugAllocator.report, on the cleaned tracebacks
    lines = [f"nativemem: {report['leaked_blocks']} block(s), {report['leaked_bytes']} bytes still allocated "
             f"(peak {report['peak_bytes']} bytes, {report['total_allocs']} allocations)"]
    return "\n".join(lines + _site_lines(report["sites"], limit))


def _run_script(path: str, namespaces: List[Dict[str, Any]]) -> None:
    """Run ``path`` as ``python path`` would, as runpy.run_path does, appending the globals it
    runs in to ``namespaces`` before it starts (so they can be dropped afterwards, whatever
    happens).  Directories and zip files (their ``__main__.py``) go through runpy itself."""
    if os.path.isdir(path) or zipfile.is_zipfile(path):
        namespaces.append(runpy.run_path(path, run_name="__main__"))  # a copy of the globals, on success
        return
    import pkgutil
    with open(os.path.abspath(path), "rb") as fh:
        code = pkgutil.read_code(fh)  # a compiled .pyc, as runpy takes it
    if code is None:
        with open(os.path.abspath(path), "rb") as fh:
            code = compile(fh.read(), path, "exec")
    module = types.ModuleType("__main__")
    g = module.__dict__
    g.update(__file__=path, __cached__=None, __loader__=None, __package__=None, __spec__=None)
    namespaces.append(g)
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    try:
        exec(code, g)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved
        else:
            sys.modules.pop("__main__", None)


#: The site shown for a block nativemem's C code allocated with no Python caller to name.
_C_LEVEL = "<nativemem internals: a Pool's chunks, a StringTable, COW or refcount block (no Python site)>"


def _group(leaks: List[Any]) -> List[Dict[str, Any]]:
    """Blocks grouped by site (as DebugAllocator.report_json), most bytes first."""
    groups: Dict[str, Dict[str, Any]] = {}
    for lk in leaks:
        site = lk.site if lk.traceback or lk.c_site else _C_LEVEL
        g = groups.setdefault(site, {"site": site, "traceback": lk.traceback, "c_site": lk.c_site,
                                     "blocks": 0, "bytes": 0})
        g["blocks"] += 1
        g["bytes"] += lk.size
    return sorted(groups.values(), key=lambda g: (-g["bytes"], g["site"]))


def _format_reachable(report: Dict[str, Any], limit: int = 20) -> str:
    lines = [f"nativemem: {report['blocks']} block(s), {report['bytes']} bytes still reachable from the "
             f"script's globals when it ended (not leaks: freed once its namespace was dropped)"]
    return "\n".join(lines + _site_lines(report["sites"], limit))


def _other_buffers(dbg: Any) -> Dict[Any, int]:
    """Live Buffers of every allocator other than ``dbg`` (nativemem.allocator("libc"), an Arena,
    another DebugAllocator...), by (name, backend, id)."""
    from .allocator import _owners, _owners_lock
    with _owners_lock:
        allocs = list(_owners.values())
    out: Dict[Any, int] = {}
    for a in allocs:
        if a is not dbg and a.live_buffers:
            key = (a.name, a.backend, id(a))
            out[key] = out.get(key, 0) + a.live_buffers
    return out


class _Watch:
    """Records CorruptionWarnings (still showing them on ``out``) and NativeMemErrors raised
    where they cannot propagate (sys.unraisablehook), while installed."""

    def __init__(self, out: TextIO) -> None:
        from .errors import CorruptionWarning, NativeMemError
        self.out = out
        self.found: List[str] = []
        self.debug_kind = 0  # how many of them the debug allocator's counter also counted
        self._warning = CorruptionWarning
        self._error = NativeMemError

    def counts_in_debug(self, exc_type: type) -> bool:
        from .errors import CorruptionError, InvalidFreeError
        return issubclass(exc_type, (CorruptionError, InvalidFreeError, self._warning))

    def add(self, text: str, exc_type: type) -> None:
        self.found.append(text)
        if self.counts_in_debug(exc_type):
            self.debug_kind += 1

    def __enter__(self) -> "_Watch":
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()  # restores the filters and showwarning on exit
        warnings.simplefilter("always", self._warning)
        self._show = warnings.showwarning
        warnings.showwarning = self._showwarning
        self._unraisable = sys.unraisablehook
        sys.unraisablehook = self._unraisablehook
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.unraisablehook = self._unraisable
        self._catch.__exit__(*exc)

    def _showwarning(self, message: Any, category: Type[Warning], filename: str, lineno: int,
                     file: Optional[TextIO] = None, line: Optional[str] = None) -> None:
        if not issubclass(category, self._warning):
            self._show(message, category, filename, lineno, file, line)
            return
        self.add(f"{category.__name__}: {message}", category)
        try:
            self.out.write(warnings.formatwarning(message, category, filename, lineno, line))
            self.out.flush()
        except Exception:  # a closed stream must not hide the record
            pass

    def _unraisablehook(self, u: Any) -> None:
        if u.exc_type is not None and issubclass(u.exc_type, (self._error, self._warning)):
            self.add(f"{u.exc_type.__name__}: {u.exc_value} (raised where it could not propagate: "
                     f"{u.err_msg or 'Exception ignored in'} {u.object!r})", u.exc_type)
        self._unraisable(u)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nativemem check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    ap.add_argument("--traceback-depth", type=_int_option(1), default=1, metavar="N",
                    help="Python frames per site (at least 1)")
    ap.add_argument("--quarantine", type=_int_option(0), default=1024, metavar="N",
                    help="freed blocks held back to catch writes after free (0: none)")
    ap.add_argument("script")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    ns = ap.parse_args(list(argv) if argv is not None else None)
    out = sys.stderr  # the script may replace sys.stderr; the report goes where the user looks

    problem = _script_problem(ns.script)
    json_path = os.path.abspath(ns.json) if ns.json else None  # the script may chdir
    if problem is None and ns.json:
        problem = _json_problem(ns.json)
    if problem is not None:
        out.write(ap.format_usage())
        print(f"nativemem check: {problem}", file=out)
        return 2

    import nativemem
    from ._ffi import MAX_ALLOC
    depth = ns.traceback_depth
    capture = depth
    if depth > 1:  # also capture the frames of runpy and of check itself, dropped from the report
        f: Optional[FrameType]
        f, below = sys._getframe(), 4
        while f is not None:
            below += 1
            f = f.f_back
        capture = min(depth + below, MAX_ALLOC)
    dbg = nativemem.DebugAllocator(traceback_depth=capture, quarantine=ns.quarantine)
    errors_before = dbg.debug_stats().errors
    others_before = _other_buffers(dbg)
    errors: List[str] = []
    script_failed = False
    status: Any = 0
    old_argv, old_path0 = sys.argv, None
    sys.argv = [ns.script] + list(ns.args)
    if not os.path.isdir(ns.script):  # as `python script.py`: its directory comes first on sys.path
        old_path0 = os.path.dirname(os.path.abspath(ns.script))
        sys.path.insert(0, old_path0)
    with _Watch(out) as watch:
        old = nativemem.set_default_allocator(dbg)
        namespaces: List[Dict[str, Any]] = []
        try:
            _run_script(ns.script, namespaces)
        except SystemExit as exc:
            status = exc.code
            if status is not None and not isinstance(status, int):
                print(status, file=out)  # as the interpreter does for sys.exit("message")
                status = 1
            script_failed = status not in (None, 0)
        except BaseException as exc:  # the script's own failure
            script_failed = True
            status = f"{type(exc).__name__} escaped"
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=out)
            if isinstance(exc, (nativemem.NativeMemError, nativemem.CorruptionWarning)):
                watch.add(f"{type(exc).__name__}: {exc}", type(exc))
            del exc
        finally:
            sys.argv = old_argv
            if old_path0 is not None and old_path0 in sys.path:
                sys.path.remove(old_path0)
            nativemem.set_default_allocator(old)
        gc.collect()  # objects the script dropped free their blocks now
        # Still reachable: what the script's globals held at its end.  Drop them (as the interpreter
        # does at exit); what survives that is held from somewhere else: a leak.
        held = {lk.serial: lk for lk in dbg.leaks()}
        for g in namespaces:
            g.clear()
        del namespaces
        gc.collect()
    errors.extend(watch.found)
    unseen = dbg.debug_stats().errors - errors_before - watch.debug_kind
    if unseen > 0:
        errors.append(f"{unseen} corruption error(s) found by the debug allocator while the script ran were "
                      f"never reported to it (a free() whose exception the script caught, or a Buffer freed by "
                      f"its finalizer, where nothing can raise); free() the blocks explicitly and let the "
                      f"exception propagate to see which block and where it was allocated")
    for final in (dbg.check, dbg.flush):
        try:
            final()
        except nativemem.NativeMemError as exc:
            text = f"{type(exc).__name__}: {exc}"
            if text not in errors:  # flush() may find again what check() found in the quarantine
                errors.append(text)

    report: Dict[str, Any] = dbg.report_json()
    report["sites"] = _group(dbg.leaks())  # as report_json's, naming C-level blocks for what they are
    _clean_sites(report, depth)
    alive = {lk.serial for lk in dbg.leaks()}
    freed = [lk for serial, lk in held.items() if serial not in alive]
    reachable: Dict[str, Any] = {"blocks": len(freed), "bytes": sum(lk.size for lk in freed), "sites": _group(freed)}
    _clean_sites(reachable, depth)
    report["still_reachable"] = reachable
    report["errors_found"] = errors
    report["script_failed"] = script_failed
    if reachable["blocks"]:
        print(_format_reachable(reachable), file=out)
    others = []
    for alloc, count in _other_buffers(dbg).items():
        extra = count - others_before.get(alloc, 0)
        if extra > 0:
            others.append({"allocator": alloc[0], "backend": alloc[1], "blocks": extra})
    report["other_allocators"] = others
    if report["leaked_blocks"]:
        print(_format_leaks(report), file=out)
    for o in others:
        print(f"nativemem: {o['blocks']} Buffer(s) of allocator {o['allocator']!r} (backend {o['backend']!r}) still "
              f"allocated; only the default allocator records sites here (use nativemem.allocator() or a "
              f"DebugAllocator in the script to see where)", file=out)
    for e in errors:
        print(f"nativemem check: {e}", file=out)
    if script_failed:
        print(f"nativemem check: the script failed ({status if isinstance(status, str) else f'exit status {status}'})",
              file=out)
    if not report["leaked_blocks"] and not others and not errors:
        what = "no leaks, no corruption" if not script_failed else "no leaks or corruption in what it ran"
        print(f"nativemem check: {what} ({report['total_allocs']} allocations, peak {report['peak_bytes']} bytes)",
              file=out)
    if json_path:
        try:
            text = json.dumps(report, indent=1)
            with open(json_path, "w") as fh:
                fh.write(text)
        except (OSError, ValueError, TypeError) as exc:
            print(f"nativemem check: cannot write the JSON report to {ns.json}: "
                  f"{getattr(exc, 'strerror', None) or exc}", file=out)
            return 2
    return 1 if (report["leaked_blocks"] or others or errors or script_failed) else 0
