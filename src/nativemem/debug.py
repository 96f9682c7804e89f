"""DebugAllocator: catch every class of native-memory bug and name the Python line.

What ``PYTHONMALLOC=debug`` and tracemalloc give Python objects, for native memory: canaries
before and after every block (an overflow of one byte is caught), a record of every live block
with the Python traceback (and the C site) of its allocation, 0xDD poisoning with a bounded
quarantine (writes after free are found when a block leaves it, or by
:meth:`DebugAllocator.check`), double and invalid frees, realloc of freed blocks, optional guard
pages (an out-of-bounds access or a read after free faults at the instruction), leak reports and
snapshots.

tracemalloc: every Buffer's block (of any allocator, this one included) allocated while
tracemalloc traces is reported with ``PyTraceMalloc_Track`` in domain :data:`TRACEMALLOC_DOMAIN`
(0x6E6D, "nm") and attributed to the caller's line, so ``tracemalloc.take_snapshot()`` shows
native memory allocated through nativemem next to Python objects (filter with
``tracemalloc.DomainFilter(True, nativemem.debug.TRACEMALLOC_DOMAIN)``).

Valgrind: blocks are announced with ``VALGRIND_MALLOCLIKE_BLOCK`` (canaries as redzones).  The
package ships a suppression file for CPython's own reports: ``nativemem.debug.suppressions_path()``
(use ``valgrind --suppressions=$(python -c 'import nativemem.debug as d; print(d.suppressions_path())') ...``).
"""
from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any, Dict, IO, List, NamedTuple, Optional

from . import errors as E
from ._doc import document_fields
from ._ffi import as_size, check_ptr, ffi, lib, make_error
from ._sites import PY_SITE_PREFIX
from .allocator import Allocator

__all__ = ["DebugAllocator", "Leak", "DebugStats", "TRACEMALLOC_DOMAIN", "suppressions_path"]

#: tracemalloc domain under which nativemem's debug allocator reports native blocks.
TRACEMALLOC_DOMAIN: int = lib.NM_TRACEMALLOC_DOMAIN


def suppressions_path() -> str:
    """Path of the Valgrind suppression file shipped with nativemem."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "nativemem.supp")


class Leak(NamedTuple):
    """A block still allocated: where, how big, and who allocated it."""
    address: int
    size: int
    traceback: List[str]   # Python frames "file:line in func", innermost first ([] if from C)
    c_site: Optional[str]  # "file.c:line" when allocated from C
    serial: int

    @property
    def site(self) -> str:
        """The innermost allocation frame: the first Python frame, else the C site, else '<unknown>'."""
        return self.traceback[0] if self.traceback else (self.c_site or "<unknown>")


document_fields(
    Leak,
    address="The block's address.",
    size="The size requested, in bytes.",
    traceback="Python frames of the allocation, 'file:line in function', innermost first ([] if from C).",
    c_site="'file.c:line' when the block was allocated from C, else None.",
    serial="The allocation's serial number (increasing; compare with :meth:`DebugAllocator.snapshot`).",
)


class DebugStats(NamedTuple):
    """A debug allocator's counters: live and peak use, totals, the quarantine and errors found."""
    live_blocks: int
    live_bytes: int
    peak_bytes: int
    total_allocs: int
    total_frees: int
    quarantined_blocks: int
    quarantined_bytes: int
    errors: int


document_fields(
    DebugStats,
    live_blocks="Blocks allocated and not yet freed.",
    live_bytes="Bytes requested by the live blocks.",
    peak_bytes="The most live bytes seen.",
    total_allocs="Allocations, ever.",
    total_frees="Frees, ever.",
    quarantined_blocks="Freed blocks held back (poisoned) to catch writes after free.",
    quarantined_bytes="Bytes in the quarantined blocks.",
    errors="Corruption and misuse found so far (overflows, writes after free, bad frees...).",
)


