"""Build glue: the cffi extension (build_ffi.py), abi3 wheel tagging, release flags, and a clear
message when no C compiler is found.  Project metadata lives in pyproject.toml."""
import os
import shutil
import subprocess
import sys
import sysconfig

import setuptools
from setuptools import setup
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.command.build_py import build_py as _build_py
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

# pyproject.toml's SPDX `license = "MIT"` needs setuptools 77 (older ones reject it with a schema
# error that does not say so).  pip's isolated builds get it from [build-system]; a
# --no-build-isolation build uses whatever the environment has.
if int(setuptools.__version__.split(".")[0]) < 77:
    raise SystemExit(f"nativemem needs setuptools>=77 to build (found {setuptools.__version__}): "
                     f"pip install --upgrade 'setuptools>=77', or build without --no-build-isolation")

NO_COMPILER = ("nativemem needs a C compiler: apt-get install gcc / xcode-select --install / "
               "Visual Studio Build Tools")


def _limited_api_tag():
    """'cp311' when the extension is built on the 3.11 limited API (one abi3 wheel for 3.11+):
    CPython, neither a debug nor a free-threaded build (cffi turns py_limited_api off for those)."""
    if sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):
        return None
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return None
    return "cp311"


def _compiler_missing(compiler):
    """Why the C compiler cannot be run (None when it can): its executable is not on PATH."""
    if getattr(compiler, "compiler_type", "") == "msvc":
        return None  # an absent MSVC raises PlatformError, handled by the caller
    cmd = getattr(compiler, "compiler_so", None) or getattr(compiler, "compiler", None)
    if not cmd:
        return None
    exe = cmd[0]
    if shutil.which(exe) is None:
        return f"the compiler {exe!r} was not found"
    if sys.platform == "darwin" and os.path.dirname(shutil.which(exe) or "") == "/usr/bin":
        # /usr/bin/cc and clang are shims that fail until the command line tools are installed
        try:
            ok = subprocess.run(["xcode-select", "-p"], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if not ok:
            return "the Xcode command line tools are not installed"
    return None


class build_ext(_build_ext):
    """setuptools' build_ext with release flags and a plain message when no C compiler exists.

    Release builds (NATIVEMEM_CFLAGS unset) with GCC or Clang on Linux carry no debug info
    (-g0, and -Wl,--strip-debug at link time); the symbol table stays, so Valgrind and perf still
    name nativemem's functions.  NATIVEMEM_CFLAGS (e.g. "-g -fsanitize=address") builds keep
    whatever those flags ask for."""

    def build_extension(self, ext):
        if (not os.environ.get("NATIVEMEM_CFLAGS") and sys.platform.startswith("linux")
                and getattr(self.compiler, "compiler_type", "") == "unix"):
            ext.extra_compile_args = list(ext.extra_compile_args or []) + ["-g0"]
            ext.extra_link_args = list(ext.extra_link_args or []) + ["-Wl,--strip-debug"]
        try:
            super().build_extension(ext)
        except PlatformError as exc:  # MSVC not installed
            raise PlatformError(f"{NO_COMPILER} ({exc})") from exc
        except (CCompilerError, CompileError, LinkError, ExecError) as exc:
            why = _compiler_missing(self.compiler)
            if why is not None:
                raise CompileError(f"{NO_COMPILER} ({why})") from exc
            include = sysconfig.get_paths().get("include") or ""
            if include and not os.path.exists(os.path.join(include, "Python.h")):
                raise CompileError(f"nativemem needs the Python headers ({include}/Python.h is missing): "
                                   f"apt-get install python3-dev / dnf install python3-devel") from exc
            raise


class build_py(_build_py):
    """Ships the public C headers (csrc/include/*.h but nm_testing.h, nativemem's own test and
    benchmark declarations) as nativemem/include/, for nativemem.get_include() (extensions using
    the C API capsule, nm_capi.h)."""

    def run(self):
        super().run()
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "include")
        dst = os.path.join(self.build_lib, "nativemem", "include")
        os.makedirs(dst, exist_ok=True)
        for name in sorted(os.listdir(src)):
            if name.endswith(".h") and name != "nm_testing.h":
                self.copy_file(os.path.join(src, name), os.path.join(dst, name))


options = {}
tag = _limited_api_tag()
if tag:
    options["bdist_wheel"] = {"py_limited_api": tag}

setup(cffi_modules=["build_ffi.py:ffibuilder"], cmdclass={"build_ext": build_ext, "build_py": build_py},
      options=options)
