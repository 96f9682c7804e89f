"""pytest plugin (entry point ``nativemem``), off unless ``--nativemem-leaks`` is given.

With the option, nativemem's default allocator is a DebugAllocator for the session and each test
that leaves native blocks allocated through nativemem fails, listing where they were allocated.
``@pytest.mark.nativemem_leaks(allow=N)`` tolerates up to N blocks.
"""
from __future__ import annotations

import gc
from typing import Any, Dict, Optional

import pytest

_STATE: Dict[str, Any] = {}


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("nativemem")
    group.addoption("--nativemem-leaks", action="store_true", default=False,
                    help="fail tests that leak native memory allocated through nativemem")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "nativemem_leaks(allow=0): blocks a test may leave allocated")
    if config.getoption("--nativemem-leaks"):
        import nativemem
        dbg = nativemem.DebugAllocator(traceback_depth=3)
        _STATE["dbg"] = dbg
        _STATE["old"] = nativemem.set_default_allocator(dbg)


def pytest_unconfigure(config: Any) -> None:
    if "dbg" in _STATE:
        import nativemem
        nativemem.set_default_allocator(_STATE.pop("old"))
        _STATE.pop("dbg")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: Any) -> Any:
    dbg = _STATE.get("dbg")
    if dbg is None:
        return (yield)
    import warnings

    import nativemem
    mark = dbg.snapshot()
    errors_before = dbg.debug_stats().errors
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", nativemem.CorruptionWarning)
        try:
            result = yield
        finally:
            gc.collect()  # forgotten Buffers are freed (and checked) now, inside the record
    corruption = [w for w in caught if issubclass(w.category, nativemem.CorruptionWarning)]
    for w in caught:  # the test's other warnings go on to pytest's own record
        if w not in corruption:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    problems = [f"  {w.message}" for w in corruption]
    try:
        dbg.check()
    except nativemem.NativeMemError as exc:
        problems.append(f"  {type(exc).__name__}: {exc}")
    new_errors = dbg.debug_stats().errors - errors_before
    if new_errors and not problems:
        problems.append(f"  the debug allocator found {new_errors} corruption/misuse error(s) during the test")
    if problems:
        pytest.fail("nativemem found memory corruption during the test:\n" + "\n".join(problems), pytrace=False)
    leaks = dbg.leaks(since=mark)
    marker: Optional[Any] = item.get_closest_marker("nativemem_leaks")
    allow = int(marker.kwargs.get("allow", 0)) if marker else 0
    if len(leaks) > allow:
        lines = [f"{len(leaks)} native block(s) ({sum(lk.size for lk in leaks)} bytes) allocated through "
                 f"nativemem during the test are still allocated (allowed: {allow}):"]
        for lk in leaks[:20]:
            lines.append(f"  {lk.size} bytes at {lk.address:#x}, allocated at {lk.site}")
            lines.extend(f"      {fr}" for fr in lk.traceback[1:])
        pytest.fail("\n".join(lines), pytrace=False)
    return result
