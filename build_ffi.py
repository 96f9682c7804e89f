"""Build script for nativemem._native: cffi out-of-line API mode over csrc/.

The public headers (csrc/include/: nativemem.h and the area headers it includes) are read into
cdef(), and after them the testing header nm_testing.h (benchmark loops and test allocators, kept
out of the public API); every csrc/*.c is compiled into the extension.  Valgrind client requests are switched
on when valgrind/memcheck.h is found at build time.
"""
import os
import re
import sys
import sysconfig

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
INCLUDE = os.path.join(CSRC, "include")
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*(?:/\*.*\*/)?\s*$')
_DEFINE_INT = re.compile(r"^\s*#\s*define\s+NM_[A-Z0-9_]+\s+-?(0x)?[0-9A-Fa-f]+[uUlL]*\s*$")


def read_cdef(name="nativemem.h", seen=None):
    """Return the header's declarations with area includes inlined (each header once) and include
    guards dropped."""
    seen = set() if seen is None else seen
    if name in seen:
        return ""
    seen.add(name)
    out = []
    with open(os.path.join(INCLUDE, name)) as f:
        for line in f:
            m = _INCLUDE.match(line)
            if m:
                out.append(read_cdef(m.group(1), seen))
            elif line.lstrip().startswith("#") and not _DEFINE_INT.match(line):
                continue  # guards and system includes: cdef knows the standard types
            else:
                out.append(line)
    return "".join(out)


def find_valgrind():
    dirs = [os.environ.get("VALGRIND_INCLUDE", ""), "/usr/include", "/usr/local/include",
            "/opt/homebrew/include", sysconfig.get_config_var("INCLUDEDIR") or ""]
    return any(d and os.path.exists(os.path.join(d, "valgrind", "memcheck.h")) for d in dirs)


def is_msvc():
    return sys.platform == "win32" and "GCC" not in sys.version


SOURCES = sorted(os.path.relpath(os.path.join(CSRC, f), HERE).replace("\\", "/")
                 for f in os.listdir(CSRC) if f.endswith(".c"))
DEFINES = []
if find_valgrind() and os.environ.get("NATIVEMEM_NO_VALGRIND") != "1":
    DEFINES.append(("NM_HAVE_VALGRIND", "1"))
if is_msvc():
    CFLAGS = ["/O2", "/std:c11", "/W3"]
else:
    # hidden visibility: calls inside the extension skip the PLT (only PyInit__native is exported)
    CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wno-unused-function", "-fvisibility=hidden"]
    DEFINES += [("_DEFAULT_SOURCE", "1"), ("_DARWIN_C_SOURCE", "1")]
extra = os.environ.get("NATIVEMEM_CFLAGS")  # e.g. "-fsanitize=address" for sanitizer builds
if extra:
    CFLAGS += extra.split()

# The Python layer (csrc/python/*.c): CPython extension types on the 3.11 limited API, compiled
# into this same extension; nativemem._ffi calls nmpy_init() once to register them as the module
# nativemem._core.  csrc/*.c (the C core) never includes Python.h.
PY_LAYER_CDEF = """
int nmpy_init(void);
"""
SOURCES += sorted(os.path.relpath(os.path.join(CSRC, "python", f), HERE).replace("\\", "/")
                  for f in os.listdir(os.path.join(CSRC, "python")) if f.endswith(".c"))

ffibuilder = FFI()
_seen = set()
ffibuilder.cdef(read_cdef("nativemem.h", _seen) + read_cdef("nm_testing.h", _seen) + PY_LAYER_CDEF)
ffibuilder.set_source(
    "nativemem._native",
    '#include "nativemem.h"\n#include "nm_testing.h"\nint nmpy_init(void);\n',
    sources=SOURCES,
    include_dirs=["csrc/include", "csrc"],
    # headers too: a change to one alone rebuilds the extension (setuptools compares times)
    depends=sorted(os.path.relpath(os.path.join(root, f), HERE).replace("\\", "/")
                   for root, _, files in os.walk(CSRC) for f in files if f.endswith(".h")),
    define_macros=DEFINES,
    extra_compile_args=CFLAGS,
    extra_link_args=extra.split() if extra else [],
    libraries=[] if sys.platform == "win32" else ["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
