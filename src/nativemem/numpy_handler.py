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
import importlib
from typing import Any, Iterator, Optional

from . import errors as E
from ._ffi import _core
from .allocator import Allocator

__all__ = ["numpy_allocator"]

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
        mu = importlib.import_module("numpy._core._multiarray_umath")  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        mu = importlib.import_module("numpy.core._multiarray_umath")
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype = ctypes.c_void_p
    get_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
    table = ctypes.cast(get_ptr(mu._ARRAY_API, None), ctypes.POINTER(ctypes.c_void_p))
    return ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.py_object)(table[_SET_HANDLER_INDEX])


@contextlib.contextmanager
def numpy_allocator(alloc: Allocator, name: Optional[str] = None) -> Iterator[Allocator]:
    """Within the block, NumPy allocates array data from ``alloc``.

    The handler is a capsule owning its C struct and one reference on ``alloc``; NumPy holds the
    capsule in every array made in the block, so both live exactly as long as the last of them.
    Its name is ``nativemem:<allocator name>`` (or ``name``)."""
    if not isinstance(alloc, Allocator):
        raise E.InvalidTypeError(f"numpy_allocator needs a nativemem.Allocator, not {type(alloc).__name__}")
    if name is not None and not isinstance(name, str):
        raise E.InvalidTypeError(f"name must be a str, not {type(name).__name__}")
    set_handler = _set_handler_fn()
    label = name if name is not None else f"nativemem:{alloc.name}"
    capsule = _core.numpy_handler_capsule(alloc, alloc._table_address,
                                          label.encode("utf-8", "replace")[:120].decode("utf-8", "ignore"))
    old = set_handler(capsule)
    del capsule
    try:
        yield alloc
    finally:
        set_handler(old)
