"""The one private module that touches the compiled binding (``ffi``/``lib``).

It maps C status codes to the exception tree and validates sizes before they reach C.
"""
from __future__ import annotations

import atexit
import operator
import os
import re
from typing import Any, NoReturn

from . import errors as E
from ._native import ffi, lib

__all__ = ["ffi", "lib", "raise_last", "check_ptr", "check_status", "as_size", "as_address",
           "MAX_ALLOC", "STATUS_TO_ERROR"]

SIZE_T_BITS = ffi.sizeof("size_t") * 8
#: Largest size any allocation may request (PTRDIFF_MAX, as in C).
MAX_ALLOC = (1 << (SIZE_T_BITS - 1)) - 1

STATUS_TO_ERROR: dict[int, type[E.NativeMemError]] = {
    lib.NM_ERR_NOMEM: E.OutOfMemoryError,
    lib.NM_ERR_INVALID: E.InvalidArgumentError,
    lib.NM_ERR_OVERFLOW: E.SizeOverflowError,
    lib.NM_ERR_DOUBLE_FREE: E.DoubleFreeError,
    lib.NM_ERR_INVALID_FREE: E.InvalidFreeError,
    lib.NM_ERR_USE_AFTER_FREE: E.UseAfterFreeError,
    lib.NM_ERR_BUFFER_OVERFLOW: E.BufferOverflowError,
    lib.NM_ERR_BUFFER_UNDERFLOW: E.BufferUnderflowError,
    lib.NM_ERR_REFCOUNT: E.RefcountError,
    lib.NM_ERR_CORRUPT: E.HeapCorruptionError,
    lib.NM_ERR_CLOSED: E.ClosedError,
    lib.NM_ERR_UNSUPPORTED: E.UnsupportedOperationError,
    lib.NM_ERR_BUSY: E.BufferInUseError,
    lib.NM_ERR_REALLOC_FREED: E.ReallocFreedError,
}


def last_error() -> tuple[int, str]:
    """The calling thread's C error code and message."""
    return lib.nm_last_error(), ffi.string(lib.nm_last_error_message()).decode("utf-8", "replace")


_PY_SITE = re.compile(r"(?<![\w.])py:(.*?):0\b", re.S)
_PY_MARK = re.compile(r"(?<![\w./\\])py:")  # the marker, not the end of "file.py:12"


def clean_sites(message: str) -> str:
    """C messages print sites as file:line; a Python site is 'py:<frames>' (with line 0 from the
    debug allocator): show its innermost frame 'file:line in func', without the marker."""
    message = _PY_SITE.sub(lambda m: m.group(1).split("\n")[0], message)
    return _PY_MARK.sub("", message) if "py:" in message else message


def make_error(code: int, message: str, **info: Any) -> E.NativeMemError:
    cls = STATUS_TO_ERROR.get(code, E.NativeMemError)
    if not message:
        message = ffi.string(lib.nm_strerror(code)).decode()
    return cls(clean_sites(message), code=code, **info)


def raise_last(fallback: str = "operation failed", **info: Any) -> NoReturn:
    """Raise the exception for the thread's last C error, then clear it."""
    code, msg = last_error()
    lib.nm_clear_error()
    if code == lib.NM_OK:
        raise E.NativeMemError(fallback, **info)
    raise make_error(code, msg, **info)


def check_ptr(p: Any, fallback: str = "allocation failed", **info: Any) -> Any:
    """Return ``p`` unless it is NULL, in which case raise the thread's C error."""
    if p == ffi.NULL:
        raise_last(fallback, **info)
    return p


def check_status(rc: int, **info: Any) -> int:
    """Raise for a negative status code returned by C."""
    if rc < 0:
        _, msg = last_error()
        lib.nm_clear_error()
        raise make_error(rc, msg, **info)
    return rc


def as_size(value: Any, what: str = "size") -> int:
    """Validate a byte count or element count: an int in [0, MAX_ALLOC]."""
    if isinstance(value, bool):
        raise E.InvalidTypeError(f"{what} must be an integer, not bool")
    try:
        n = operator.index(value)
    except TypeError:
        raise E.InvalidTypeError(f"{what} must be an integer, not {type(value).__name__}") from None
    if n < 0:
        raise E.InvalidSizeError(f"{what} must not be negative (got {n})")
    if n > MAX_ALLOC:
        raise E.SizeOverflowError(f"{what} {n} exceeds the largest allocation ({MAX_ALLOC} bytes)")
    return n


def as_address(ptr: Any, what: str = "pointer") -> int:
    """Accept a cffi pointer or array, an int address, or a ctypes pointer / object; return the int."""
    if isinstance(ptr, ffi.CData):
        kind = ffi.typeof(ptr).kind
        if kind in ("pointer", "array"):
            return int(ffi.cast("uintptr_t", ptr))
        raise E.InvalidTypeError(
            f"{what} must be a pointer, not a cffi {ffi.typeof(ptr).cname} value (pass ffi.addressof(...))")
    if isinstance(ptr, bool):
        raise E.InvalidTypeError(f"{what} must be a cffi pointer or an int address, not bool")
    if isinstance(ptr, int):
        if ptr < 0 or ptr >= (1 << SIZE_T_BITS):
            raise E.InvalidFreeError(f"{what} {ptr:#x} is not a valid address")
        return ptr
    import ctypes
    if isinstance(ptr, ctypes._Pointer) or isinstance(ptr, ctypes.c_void_p):
        return int(ctypes.cast(ptr, ctypes.c_void_p).value or 0)
    if isinstance(ptr, (ctypes.Structure, ctypes.Union, ctypes.Array, ctypes._SimpleCData)):
        return ctypes.addressof(ptr)
    raise E.InvalidTypeError(f"{what} must be a cffi pointer or an int address, not {type(ptr).__name__}")


# ---- the Python layer: extension types compiled into the same extension (csrc/python/) -------
def _pythonapi_address(name: str) -> int:
    """Address of a CPython function outside the limited API (0 when absent): found at run time so
    the abi3 extension links nothing beyond the stable ABI."""
    import ctypes
    try:
        return ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value or 0
    except (AttributeError, OSError):  # pragma: no cover - PyPy, a stripped interpreter
        return 0


_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def _in_package(filename: str) -> bool:
    """True for a nativemem module's file (its frames are skipped in allocation sites)."""
    try:
        return os.path.dirname(os.path.abspath(filename)) == _PKG_DIR
    except (TypeError, ValueError):
        return False


if lib.nmpy_init() != 0:  # pragma: no cover
    raise ImportError("nativemem: the Python layer (nativemem._core) failed to initialise")
from . import _core as _core  # noqa: E402  (registered by nmpy_init; "as": re-exported to the package)

_core._configure(E, make_error, as_address, _PKG_DIR, _pythonapi_address("PyTraceMalloc_Track"),
                 _pythonapi_address("PyTraceMalloc_Untrack"), _pythonapi_address("PyFrame_GetLasti"))
_core._in_package = _in_package
# Corruption found by a free that cannot raise (NumPy's handler, a C caller's nm_free) becomes a
# CorruptionWarning; back to stderr at exit, when Python can no longer run.
_core._hook_reports(True)
atexit.register(_core._hook_reports, False)
