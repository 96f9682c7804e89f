"""NumPy (NEP 49) data-memory handler on any nativemem Allocator.

``with nativemem.numpy_allocator(alloc): arr = numpy.zeros(...)`` makes NumPy allocate array
data from ``alloc`` inside the block (the handler is context-local, as NumPy's own).  Arrays keep
their handler, so they are freed correctly after the block.  With a :class:`DebugAllocator`, a C
extension writing past an array's data is caught by ``check()`` (or when the array is freed).
NumPy stays optional: a clear error says when it is missing.
"""
from __future__ import annotations

import contextlib
import ctypes
from typing import Any, Iterator, List

from . import errors as E
from ._ffi import ffi, lib
from .allocator import Allocator

__all__ = ["numpy_allocator"]

_keep: List[Any] = []  # handler structs and allocators referenced by live arrays' capsules
_SET_HANDLER_INDEX = 304  # PyDataMem_SetHandler in NumPy's C-API table (numpy_api.py, since 1.22)


def _set_handler_fn() -> Any:
    try:
        import numpy
    except ImportError:
        raise E.UnsupportedOperationError("numpy_allocator needs NumPy (pip install numpy)") from None
    major, minor = (int(x) for x in numpy.__version__.split(".")[:2])
    if (major, minor) < (1, 22):
        raise E.UnsupportedOperationError(f"NumPy {numpy.__version__} has no data-memory handlers (NEP 49 needs 1.22+)")
    try:
        from numpy._core import _multiarray_umath as mu  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import _multiarray_umath as mu  # type: ignore[no-redef]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype = ctypes.c_void_p
    get_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
    table = ctypes.cast(get_ptr(mu._ARRAY_API, None), ctypes.POINTER(ctypes.c_void_p))
    return ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.py_object)(table[_SET_HANDLER_INDEX])


@contextlib.contextmanager
def numpy_allocator(alloc: Allocator, name: str = "nativemem") -> Iterator[Allocator]:
    """Within the block, NumPy allocates array data from ``alloc``."""
    if not isinstance(alloc, Allocator):
        raise E.InvalidTypeError(f"numpy_allocator needs a nativemem.Allocator, not {type(alloc).__name__}")
    set_handler = _set_handler_fn()
    h = ffi.new("nm_numpy_handler_t *")
    lib.nm_numpy_handler_init(h, alloc.cdata, f"nativemem:{name}:{alloc.name}".encode()[:120])
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype = ctypes.py_object
    new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    capsule = new_capsule(int(ffi.cast("uintptr_t", h)), b"mem_handler", None)
    _keep.append((h, alloc))  # arrays made in the block point at both for their whole life
    old = set_handler(capsule)
    try:
        yield alloc
    finally:
        set_handler(old)
