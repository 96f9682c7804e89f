"""Test helpers (private): a fault-injection allocator over any nativemem Allocator."""
from __future__ import annotations

from typing import Optional

from ._ffi import check_ptr, ffi, lib
from .allocator import Allocator

__all__ = ["FaultyAllocator"]


class FaultyAllocator(Allocator):
    """An Allocator whose ``fail_at``-th allocation request (counted from creation or the last
    :meth:`arm`) fails with MemoryError; 0 never fails.  Frees pass through to ``base``."""

    def __init__(self, base: Optional[Allocator] = None, fail_at: int = 0) -> None:
        table = check_ptr(lib.nm_allocator_faulty(base.cdata if base is not None else ffi.NULL, fail_at),
                          "cannot create a faulty allocator")
        super().__init__(table, name="faulty", owned=True, keepalive=base, backend="faulty")
        self.base = base

    def arm(self, fail_at: int) -> None:
        lib.nm_faulty_set(self._table, fail_at)

    @property
    def requests(self) -> int:
        return int(lib.nm_faulty_requests(self._table))

    @property
    def failures(self) -> int:
        return int(lib.nm_faulty_failures(self._table))
