"""A chain of a million nested props: destroy, and the last reference going, need no C stack.

A parent holds its children, so only the root's handle is kept while the chain is built.
Ending the root walks the whole chain; a recursive walk overflowed the C stack (a crash, not an
exception) well before 200,000 levels.  Each case runs in a subprocess, on a thread with an
8 MiB stack so that the outcome does not depend on the caller's stack limit (ulimit -s).
"""
from __future__ import annotations

import os
import subprocess
import sys

import nativemem

DEPTH = 10 ** 6
TIMEOUT = 600.0

SCRIPT = r"""
import gc, sys, threading
import nativemem
from nativemem._ffi import lib

DEPTH = int(sys.argv[1])
MODE = sys.argv[2]
result = []


def chain():
    root = nativemem.Prop("root")
    cur = root
    for _ in range(DEPTH):
        cur = nativemem.Prop("c", parent=cur)  # the previous handle goes: its parent holds it
    del cur
    return root


def main():
    gc.collect()
    base = lib.nm_prop_live_count()
    root = chain()
    assert lib.nm_prop_live_count() == base + DEPTH + 1, (lib.nm_prop_live_count(), base)
    if MODE == "destroy":
        root.destroy()  # the chain goes now; the root stays, a zombie, while its handle lives
        assert root.zombie
        assert lib.nm_prop_live_count() == base + 1, (lib.nm_prop_live_count(), base)
    del root  # "drop": the last reference ends the whole chain
    gc.collect()
    assert lib.nm_prop_live_count() == base, (lib.nm_prop_live_count(), base)
    result.append("OK")


threading.stack_size(8 << 20)
t = threading.Thread(target=main)
t.start()
t.join()
print(result[0] if result else "FAILED")
"""


def _run(mode: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(nativemem.__file__)),
                                                    env.get("PYTHONPATH", "")] if p)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(DEPTH), mode], capture_output=True, text=True,
                       timeout=TIMEOUT, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "OK", f"{mode}: exit {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"


def test_destroy_of_a_million_deep_chain():
    _run("destroy")


def test_last_reference_of_a_million_deep_chain():
    _run("drop")
