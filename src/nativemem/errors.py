"""The exception tree of nativemem.

Every error derives from :class:`NativeMemError`.  Errors that mean a builtin condition also
derive from that builtin (``OutOfMemoryError`` is a ``MemoryError``, ``InvalidSizeError`` a
``ValueError``, ...), so callers can catch either.
"""
from __future__ import annotations

__all__ = [
    "NativeMemError", "OutOfMemoryError", "InvalidArgumentError", "InvalidSizeError",
    "InvalidAlignmentError", "InvalidTypeError", "SizeOverflowError", "InvalidFreeError",
    "DoubleFreeError", "CorruptionError", "UseAfterFreeError", "ReallocFreedError",
    "BufferOverflowError", "BufferUnderflowError", "HeapCorruptionError", "RefcountError",
    "BackendUnavailableError", "ClosedError", "BufferInUseError", "UnsupportedOperationError",
    "CorruptionWarning",
]


class NativeMemError(Exception):
    """Root of every nativemem error.

    ``address``, ``size`` and ``site`` are set where the C core reported them (else None).
    """

    def __init__(self, message: str = "", *, address: int | None = None, size: int | None = None,
                 site: str | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.address = address
        self.size = size
        self.site = site
        self.code = code


class OutOfMemoryError(NativeMemError, MemoryError):
    """The backend (or a bounded arena) could not satisfy a request."""


class InvalidArgumentError(NativeMemError, ValueError):
    """An argument has the right type but an unacceptable value."""


class InvalidSizeError(InvalidArgumentError):
    """A size or count is negative."""


class InvalidAlignmentError(InvalidArgumentError):
    """An alignment is not a power of two multiple of ``sizeof(void *)``."""


class InvalidTypeError(NativeMemError, TypeError):
    """An argument has the wrong type (a size that is not an integer, a foreign object...)."""


class SizeOverflowError(NativeMemError, OverflowError):
    """A size, or a size computation such as calloc's count*size, overflows."""


class InvalidFreeError(NativeMemError, ValueError):
    """Freeing a pointer this allocator or pool did not hand out (or not a block start)."""


class DoubleFreeError(InvalidFreeError):
    """Freeing a block that is already free."""


class CorruptionError(NativeMemError):
    """Memory around or inside a block was damaged."""


class UseAfterFreeError(CorruptionError):
    """A freed block was written, or a freed object was used from Python."""


class ReallocFreedError(UseAfterFreeError):
    """realloc() of a block that was already freed."""


class BufferOverflowError(CorruptionError):
    """A write past the end of a block (its tail canary is damaged)."""


class BufferUnderflowError(CorruptionError):
    """A write before the start of a block (its head canary is damaged)."""


class HeapCorruptionError(CorruptionError):
    """Allocator metadata (a free list, a header) is damaged."""


class RefcountError(NativeMemError):
    """A reference count went below zero, overflowed, or was incremented from zero."""


class BackendUnavailableError(NativeMemError, RuntimeError):
    """The requested allocator backend is not available here; the message says why and how to fix it."""


class ClosedError(NativeMemError, ValueError):
    """The object (pool, allocator, table) was already closed."""


class BufferInUseError(NativeMemError, BufferError):
    """The memory is exported (a memoryview or array is alive), so it cannot be freed or moved."""


class UnsupportedOperationError(NativeMemError, NotImplementedError):
    """The operation is not available for this allocator or platform."""


class CorruptionWarning(RuntimeWarning):
    """Corruption or misuse found where no exception can be raised: while a finalizer, NumPy's
    data free or a C caller freed a block.  Emitted through :mod:`warnings` at once (turn it into
    an error with ``-W error::nativemem.CorruptionWarning``); the debug allocator's next
    ``check()`` raises the same error, and ``python -m nativemem check`` exits 1."""
