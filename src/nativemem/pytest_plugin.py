"""pytest plugin (entry point ``nativemem``), off unless ``--nativemem-leaks`` is given.

With the option, nativemem's default allocator is a DebugAllocator for the session, and every
test's call phase is watched for native memory it leaves allocated through *any* nativemem
allocator or pool: the default one, ``nativemem.allocator("libc")`` & co., an ``Arena``, a
``DebugAllocator`` or a ``Pool``/``ObjectPool``, whether made by the test or before it.  A test
leaking blocks fails, naming for each block the allocator (or pool) and the test's own line that
allocated it: debug allocators and checked pools record it themselves; for the others the
plugin records the caller of ``malloc``/``calloc``/``memalign`` and ``Pool.alloc``/``alloc_many``
while a test runs (it wraps those methods while the option is on).  Blocks made without a
recorded site (``copy.copy(buffer)``, C code using a pool) are counted, with their allocator.
Frames of pytest and pluggy are never shown as sites.  Memory kept by a pool as its own
(chunks cached for reuse, its control block) is not a leak: what counts is its live objects.
``@pytest.mark.nativemem_leaks(allow=N)`` tolerates up to N blocks and objects in all.

The test's call phase is what is watched: what its fixtures allocate during setup (and free in
teardown) is not counted.  Recording sites costs a few microseconds per allocation while a test
runs (the option is for leak hunting, not benchmarks).
"""
from __future__ import annotations

import gc
import os
import weakref
from typing import Any, Callable, Dict, Generator, List, Optional, Tuple

import pytest

_STATE: Dict[str, Any] = {}

# -- what the plugin records while it is on ------------------------------------------------------
# Pools: every Pool made while the plugin is on, with the address of its creation site.
_POOLS: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
# Buffers made by malloc/calloc/memalign of a non-debug allocator during the running test.
_TRACKED: List[Tuple["weakref.ReferenceType[Any]", int]] = []
# (id of a pool, object address) -> site of its allocation, for the objects allocated during the
# running test (checked pools record their own sites).
_POOL_OBJECTS: Dict[Tuple[int, int], int] = {}
_RUNNING = [False]
_SITE_DEPTH = 6  # frames captured per site; pytest's and pluggy's are dropped when shown
_PATCHED: List[Tuple[Any, str, Any]] = []  # (class, attribute, original or None) to restore


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("nativemem")
    group.addoption("--nativemem-leaks", action="store_true", default=False,
                    help="fail tests that leak native memory allocated through any nativemem allocator or pool")


def _install_hooks() -> None:
    """Record pools as they are made, and the site of each Buffer a test allocates (nativemem's
    debug allocators record their own).  Undone by :func:`_remove_hooks`."""
    from ._ffi import _core
    from .allocator import Allocator
    from .pool import Pool

    def patch(cls: Any, attr: str, make: Callable[[Any], Any]) -> None:
        original = getattr(cls, attr)
        _PATCHED.append((cls, attr, cls.__dict__.get(attr)))
        setattr(cls, attr, make(original))

    def pool_init(original: Any) -> Any:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            site = int(_core.site_address(_SITE_DEPTH))
            original(self, *args, **kwargs)
            _POOLS[self] = site
        return __init__

    def alloc_method(original: Any) -> Any:
        def method(self: Any, *args: Any) -> Any:
            buf = original(self, *args)
            if _RUNNING[0] and not _is_debug(self):  # debug allocators record their own sites
                if len(_TRACKED) >= _STATE.setdefault("prune_at", 4096):
                    _TRACKED[:] = [(r, s) for r, s in _TRACKED if not getattr(r(), "freed", True)]
                    _STATE["prune_at"] = max(4096, 2 * len(_TRACKED))
                _TRACKED.append((weakref.ref(buf), int(_core.site_address(_SITE_DEPTH))))
            return buf
        method.__name__ = getattr(original, "__name__", "method")
        method.__doc__ = getattr(original, "__doc__", None)
        return method

    def pool_alloc(original: Any) -> Any:
        def alloc(self: Any) -> Any:
            address = original(self)
            if _RUNNING[0] and not (self.checked or self.bughunt):
                _POOL_OBJECTS[(id(self), address)] = int(_core.site_address(_SITE_DEPTH))
            return address
        alloc.__doc__ = getattr(original, "__doc__", None)
        return alloc

    def pool_alloc_many(original: Any) -> Any:
        def alloc_many(self: Any, n: int) -> Any:
            addresses = original(self, n)
            if _RUNNING[0] and not (self.checked or self.bughunt):
                site = int(_core.site_address(_SITE_DEPTH))
                for address in addresses:
                    _POOL_OBJECTS[(id(self), address)] = site
            return addresses
        alloc_many.__doc__ = getattr(original, "__doc__", None)
        return alloc_many

    patch(Pool, "__init__", pool_init)
    patch(Pool, "alloc", pool_alloc)
    patch(Pool, "alloc_many", pool_alloc_many)
    for name in ("malloc", "calloc", "memalign"):
        patch(Allocator, name, alloc_method)


