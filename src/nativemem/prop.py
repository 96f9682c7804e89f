"""Prop: Movian's property tree.  A parent holds a reference on each child.

Each :class:`Prop` object holds one reference on the native prop's memory.  ``destroy()`` ends
its content: it is unlinked from its parent, its value and children are released (children are
destroyed too) and it becomes a zombie; any use then raises :class:`ClosedError` while
references remain, and the memory returns to its allocator with the last one.

A prop, its name and its value are drawn from an allocator: ``allocator=`` for a root (default:
libc), the parent's for a child.  Handles keep that allocator alive.  Verbs as on every
reference-counted type of nativemem: :meth:`Prop.retain` (another handle) and
:meth:`Prop.release` (give this handle's reference back).
"""
from __future__ import annotations

import warnings
from typing import Any, List, Optional, Union

from . import errors as E
from .allocator import Allocator, _owners, _owners_lock
from ._ffi import check_ptr, check_status, ffi, lib

__all__ = ["Prop"]

Value = Union[None, int, float, str, bytes]
_INT64 = (-(1 << 63), (1 << 63) - 1)


class Prop:
    """``Prop(name=None, parent=None, value=None, *, allocator=None)``.

    ``allocator`` (a :class:`nativemem.Allocator`) is where the prop, its name and its values come
    from; None: the parent's, or libc for a root."""

    __slots__ = ("_p", "_a", "__weakref__")
    _p: Any
    _a: Optional[Allocator]

    def __init__(self, name: Optional[str] = None, parent: Optional["Prop"] = None, value: Value = None, *,
                 allocator: Optional[Allocator] = None) -> None:
        self._p = None
        if name is not None and not isinstance(name, str):
            raise E.InvalidTypeError(f"prop name must be a str or None, not {type(name).__name__}")
        if parent is not None and not isinstance(parent, Prop):
            raise E.InvalidTypeError(f"parent must be a Prop or None, not {type(parent).__name__}")
        if allocator is not None and not isinstance(allocator, Allocator):
            raise E.InvalidTypeError(f"allocator must be a nativemem.Allocator or None, not {type(allocator).__name__}")
        nm = name.encode("utf-8", "surrogatepass") if name is not None else None
        par = parent._live() if parent is not None else ffi.NULL
        owner = allocator if allocator is not None else (parent._a if parent is not None else None)
        table = allocator.cdata if allocator is not None else ffi.NULL  # ClosedError once closed
        p = lib.nm_prop_create(table, par, nm if nm is not None else ffi.NULL, len(nm) if nm else 0)
        self._a = owner  # the Python allocator stays alive while a handle on the prop does
        self._p = check_ptr(p, "cannot create prop")
        if value is not None:
            try:
                self.value = value
            except BaseException:
                self.destroy()
                raise

    @classmethod
    def _adopt(cls, p: Any) -> "Prop":
        """A handle on `p` (whose reference it takes over), keeping the Python allocator that
        owns p's own allocator alive (None: libc, or one made by C code)."""
        self = object.__new__(cls)
        self._p = p
        address = int(ffi.cast("uintptr_t", lib.nm_prop_allocator(p)))
        with _owners_lock:
            self._a = _owners.get(address)
        return self

    def _live(self) -> Any:
        p = self._p
        if p is None:
            raise E.ClosedError("this Prop handle was released (release())")
        return p

    # -- tree ----------------------------------------------------------------------------------
    @property
    def name(self) -> Optional[str]:
        """The prop's name (None for an unnamed prop)."""
        p = self._live()
        n = lib.nm_prop_name(p, ffi.NULL, 0)
        if n == lib.NM_ERR_INVALID:
            return None
        check_status(n)
        buf = ffi.new("char[]", n + 1)
        lib.nm_prop_name(p, buf, n + 1)
        raw: bytes = ffi.unpack(buf, n)
        return raw.decode("utf-8", "surrogatepass")

    @property
    def parent(self) -> Optional["Prop"]:
        """A new handle on the parent (None for a root or a destroyed prop)."""
        q = lib.nm_prop_parent(self._live())
        return None if q == ffi.NULL else Prop._adopt(q)

    @property
    def children(self) -> List["Prop"]:
        """New handles on the children, in order."""
        p = self._live()
        while True:
            n = check_status(lib.nm_prop_children(p, ffi.NULL, 0))
            arr = ffi.new("nm_prop_t *[]", max(n, 1))
            got = check_status(lib.nm_prop_children(p, arr, n))
            if got <= n:
                return [Prop._adopt(arr[i]) for i in range(got)]
            for i in range(n):  # the tree grew meanwhile: drop and retry
                lib.nm_prop_release(arr[i])

    @property
    def zombie(self) -> bool:
        """True once destroyed (the memory stays while references remain)."""
        return bool(lib.nm_prop_is_zombie(self._live()))

    # -- value -----------------------------------------------------------------------------------
    @property
    def value(self) -> Value:
        """The value: None, int (64-bit), float, str or bytes.  Setting it replaces the old one."""
        out = ffi.new("nm_prop_value_t *")
        check_status(lib.nm_prop_get(self._live(), out))
        t = out.type
        if t == lib.NM_PROP_INT:
            return int(out.i)
        if t == lib.NM_PROP_FLOAT:
            return float(out.f)
        if t in (lib.NM_PROP_STRING, lib.NM_PROP_BYTES):
            data: bytes = ffi.unpack(out.data, out.len)
            lib.nm_prop_value_clear(out)
            return data.decode("utf-8", "surrogatepass") if t == lib.NM_PROP_STRING else data
        return None

    @value.setter
    def value(self, v: Value) -> None:
        p = self._live()
        if v is None:
            rc = lib.nm_prop_set_void(p)
        elif isinstance(v, bool):
            raise E.InvalidTypeError("prop values are int, float, str, bytes or None (not bool)")
        elif isinstance(v, int):
            if not _INT64[0] <= v <= _INT64[1]:
                raise E.SizeOverflowError(f"prop int {v} does not fit in 64 bits")
            rc = lib.nm_prop_set_int(p, v)
        elif isinstance(v, float):
            rc = lib.nm_prop_set_float(p, v)
        elif isinstance(v, str):
            b = v.encode("utf-8", "surrogatepass")
            rc = lib.nm_prop_set_data(p, lib.NM_PROP_STRING, b, len(b))
        elif isinstance(v, (bytes, bytearray, memoryview)):
            b = bytes(v)
            rc = lib.nm_prop_set_data(p, lib.NM_PROP_BYTES, b, len(b))
        else:
            raise E.InvalidTypeError(f"prop values are int, float, str, bytes or None, not {type(v).__name__}")
        check_status(rc)

    # -- lifetime --------------------------------------------------------------------------------
    def retain(self) -> "Prop":
        """Another handle holding its own reference."""
        p = self._live()
        check_status(lib.nm_prop_retain(p))
        return Prop._adopt(p)

    def release(self) -> None:
        """Give this handle's reference back now (the handle is unusable afterwards)."""
        p = self._live()
        self._p = None
        rc = lib.nm_prop_release(p)
        if rc < 0:
            check_status(rc)

    def ref(self) -> "Prop":
        """Deprecated name of :meth:`retain`."""
        warnings.warn("Prop.ref() is now Prop.retain()", DeprecationWarning, stacklevel=2)
        return self.retain()

    def unref(self) -> None:
        """Deprecated name of :meth:`release`."""
        warnings.warn("Prop.unref() is now Prop.release()", DeprecationWarning, stacklevel=2)
        self.release()

    @property
    def allocator(self) -> Optional[Allocator]:
        """The Allocator this prop draws from (None: libc, or one handed over by C code)."""
        return self._a

    @property
    def refcount(self) -> int:
        """References held on the native prop (handles, and its parent's while linked)."""
        return int(lib.nm_prop_refs(self._live()))

    def destroy(self) -> None:
        """Unlink, release the value and children, and become a zombie."""
        check_status(lib.nm_prop_destroy(self._live()))

    def __del__(self) -> None:
        p = getattr(self, "_p", None)
        if p is not None:
            self._p = None
            try:
                lib.nm_prop_release(p)
            except Exception:
                pass

    def __copy__(self) -> "Prop":
        """copy.copy: another handle with its own reference (as retain())."""
        return self.retain()

    def __deepcopy__(self, memo: Any) -> "Prop":
        raise E.InvalidTypeError("a Prop cannot be deep-copied (it is a node of a tree); use retain() for a handle")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise E.InvalidTypeError("a Prop cannot be pickled")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Prop) and self._p is not None and self._p == other._p

    def __hash__(self) -> int:
        return hash(int(ffi.cast("uintptr_t", self._live())))

    def __repr__(self) -> str:
        if self._p is None:
            return "<nativemem.Prop (released)>"
        if lib.nm_prop_is_zombie(self._p):
            return "<nativemem.Prop (zombie)>"
        return f"<nativemem.Prop {self.name!r} = {self.value!r}>"
