"""Fixed-size object pools: :class:`Pool` (raw ``void *`` objects) and :class:`ObjectPool` (typed).

The C pool (csrc/pool.c) takes no lock on the common path (per-thread caches owning chunks),
checks every free against a per-chunk allocation bitmap, and in checked mode records the
allocation site of each object, poisons freed objects and reports writes after free and leaks.

Objects are raw memory: a pointer returned by :meth:`Pool.alloc` must not be used after it is
freed or after the pool is closed (use ``checked=True`` or ``bughunt=True`` with Valgrind/ASan
to find such bugs).  Freeing through the pool is always checked: foreign, misaligned and
double frees raise instead of corrupting memory.
"""
from __future__ import annotations

import ctypes
import operator
import sys
import warnings
from typing import Any, Iterable, List, NamedTuple, Optional

from . import errors as E
from ._doc import document_fields
from ._ffi import _core, as_size, check_ptr, check_status, ffi, lib
from ._sites import site_text
from .allocator import Allocator

__all__ = ["Pool", "PoolStats", "PoolObject", "ObjectPool"]

_PTR = ffi.sizeof("void *")
_MAX_ALIGN: int = lib.NM_POOL_MAX_ALIGN


class PoolStats(NamedTuple):
    """Pool counters; exact when no other thread is using the pool."""
    allocations: int
    frees: int
    live: int
    peak: int
    chunks: int
    reserved_bytes: int


document_fields(
    PoolStats,
    allocations="Objects handed out, ever.",
    frees="Objects given back, ever.",
    live="Objects handed out and not yet given back (allocations - frees).",
    peak="The most live objects seen (exact when one thread uses the pool).",
    chunks="Chunks held from the allocator (in bughunt mode: one per object).",
    reserved_bytes="Bytes held from the allocator for objects.",
)


class PoolObject(NamedTuple):
    """A live object: its address, size and allocation site (None unless the pool is checked)."""
    address: int
    size: int
    site: Optional[str]


document_fields(
    PoolObject,
    address="The object's address.",
    size="The pool's object size in bytes.",
    site="Where it was allocated, 'file:line in function' (None unless checked or bughunt).",
)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise E.InvalidTypeError(f"{what} must be a bool, not {type(value).__name__}")
    return value


