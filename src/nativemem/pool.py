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
import threading
import warnings
import weakref
from typing import Any, Iterable, List, NamedTuple, Optional

from . import errors as E
from ._ffi import as_address, as_size, check_ptr, check_status, ffi, lib, raise_last
from ._sites import caller_site, site_text
from .allocator import Allocator

__all__ = ["Pool", "PoolStats", "PoolObject", "ObjectPool"]

_PTR = ffi.sizeof("void *")
_MAX_ALIGN = 4096


class PoolStats(NamedTuple):
    """Pool counters; exact when no other thread is using the pool."""
    allocations: int
    frees: int
    live: int
    peak: int
    chunks: int
    reserved_bytes: int


class PoolObject(NamedTuple):
    """A live object: its address, size and allocation site (None unless the pool is checked)."""
    address: int
    size: int
    site: Optional[str]


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise E.InvalidTypeError(f"{what} must be a bool, not {type(value).__name__}")
    return value


def _destroy(p: Any) -> None:
    lib.nm_pool_destroy(p)


class Pool:
    """A pool of ``object_size``-byte objects carved from chunks of ``objects_per_chunk``.

    ``alignment`` (a power of two from the pointer size to 4096) aligns every object;
    ``zero`` zeroes objects when handed out; ``checked`` records allocation sites, poisons
    freed objects (0xDD) and verifies the poison on reuse; ``bughunt`` makes one backend
    allocation per object so Valgrind/ASan see each one.  Thread safe.
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
        self._p: Any = p
        self._allocator = allocator
        self.object_size = size
        self.alignment = align
        self.objects_per_chunk = int(lib.nm_pool_objects_per_chunk(p))
        self.zero = zero
        self.checked = checked
        self.bughunt = bughunt
        self.name = name if name is not None else f"pool{size}"
        self._close_lock = threading.Lock()
        # Safety net: a forgotten pool is destroyed when collected (never at interpreter exit,
        # where objects may still be in use by other finalizers).
        self._finalizer = weakref.finalize(self, _destroy, p)
        self._finalizer.atexit = False
        self._bind()

    # -- the hot path: closures over the C pool, rebound to raise ClosedError after close()
    def _bind(self) -> None:
        p = self._p
        c_alloc, c_alloc_at, c_free = lib.nm_pool_alloc, lib.nm_pool_alloc_at, lib.nm_pool_free
        cast = ffi.cast
        CData = ffi.CData
        name = self.name

        def closed() -> None:
            raise E.ClosedError(f"pool {name!r} is closed")

        def kill() -> None:
            nonlocal p
            p = None

        if self.checked:
            def alloc() -> Any:
                """Allocate one object; returns a cffi ``void *``."""
                if p is None:
                    closed()
                r = c_alloc_at(p, caller_site(), 0)
                if not r:
                    raise_last(f"{name}: allocation failed")
                return r
        else:
            def alloc() -> Any:
                """Allocate one object; returns a cffi ``void *``."""
                if p is None:
                    closed()
                r = c_alloc(p)
                if not r:
                    raise_last(f"{name}: allocation failed")
                return r

        def free(ptr: Any) -> None:
            """Return an object (a cffi pointer or an int address) to the pool."""
            if p is None:
                closed()
            if type(ptr) is not CData:
                ptr = cast("void *", as_address(ptr))
            try:
                rc = c_free(p, ptr)
            except TypeError:
                ptr = cast("void *", as_address(ptr))
                rc = c_free(p, ptr)
            if rc:
                check_status(rc, address=int(cast("uintptr_t", ptr)))

        self.alloc = alloc
        self.free = free
        self._kill = kill

    def _closed(self, *args: Any, **kwargs: Any) -> Any:
        raise E.ClosedError(f"pool {self.name!r} is closed")

    # -- allocation -------------------------------------------------------------------
    def alloc(self) -> Any:  # replaced per instance by _bind (documented here)
        """Allocate one object; returns a cffi ``void *``."""
        raise E.ClosedError("pool is closed")

    def free(self, ptr: Any) -> None:  # replaced per instance by _bind
        """Return an object (a cffi pointer or an int address) to the pool."""
        raise E.ClosedError("pool is closed")

    def _live(self) -> Any:
        p = self._p
        if p is None:
            raise E.ClosedError(f"pool {self.name!r} is closed")
        return p

    def alloc_many(self, n: int) -> List[Any]:
        """Allocate ``n`` objects in one C call; returns a list of cffi ``void *``."""
        p = self._live()
        count = as_size(n, "n")
        out = ffi.new("void *[]", count)
        if self.checked:
            lib.nm_site_set(caller_site(), 0)
        got = lib.nm_pool_alloc_many(p, out, count)
        if got != count:
            if got:
                lib.nm_pool_free_many(p, out, got)
            raise_last(f"{self.name}: alloc_many({count}) failed after {got} objects")
        return ffi.unpack(out, count)

    def free_many(self, ptrs: Any) -> None:
        """Free every pointer in ``ptrs`` (a sequence of cffi pointers / int addresses, or the
        list returned by :meth:`alloc_many`, or a cffi pointer array) in one C call.  Every valid
        pointer is freed; the first bad one is then raised, its index in the message."""
        p = self._live()
        if isinstance(ptrs, ffi.CData) and ffi.typeof(ptrs).kind == "array" and ffi.typeof(ptrs).item.kind == "pointer":
            arr, n = ffi.cast("void **", ptrs), len(ptrs)
        else:
            if isinstance(ptrs, (str, bytes)) or not hasattr(ptrs, "__iter__"):
                raise E.InvalidTypeError(f"free_many expects a sequence of pointers, not {type(ptrs).__name__}")
            try:  # fast path: a list of cffi pointers converts in C
                arr = ffi.new("void *[]", ptrs if isinstance(ptrs, list) else list(ptrs))
            except TypeError:
                arr = ffi.new("void *[]", [x if (type(x) is ffi.CData and ffi.typeof(x).kind == "pointer")
                                           else ffi.cast("void *", as_address(x)) for x in ptrs])
            n = len(arr)
        check_status(lib.nm_pool_free_many(p, arr, n))

    def owns(self, ptr: Any) -> bool:
        """True when ``ptr`` is the start of a live object of this pool (never reads foreign memory)."""
        p = self._live()
        try:
            addr = as_address(ptr)
        except E.InvalidFreeError:
            return False
        return bool(lib.nm_pool_owns(p, ffi.cast("void *", addr)))

    def view(self, ptr: Any) -> memoryview:
        """A writable memoryview of the live object at ``ptr`` (``object_size`` bytes).  It must
        not be used after the object is freed."""
        p = self._live()
        addr = as_address(ptr)
        if not lib.nm_pool_owns(p, ffi.cast("void *", addr)):
            raise E.InvalidArgumentError(f"{addr:#x} is not a live object of pool {self.name!r}", address=addr)
        return memoryview(ffi.buffer(ffi.cast("char *", addr), self.object_size))

    # -- introspection ----------------------------------------------------------------
    def stats(self) -> PoolStats:
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
    def closed(self) -> bool:
        return self._p is None

    @property
    def cdata(self) -> Any:
        """The ``nm_pool_t *`` for C code."""
        return self._live()

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Destroy the pool and give its chunks back to the allocator.  Live objects are
        reported with a ResourceWarning (with sites in checked mode) and become invalid."""
        with self._close_lock:
            p = self._p
            if p is None:
                return
            leaks = self._list(p)
            self._p = None
            self._kill()
            self.alloc = self._closed  # type: ignore[method-assign]
            self.free = self._closed  # type: ignore[method-assign]
            self._finalizer.detach()
            lib.nm_pool_destroy(p)
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
        state = "closed" if self._p is None else f"live={self.stats().live}"
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
            self._ffi = None
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
        alloc, free = self.pool.alloc, self.pool.free
        if self._ctypes is not None:
            from_address = self._ctypes.from_address
            addressof = ctypes.addressof
            cast = ffi.cast
            cls = self._ctypes

            def new() -> Any:
                """A zeroed instance at a pool address."""
                return from_address(int(cast("uintptr_t", alloc())))

            def delete(obj: Any) -> None:
                """Return an instance made by new() to the pool."""
                if not isinstance(obj, cls):
                    raise E.InvalidTypeError(f"delete expects a {cls.__name__}, not {type(obj).__name__}")
                free(addressof(obj))
        else:
            ucast, ptype = self._ffi.cast, self._ptype

            def new() -> Any:
                """A zeroed, typed pointer to a pool object."""
                return ucast(ptype, alloc())

            def delete(p: Any) -> None:
                """Return a pointer made by new() to the pool."""
                free(p)
        self.new = new
        self.delete = delete

    def new(self) -> Any:  # replaced per instance by _bind
        raise E.ClosedError("object pool is closed")

    def delete(self, p: Any) -> None:  # replaced per instance by _bind
        raise E.ClosedError("object pool is closed")

    def stats(self) -> PoolStats:
        return self.pool.stats()

    def live_objects(self) -> List[PoolObject]:
        return self.pool.live_objects()

    def close(self) -> None:
        self.pool.close()
        self.new = self.pool._closed  # type: ignore[method-assign]
        self.delete = self.pool._closed  # type: ignore[method-assign]

    def __enter__(self) -> "ObjectPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
