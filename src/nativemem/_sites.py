"""Allocation sites as C strings: the Python caller's frames, interned.

The debug allocator and checked pools record a ``const char *`` site per block (C code passes
``__FILE__``/``__LINE__``; Python passes one of these).  Each distinct traceback is encoded once
and kept alive for the process lifetime, so recording a site costs a dict lookup.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any, Dict, Tuple

from ._ffi import ffi

__all__ = ["caller_site", "site_text", "PY_SITE_PREFIX"]

#: Sites recorded from Python start with this marker so reports can tell them from C files.
PY_SITE_PREFIX = "py:"
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_interned: Dict[Tuple[Tuple[str, int, str], ...], Any] = {}
_by_addr: Dict[int, str] = {}
_lock = threading.Lock()


def _outside_package(frame: Any) -> Any:
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PKG_DIR:
        frame = frame.f_back
    return frame


def caller_site(depth: int = 1) -> Any:
    """A ``char *`` naming the innermost ``depth`` frames outside nativemem (most recent first),
    as lines ``"file:line in func"`` joined by newlines and prefixed with ``py:``."""
    frame = _outside_package(sys._getframe(1))
    key = []
    while frame is not None and len(key) < depth:
        code = frame.f_code
        key.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    k = tuple(key)
    got = _interned.get(k)
    if got is None:
        text = PY_SITE_PREFIX + "\n".join(f"{f}:{n} in {fn}" for f, n, fn in k)
        with _lock:
            got = _interned.get(k)
            if got is None:
                got = ffi.new("char[]", text.encode("utf-8", "replace"))
                _interned[k] = got
                _by_addr[int(ffi.cast("uintptr_t", got))] = text
    return got


def site_text(file: Any, line: int = 0) -> str:
    """Human-readable text for a recorded site (``file`` is a ``char *`` or NULL)."""
    if file == ffi.NULL:
        return "<unknown>"
    addr = int(ffi.cast("uintptr_t", file))
    text = _by_addr.get(addr)
    if text is None:
        text = ffi.string(file).decode("utf-8", "replace")
    if text.startswith(PY_SITE_PREFIX):
        return text[len(PY_SITE_PREFIX):]
    return f"{text}:{line}" if line else text
