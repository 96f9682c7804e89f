"""Fixed-size object pools (Movian's props, packets and widgets), and typed object pools.

``Pool`` hands out cache-line aligned, zeroed objects from chunks of an Allocator.  The C fast
path takes no lock (per-thread magazines); every free is checked (foreign pointer, not an object
boundary, double free) whatever the mode.  ``checked=True`` adds allocation sites, 0xDD
poisoning verified on reuse and leak reports; ``bughunt=True`` makes one backend allocation per
object so Valgrind or ASan see each object on its own.
"""
from __future__ import annotations

import threading
import warnings
from typing import Any, Iterable, List, NamedTuple, Optional, Tuple

from . import errors as E
from ._ffi import as_address, as_size, check_ptr, ffi, lib, make_error, raise_last
from ._sites import caller_site, site_text
from .allocator import Allocator

__all__ = ["Pool", "PoolStats", "PoolObject", "ObjectPool"]


class PoolStats(NamedTuple):
    """Counters of a pool; exact when no other thread is using the pool."""
    allocations: int
    frees: int
    live: int
    peak: int
    chunks: int
    reserved_bytes: int


class PoolObject(NamedTuple):
    """A live object of a checked pool and where it was allocated."""
    address: int
    site: str


class Pool:
    """``Pool(object_size, *, objects_per_chunk=256, alignment=64, zero=True, checked=False,
    bughunt=False, allocator=None, name=None)``."""

    def __init__(self, object_size: int, *, objects_per_chunk: int = 256, alignment: int = 64, zero: bool = True,
                 checked: bool = False, bughunt: bool = False, allocator: Optional[Allocator] = None,
                 name: Optional[str] = None) -> None:
        size = as_size(object_size, "object_size")
        per = as_size(objects_per_chunk, "objects_per_chunk")
        align = as_size(alignment, "alignment")
        if size == 0 or per == 0:
            raise E.InvalidSizeError("object_size and objects_per_chunk must be positive")
        if align < ffi.sizeof("void *") or align > 4096 or align & (align - 1):
            raise E.InvalidAlignmentError(f"alignment {align} must be a power of two from "
                                          f"{ffi.sizeof('void *')} to 4096")
        if allocator is None:
            from .backends import get_default_allocator
            allocator = get_default_allocator()
        elif not isinstance(allocator, Allocator):
            raise E.InvalidTypeError(f"allocator must be a nativemem.Allocator, not {type(allocator).__name__}")
        flags = (lib.NM_POOL_ZERO if zero else 0) | (lib.NM_POOL_CHECKED if checked else 0) | \
            (lib.NM_POOL_BUGHUNT if bughunt else 0)
        ptr = lib.nm_pool_create_ex(allocator.cdata, size, per, flags, align)
        check_ptr(ptr, f"cannot create a pool of {size}-byte objects")
        self._p = ptr
        self._allocator = allocator
        self.object_size = size
        self.alignment = align
        self.checked = bool(checked)
        self.bughunt = bool(bughunt)
        self.name = name or f"pool{size}"
        self._lock = threading.Lock()  # guards close() against concurrent use from Python
        import weakref
        self._finalizer = weakref.finalize(self, _destroy_quietly, ptr, allocator)

    # -- lifetime ----------------------------------------------------------------------
    def _ptr(self) -> Any:
        p = self._p
        if p is None:
            raise E.ClosedError(f"pool {self.name!r} is closed")
        return p

    @property
    def cdata(self) -> Any:
        """The ``nm_pool_t *`` for C code."""
        return self._ptr()

    @property
    def closed(self) -> bool:
        return self._p is None

    def close(self) -> None:
        """Destroy the pool and its chunks.  Live objects are listed in a ResourceWarning."""
        with self._lock:
            p = self._p
            if p is None:
                return
            leaks = self._leak_list(p)
            self._p = None
            self._finalizer.detach()
            lib.nm_pool_destroy_report(p, 0)
        if leaks:
            shown = "\n".join(f"  {o.address:#x} allocated at {o.site}" for o in leaks[:20])
            more = f"\n  ... and {len(leaks) - 20} more" if len(leaks) > 20 else ""
            warnings.warn(f"pool {self.name!r} closed with {len(leaks)} live object(s):\n{shown}{more}",
                          ResourceWarning, stacklevel=2)

    def __enter__(self) -> "Pool":
        self._ptr()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._p is None else f"live={self.stats().live}"
        return f"<nativemem.Pool {self.name!r} {self.object_size} bytes {state}>"

    # -- objects ----------------------------------------------------------------------------
    def alloc(self) -> Any:
        """A new object as a cffi ``void *`` (zeroed unless ``zero=False``)."""
        p = self._p
        if p is None:
            raise E.ClosedError(f"pool {self.name!r} is closed")
        if self.checked:
            obj = lib.nm_pool_alloc_at(p, caller_site(), 0)
        else:
            obj = lib.nm_pool_alloc(p)
        if not obj:
            raise_last(f"pool {self.name!r}: allocation failed", size=self.object_size)
        return obj

    def free(self, ptr: Any) -> None:
        """Return an object (a cffi pointer or an int address).  Raises InvalidFreeError for a
        pointer this pool did not hand out and DoubleFreeError for one already free."""
        p = self._p
        if p is None:
            raise E.ClosedError(f"pool {self.name!r} is closed")
        if type(ptr) is not int:
            if not isinstance(ptr, ffi.CData):
                ptr = as_address(ptr)  # raises InvalidTypeError for other types
        else:
            ptr = as_address(ptr)
        rc = lib.nm_pool_free(p, ffi.cast("void *", ptr))
        if rc:
            msg = ffi.string(lib.nm_last_error_message()).decode("utf-8", "replace")
            lib.nm_clear_error()
            raise make_error(rc, msg, size=self.object_size)

    def alloc_many(self, n: int) -> List[Any]:
        """``n`` objects in one C call (a list of cffi ``void *``)."""
        count = as_size(n, "n")
        p = self._ptr()
        out = ffi.new("void *[]", count) if count else []
        got = lib.nm_pool_alloc_many(p, out, count, caller_site() if self.checked else ffi.NULL, 0) if count else 0
        if got < count:
            code = lib.nm_last_error()
            msg = ffi.string(lib.nm_last_error_message()).decode("utf-8", "replace")
            lib.nm_clear_error()
            if got:
                lib.nm_pool_free_many(p, out, got, ffi.NULL)
            raise make_error(code or lib.NM_ERR_NOMEM, msg)
        return list(out)

    def free_many(self, ptrs: Iterable[Any]) -> None:
        """Free many objects in one C call; every valid pointer is freed, then the first bad one
        raises."""
        p = self._ptr()
        items = [ffi.cast("void *", x if isinstance(x, ffi.CData) else as_address(x)) for x in ptrs]
        if not items:
            return
        arr = ffi.new("void *[]", items)
        bad = ffi.new("size_t *")
        rc = lib.nm_pool_free_many(p, arr, len(items), bad)
        if rc:
            msg = ffi.string(lib.nm_last_error_message()).decode("utf-8", "replace")
            lib.nm_clear_error()
            raise make_error(rc, f"free_many item {bad[0]}: {msg}")

    def owns(self, ptr: Any) -> bool:
        """True when ``ptr`` is a live object of this pool."""
        p = self._ptr()
        try:
            addr = ptr if isinstance(ptr, ffi.CData) else ffi.cast("void *", as_address(ptr))
        except E.InvalidFreeError:
            return False
        return bool(lib.nm_pool_owns(p, addr))

    def view(self, ptr: Any) -> memoryview:
        """A writable memoryview of one live object (checked: the pointer must be live)."""
        p = self._ptr()
        addr = ptr if isinstance(ptr, ffi.CData) else ffi.cast("void *", as_address(ptr))
        if not lib.nm_pool_owns(p, addr):
            raise E.InvalidFreeError(f"{int(ffi.cast('uintptr_t', addr)):#x} is not a live object of pool {self.name!r}")
        return memoryview(ffi.buffer(addr, self.object_size))

    # -- statistics and leaks -------------------------------------------------------------------
    def stats(self) -> PoolStats:
        out = ffi.new("nm_pool_stats_t *")
        lib.nm_pool_stats(self._ptr(), out)
        return PoolStats(out.allocations, out.frees, out.live, out.peak, out.chunks, out.reserved_bytes)

    def _leak_list(self, p: Any) -> List[PoolObject]:
        n = lib.nm_pool_live(p, ffi.NULL, ffi.NULL, ffi.NULL, 0)
        while True:
            objs = ffi.new("void *[]", max(n, 1))
            files = ffi.new("const char *[]", max(n, 1))
            lines = ffi.new("int[]", max(n, 1))
            got = lib.nm_pool_live(p, objs, files, lines, n)
            if got <= n:
                break
            n = got
        return [PoolObject(int(ffi.cast("uintptr_t", objs[i])),
                           site_text(files[i], lines[i]) if files[i] != ffi.NULL else "<unknown: pool not checked>")
                for i in range(got)]

    def live_objects(self) -> List[PoolObject]:
        """Every live object with its allocation site (sites need ``checked=True``)."""
        return self._leak_list(self._ptr())

    def leaks(self) -> List[PoolObject]:
        """Objects still allocated (what close() would report)."""
        return self._leak_list(self._ptr())


