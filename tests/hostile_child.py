"""What the hostile test files share: each case in a fresh Python process with a timeout (a crash
or a hang fails the case with the child's output), the children's common prelude, and small C
programs built against csrc/, with and without sanitizers (tests/test_hostile*.py)."""
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from conftest import SRC_DIR

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")
CC = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
CC_EXE = CC.split()[0] if CC else "cc"

needs_cc = pytest.mark.skipif(shutil.which(CC_EXE) is None or sys.platform == "win32",
                              reason=f"no C compiler ({CC_EXE}) / gcc-style command lines")
needs_checkout = pytest.mark.skipif(not os.path.isdir(os.path.join(CSRC, "include")),
                                    reason="needs the source checkout (csrc/)")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux (fork, pthreads)")


_PRELUDE_HEAD = """
import os, queue, random, re, struct, sys, threading, time, warnings
"""
_PRELUDE_BODY = r'''
import nativemem
from nativemem._ffi import lib, ffi
FAILS = []

def check(desc, cond):
    if not cond:
        FAILS.append(desc)

def done():
    if FAILS:
        sys.stderr.write("\n".join(FAILS[:40]) + "\n")
        sys.exit(1)
    print("OK")

def err():
    return ffi.string(lib.nm_last_error_message()).decode(errors="replace")

def A(p):
    return int(ffi.cast("uintptr_t", p))

def P(a):
    return ffi.cast("void *", a)
'''


def prelude(extra: str = "", quiet: bool = True) -> str:
    """The children's common prelude, then `extra`: check(desc, cond) records a failure and done()
    exits 1 listing them (else prints "OK"); err() is the thread's last nativemem error message;
    A(p) / P(a) turn a pointer into an address and back.  `quiet`: warnings are ignored."""
    return (_PRELUDE_HEAD + ('warnings.simplefilter("ignore")\n' if quiet else "") + _PRELUDE_BODY
            + textwrap.dedent(extra))


def run_child(prelude: str, code: str, timeout: float = 120, args=(), require_ok: bool = True) -> str:
    """Run `prelude` + `code` in a fresh interpreter; fail on a hang, a non-zero exit, or (with
    `require_ok`) output that does not end with the child's "OK"."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC_DIR + os.pathsep + env.get("PYTHONPATH", "")
    src = prelude + "\n" + textwrap.dedent(code)
    try:
        r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", src, *map(str, args)], timeout=timeout,
                           capture_output=True, text=True, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"child hung (> {timeout} s)\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}")
    assert r.returncode == 0, (f"child exited with {r.returncode}"
                               f"{' (signal %d)' % -r.returncode if r.returncode < 0 else ''}\n"
                               f"--- stdout (tail) ---\n{r.stdout[-3000:]}\n--- stderr (tail) ---\n{r.stderr[-6000:]}")
    if require_ok:
        assert r.stdout.rstrip().endswith("OK"), r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def build_c(tmp_path, c_dir, src, name, extra=(), exclude=()):
    """Build c_dir/src with every csrc/*.c (but `exclude`) into tmp_path/name; a build that fails
    only with `extra` flags (a sanitizer) skips the case."""
    exe = tmp_path / name
    srcs = sorted(os.path.join(CSRC, f) for f in os.listdir(CSRC) if f.endswith(".c") and f not in exclude)
    r = subprocess.run(CC.split() + ["-std=c11", "-O1", "-g", "-D_DEFAULT_SOURCE", f"-I{CSRC}/include", f"-I{CSRC}",
                                     *extra, *srcs, os.path.join(c_dir, src), "-o", str(exe), "-lpthread"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and extra:
        pytest.skip(f"cannot build with {extra}: {r.stderr[-500:]}")
    assert r.returncode == 0, r.stderr
    if extra and "-fsanitize=thread" in extra:  # some kernels (high ASLR entropy) refuse TSan binaries
        probe = subprocess.run([str(exe), "4096", "2", "10"], capture_output=True, text=True, timeout=60)
        if "FATAL: ThreadSanitizer" in probe.stderr:
            pytest.skip("ThreadSanitizer cannot run here: " + probe.stderr[:300])
    return str(exe)


def run_exe(cmd, timeout, env=None):
    """Run a built program; fail (with its output) if it hangs."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{cmd[0]} hung (timeout {timeout}s): {e.stdout!r} {e.stderr!r}")
