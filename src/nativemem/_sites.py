"""Allocation sites as C strings: the Python caller's frames, taken in C (csrc/python/sites.c).

The debug allocator, checked pools and traced refcounts record a ``const char *`` site per block
(C code passes ``__FILE__``/``__LINE__``; Python passes one of these).  Sites are cached by
(code object, instruction offset) in bounded caches; their strings are interned by content and
live for the process (records of live blocks point at them).
"""
from __future__ import annotations

from typing import Any

from ._ffi import _core, ffi

__all__ = ["caller_site", "site_text", "PY_SITE_PREFIX"]

#: Sites recorded from Python start with this marker so reports can tell them from C files.
PY_SITE_PREFIX = "py:"


def caller_site(depth: int = 1) -> Any:
    """A ``char *`` naming the innermost ``depth`` frames outside nativemem (most recent first),
    as lines ``"file:line in func"`` joined by newlines and prefixed with ``py:`` (NULL when
    there is no Python frame)."""
    return ffi.cast("const char *", _core.site_address(depth))


def site_text(file: Any, line: int = 0) -> str:
    """Human-readable text for a recorded site (``file`` is a ``char *`` or NULL)."""
    if file == ffi.NULL:
        return "<unknown>"
    raw: bytes = ffi.string(file)
    text = raw.decode("utf-8", "replace")
    if text.startswith(PY_SITE_PREFIX):
        return text[len(PY_SITE_PREFIX):]
    return f"{text}:{line}" if line else text
