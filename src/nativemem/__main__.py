"""Command line: ``python -m nativemem [info|run|bench|check] ...``.

``info`` (the default) shows the platform, the build, every backend with its verified version or
why it is missing, the default pick and a short comparison timed in C.  It never ends in a
traceback: when ``NATIVEMEM_BACKEND`` names a backend that does not exist or cannot be used here,
the table is printed all the same, the default line says so, the comparison is skipped and the
exit status is 1 (with a one-line message on stderr), so a script or CI job can tell that
nativemem's default allocator cannot be created in this environment.  ``run`` starts a script
with the environment a backend needs (jemalloc on Linux: LD_PRELOAD, the static-TLS remedy).
``bench`` and ``check`` have their own ``--help``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
from typing import List, Optional, Sequence, Tuple

from .backends import BACKEND_NAMES, BackendInfo

DESCRIPTION = """\
Diagnostics and tools for nativemem, the native memory library.  With no command,
runs info.  Each command has its own help: python -m nativemem COMMAND --help
"""

EPILOG = """\
environment:
  NATIVEMEM_BACKEND   the default backend, one of:
                      %s
                      (unset: the platform's best available one)

exit status of info: 0, or 1 when NATIVEMEM_BACKEND names a backend that does not
exist or is unavailable here (the table still shows why).""" % ", ".join(BACKEND_NAMES)

RUN_DESCRIPTION = """\
Run a script (or any command) with the environment that makes a backend usable, and
with NATIVEMEM_BACKEND set to it.  jemalloc on Linux cannot be loaded once Python has
started (glibc: "cannot allocate memory in static TLS block"), so run preloads it
with LD_PRELOAD (or, with --tunables, reserves static TLS with GLIBC_TUNABLES).

examples:
  python -m nativemem run --backend jemalloc -- script.py arg1 arg2
  python -m nativemem run --backend mimalloc -- -m pytest -q
"""


def _probe_all() -> List[Tuple[str, Optional[BackendInfo], Optional[str]]]:
    """(name, info, error) for every backend; a probe that raises is reported, not fatal."""
    B = importlib.import_module("nativemem.backends")  # nativemem.backends is also a function
    out: List[Tuple[str, Optional[BackendInfo], Optional[str]]] = []
    for name in BACKEND_NAMES:
        try:
            out.append((name, B._load(name).info, None))
        except Exception as exc:  # a probe bug must not hide the other backends
            out.append((name, None, f"{type(exc).__name__}: {exc}"))
    return out


def _default_problem(infos: Sequence[Tuple[str, Optional[BackendInfo], Optional[str]]]) -> Optional[str]:
    """Why the backend NATIVEMEM_BACKEND asks for cannot be the default (None when it can, or unset)."""
    env = os.environ.get("NATIVEMEM_BACKEND")
    if not env:
        return None
    found = {name: (info, err) for name, info, err in infos}
    if env not in found:
        return (f"NATIVEMEM_BACKEND={env!r} is not a valid backend name; "
                f"use one of: {', '.join(BACKEND_NAMES)} (or unset it)")
    info, err = found[env]
    if info is None:
        return f"NATIVEMEM_BACKEND={env!r} requests a backend whose probe failed: {err}"
    if not info.available:
        return f"NATIVEMEM_BACKEND={env!r} requests a backend that is unavailable here: {info.reason}"
    return None


def _info(args: argparse.Namespace) -> int:
    import nativemem as nm
    B = importlib.import_module("nativemem.backends")  # nativemem.backends is also a function

    print(f"nativemem {nm.__version__} on {platform.system()} {platform.release()} {platform.machine()}")
    print(f"Python {platform.python_version()} ({sys.executable})")
    bi = nm.build_info()
    print(f"build: valgrind client requests {'on' if bi['valgrind'] else 'off'}, "
          f"ASan {'on' if bi['asan'] else 'off'}, {bi['pointer_bits']}-bit")
    print("backends:")
    infos = _probe_all()
    for name, info, err in infos:
        if info is None:
            print(f"  [err] {name:<13} the probe failed: {err}")
            continue
        mark = "yes" if info.available else "no "
        detail = f"{info.version}  {info.path or ''}" if info.available else info.reason
        print(f"  [{mark}] {info.name:<13} {detail}")
    problem = _default_problem(infos)
    if problem is not None:
        print(f"default: none: {problem}")
        print("quick comparison: skipped (no usable default backend)")
        print(f"nativemem: {problem}", file=sys.stderr)
        return 1
    try:
        default = B.default_backend_name()
    except Exception as exc:  # probing again cannot fail where _probe_all did not, but never a traceback
        print(f"nativemem: cannot choose the default backend: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"default: {default}" + (" (from NATIVEMEM_BACKEND)" if os.environ.get("NATIVEMEM_BACKEND") else ""))
    if not args.no_bench:
        from nativemem import bench
        try:
            bench.quick_comparison()
        except Exception as exc:
            print(f"nativemem: the quick comparison failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    B = importlib.import_module("nativemem.backends")  # nativemem.backends is also a function

    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("usage: python -m nativemem run --backend NAME -- script.py [args]", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["NATIVEMEM_BACKEND"] = args.backend
    if args.backend == "jemalloc" and sys.platform.startswith("linux"):
        path = B.find_library("jemalloc")
        if path is None:
            print("nativemem: libjemalloc not found; apt-get install libjemalloc2", file=sys.stderr)
            return 2
        if args.tunables:
            tun = env.get("GLIBC_TUNABLES", "")
            if "optional_static_tls" not in tun:
                env["GLIBC_TUNABLES"] = (tun + ":" if tun else "") + B.JEMALLOC_TLS_TUNABLE
        elif path not in env.get("LD_PRELOAD", ""):
            env["LD_PRELOAD"] = (path + " " + env.get("LD_PRELOAD", "")).strip()
    else:
        # no environment can make these usable later: say so now rather than in the script
        try:
            info = B._load(args.backend).info
        except Exception as exc:
            print(f"nativemem run: cannot probe backend {args.backend!r}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return 2
        if not info.available:
            print(f"nativemem run: backend {args.backend!r} is unavailable here: {info.reason}", file=sys.stderr)
            return 2
    if cmd[0].startswith("-") or cmd[0].endswith(".py") or (os.path.isfile(cmd[0]) and not os.access(cmd[0], os.X_OK)):
        cmd = [sys.executable] + cmd
    return subprocess.call(cmd, env=env)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nativemem", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", title="commands", metavar="COMMAND")
    p_info = sub.add_parser("info", help="platform, build, backends found or why not, default, timings",
                            description="Platform, build, every backend with its version or why it is "
                                        "missing, the default backend and a short comparison timed in C.",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p_info.add_argument("--no-bench", action="store_true", help="skip the short comparison")
    p_run = sub.add_parser("run", help="run a script with the environment a backend needs",
                           description=RUN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p_run.add_argument("--backend", required=True, choices=BACKEND_NAMES, metavar="NAME",
                       help=f"the backend to run on: {', '.join(BACKEND_NAMES)}")
    p_run.add_argument("--tunables", action="store_true",
                       help="jemalloc: set GLIBC_TUNABLES=glibc.rtld.optional_static_tls instead of LD_PRELOAD, so "
                            "jemalloc serves only nativemem (unsafe with C++ extensions loaded later: Debian's "
                            "jemalloc also replaces operator new/delete for libstdc++ loaded with it)")
    p_run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                       help="what to run, after --: a script.py (run with this Python), -m module, "
                            "or any program, with its arguments")
    sub.add_parser("bench", help="benchmarks: every area against its peers, with ratios", add_help=False)
    sub.add_parser("check", help="run a script under the debug allocator: leaks, corruption", add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from nativemem import bench
        return bench.main(argv[1:])
    if argv and argv[0] == "check":
        from nativemem import checkcli
        return checkcli.main(argv[1:])
    args = _parser().parse_args(argv or ["info"])
    if args.cmd == "run":
        return _run(args)
    if args.cmd is None:  # options without a command (python -m nativemem --no-bench is not one)
        args = _parser().parse_args(["info"])
    return _info(args)


if __name__ == "__main__":
    sys.exit(main())
