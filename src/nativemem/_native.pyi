# Type stub for the cffi-compiled extension nativemem._native (built by build_ffi.py from
# csrc/nativemem.h).  The binding is private: use it only through nativemem._ffi.
from typing import Any

ffi: Any
lib: Any