def _remove_hooks() -> None:
    while _PATCHED:
        cls, attr, original = _PATCHED.pop()
        if original is None:
            delattr(cls, attr)
        else:
            setattr(cls, attr, original)


def _is_debug(alloc: Any) -> bool:
    from .debug import DebugAllocator
    return isinstance(alloc, DebugAllocator)


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "nativemem_leaks(allow=0): blocks a test may leave allocated")
    if config.getoption("--nativemem-leaks"):
        import nativemem
        dbg = nativemem.DebugAllocator(traceback_depth=_SITE_DEPTH)
        _STATE["dbg"] = dbg
        _STATE["old"] = nativemem.set_default_allocator(dbg)
        _install_hooks()


def pytest_unconfigure(config: Any) -> None:
    if "dbg" in _STATE:
        import nativemem
        _remove_hooks()
        nativemem.set_default_allocator(_STATE.pop("old"))
        _STATE.pop("dbg")


# -- sites ---------------------------------------------------------------------------------------
def _internal_dirs() -> Tuple[str, ...]:
    dirs = _STATE.get("internal_dirs")
    if dirs is None:
        import _pytest
        import pluggy
        found = [os.path.dirname(os.path.abspath(m.__file__ or "")) for m in (_pytest, pluggy)]
        found.append(os.path.abspath(pytest.__file__ or ""))
        found.append(os.path.dirname(os.path.abspath(__file__)))  # nativemem itself
        dirs = _STATE["internal_dirs"] = tuple(found)
    return tuple(dirs)


def _frame_file(frame: str) -> str:
    head, sep, _ = frame.rpartition(" in ")
    text = head if sep else frame
    file, colon, line = text.rpartition(":")
    return file if colon and line.isdigit() else text


def _user_frames(frames: List[str]) -> List[str]:
    """The frames that are not pytest's, pluggy's or nativemem's own (all of them if none is)."""
    internal = _internal_dirs()
    kept = []
    for fr in frames:
        path = os.path.abspath(_frame_file(fr))
        if not any(path == d or path.startswith(d + os.sep) for d in internal):
            kept.append(fr)
    return kept


def _site_frames(address: int) -> List[str]:
    from ._ffi import ffi
    from ._sites import site_text
    if not address:
        return []
    text = site_text(ffi.cast("const char *", address))
    return _user_frames(text.split("\n")) if text != "<unknown>" else []


# -- one test --------------------------------------------------------------------------------------
class _Baseline:
    """What every live allocator and pool held when the test started."""

    def __init__(self) -> None:
        from .allocator import _owners, _owners_lock
        with _owners_lock:
            allocs = list(_owners.values())
        self.buffers: Dict[int, Tuple["weakref.ReferenceType[Any]", int]] = {}
        self.marks: Dict[int, int] = {}
        for a in allocs:
            self.buffers[id(a)] = (weakref.ref(a), a.live_buffers)
            if _is_debug(a) and not a.closed:
                self.marks[id(a)] = a.snapshot()
        self.pools: Dict[int, Tuple["weakref.ReferenceType[Any]", int, int]] = {}
        for p in list(_POOLS.keys()):
            if not p.closed:
                st = p.stats()
                self.pools[id(p)] = (weakref.ref(p), st.live, st.allocations)

    def before(self, table: Dict[int, Any], obj: Any) -> Optional[Any]:
        entry = table.get(id(obj))
        return entry if entry is not None and entry[0]() is obj else None


def _describe(alloc: Any) -> str:
    return f"allocator {alloc.name!r} (backend {alloc.backend!r})"