class Pool(_core.Pool):
    """A pool of ``object_size``-byte objects carved from chunks of ``objects_per_chunk``.

    ``alloc()`` returns an object's address as an int (cffi's ``ffi.cast`` and ctypes'
    ``from_address`` take it); ``free(address)`` gives it back.  ``alignment`` (a power of two
    from the pointer size to 4096) aligns every object; ``zero`` zeroes objects when handed out;
    ``checked`` records allocation sites, poisons freed objects (0xDD) and verifies the poison on
    reuse; ``bughunt`` makes one backend allocation per object so Valgrind/ASan see each one.
    Thread safe.  The pool (and the allocator its chunks come from) lives as long as anything
    can reach it, a bound ``pool.alloc`` included; ``close()`` destroys it at once.
    """

    def __init__(self, object_size: int, *, objects_per_chunk: int = 256, alignment: int = 64,
                 zero: bool = True, checked: bool = False, bughunt: bool = False,
                 allocator: Optional[Allocator] = None, name: Optional[str] = None) -> None:
        size = as_size(object_size, "object_size")
        if size == 0:
            raise E.InvalidSizeError("object_size must be positive")
        per = as_size(objects_per_chunk, "objects_per_chunk")
        if per == 0:
            raise E.InvalidSizeError("objects_per_chunk must be positive")
        align = as_size(alignment, "alignment")
        if align < _PTR or align > _MAX_ALIGN or align & (align - 1):
            raise E.InvalidAlignmentError(
                f"alignment {align} is not a power of two between {_PTR} and {_MAX_ALIGN}")
        flags = lib.NM_POOL_QUIET
        if _flag(zero, "zero"):
            flags |= lib.NM_POOL_ZERO
        if _flag(checked, "checked"):
            flags |= lib.NM_POOL_CHECKED
        if _flag(bughunt, "bughunt"):
            flags |= lib.NM_POOL_BUGHUNT
        if name is not None and not isinstance(name, str):
            raise E.InvalidTypeError(f"name must be a str, not {type(name).__name__}")
        if allocator is None:
            from .backends import get_default_allocator
            allocator = get_default_allocator()
        elif not isinstance(allocator, Allocator):
            raise E.InvalidTypeError(f"allocator must be a nativemem.Allocator, not {type(allocator).__name__}")
        p = lib.nm_pool_create_ex(allocator.cdata, size, per, align, flags)
        check_ptr(p, f"cannot create a pool of {size}-byte objects")
        self.object_size = size
        self.alignment = align
        self.objects_per_chunk = int(lib.nm_pool_objects_per_chunk(p))
        self.zero = zero
        self.checked = checked
        self.bughunt = bughunt
        self.name = name if name is not None else f"pool{size}"
        self._bind(int(ffi.cast("uintptr_t", p)), allocator, self.name, size, bool(checked or bughunt))

    @property
    def _p(self) -> Any:
        return ffi.cast("nm_pool_t *", self._pool_address)

    def _live(self) -> Any:
        return self._p

    def view(self, ptr: Any) -> memoryview:
        """A writable memoryview of the live object at ``ptr`` (``object_size`` bytes).  While it
        (or anything made from it) is alive, freeing the object or closing the pool raises
        BufferInUseError."""
        v = self._view(ptr)
        try:
            return memoryview(v)
        finally:
            self._prune_views()

    def _prune_views(self) -> None:
        views = self._views
        if views is not None and len(views) > 64:
            views[:] = [v for v in views if v.exports or sys.getrefcount(v) > 3]

    def _forget_views(self, address: int) -> None:
        """Called by free(): refuse while a view of ``address`` is exported, else drop its views."""
        views = self._views
        if not views:
            return
        mine = [v for v in views if v.address == address]
        for v in mine:
            if v.exports:
                raise E.BufferInUseError(
                    f"object {address:#x} of pool {self.name!r} has {v.exports} live view(s); release them "
                    f"before free()", address=address, size=self.object_size)
        for v in mine:
            v.invalidate()
        views[:] = [v for v in views if v.valid]

    # -- introspection ----------------------------------------------------------------
    def stats(self) -> PoolStats:
        """Counters: allocations, frees, live, peak, chunks, reserved bytes."""
        p = self._live()
        out = ffi.new("nm_pool_stats_t *")
        lib.nm_pool_stats(p, out)
        return PoolStats(out.allocations, out.frees, out.live, out.peak, out.chunks, out.reserved_bytes)

    def live_objects(self) -> List[PoolObject]:
        """Every live object with its allocation site (sites only in checked/bughunt mode).
        Meaningful when no other thread is allocating or freeing."""
        return self._list(self._live())

    def leaks(self) -> List[PoolObject]:
        """The objects that would leak if the pool were closed now (same as live_objects)."""
        return self._list(self._live())

    def _list(self, p: Any) -> List[PoolObject]:
        n = lib.nm_pool_live_objects(p, ffi.NULL, 0)
        while True:
            buf = ffi.new("nm_pool_object_t[]", max(n, 1))
            got = lib.nm_pool_live_objects(p, buf, n)
            if got <= n:
                break
            n = got
        sites = self.checked or self.bughunt
        return [PoolObject(int(ffi.cast("uintptr_t", buf[i].ptr)), self.object_size,
                           site_text(buf[i].file, buf[i].line) if sites and buf[i].file != ffi.NULL else None)
                for i in range(got)]

    def check(self) -> None:
        """Verify free lists (and, in checked mode, the poison of every free object); raises
        UseAfterFreeError / HeapCorruptionError naming the damaged object and its site."""
        check_status(lib.nm_pool_check(self._live()))

    @property
    def cdata(self) -> Any:
        """The ``nm_pool_t *`` for C code (ClosedError once closed)."""
        return self._live()

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Destroy the pool and give its chunks back to the allocator.  Live objects are
        reported with a ResourceWarning (with sites in checked mode) and become invalid.
        BufferInUseError while a view of an object is alive."""
        if self.closed:
            return
        leaks = self._list(self._live())
        if not self._close():
            return
        if leaks:
            shown = "\n".join(f"  {o.address:#x} ({o.size} bytes)" + (f" allocated at {o.site}" if o.site else "")
                              for o in leaks[:20])
            more = f"\n  ... and {len(leaks) - 20} more" if len(leaks) > 20 else ""
            warnings.warn(f"pool {self.name!r} closed with {len(leaks)} live object(s):\n{shown}{more}",
                          ResourceWarning, stacklevel=2)

    def __enter__(self) -> "Pool":
        self._live()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"live={self.stats().live}"
        return f"<nativemem.Pool {self.name!r} object_size={self.object_size} {state}>"


def _is_ctypes_type(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, (ctypes.Structure, ctypes.Union, ctypes.Array,
                                                  ctypes._SimpleCData))


class ObjectPool:
    """A pool of typed objects (Movian's widget pool for Python).

    ``ObjectPool(ffi, "struct point")`` hands out zeroed ``struct point *`` pointers of the
    given ffi; ``ObjectPool(None, MyStructure)`` (or any ffi argument) with a ctypes Structure
    class hands out instances living at pool addresses.  Other keywords go to :class:`Pool`.
    """

    def __init__(self, ffi_: Any, ctype: Any, **pool_options: Any) -> None:
        if _is_ctypes_type(ctype):
            self._ctypes = ctype
            size, align = ctypes.sizeof(ctype), ctypes.alignment(ctype)
            self._ptype = None
            self._ffi: Any = None  # the caller's cffi FFI
        else:
            if ffi_ is None or not hasattr(ffi_, "typeof"):
                raise E.InvalidTypeError("ObjectPool needs a cffi FFI for a C type (or a ctypes Structure class)")
            try:
                ct = ffi_.typeof(ctype)
            except Exception as exc:  # cffi raises ffi.error / TypeError for unknown types
                raise E.InvalidTypeError(f"unknown C type {ctype!r}: {exc}") from None
            if ct.kind in ("pointer", "function", "void"):
                raise E.InvalidTypeError(f"ObjectPool needs an object type, not {ct.cname}")
            self._ctypes = None
            self._ffi = ffi_
            self._ptype = ffi_.typeof(ffi_.getctype(ct, "*"))
            try:
                size, align = ffi_.sizeof(ct), ffi_.alignof(ct)
            except (ValueError, TypeError) as exc:  # an opaque / incomplete type
                raise E.InvalidTypeError(f"C type {ct.cname!r} has no known size: {exc}") from None
        pool_options.setdefault("zero", True)
        align_opt = pool_options.get("alignment", 64)
        if isinstance(align_opt, int) and not isinstance(align_opt, bool) and align_opt < align:
            raise E.InvalidAlignmentError(f"alignment {align_opt} is below the type's alignment {align}")
        self.pool = Pool(max(size, 1), **pool_options)
        self.ctype = ctype
        self._bind()

    def _bind(self) -> None:
        self._closed = False

    def new(self) -> Any:
        """A zeroed object from the pool: a typed cffi pointer, or a ctypes instance living at a
        pool address.  The object keeps the pool alive; give it back with :meth:`delete`."""
        if self._closed:
            raise E.ClosedError(f"object pool {self.pool.name!r} is closed")
        addr = self.pool.alloc()
        if self._ctypes is not None:
            obj = self._ctypes.from_address(addr)
            obj._nativemem_pool = self.pool  # the chunk lives as long as the instance
            return obj
        pool = self.pool
        # a no-op destructor whose closure holds the pool: the pointer keeps its chunk alive
        return self._ffi.gc(self._ffi.cast(self._ptype, addr), lambda _p, _pool=pool: None)

    def delete(self, obj: Any) -> None:
        """Return an object made by :meth:`new` to the pool."""
        if self._ctypes is not None:
            if not isinstance(obj, self._ctypes):
                raise E.InvalidTypeError(f"delete expects a {self._ctypes.__name__}, not {type(obj).__name__}")
            self.pool.free(ctypes.addressof(obj))
        else:
            self.pool.free(obj)

    def stats(self) -> PoolStats:
        """The underlying pool's counters (:meth:`Pool.stats`)."""
        return self.pool.stats()

    def live_objects(self) -> List[PoolObject]:
        """Every live object with its allocation site (:meth:`Pool.live_objects`)."""
        return self.pool.live_objects()

    def close(self) -> None:
        """No new objects.  The pool itself is destroyed now when no object is live; otherwise
        (with a ResourceWarning naming them) when the last object made by :meth:`new` is gone."""
        if self._closed:
            return
        self._closed = True
        live = self.pool.live_objects() if not self.pool.closed else []
        if not live:
            self.pool.close()
            return
        shown = "\n".join(f"  {o.address:#x}" + (f" allocated at {o.site}" if o.site else "") for o in live[:20])
        warnings.warn(f"object pool {self.pool.name!r} closed with {len(live)} live object(s); its memory is "
                      f"returned when they are gone:\n{shown}", ResourceWarning, stacklevel=2)

    def __enter__(self) -> "ObjectPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
