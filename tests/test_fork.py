"""fork() while another thread holds a nativemem lock: the child must not hang.

Each case runs in a subprocess: one thread hammers an object (so that its locks are taken and
released all the time) while the main thread forks 300 times; every child does one operation on
the same object and exits with os._exit(0).  Without the pthread_atfork handlers (platform.c)
a child forked while the hammering thread held the object's lock inherits that lock held by a
thread that does not exist in the child, and hangs on it forever.  The parent gives each child
10 s, then kills it and fails.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import nativemem

pytestmark = pytest.mark.skipif(os.name != "posix" or not hasattr(os, "fork"),
                                reason="fork() is POSIX only (Windows has no fork: nothing to protect)")

FORKS = 300
CHILD_DEADLINE = 10.0  # seconds for one child to do its operation and exit
RUN_TIMEOUT = 120.0    # seconds for the whole subprocess

# Per case: setup (module level), the hammering thread's loop body, the child's operation.
#
# The Python layer holds the GIL across each of its calls, and os.fork() needs the GIL, so a
# Python-level call never holds a nativemem lock at the moment of a fork.  C callers do: other
# threads in C, NumPy through the allocator handler, cffi users (cffi releases the GIL around
# each call).  So each hammer makes the Python calls and also cffi calls on the same object,
# which run without the GIL (and Prop goes through cffi anyway).
CASES = {
    "debug": (
        "d = nativemem.DebugAllocator()",
        "b = d.malloc(64); b.free()\n"
        "lib.nm_bench_pairs(d.cdata, 64, 500, ffi.NULL)",
        "b = d.malloc(64); b.free()",
    ),
    "arena": (
        "a = nativemem.Arena(1 << 20)",
        "b = a.malloc(64); b.free()\n"
        "lib.nm_bench_pairs(a.cdata, 64, 500, ffi.NULL)",
        "b = a.malloc(64); b.free()",
    ),
    # A long key held by one reference: interning it again compares its 16 MiB under its shard's
    # lock (the hash is computed before taking it); the child takes that shard's lock too.
    "arena-mt": (
        "a = nativemem.Arena(1 << 20)\n"
        "assert lib.nm_arena_testing_mt(a.cdata, 1) == 1",
        "b = a.malloc(64); b.free()\n"
        "lib.nm_bench_pairs(a.cdata, 64, 500, ffi.NULL)\n"
        "lib.nm_bench_pairs(a.cdata, 48, 500, ffi.NULL)",
        "b = a.malloc(64); b.free(); a.check(); a.arena_stats()",
    ),
    "strtab": (
        "t = nativemem.StringTable()\n"
        "held = lib.nm_strtab_intern(t._t, LONG, len(LONG))",
        "for s in KEYS:\n"
        "    i = t.intern(s); i.release()\n"
        "s = lib.nm_strtab_intern(t._t, LONG, len(LONG)); lib.nm_strtab_release(t._t, s)",
        "i = t.intern('x'); i.release()\ni = t.intern(LONG); i.release()",
    ),
    "prop": (
        "",
        "p = nativemem.Prop('a'); nativemem.Prop('b', parent=p); nativemem.Prop('c', parent=p); p.destroy()",
        "p = nativemem.Prop('a'); nativemem.Prop('b', parent=p); p.destroy()",
    ),
    # A pool's fast paths take no lock: its locks (the pool's, and the global one behind
    # thread-exit handling) are taken when a thread first uses the pool and when it exits.  So
    # the hammer also runs short-lived threads (Python ones, and C ones that a C benchmark loop
    # starts); the forking main thread never used the pool, so each child's allocation takes
    # both locks.
    "pool": (
        "p = nativemem.Pool(64)\n"
        "def one():\n"
        "    x = p.alloc(); p.free(x)\n",
        "x = p.alloc(); p.free(x)\n"
        "th = threading.Thread(target=one); th.start(); th.join()\n"
        "lib.nm_bench_pool_larson(p.cdata, 8, 50, 2, ffi.NULL)",
        "x = p.alloc(); p.free(x)",
    ),
}

SCRIPT = """
import os, signal, sys, threading, time
import nativemem
from nativemem._ffi import ffi, lib

KEYS = [str(k) for k in range(16)]
LONG = b"y" * (16 << 20)
{setup}

def hammer_once():
{hammer}

stop = threading.Event()
rounds = [0]

def hammer():
    try:
        while not stop.is_set():
            hammer_once()
            rounds[0] += 1
    except BaseException as e:
        print("HAMMER FAILED: %r" % (e,), flush=True)
        os._exit(4)

th = threading.Thread(target=hammer, daemon=True)
th.start()
while rounds[0] < 10:
    time.sleep(0.001)

for n in range({forks}):
    pid = os.fork()
    if pid == 0:
        try:
{child}
        except BaseException:
            import traceback; traceback.print_exc(); sys.stderr.flush()
            os._exit(3)
        os._exit(0)
    deadline = time.monotonic() + {deadline}
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            print("HANG: child %d of {forks} was still running after {deadline} s" % n, flush=True)
            os._exit(1)
        time.sleep(0.0005)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print("FAIL: child %d of {forks} exited with %d" % (n, code), flush=True)
        os._exit(2)
stop.set()
th.join()
print("OK %d forks, %d hammer rounds" % ({forks}, rounds[0]), flush=True)
"""


def _indent(code: str, n: int) -> str:
    return textwrap.indent(code, " " * n)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_fork_while_another_thread_holds_the_lock(kind):
    setup, hammer, child = CASES[kind]
    script = SCRIPT.format(setup=setup, hammer=_indent(hammer, 4), child=_indent(child, 12), forks=FORKS,
                           deadline=CHILD_DEADLINE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(nativemem.__file__)),
                                                    env.get("PYTHONPATH", "")] if p)
    try:
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=RUN_TIMEOUT,
                           env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{kind}: the forking process did not finish in {RUN_TIMEOUT} s\n{e.stdout}\n{e.stderr}")
    assert r.returncode == 0 and "OK" in r.stdout, f"{kind}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
