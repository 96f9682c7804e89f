"""Arena: a bounded allocator over one fixed region (Movian's PS3 heap), TLSF inside.

The region is reserved once, from a base Allocator or straight from the OS (mmap/VirtualAlloc);
allocations never grow it, so a full arena raises MemoryError and stays usable.  Operations are
O(1) (two bit scans and list updates) under one lock.  Small freed blocks (up to 480 bytes) are
kept whole for the next request of their size; once two threads meet on the lock, they are kept
per thread, so threads sharing an arena do not queue on it for small blocks.  Cached blocks are
merged back whenever a request would not fit otherwise and before ``arena_stats()``/``check()``, so
they never cost the arena space.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional

from . import errors as E
from ._doc import document_fields
from ._ffi import as_size, check_ptr, check_status, ffi, lib
from .allocator import Allocator

__all__ = ["Arena", "ArenaStats"]


class ArenaStats(NamedTuple):
    """A walk of every block of an arena (block sizes include their 32-byte headers)."""
    capacity: int
    used_bytes: int
    free_bytes: int
    largest_free: int
    used_blocks: int
    free_blocks: int
    used_histogram: Dict[int, int]  # lower bound of a power-of-two size bin -> block count
    free_histogram: Dict[int, int]


document_fields(
    ArenaStats,
    capacity="Bytes of the region usable for blocks.",
    used_bytes="Bytes in allocated blocks (block sizes, headers included).",
    free_bytes="Bytes in free blocks.",
    largest_free="The largest single free block: the biggest request that can still succeed, headers aside.",
    used_blocks="Allocated blocks.",
    free_blocks="Free blocks.",
    used_histogram="Allocated blocks by size: lower bound of a power-of-two size bin -> block count.",
    free_histogram="Free blocks by size: lower bound of a power-of-two size bin -> block count.",
)


class Arena(Allocator):
    """``Arena(size, allocator=None)``: an Allocator managing one region of ``size`` bytes.

    ``allocator`` is where the region comes from (None: the OS).  The base allocator is kept
    alive as long as the arena."""

    def __init__(self, size: int, allocator: Optional[Allocator] = None) -> None:
        n = as_size(size, "arena size")
        if allocator is not None and not isinstance(allocator, Allocator):
            raise E.InvalidTypeError(f"allocator must be a nativemem.Allocator, not {type(allocator).__name__}")
        base = allocator.cdata if allocator is not None else ffi.NULL
        table = check_ptr(lib.nm_arena_create(base, n), f"cannot create an arena of {n} bytes", size=n)
        super().__init__(table, name="arena", owned=True, keepalive=allocator, backend="arena")
        self._base = allocator

    @property
    def base(self) -> Optional[Allocator]:
        """The Allocator the region came from (None: straight from the OS)."""
        return self._base

    @property
    def capacity(self) -> int:
        """Bytes of the region usable for blocks."""
        return self.arena_stats().capacity

    def arena_stats(self) -> ArenaStats:
        """Walk every block: used and free bytes and blocks, the largest free block, histograms."""
        out = ffi.new("nm_arena_stats_t *")
        check_status(lib.nm_arena_stats(self._table, out))
        hist_u = {1 << i: out.used_hist[i] for i in range(lib.NM_ARENA_HIST_BINS) if out.used_hist[i]}
        hist_f = {1 << i: out.free_hist[i] for i in range(lib.NM_ARENA_HIST_BINS) if out.free_hist[i]}
        return ArenaStats(out.capacity, out.used_bytes, out.free_bytes, out.largest_free, out.used_blocks,
                          out.free_blocks, hist_u, hist_f)

    def check(self) -> None:
        """Walk every block and free list; raise HeapCorruptionError on damage."""
        check_status(lib.nm_arena_check(self._table))

    def histogram_report(self) -> str:
        """Used and free blocks by log2 size, like Movian's memtrace()."""
        st = self.arena_stats()
        lines = [f"arena: capacity {st.capacity} bytes, used {st.used_bytes} in {st.used_blocks} blocks, "
                 f"free {st.free_bytes} in {st.free_blocks} blocks (largest {st.largest_free})",
                 f"{'size >=':>12} {'used':>8} {'free':>8}"]
        for lo in sorted(set(st.used_histogram) | set(st.free_histogram)):
            lines.append(f"{lo:>12} {st.used_histogram.get(lo, 0):>8} {st.free_histogram.get(lo, 0):>8}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        if self.closed:
            return "<nativemem.Arena (closed)>"
        return f"<nativemem.Arena {self.capacity} bytes>"