def _leak_report(base: _Baseline) -> Tuple[int, List[str]]:
    """(blocks and objects leaked, report lines) since ``base``."""
    from .allocator import _owners, _owners_lock
    with _owners_lock:
        allocs = list(_owners.values())
    count = 0
    lines: List[str] = []
    c_level: Dict[int, List[Any]] = {}  # debug allocator -> blocks it made for C code (no Python site)

    # Debug allocators: each block names its Python site.
    for a in allocs:
        if not _is_debug(a) or a.closed:
            continue
        prev = base.before(base.buffers, a)
        since = base.marks.get(id(a)) if prev is not None else None
        for lk in a.leaks(since=since):
            if not lk.traceback:
                c_level.setdefault(id(a), []).append(lk)
                continue
            frames = _user_frames(lk.traceback) or lk.traceback[:1]
            count += 1
            where = "" if a is _STATE.get("dbg") else f" by {_describe(a)}"
            lines.append(f"  {lk.size} bytes at {lk.address:#x}{where}, allocated at {frames[0]}")
            lines.extend(f"      {fr}" for fr in frames[1:])

    # Other allocators: the Buffers the test made that are still alive, with the sites recorded
    # by the plugin, and any others their counters show (made without a recorded site).
    alive: Dict[int, List[Tuple[Any, int]]] = {}
    for ref, site in _TRACKED:
        buf = ref()
        if buf is not None and not buf.freed:
            alive.setdefault(id(buf.allocator), []).append((buf, site))
    for a in allocs:
        if _is_debug(a) and not a.closed:  # a closed debug allocator lists no blocks: count them
            continue
        prev = base.before(base.buffers, a)
        delta = a.live_buffers - (prev[1] if prev is not None else 0)
        mine = alive.get(id(a), [])
        for buf, site in mine:
            frames = _site_frames(site)
            count += 1
            lines.append(f"  {buf.size} bytes at {buf.address:#x} by {_describe(a)}, allocated at "
                         f"{frames[0] if frames else '<unknown>'}")
            lines.extend(f"      {fr}" for fr in frames[1:])
        extra = delta - len(mine)
        if extra > 0:
            count += extra
            lines.append(f"  {extra} more Buffer(s) of {_describe(a)} made during the test are still allocated "
                         f"(made without a recorded site, e.g. by copy.copy())")

    # Pools: live objects, against the count at the start.
    users: Dict[int, int] = {}  # debug allocator -> pools and allocators drawing from it, in use
    for p in list(_POOLS.keys()):
        if p.closed:
            continue
        prev = base.before(base.pools, p)
        st = p.stats()
        if prev is None or st.allocations != prev[2]:  # created or used during the test
            users[id(p.allocator)] = users.get(id(p.allocator), 0) + 1
        delta = st.live - (prev[1] if prev is not None else 0)
        if delta <= 0:
            continue
        count += delta
        created = _site_frames(_POOLS.get(p, 0))
        at = f", created at {created[0]}" if created else ""
        lines.append(f"  pool {p.name!r} ({p.object_size}-byte objects{at}): {delta} object(s) allocated "
                     f"during the test still live")
        objs = p.live_objects()
        if p.checked or p.bughunt:
            sites = [(o.address, _user_frames((o.site or "").split("\n"))) for o in objs if o.site]
        else:
            sites = [(o.address, _site_frames(_POOL_OBJECTS[(id(p), o.address)])) for o in objs
                     if (id(p), o.address) in _POOL_OBJECTS]
        for address, frames in sites[-delta:][:20]:
            lines.append(f"      {address:#x} allocated at {frames[0] if frames else '<unknown>'}")
        if len(sites) < delta:
            lines.append(f"      ({delta - len(sites)} without a recorded site: made by the pool's C users, or "
                         f"make the pool with checked=True)")
    for a in allocs:  # an arena or debug allocator made in the test, drawing from a debug allocator
        keep = a._keepalive
        if _is_debug(keep) and base.before(base.buffers, a) is None:
            users[id(keep)] = users.get(id(keep), 0) + 1

    # Blocks a debug allocator made for C code: a pool's or another allocator's own memory
    # while such a user is in play (its live objects are what counts, above); else leaks.
    for a in allocs:
        blocks = c_level.get(id(a), [])
        if not blocks or users.get(id(a)):
            continue
        count += len(blocks)
        for lk in blocks[:20]:
            lines.append(f"  {lk.size} bytes at {lk.address:#x}, allocated from C at {lk.c_site or 'an unknown site'} "
                         f"(a string table, COW buffer, refcount or NumPy array made during the test?)")
    return count, lines


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: Any) -> Generator[None, Any, Any]:
    dbg = _STATE.get("dbg")
    if dbg is None:
        return (yield)
    import warnings

    import nativemem
    gc.collect()  # what earlier tests dropped goes now, not during this one
    base = _Baseline()
    errors_before = dbg.debug_stats().errors
    del _TRACKED[:]
    _POOL_OBJECTS.clear()
    _RUNNING[0] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", nativemem.CorruptionWarning)
        try:
            result = yield
        finally:
            _RUNNING[0] = False
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
        del _TRACKED[:]
        _POOL_OBJECTS.clear()
        pytest.fail("nativemem found memory corruption during the test:\n" + "\n".join(problems), pytrace=False)
    try:
        count, lines = _leak_report(base)
    finally:
        del _TRACKED[:]
        _POOL_OBJECTS.clear()
    marker: Optional[Any] = item.get_closest_marker("nativemem_leaks")
    allow = int(marker.kwargs.get("allow", 0)) if marker else 0
    if count > allow:
        head = (f"{count} native block(s)/pool object(s) allocated through nativemem during the test are still "
                f"allocated (allowed: {allow}):")
        shown = lines[:60] + ([f"  ... {len(lines) - 60} more lines"] if len(lines) > 60 else [])
        pytest.fail("\n".join([head] + shown), pytrace=False)
    return result
