"""Command line: ``python -m nativemem [info|run|bench|check] ...``.

``info`` (the default) shows the platform, the build, every backend with its verified version or
why it is missing, the default pick and a short comparison timed in C.  ``run`` starts a script
with the environment a backend needs (jemalloc: LD_PRELOAD, the static-TLS remedy).  ``bench`` and ``check`` are
documented in their modules.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
from typing import List, Optional


def _info(args: argparse.Namespace) -> int:
    import nativemem as nm
    B = importlib.import_module("nativemem.backends")

    print(f"nativemem {nm.__version__} on {platform.system()} {platform.release()} {platform.machine()}")
    print(f"Python {platform.python_version()} ({sys.executable})")
    bi = nm.build_info()
    print(f"build: valgrind client requests {'on' if bi['valgrind'] else 'off'}, "
          f"ASan {'on' if bi['asan'] else 'off'}, {bi['pointer_bits']}-bit")
    print("backends:")
    for info in nm.backends():
        mark = "yes" if info.available else "no "
        detail = f"{info.version}  {info.path or ''}" if info.available else info.reason
        print(f"  [{mark}] {info.name:<13} {detail}")
    print(f"default: {B.default_backend_name()}"
          + (" (from NATIVEMEM_BACKEND)" if os.environ.get("NATIVEMEM_BACKEND") else ""))
    if not args.no_bench:
        try:
            from nativemem import bench
        except ImportError:  # pragma: no cover - bench module is part of the package
            return 0
        bench.quick_comparison()
    return 0


def _run(args: argparse.Namespace) -> int:
    B = importlib.import_module("nativemem.backends")

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
    if cmd[0].startswith("-") or cmd[0].endswith(".py") or (os.path.isfile(cmd[0]) and not os.access(cmd[0], os.X_OK)):
        cmd = [sys.executable] + cmd
    return subprocess.call(cmd, env=env)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m nativemem", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd")
    p_info = sub.add_parser("info", help="backends found, build flags, a short comparison (default)")
    p_info.add_argument("--no-bench", action="store_true", help="skip the short comparison")
    p_run = sub.add_parser("run", help="run a script on a backend (sets the environment it needs)")
    p_run.add_argument("--backend", required=True)
    p_run.add_argument("--tunables", action="store_true",
                       help="jemalloc: set GLIBC_TUNABLES=glibc.rtld.optional_static_tls instead of LD_PRELOAD, so "
                            "jemalloc serves only nativemem (unsafe with C++ extensions loaded later: Debian's "
                            "jemalloc also replaces operator new/delete for libstdc++ loaded with it)")
    p_run.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("bench", help="benchmarks (see python -m nativemem bench --help)", add_help=False)
    sub.add_parser("check", help="run a script under the debug allocator and report leaks", add_help=False)
    if argv and argv[0] == "bench":
        from nativemem import bench
        return bench.main(argv[1:])
    if argv and argv[0] == "check":
        from nativemem import checkcli
        return checkcli.main(argv[1:])
    args = parser.parse_args(argv or ["info"])
    if args.cmd == "run":
        return _run(args)
    return _info(args)


if __name__ == "__main__":
    sys.exit(main())