def _destroy_quietly(ptr: Any, allocator: Allocator) -> None:
    lib.nm_pool_destroy_report(ptr, 0)


class ObjectPool:
    """``ObjectPool(ffi, ctype, **pool_options)``: typed objects from a Pool.

    ``ctype`` is a C type name known to ``ffi`` (``"struct point"``) and ``new()`` returns a
    zeroed ``struct point *``; or a ctypes Structure/Union class, and ``new()`` returns an
    instance living at a pool address."""

    def __init__(self, ffi_or_none: Any, ctype: Any, **pool_options: Any) -> None:
        import ctypes
        self._ctypes = isinstance(ctype, type) and issubclass(ctype, (ctypes.Structure, ctypes.Union))
        if self._ctypes:
            size, align = ctypes.sizeof(ctype), ctypes.alignment(ctype)
            self._cls = ctype
        else:
            if ffi_or_none is None:
                raise E.InvalidTypeError("a cffi FFI is needed for a C type name")
            try:
                ct = ffi_or_none.typeof(ctype)
                size, align = ffi_or_none.sizeof(ct), ffi_or_none.alignof(ct)
            except Exception as exc:  # cffi raises FFIError, CDefError, TypeError or ValueError
                raise E.InvalidTypeError(f"C type {ctype!r} cannot be pooled: {exc}") from None
            self._ptype = ffi_or_none.typeof(ffi_or_none.getctype(ct, "*"))
            self._ffi = ffi_or_none
        pool_options.setdefault("alignment", max(64, align))
        pool_options.setdefault("zero", True)
        self.pool = Pool(size, **pool_options)
        self.ctype = ctype

    def new(self) -> Any:
        p = self.pool.alloc()
        if self._ctypes:
            return self._cls.from_address(int(ffi.cast("uintptr_t", p)))
        return self._ffi.cast(self._ptype, p)

    def delete(self, obj: Any) -> None:
        if self._ctypes:
            import ctypes
            if not isinstance(obj, self._cls):
                raise E.InvalidTypeError(f"expected a {self._cls.__name__}, not {type(obj).__name__}")
            self.pool.free(ctypes.addressof(obj))
        else:
            if not isinstance(obj, self._ffi.CData):
                raise E.InvalidTypeError(f"expected a cffi pointer, not {type(obj).__name__}")
            self.pool.free(int(self._ffi.cast("uintptr_t", obj)))

    def stats(self) -> PoolStats:
        return self.pool.stats()

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "ObjectPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
