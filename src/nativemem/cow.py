"""Copy-on-write buffers: Movian's ``buf_t`` and ``buf_make_writable``, made general.

A :class:`CowBuffer` handle owns one reference on a refcounted block of bytes.  ``share()``
gives another handle on the same memory; ``make_writable()`` returns a handle you may write: the
same object and memory when it is the only reference (no allocation, no copy), otherwise a
private copy, and this handle's share of the original is released (use ``b = b.make_writable()``).
``view()`` is read-only while the memory is shared and writable for a sole owner.
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional, Union

from . import errors as E
from ._ffi import _core, as_size, check_ptr, check_status, ffi, lib
from .allocator import Allocator

__all__ = ["CowBuffer", "CowString"]


class CowBuffer:
    """``CowBuffer(data_or_size, allocator=None)``: bytes-like data is copied in; an int makes a
    zeroed buffer of that size."""

    __slots__ = ("_c", "_allocator", "_exports", "__weakref__")

    def __init__(self, data_or_size: Union[int, bytes, bytearray, memoryview], allocator: Optional[Allocator] = None) -> None:
        if allocator is not None and not isinstance(allocator, Allocator):
            raise E.InvalidTypeError("allocator must be a nativemem.Allocator")
        a = allocator.cdata if allocator is not None else ffi.NULL
        if isinstance(data_or_size, int) and not isinstance(data_or_size, bool):
            n = as_size(data_or_size)
            c = lib.nm_cow_create(a, n)
        elif isinstance(data_or_size, (bytes, bytearray, memoryview)):
            try:
                mv = memoryview(data_or_size).cast("B")
            except TypeError as exc:  # non-contiguous (mv[::2]) or a released view
                raise E.InvalidArgumentError(f"CowBuffer needs contiguous bytes-like data: {exc}") from None
            except ValueError as exc:
                raise E.InvalidArgumentError(f"CowBuffer cannot read this data: {exc}") from None
            c = lib.nm_cow_create_copy(a, ffi.from_buffer(mv), mv.nbytes)
        else:
            raise E.InvalidTypeError(f"CowBuffer takes a size or bytes-like data, not {type(data_or_size).__name__}")
        self._init(check_ptr(c, "cannot create a copy-on-write buffer"), allocator)

    def _init(self, c: Any, allocator: Optional[Allocator]) -> None:
        self._c = c
        self._allocator = allocator
        self._exports: List[_core.ViewType] = []  # exports counted exactly

    @classmethod
    def _wrap(cls, c: Any, allocator: Optional[Allocator]) -> "CowBuffer":
        self = object.__new__(cls)
        self._init(c, allocator)
        return self

    def _live(self) -> Any:
        c = self._c
        if c is None:
            raise E.UseAfterFreeError("copy-on-write buffer handle was already released")
        return c

    def _views_alive(self) -> bool:
        ex = self._exports
        if any(v.exports for v in ex):
            return True
        for v in ex:  # nothing exports them now: they may never export this memory again
            v.invalidate()
        ex.clear()
        return False

    @property
    def refcount(self) -> int:
        """Handles sharing this memory (1: this handle owns it alone)."""
        return int(lib.nm_cow_refs(self._live()))

    @property
    def shared(self) -> bool:
        """True while another handle shares the memory (writing needs :meth:`make_writable`)."""
        return self.refcount > 1

    @property
    def address(self) -> int:
        """The data's address (shared handles have the same one)."""
        return int(ffi.cast("uintptr_t", lib.nm_cow_data(self._live())))

    @property
    def released(self) -> bool:
        """True once this handle gave its reference back (release(), or make_writable() copied)."""
        return self._c is None

    def __len__(self) -> int:
        return int(lib.nm_cow_size(self._live()))

    def __bytes__(self) -> bytes:
        c = self._live()
        data: bytes = ffi.unpack(ffi.cast("char *", lib.nm_cow_data(c)), lib.nm_cow_size(c))
        return data

    def share(self) -> "CowBuffer":
        """Another handle on the same memory (one more reference)."""
        c = self._live()
        if self._views_alive() and lib.nm_cow_refs(c) == 1:
            # a writable view of a sole owner is out: sharing now would let it write shared memory
            raise E.BufferInUseError("release the writable view before sharing this buffer")
        return type(self)._wrap(lib.nm_cow_retain(c), self._allocator)

    def retain(self) -> "CowBuffer":
        """Another handle holding its own reference (the verb of every reference-counted type;
        the same as :meth:`share`)."""
        return self.share()

    def make_writable(self) -> "CowBuffer":
        """A handle you may write: ``self`` when it is the only reference (no copy), else a private
        copy, and this handle's share of the original is released.  Use ``b = b.make_writable()``."""
        c = self._live()
        if lib.nm_cow_refs(c) == 1:
            return self
        if self._views_alive():
            raise E.BufferInUseError("release this handle's views before make_writable() detaches it")
        n = lib.nm_cow_make_writable(c)
        check_ptr(n, "make_writable: cannot copy", size=int(lib.nm_cow_size(c)))
        self._c = None  # our share of the original was released by the copy
        return type(self)._wrap(n, self._allocator)

    def view(self) -> memoryview:
        """A zero-copy view: read-only while shared, writable for a sole owner."""
        c = self._live()
        v = _core.View(self, int(ffi.cast("uintptr_t", lib.nm_cow_data(c))), int(lib.nm_cow_size(c)),
                       lib.nm_cow_refs(c) > 1)
        ex = self._exports
        if len(ex) > 32:
            ex[:] = [x for x in ex if x.exports]
        ex.append(v)
        return memoryview(v)

    def __buffer__(self, flags: int) -> memoryview:  # PEP 688 (Python >= 3.12)
        return self.view()

    def release(self) -> None:
        """Give this handle's reference back (the memory goes with the last one).  RefcountError if
        released twice; BufferInUseError while a view of it is alive."""
        c = self._c
        if c is None:
            raise E.RefcountError("copy-on-write handle released twice")
        if self._views_alive():
            raise E.BufferInUseError("release the views before releasing the buffer")
        self._c = None
        rc = lib.nm_cow_release(c)
        if rc < 0:
            check_status(rc)

    def __enter__(self) -> "CowBuffer":
        self._live()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._c is not None:
            self.release()

    def __copy__(self) -> "CowBuffer":
        """copy.copy: another handle on the same memory (as share())."""
        return self.share()

    def __deepcopy__(self, memo: Any) -> "CowBuffer":
        """copy.deepcopy: a new buffer with the same bytes, from the same allocator."""
        c = self._live()
        a = self._allocator.cdata if self._allocator is not None else ffi.NULL
        n = check_ptr(lib.nm_cow_create_copy(a, lib.nm_cow_data(c), lib.nm_cow_size(c)),
                      "deepcopy: cannot copy the buffer", size=int(lib.nm_cow_size(c)))
        return type(self)._wrap(n, self._allocator)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"cannot pickle a nativemem {type(self).__name__}; pickle bytes(buffer)")

    def __del__(self) -> None:
        c = getattr(self, "_c", None)
        if c is not None:
            self._c = None
            try:
                lib.nm_cow_release(c)
            except Exception:
                pass

    def __repr__(self) -> str:
        if self._c is None:
            return f"<nativemem.{type(self).__name__} (released)>"
        return f"<nativemem.{type(self).__name__} {len(self)} bytes refs={self.refcount}>"


class CowString(CowBuffer):
    """Copy-on-write UTF-8 text on the same core: ``str(s)`` decodes it."""

    __slots__ = ()

    def __init__(self, text: Union[str, int] = "", allocator: Optional[Allocator] = None) -> None:
        if isinstance(text, str):
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise E.InvalidArgumentError(f"text is not valid Unicode: {exc}") from None
            super().__init__(data, allocator)
        elif isinstance(text, int) and not isinstance(text, bool):
            super().__init__(text, allocator)
        else:
            raise E.InvalidTypeError(f"CowString takes a str, not {type(text).__name__}")

    def __str__(self) -> str:
        return bytes(self).decode("utf-8", "replace")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return str(self) == other
        if isinstance(other, CowBuffer):
            return bytes(self) == bytes(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
