"""RefCount: an atomic reference count with a destructor (Linux kernel refcount_t semantics).

A new count starts at 1 (its creator's reference), as Movian's ``refcount_init``.  ``dec()``
returns True when it dropped the last reference, and the destructor then runs exactly once,
whatever the number of threads racing.  Increment from zero (use after free), decrement below
zero and overflow raise :class:`RefcountError`; the count is then pinned, so the object is
never destroyed twice.  ``trace=True`` records every inc/dec with the caller's site and the
new count (Movian's PROP_REF_TRACE); an underflow's error includes the trace.
"""
from __future__ import annotations

import operator
import warnings
from typing import Any, Callable, List, NamedTuple, NoReturn, Optional

from . import errors as E
from ._doc import document_fields
from ._ffi import check_status, ffi, lib
from ._sites import caller_site, site_text

__all__ = ["RefCount", "RefEvent"]

#: The largest ``trace_capacity`` (events kept per traced count), as the C core enforces.
MAX_TRACE_CAPACITY = 65536


def _trace_capacity(value: Any) -> int:
    if isinstance(value, bool):
        raise E.InvalidTypeError("trace_capacity must be an integer, not bool")
    try:
        n = operator.index(value)
    except TypeError:
        raise E.InvalidTypeError(f"trace_capacity must be an integer, not {type(value).__name__}") from None
    if not 1 <= n <= MAX_TRACE_CAPACITY:
        raise E.InvalidSizeError(f"trace_capacity must be between 1 and {MAX_TRACE_CAPACITY} (got {n})")
    return n


class RefEvent(NamedTuple):
    """One traced ``retain()`` or ``release()``: which, the count after it, and where it was called."""
    op: str      # "retain" or "release"
    count: int  # type: ignore[assignment]  # the count after the operation (shadows tuple.count)
    site: str


document_fields(
    RefEvent,
    op="'retain' or 'release'.",
    count="The count after the operation.",
    site="The caller, 'file:line in function'.",
)


class RefCount:
    """``RefCount(destructor=None, *, trace=False, trace_capacity=64)``.

    ``destructor`` is None or a callable taking no arguments; ``trace`` a bool; ``trace_capacity``
    an int in 1..65536 (the events kept, oldest dropped first), checked even when ``trace`` is
    False.  If the destructor raises, its exception propagates from the ``dec()`` that dropped the
    last reference; the object is destroyed all the same (count 0, the destructor never runs
    again, and a further ``dec()`` raises :class:`RefcountError`).  A RefCount cannot be copied
    or pickled: share the object itself."""

    __slots__ = ("_r", "_destructor", "_traced", "__weakref__")

    def __init__(self, destructor: Optional[Callable[[], None]] = None, *, trace: bool = False,
                 trace_capacity: int = 64) -> None:
        if destructor is not None and not callable(destructor):
            raise E.InvalidTypeError(f"destructor must be callable (with no arguments) or None, "
                                     f"not {type(destructor).__name__}")
        if not isinstance(trace, bool):
            raise E.InvalidTypeError(f"trace must be a bool, not {type(trace).__name__}")
        cap = _trace_capacity(trace_capacity)
        self._r = ffi.new("nm_refcount_t *")
        lib.nm_ref_init(self._r, ffi.NULL, ffi.NULL)
        self._destructor = destructor
        self._traced = trace
        if trace:
            check_status(lib.nm_ref_trace_enable(self._r, cap))

    def __del__(self) -> None:
        try:
            lib.nm_ref_trace_disable(self._r)
        except Exception:  # interpreter shutdown
            pass

    def _no_copy(self, *args: Any) -> NoReturn:
        # A copy would share the C count (and its trace, freed by whichever copy dies first).
        raise E.InvalidTypeError("a RefCount cannot be copied or pickled; share the object itself")

    __copy__ = __deepcopy__ = __reduce__ = __reduce_ex__ = _no_copy

    @classmethod
    def immortal(cls) -> "RefCount":
        """A count for static objects: inc/dec are ignored and the destructor never runs."""
        r = cls()
        lib.nm_ref_make_immortal(r._r)
        return r

    @property
    def is_immortal(self) -> bool:
        """True for a count made by :meth:`immortal` (inc/dec ignored)."""
        return bool(lib.nm_ref_is_immortal(self._r))

    @property
    def count(self) -> int:
        """The current count (0 once destroyed)."""
        return int(lib.nm_ref_count(self._r))

    def retain(self) -> None:
        """Take a reference.  RefcountError from zero (use after free) or on overflow."""
        rc = lib.nm_ref_retain_at(self._r, caller_site() if self._traced else ffi.NULL, 0)
        if rc:
            check_status(rc)

    def release(self) -> bool:
        """Drop a reference; True when it was the last (the destructor has run)."""
        rc = lib.nm_ref_release_at(self._r, caller_site() if self._traced else ffi.NULL, 0)
        if rc < 0:
            check_status(rc)
        if rc == 1:
            d, self._destructor = self._destructor, None
            if d is not None:
                d()
            return True
        return False

    def inc(self) -> None:
        """Deprecated name of :meth:`retain`."""
        warnings.warn("RefCount.inc() is now RefCount.retain()", DeprecationWarning, stacklevel=2)
        self.retain()

    def dec(self) -> bool:
        """Deprecated name of :meth:`release`."""
        warnings.warn("RefCount.dec() is now RefCount.release()", DeprecationWarning, stacklevel=2)
        return self.release()

    def trace(self) -> List[RefEvent]:
        """The recorded inc/dec events, oldest first ([] unless made with ``trace=True``)."""
        if not self._traced:
            return []
        n = lib.nm_ref_trace_get(self._r, ffi.NULL, 0)
        out = ffi.new("nm_ref_event_t[]", max(n, 1))
        got = min(lib.nm_ref_trace_get(self._r, out, n), n)
        return [RefEvent("retain" if out[i].op > 0 else "release", int(out[i].count), site_text(out[i].file, out[i].line))
                for i in range(got)]

    def __repr__(self) -> str:
        return f"<nativemem.RefCount {'immortal' if self.is_immortal else self.count}>"
