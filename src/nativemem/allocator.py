"""Allocator and Buffer: the Python face of an ``nm_allocator_t`` table.

An :class:`Allocator` owns (or borrows) a C allocator table; every :class:`Buffer` it hands out
remembers it, so memory is always freed by the backend that made it.  Buffers refuse use after
free with an exception instead of touching memory, and refuse to be freed or moved while a
memoryview (or NumPy array) on them is alive.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, NamedTuple, Optional

from . import errors as E
from ._ffi import MAX_ALLOC, as_size, check_ptr, ffi, lib, make_error, raise_last

__all__ = ["Allocator", "Buffer", "AllocatorStats"]

# Hot-path names bound once: a module global is one dict lookup, ``lib.x`` is two.
_nm_malloc = lib.nm_malloc
_nm_free_checked = lib.nm_free_checked


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


def _refcount_baseline() -> int:
    holder = [ffi.buffer(ffi.new("char[1]"), 1)]
    return _max_refcount(holder)


def _max_refcount(exports: list) -> int:
    best = 0
    for e in exports:
        n = sys.getrefcount(e)
        if n > best:
            best = n
    return best


_EXPORT_BASE = _refcount_baseline()


class Allocator:
    """A memory allocator backed by a C ``nm_allocator_t`` table.

    Get one with :func:`nativemem.allocator`, :class:`nativemem.Arena` or
    :class:`nativemem.DebugAllocator`.  Thread safe: the C allocators lock or are lock-free.
    """

    def __init__(self, _table: Any, *, name: Optional[str] = None, owned: bool = True,
                 keepalive: Any = None, backend: Optional[str] = None) -> None:
        if not isinstance(_table, ffi.CData) or _table == ffi.NULL:
            raise E.InvalidTypeError("Allocator is created by nativemem.allocator(), Arena() or DebugAllocator()")
        self._table = _table
        self._keepalive = keepalive  # ctypes libraries/functions whose addresses C holds
        self._owned = owned
        self._name = name if name is not None else ffi.string(_table.name).decode()
        self.backend = backend or self._name
        if owned:
            import weakref
            # Tables are never destroyed at interpreter exit: Buffers may outlive us there.
            self._finalizer = weakref.finalize(self, lib.nm_allocator_destroy, _table)
            self._finalizer.atexit = False

    # -- identity -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def cdata(self) -> Any:
        """The ``nm_allocator_t *`` for C code (pools, other cffi modules)."""
        return self._table

    def __repr__(self) -> str:
        return f"<nativemem.Allocator {self._name!r} backend={self.backend!r}>"

    # -- allocation -----------------------------------------------------------------
    #: Allocators that record allocation sites (the debug allocator) set this and override _site.
    _records_sites = False

    def _site(self) -> Any:
        """C string naming the allocation site, for allocators that record sites."""
        return ffi.NULL

    def malloc(self, size: int) -> "Buffer":
        """Allocate ``size`` bytes (uninitialised)."""
        if type(size) is int and 0 <= size <= MAX_ALLOC:  # fast path for the common case
            n = size
        else:
            n = as_size(size)
        if self._records_sites:
            p = lib.nm_malloc_at(self._table, n, self._site(), 0)
        else:
            p = _nm_malloc(self._table, n)
        if not p:
            raise_last(f"malloc({n}) failed", size=n)
        return _buffer(self, p, n)

    def calloc(self, count: int, size: int) -> "Buffer":
        """Allocate ``count * size`` zeroed bytes; the product is overflow-checked in C."""
        c = as_size(count, "count")
        n = as_size(size)
        p = lib.nm_calloc_at(self._table, c, n, self._site(), 0)
        check_ptr(p, f"calloc({c}, {n}) failed", size=c * n)
        return _buffer(self, p, c * n)

    def memalign(self, alignment: int, size: int) -> "Buffer":
        """Allocate ``size`` bytes aligned to ``alignment`` (a power of two, multiple of the pointer size)."""
        a = as_size(alignment, "alignment")
        n = as_size(size)
        if a == 0 or a & (a - 1) or a % ffi.sizeof("void *"):
            raise E.InvalidAlignmentError(
                f"alignment {a} is not a power of two multiple of sizeof(void *) ({ffi.sizeof('void *')})")
        p = lib.nm_memalign_at(self._table, a, n, self._site(), 0)
        check_ptr(p, f"memalign({a}, {n}) failed", size=n)
        return _buffer(self, p, n)

    def realloc(self, buf: "Buffer", size: int) -> "Buffer":
        """Resize ``buf`` to ``size`` bytes; ``buf`` itself is updated and returned.

        Contents up to the smaller size are kept.  While views on ``buf`` are alive, only a
        resize within the block's usable size is allowed (it cannot move); otherwise
        BufferInUseError.  On failure ``buf`` is unchanged."""
        n = as_size(size)
        if not isinstance(buf, Buffer):
            raise E.InvalidTypeError(f"realloc expects a Buffer, not {type(buf).__name__}")
        if buf._allocator is not self:
            raise E.InvalidFreeError(
                f"Buffer at {buf._address():#x} belongs to allocator {buf._allocator.name!r}, not {self.name!r}",
                address=buf._address())
        return buf._resize(n)

    def free(self, buf: "Buffer") -> None:
        """Free ``buf`` (same as ``buf.free()``)."""
        if not isinstance(buf, Buffer):
            raise E.InvalidTypeError(f"free expects a Buffer, not {type(buf).__name__}")
        if buf._allocator is not self:
            raise E.InvalidFreeError(
                f"Buffer at {buf._address():#x} belongs to allocator {buf._allocator.name!r}, not {self.name!r}",
                address=buf._address())
        buf.free()

    # -- statistics -----------------------------------------------------------------
    def stats(self) -> AllocatorStats:
        out = ffi.new("nm_alloc_stats_t *")
        lib.nm_allocator_stats(self._table, out)
        return AllocatorStats(out.live_blocks, out.live_bytes, out.peak_bytes, out.total_allocs,
                              out.total_frees, out.failures)

    def reset_peak(self) -> None:
        lib.nm_allocator_reset_peak(self._table)

    # Allocators that record sites (the debug allocator) free through here, with the free site.
    def _free_recorded(self, buf: "Buffer", p: Any) -> int:
        return int(lib.nm_free_checked_at(self._table, p, self._site(), 0))


class Buffer:
    """A block of native memory owned by an :class:`Allocator`.

    ``address``/``cdata`` hand the memory to C; ``view()`` (and ``memoryview(buf)`` on Python
    >= 3.12) expose it without copying.  Free it with ``free()``, a ``with`` block, or let the
    finalizer do it.  After ``free()`` every access raises :class:`UseAfterFreeError`.
    """

    __slots__ = ("_allocator", "_cell", "_addr", "_size", "_exports", "_freed_ptr", "__weakref__")

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - guidance only
        raise E.InvalidTypeError("Buffers come from Allocator.malloc/calloc/memalign")

    # -- state ------------------------------------------------------------------------
    def _address(self) -> int:
        a = self._addr
        if not a:
            p = self._cell[0] if self._cell else self._freed_ptr
            if p is not None:
                a = self._addr = int(ffi.cast("uintptr_t", p))
        return a

    def _live(self) -> Any:
        cell = self._cell
        if not cell:
            raise E.UseAfterFreeError(
                f"Buffer at {self._address():#x} ({self._size} bytes) was already freed",
                address=self._address(), size=self._size)
        return cell[0]

    @property
    def freed(self) -> bool:
        return not self._cell

    @property
    def address(self) -> int:
        self._live()
        return self._address()

    @property
    def size(self) -> int:
        return self._size

    @property
    def allocator(self) -> Allocator:
        return self._allocator

    @property
    def cdata(self) -> Any:
        """The block as a cffi ``void *`` (valid until the Buffer is freed)."""
        return ffi.cast("void *", self._live())

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        state = "freed" if not self._cell else f"at {self._address():#x}"
        return f"<nativemem.Buffer {self._size} bytes {state} from {self._allocator.name!r}>"

    # -- views --------------------------------------------------------------------------
    def _views_alive(self) -> bool:
        ex = self._exports
        if not ex:
            return False
        if _max_refcount(ex) > _EXPORT_BASE:
            return True
        ex.clear()
        return False

    def view(self) -> memoryview:
        """A writable, zero-copy memoryview of the block (format 'B')."""
        p = self._live()
        ex = self._exports
        if ex is None:
            ex = self._exports = []
        elif ex and _max_refcount(ex) <= _EXPORT_BASE:
            ex.clear()
        exporter = ffi.buffer(p, self._size)
        ex.append(exporter)
        return memoryview(exporter)

    def __buffer__(self, flags: int) -> memoryview:  # PEP 688 (Python >= 3.12)
        return self.view()

    @property
    def __array_interface__(self) -> dict:
        # 'data' is a tracked view, so a NumPy array on the Buffer blocks free() while alive.
        return {"shape": (self._size,), "typestr": "|u1", "version": 3, "data": self.view()}

    def read(self, offset: int = 0, size: Optional[int] = None) -> bytes:
        """Copy bytes out of the block (bounds-checked)."""
        p = self._live()
        off = as_size(offset, "offset")
        n = self._size - off if size is None else as_size(size)
        if off + n > self._size:
            raise E.InvalidArgumentError(f"read of {n} bytes at offset {off} exceeds the {self._size}-byte buffer")
        return ffi.buffer(ffi.cast("char *", p) + off, n)[:]

    def write(self, data: Any, offset: int = 0) -> int:
        """Copy ``data`` (any bytes-like object) into the block at ``offset`` (bounds-checked)."""
        p = self._live()
        off = as_size(offset, "offset")
        try:
            mv = memoryview(data).cast("B")
        except TypeError:
            raise E.InvalidTypeError(f"write expects a bytes-like object, not {type(data).__name__}") from None
        n = mv.nbytes
        if off + n > self._size:
            raise E.InvalidArgumentError(f"write of {n} bytes at offset {off} exceeds the {self._size}-byte buffer")
        ffi.memmove(ffi.cast("char *", p) + off, mv, n)
        return n

    def __bytes__(self) -> bytes:
        return self.read()

    # -- lifetime ---------------------------------------------------------------------------
    def free(self) -> None:
        """Free the block now.  Raises DoubleFreeError if already freed, BufferInUseError while
        a view is alive, and the debug allocator's corruption errors if it finds any."""
        cell = self._cell
        if not cell:
            raise E.DoubleFreeError(
                f"double free of Buffer at {self._address():#x} ({self._size} bytes)", address=self._address(),
                size=self._size)
        if self._exports and self._views_alive():
            raise E.BufferInUseError(
                f"Buffer at {self._address():#x} has live views (memoryview/array); release them before free()",
                address=self._address(), size=self._size)
        try:
            p = cell.pop()
        except IndexError:  # another thread won the race
            raise E.DoubleFreeError(f"double free of Buffer at {self._address():#x}", address=self._address()) from None
        self._freed_ptr = p  # the address stays known for error messages (never dereferenced)
        alloc = self._allocator
        if alloc._records_sites:
            rc = alloc._free_recorded(self, p)
        else:
            rc = _nm_free_checked(alloc._table, p)
        if rc:
            msg = ffi.string(lib.nm_last_error_message()).decode("utf-8", "replace")
            lib.nm_clear_error()
            raise make_error(rc, msg, address=self._address(), size=self._size)

    def _resize(self, n: int) -> "Buffer":
        p = self._live()
        if self._exports and self._views_alive():
            usable = lib.nm_usable_size(self._allocator._table, p)
            if n <= usable:
                self._size = n
                return self
            raise E.BufferInUseError(
                f"Buffer at {self._address():#x} has live views; it can only be resized in place (up to {usable} bytes)",
                address=self._address(), size=self._size)
        alloc = self._allocator
        q = lib.nm_realloc_at(alloc._table, p, n, alloc._site(), 0)
        check_ptr(q, f"realloc to {n} bytes failed", address=self._address(), size=n)
        self._cell[0] = q
        self._addr = 0
        self._size = n
        return self

    def __del__(self) -> None:
        # A forgotten Buffer is freed here.  __del__ (not ffi.gc with a closure) because the
        # garbage collector runs finalizers before it clears anything, so the allocator is
        # intact even when the Buffer dies in a reference cycle with it; the C table itself
        # defers its destruction until its last block is freed.
        try:
            cell = self._cell
        except AttributeError:
            return
        if cell:
            try:
                p = cell.pop()
                lib.nm_free(self._allocator._table, p)
                lib.nm_clear_error()
            except Exception:  # interpreter shutdown: module globals may be gone
                pass

    def __enter__(self) -> "Buffer":
        self._live()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._cell:
            self.free()




def _buffer(allocator: Allocator, p: Any, size: int, _new: Any = object.__new__) -> Buffer:
    """A Buffer owning block ``p`` of ``allocator`` (a plain function, not a classmethod: this is
    on every malloc's path)."""
    b = _new(Buffer)
    b._allocator = allocator
    b._cell = [p]
    b._addr = 0  # computed on first use (a cast costs more than the allocation)
    b._freed_ptr = None
    b._size = size
    b._exports = None
    return b
