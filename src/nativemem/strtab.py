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
from ._ffi import check_ptr, check_status, ffi, lib
from .allocator import Allocator

__all__ = ["StringTable", "Interned", "StringTableStats", "intern", "default_table"]


def _encode(s: Union[str, bytes, bytearray, memoryview]) -> bytes:
    if isinstance(s, str):
        try:
            return s.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise E.InvalidArgumentError(f"cannot intern a str that is not valid Unicode text: {exc}") from None
    if isinstance(s, (bytes, bytearray, memoryview)):
        return bytes(s)
    raise E.InvalidTypeError(f"intern expects str or bytes, not {type(s).__name__}")


class StringTableStats(NamedTuple):
    entries: int
    capacity: int
    bytes: int
    lookups: int
    hits: int
    inserts: int
    removals: int


class Interned:
    """One reference on an interned string. ``release()`` (or a ``with`` block) gives it back."""

    __slots__ = ("_table", "_p", "_len", "__weakref__")

    def __init__(self, table: "StringTable", p: Any, n: int) -> None:
        self._table = table
        self._p = p
        self._len = n

    def _live(self) -> Any:
        p = self._p
        if p is None:
            raise E.UseAfterFreeError("interned string was already released")
        return p

    @property
    def address(self) -> int:
        return int(ffi.cast("uintptr_t", self._live()))

    @property
    def refcount(self) -> int:
        return int(lib.nm_strtab_refs(self._live()))

    @property
    def released(self) -> bool:
        return self._p is None

    def __bytes__(self) -> bytes:
        return ffi.unpack(self._live(), self._len)

    def __str__(self) -> str:
        return bytes(self).decode("utf-8", "surrogateescape")

    def __len__(self) -> int:
        return self._len

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Interned):
            return self._p is not None and self._p == other._p
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.address)

    def release(self) -> None:
        p = self._p
        if p is None:
            raise E.RefcountError("interned string released twice")
        self._p = None
        self._table._release(p)

    def __enter__(self) -> "Interned":
        self._live()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self.release()

    def __del__(self) -> None:
        if getattr(self, "_p", None) is not None:
            try:
                if self._table._fin.alive:  # the table may have gone first in a collected cycle
                    self._table._release(self._p)
            except Exception:
                pass
            self._p = None

    def __repr__(self) -> str:
        if self._p is None:
            return "<nativemem.Interned (released)>"
        return f"<nativemem.Interned {bytes(self)[:40]!r} refs={self.refcount}>"


class StringTable:
    """``StringTable(allocator=None)``: a thread-safe table of interned, refcounted strings."""

    def __init__(self, allocator: Optional[Allocator] = None) -> None:
        if allocator is not None and not isinstance(allocator, Allocator):
            raise E.InvalidTypeError("allocator must be a nativemem.Allocator")
        self._allocator = allocator
        self._t = check_ptr(lib.nm_strtab_create(allocator.cdata if allocator else ffi.NULL),
                            "cannot create a string table")
        import weakref
        self._fin = weakref.finalize(self, lib.nm_strtab_destroy, self._t)
        self._fin.atexit = False

    def intern(self, s: Union[str, bytes]) -> Interned:
        data = _encode(s)
        p = lib.nm_strtab_intern(self._t, data, len(data))
        check_ptr(p, "intern failed", size=len(data))
        return Interned(self, p, len(data))

    def _release(self, p: Any) -> None:
        check_status(lib.nm_strtab_release(self._t, p))

    def refcount(self, s: Union[str, bytes]) -> int:
        data = _encode(s)
        return int(lib.nm_strtab_lookup_refs(self._t, data, len(data)))

    def __contains__(self, s: Union[str, bytes]) -> bool:
        return self.refcount(s) > 0

    def __len__(self) -> int:
        return int(lib.nm_strtab_count(self._t))

    def stats(self) -> StringTableStats:
        st = ffi.new("nm_strtab_stats_t *")
        lib.nm_strtab_stats(self._t, st)
        return StringTableStats(st.entries, st.capacity, st.bytes, st.lookups, st.hits, st.inserts, st.removals)


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
