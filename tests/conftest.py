"""Shared fixtures: every allocator test runs against every backend available here."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import List

import pytest

import nativemem

SRC_DIR = os.path.dirname(os.path.dirname(os.path.abspath(nativemem.__file__)))

MEMCHECK_KINDS = r"(Invalid|Conditional|Use of uninitialised|Mismatched|Source and destination)"


def memcheck_reports(log: str, kinds: str = MEMCHECK_KINDS) -> List[str]:
    """A memcheck log split into its reports (each begins after a blank "==pid==" line), keeping
    those whose headline matches the regex `kinds`."""
    blocks, cur = [], []
    for line in log.splitlines():
        body = re.sub(r"^==\d+== ?", "", line)
        if not body.strip():
            if cur:
                blocks.append("\n".join(cur))
            cur = []
        else:
            cur.append(body)
    if cur:
        blocks.append("\n".join(cur))
    return [b for b in blocks if re.match(kinds, b)]


def available_backends() -> List[str]:
    return [b.name for b in nativemem.backends() if b.available]


def _backend_params():
    params = []
    for info in nativemem.backends():
        if info.name in ("heap", "process-heap", "zone") and not info.available:
            mark = pytest.mark.skip(reason=f"{info.name}: not this platform")
        elif not info.available:
            mark = pytest.mark.skip(reason=f"{info.name} unavailable in this process (see nativemem.backends())")
        else:
            mark = ()
        params.append(pytest.param(info.name, marks=mark, id=info.name))
    params.append(pytest.param("arena", id="arena", marks=() if hasattr(nativemem, "Arena") else
                               pytest.mark.skip(reason="nativemem.Arena not built")))
    return params


@pytest.fixture(params=_backend_params())
def alloc(request) -> nativemem.Allocator:
    """A fresh Allocator (own statistics) on each available backend, and a 64 MiB arena."""
    if request.param == "arena":
        return nativemem.Arena(64 << 20)
    return nativemem.allocator(request.param)


def run_python(args: List[str], env_extra=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    """Run the real interpreter on args with the package importable; capture text output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC_DIR + os.pathsep + env.get("PYTHONPATH", "")
    if env_extra:
        env.update(env_extra)
    return subprocess.run([sys.executable] + args, env=env, capture_output=True, text=True, timeout=timeout, **kw)


#: Hypothesis state-machine steps per allocator-like object (issue: >= 10,000 in CI).
FUZZ_STEPS = int(os.environ.get("NATIVEMEM_FUZZ_STEPS", "10000"))


def machine_settings(step_count: int = 50):
    """Settings giving FUZZ_STEPS steps in total: max_examples x stateful_step_count."""
    from hypothesis import HealthCheck, settings
    return settings(max_examples=max(1, FUZZ_STEPS // step_count), stateful_step_count=step_count, deadline=None,
                    database=None, suppress_health_check=list(HealthCheck))
