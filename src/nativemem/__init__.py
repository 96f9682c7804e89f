"""nativemem: native memory management for Python, with its hot paths in C.

Allocator backends picked at run time (libc, jemalloc, mimalloc, Windows heaps with LFH, macOS
malloc zones, a bounded arena) behind one C table of function pointers; Buffers that hand memory
to native code without copying; fixed-size pools, a debug allocator, refcounting, interning and
copy-on-write built on the same table.
"""
from __future__ import annotations

from typing import Any, Dict

from ._ffi import ffi as _cffi, lib as _lib
from ._ffi import _core as _core  # noqa: F401  (nativemem._core: PyCapsule_Import of "nativemem._core._C_API" walks attributes)
from .allocator import Allocator, AllocatorStats, Buffer
from .backends import (BackendInfo, allocator, backends, default_backend_name, get_default_allocator,
                       set_default_allocator)
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

_OOM_POLICIES = {"raise": _lib.NM_OOM_RAISE, "abort": _lib.NM_OOM_ABORT}


def set_oom_policy(policy: str) -> None:
    """What out-of-memory does: ``"raise"`` (MemoryError, the default) or ``"abort"`` (print the
    request and abort the process, as Movian's allocator does)."""
    if not isinstance(policy, str):
        raise InvalidTypeError(f"policy must be 'raise' or 'abort', not {type(policy).__name__}")  # noqa: F405
    if policy not in _OOM_POLICIES:
        raise InvalidArgumentError(f"unknown OOM policy {policy!r}; use 'raise' or 'abort'")  # noqa: F405
    _lib.nm_set_oom_policy(_OOM_POLICIES[policy])


def get_oom_policy() -> str:
    """The current out-of-memory policy: ``"raise"`` or ``"abort"`` (see :func:`set_oom_policy`)."""
    code = _lib.nm_get_oom_policy()
    return next(k for k, v in _OOM_POLICIES.items() if v == code)


def build_info() -> Dict[str, Any]:
    """How the C core was built: ``{"valgrind": bool, "asan": bool, "pointer_bits": int}`` (Valgrind
    client requests compiled in, AddressSanitizer build, pointer width)."""
    return {"valgrind": bool(_lib.nm_build_has_valgrind()), "asan": bool(_lib.nm_build_has_asan()),
            "pointer_bits": _cffi.sizeof("void *") * 8}


def get_include() -> str:
    """The directory of nativemem's public C headers (``nativemem.h``, the area headers and
    ``nm_capi.h``), for extensions that allocate through nativemem's allocators: pass it to the
    compiler (``include_dirs=[nativemem.get_include()]``) and take the functions from the capsule
    (``nm_capi_import()`` in ``nm_capi.h``): nothing of nativemem is linked."""
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    shipped = os.path.join(here, "include")  # a wheel or an install: copied there by setup.py
    if os.path.isfile(os.path.join(shipped, "nm_capi.h")):
        return shipped
    checkout = os.path.join(os.path.dirname(os.path.dirname(here)), "csrc", "include")  # editable
    if os.path.isfile(os.path.join(checkout, "nm_capi.h")):
        return checkout
    raise FileNotFoundError(f"nativemem's C headers are missing (looked in {shipped} and {checkout})")


__all__ = [
    "Allocator", "AllocatorStats", "Buffer", "BackendInfo", "allocator", "backends", "default_backend_name",
    "get_default_allocator", "set_default_allocator", "set_oom_policy", "get_oom_policy", "build_info",
    "get_include",
    *_errors_all,
]

# Areas built on the foundation register themselves below (one import line each).
from .arena import Arena, ArenaStats  # noqa: E402
__all__ += ["Arena", "ArenaStats"]
from .pool import ObjectPool, Pool, PoolObject, PoolStats  # noqa: E402
__all__ += ["Pool", "PoolStats", "PoolObject", "ObjectPool"]
from .debug import DebugAllocator, DebugStats, Leak  # noqa: E402
__all__ += ["DebugAllocator", "DebugStats", "Leak"]
from .refcount import RefCount, RefEvent  # noqa: E402
from .strtab import Interned, StringTable, StringTableStats, intern  # noqa: E402
from .cow import CowBuffer, CowString  # noqa: E402
from .prop import Prop  # noqa: E402
__all__ += ["RefCount", "RefEvent", "StringTable", "Interned", "StringTableStats", "intern", "CowBuffer",
            "CowString", "Prop"]
from .numpy_handler import numpy_allocator  # noqa: E402
__all__ += ["numpy_allocator"]
