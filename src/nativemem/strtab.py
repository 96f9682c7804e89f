"""String interning with reference counts (Movian's strtab_get/strtab_release, glib's GRefString).

``StringTable.intern(s)`` returns an :class:`Interned` handle holding one reference on the one
native copy of ``s``: equal strings give the same address, so interned equality is pointer
equality.  An entry leaves the table with its last reference.  ``str`` is stored as UTF-8
(lone surrogates are refused with a clear error); ``bytes`` are stored as given, so ``"a"`` and
``b"a"`` are the same entry.  Embedded NUL bytes, empty and very long strings are handled.
"""
from __future__ import annotations

import threading
from typing import Any, NamedTuple, Optional, Union

from . import errors as E
from ._doc import document_fields
from ._ffi import _core, check_ptr, ffi, lib
from .allocator import Allocator

__all__ = ["StringTable", "Interned", "StringTableStats", "intern", "default_table"]


class StringTableStats(NamedTuple):
    """A string table's size and counters (see :meth:`StringTable.stats`)."""
    entries: int
    capacity: int
    bytes: int
    lookups: int
    hits: int
    inserts: int
    removals: int


document_fields(
    StringTableStats,
    entries="Distinct strings interned now.",
    capacity="Slots in the table's hash tables.",
    bytes="Bytes held by the entries (headers and text).",
    lookups="intern() calls, ever.",
    hits="intern() calls that found the string already interned.",
    inserts="Strings added, ever.",
    removals="Strings removed with their last reference, ever.",
)


Interned = _core.Interned


class StringTable(_core.StringTable):
    """``StringTable(allocator=None)``: a thread-safe table of interned, refcounted strings.

    ``intern(s)`` returns an :class:`Interned` handle (one reference); the table lives as long as
    any handle, and ``close()`` (or a ``with`` block) refuses new entries and destroys the C
    table once the last handle is released.  Copying is refused (TypeError)."""

    def __init__(self, allocator: Optional[Allocator] = None) -> None:
        if allocator is not None and not isinstance(allocator, Allocator):
            raise E.InvalidTypeError("allocator must be a nativemem.Allocator")
        t = check_ptr(lib.nm_strtab_create(allocator.cdata if allocator else ffi.NULL),
                      "cannot create a string table")
        self._bind(int(ffi.cast("uintptr_t", t)), allocator)

    @property
    def _t(self) -> Any:
        return ffi.cast("nm_strtab_t *", self._table_address)

    def stats(self) -> StringTableStats:
        """Entries, capacity, bytes and the lookup / hit / insert / removal counters."""
        st = ffi.new("nm_strtab_stats_t *")
        lib.nm_strtab_stats(self._t, st)
        return StringTableStats(st.entries, st.capacity, st.bytes, st.lookups, st.hits, st.inserts, st.removals)

    def __repr__(self) -> str:
        if self.closed:
            return "<nativemem.StringTable (closed)>"
        return f"<nativemem.StringTable {len(self)} entries>"


_default: Optional[StringTable] = None
_default_lock = threading.Lock()


def default_table() -> StringTable:
    """The process-wide table behind :func:`intern`."""
    global _default
    with _default_lock:
        if _default is None:
            _default = StringTable()
        return _default


def intern(s: Union[str, bytes]) -> Interned:
    """Intern ``s`` in the process-wide table."""
    return default_table().intern(s)
