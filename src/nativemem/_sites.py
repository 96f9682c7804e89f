"""Allocation sites as C strings: the Python caller's frames, interned.

The debug allocator and checked pools record a ``const char *`` site per block (C code passes
``__FILE__``/``__LINE__``; Python passes one of these).  Each distinct traceback is encoded once
and kept alive for the process lifetime, so recording a site costs a dict lookup.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any, Dict, List, Tuple

from ._ffi import ffi

__all__ = ["caller_site", "site_text", "PY_SITE_PREFIX"]

#: Sites recorded from Python start with this marker so reports can tell them from C files.
PY_SITE_PREFIX = "py:"
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_interned: Dict[Tuple[int, ...], Any] = {}  # (id(code), f_lasti, ...) -> char[] (kept for good)
_codes: Dict[int, Any] = {}  # id -> code object: alive, so an id in a key never means another
_by_addr: Dict[int, str] = {}
_lock = threading.Lock()
_in_package: Dict[str, bool] = {}  # co_filename -> is a nativemem module (abspath costs a getcwd)


def caller_site(depth: int = 1) -> Any:
    """A ``char *`` naming the innermost ``depth`` frames outside nativemem (most recent first),
    as lines ``"file:line in func"`` joined by newlines and prefixed with ``py:``.

    Sites are looked up by (code object id, instruction offset) pairs -- no strings are built
    for a site seen before; the code objects are kept alive so that their ids stay unique."""
    frame = sys._getframe(1)
    inside_get = _in_package.get
    while frame is not None:  # skip nativemem's own frames
        name = frame.f_code.co_filename
        inside = inside_get(name)
        if inside is None:
            inside = _in_package[name] = os.path.dirname(os.path.abspath(name)) == _PKG_DIR
        if not inside:
            break
        frame = frame.f_back
    if depth == 1:  # the common case, without a loop
        k: Tuple[int, ...] = (id(frame.f_code), frame.f_lasti) if frame is not None else ()
        got = _interned.get(k)
        if got is not None:
            return got
        frames = [frame] if frame is not None else []
    else:
        key: List[int] = []
        frames = []
        while frame is not None and len(frames) < depth:
            frames.append(frame)
            key.append(id(frame.f_code))
            key.append(frame.f_lasti)
            frame = frame.f_back
        k = tuple(key)
        got = _interned.get(k)
        if got is not None:
            return got
    text = PY_SITE_PREFIX + "\n".join(f"{f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}" for f in frames)
    with _lock:
        got = _interned.get(k)
        if got is None:
            for f in frames:
                _codes[id(f.f_code)] = f.f_code
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
