"""The one private module that touches the compiled binding (``ffi``/``lib``).

It maps C status codes to the exception tree and validates sizes before they reach C.
"""
from __future__ import annotations

import operator
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


_PY_SITE = re.compile(r"py:(.*?):0\b", re.S)


def clean_sites(message: str) -> str:
    """C messages print sites as file:line; a Python site is 'py:<frames>' with line 0: show its
    innermost frame 'file:line in func'."""
    return _PY_SITE.sub(lambda m: m.group(1).split("\n")[0], message)


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
    """Accept a cffi pointer, an int address, or an object with an ``address`` attribute."""
    if isinstance(ptr, ffi.CData):
        return int(ffi.cast("uintptr_t", ptr))
    if isinstance(ptr, bool):
        raise E.InvalidTypeError(f"{what} must be a cffi pointer or an int address, not bool")
    if isinstance(ptr, int):
        if ptr < 0 or ptr >= (1 << SIZE_T_BITS):
            raise E.InvalidFreeError(f"{what} {ptr:#x} is not a valid address")
        return ptr
    raise E.InvalidTypeError(f"{what} must be a cffi pointer or an int address, not {type(ptr).__name__}")
