"""Allocator and Buffer: the Python face of an ``nm_allocator_t`` table.

Both are C types (csrc/python/buffer.c) on the limited API.  An :class:`Allocator` owns (or
borrows) a C allocator table; every :class:`Buffer` it hands out holds a strong reference on it,
so memory is always freed by the backend that made it and the table outlives its blocks.
Buffers speak the buffer protocol with exact export counting: ``memoryview(buf)``,
``numpy.frombuffer(buf)`` and ``ctypes.c_char.from_buffer(buf)`` share the block, keep it alive
and make ``free()`` (or a moving ``realloc()``) raise :class:`BufferInUseError` while they live.
After ``free()`` every access raises :class:`UseAfterFreeError`; a forgotten Buffer is freed
when it is collected.  Every method is atomic with respect to other Python threads.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, NamedTuple, Optional

from . import errors as E
from ._doc import document_fields
from ._ffi import _core, ffi, lib

__all__ = ["Allocator", "Buffer", "AllocatorStats"]

Buffer = _core.Buffer


# C table address -> the Allocator that owns it (an entry goes with its owner)
_owners: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()
_owners_lock = threading.Lock()


class AllocatorStats(NamedTuple):
    """Counters kept by the C front door (``nm_malloc`` & co.) for one allocator table.

    Bytes are usable sizes as the backend reports them (exact requested sizes for the arena,
    the debug allocator and header-keeping adapters)."""
    live_blocks: int
    live_bytes: int
    peak_bytes: int
    total_allocs: int
    total_frees: int
    failures: int = 0


document_fields(
    AllocatorStats,
    live_blocks="Blocks allocated and not yet freed.",
    live_bytes="Bytes in the live blocks.",
    peak_bytes="The most live bytes seen (since creation or :meth:`Allocator.reset_peak`).",
    total_allocs="Successful allocations, ever.",
    total_frees="Frees, ever.",
    failures="Allocation requests that failed (out of memory, or a size over the maximum).",
)


class Allocator(_core.Allocator):
    """A memory allocator backed by a C ``nm_allocator_t`` table.

    Get one with :func:`nativemem.allocator`, :class:`nativemem.Arena` or
    :class:`nativemem.DebugAllocator`.  ``malloc``/``calloc``/``memalign`` return
    :class:`Buffer` objects; ``close()`` (or a ``with`` block) refuses new blocks and destroys the
    C table once its last block is freed.  Thread safe.  Copying is refused (TypeError).
    """

    def __init__(self, _table: Any, *, name: Optional[str] = None, owned: bool = True,
                 keepalive: Any = None, backend: Optional[str] = None, _sites: bool = False,
                 _depth: int = 1) -> None:
        if not isinstance(_table, ffi.CData) or _table == ffi.NULL:
            raise E.InvalidTypeError("Allocator is created by nativemem.allocator(), Arena() or DebugAllocator()")
        nm = name if name is not None else ffi.string(lib.nm_allocator_name(_table)).decode()
        address = int(ffi.cast("uintptr_t", _table))
        with _owners_lock:
            other = _owners.get(address)
            if other is not None and not other.closed:  # a closed owner's table is gone or going
                raise E.InvalidArgumentError(
                    f"the table at {address:#x} already belongs to {other!r}: use that object (two owners "
                    f"would destroy it twice)")
            _owners[address] = self
        if owned and lib.nm_allocator_set_stats(_table, lib.NM_STATS_BYTES) != lib.NM_OK:
            lib.nm_clear_error()  # a debug allocator keeps its own (exact) statistics
        self._bind(int(ffi.cast("uintptr_t", _table)), nm, bool(owned), keepalive, backend or nm,
                   bool(_sites), int(_depth))

    @property
    def cdata(self) -> Any:
        """The ``nm_allocator_t *`` for C code (pools, other cffi modules); ClosedError once closed."""
        return ffi.cast("nm_allocator_t *", self._table_address)

    # The cffi pointer for this package's own calls (raises ClosedError once closed).
    @property
    def _table(self) -> Any:
        return ffi.cast("nm_allocator_t *", self._table_address)

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<nativemem.{type(self).__name__} {self.name!r} backend={self.backend!r}{state}>"

    def stats(self) -> AllocatorStats:
        """The table's counters (live blocks and bytes, peak, totals, failures)."""
        out = ffi.new("nm_alloc_stats_t *")
        lib.nm_allocator_stats(self._table, out)
        return AllocatorStats(out.live_blocks, out.live_bytes, out.peak_bytes, out.total_allocs,
                              out.total_frees, out.failures)

    def reset_peak(self) -> None:
        """Start the peak over from the current live bytes."""
        lib.nm_allocator_reset_peak(self._table)


def _buffer_cdata(self: Any) -> Any:
    """The block as a cffi ``char[]`` for C calls.  It holds an export of the Buffer (as a
    memoryview would): while it lives the block cannot be freed or moved (BufferInUseError)."""
    return ffi.from_buffer(self)


setattr(Buffer, "cdata", property(_buffer_cdata, doc=_buffer_cdata.__doc__))  # a C type's attribute, set once