class DebugAllocator(Allocator):
    """``DebugAllocator(base=None, *, traceback_depth=1, quarantine=1024, guard_pages=False,
    quarantine_bytes=None)``.

    ``base`` is the Allocator the blocks come from (default: libc).  Freed blocks wait in a
    quarantine of at most ``quarantine`` blocks and ``quarantine_bytes`` bytes (None: the C
    core's default, ``NM_DEBUG_QUARANTINE_BYTES``, 64 MiB; 0: no byte bound; a larger block leaves at once, its poison checked), oldest leaving first.  Errors
    found during ``free()`` raise at once; :meth:`check` scans every block."""

    def __init__(self, base: Optional[Allocator] = None, *, traceback_depth: int = 1, quarantine: int = 1024,
                 guard_pages: bool = False, quarantine_bytes: Optional[int] = None) -> None:
        if base is not None and not isinstance(base, Allocator):
            raise E.InvalidTypeError(f"base must be a nativemem.Allocator, not {type(base).__name__}")
        depth = as_size(traceback_depth, "traceback_depth")
        if depth == 0:
            raise E.InvalidArgumentError("traceback_depth must be at least 1")
        if depth > 1000:
            raise E.InvalidArgumentError(f"traceback_depth {depth} is more than 1000 frames")
        q = as_size(quarantine, "quarantine")
        qbytes = (lib.NM_DEBUG_QUARANTINE_BYTES if quarantine_bytes is None
                  else as_size(quarantine_bytes, "quarantine_bytes"))
        if not isinstance(guard_pages, bool):
            raise E.InvalidTypeError(f"guard_pages must be a bool, not {type(guard_pages).__name__}")
        flags = lib.NM_DEBUG_GUARD_PAGES if guard_pages else 0
        table = check_ptr(lib.nm_debug_create_ex(base.cdata if base is not None else ffi.NULL, flags, q),
                          "cannot create a debug allocator")
        lib.nm_debug_set_quarantine_bytes(table, qbytes)
        super().__init__(table, name="debug", owned=True, keepalive=base, backend="debug", _sites=True,
                         _depth=depth)
        self.base = base
        self.guard_pages = guard_pages

    # -- checks and reports -----------------------------------------------------------------------
    def check(self) -> None:
        """Verify every live block's canaries and every quarantined block's poison; raise the
        specific error (BufferOverflowError, BufferUnderflowError, UseAfterFreeError) for the
        first damaged block, naming its address, size, the offset and its sites."""
        rc = lib.nm_debug_check(self._table)
        if rc:
            raise self._error(rc)

    def flush(self) -> None:
        """Empty the quarantine now, verifying each block's poison."""
        rc = lib.nm_debug_flush(self._table)
        if rc:
            raise self._error(rc)

    def _error(self, rc: int) -> E.NativeMemError:
        msg = ffi.string(lib.nm_last_error_message()).decode("utf-8", "replace")
        lib.nm_clear_error()
        return make_error(rc, msg)

    def snapshot(self) -> int:
        """A marker: ``leaks(since=marker)`` lists only blocks allocated after it."""
        st = ffi.new("nm_debug_stats_t *")
        lib.nm_debug_stats(self._table, st)
        return int(st.next_serial) - 1

    def leaks(self, since: Optional[int] = None) -> List[Leak]:
        """Blocks still allocated (optionally only those allocated after a snapshot)."""
        after = 0 if since is None else as_size(since, "since")
        n = lib.nm_debug_blocks(self._table, ffi.NULL, 0, after)
        while True:
            arr = ffi.new("nm_debug_block_t[]", max(n, 1))
            got = lib.nm_debug_blocks(self._table, arr, n, after)
            if got <= n:
                break
            n = got
        out = []
        for i in range(got):
            b = arr[i]
            tb, c_site = _decode_site(b.file, b.line)
            out.append(Leak(int(ffi.cast("uintptr_t", b.address)), int(b.size), tb, c_site, int(b.serial)))
        return out

    def debug_stats(self) -> DebugStats:
        """Live and peak use, totals, the quarantine's size and the number of errors found."""
        st = ffi.new("nm_debug_stats_t *")
        lib.nm_debug_stats(self._table, st)
        return DebugStats(st.live_blocks, st.live_bytes, st.peak_bytes, st.total_allocs, st.total_frees,
                          st.quarantined_blocks, st.quarantined_bytes, st.errors)

    def report_json(self, since: Optional[int] = None) -> Dict[str, Any]:
        """The leak report as JSON-ready data: totals, then the blocks still allocated grouped by
        site (``site``, ``traceback``, ``c_site``, ``blocks``, ``bytes``), most bytes first."""
        leaks = self.leaks(since)
        groups: Dict[str, Dict[str, Any]] = {}
        for lk in leaks:
            g = groups.setdefault(lk.site, {"site": lk.site, "traceback": lk.traceback, "c_site": lk.c_site,
                                            "blocks": 0, "bytes": 0})
            g["blocks"] += 1
            g["bytes"] += lk.size
        st = self.debug_stats()
        return {"leaked_blocks": len(leaks), "leaked_bytes": sum(lk.size for lk in leaks),
                "peak_bytes": st.peak_bytes, "total_allocs": st.total_allocs, "total_frees": st.total_frees,
                "errors": st.errors,
                "sites": sorted(groups.values(), key=lambda g: (-g["bytes"], g["site"]))}

    def report(self, file: Optional[IO[str]] = None, since: Optional[int] = None, limit: int = 20) -> str:
        """Leaks grouped by allocation site, largest first (like tracemalloc's statistics)."""
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise E.InvalidTypeError(f"limit must be an int, not {type(limit).__name__}")
        if limit < 0:
            raise E.InvalidSizeError(f"limit must not be negative (got {limit})")
        if file is not None and not hasattr(file, "write"):
            raise E.InvalidTypeError(f"file must be a text stream with write(), not {type(file).__name__}")
        data = self.report_json(since)
        lines = [f"nativemem: {data['leaked_blocks']} block(s), {data['leaked_bytes']} bytes still allocated "
                 f"(peak {data['peak_bytes']} bytes, {data['total_allocs']} allocations)"]
        for g in data["sites"][:limit]:
            lines.append(f"  {g['bytes']:>10} bytes in {g['blocks']:>5} block(s) at {g['site']}")
            for frame in g["traceback"][1:]:
                lines.append(f"{'':>36}{frame}")
        if len(data["sites"]) > limit:
            lines.append(f"  ... {len(data['sites']) - limit} more sites")
        text = "\n".join(lines)
        if file is not None:
            print(text, file=file)
        return text


def _decode_site(file: Any, line: int) -> "tuple[List[str], Optional[str]]":
    if file == ffi.NULL:
        return [], None
    text = ffi.string(file).decode("utf-8", "replace")
    if text.startswith(PY_SITE_PREFIX):
        return text[len(PY_SITE_PREFIX):].split("\n"), None
    return [], f"{text}:{line}"
