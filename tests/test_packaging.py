"""Packaging, proven by building: the wheel is tagged cp311-abi3 (one wheel for CPython 3.11+),
carries the metadata (SPDX licence, licence file, URLs, classifiers), the stubs and a release
extension without debug info; a build without a C compiler says so in one line."""
from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_COMPILER = ("nativemem needs a C compiler: apt-get install gcc / xcode-select --install / "
               "Visual Studio Build Tools")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all(os.path.exists(os.path.join(ROOT, f)) for f in ("setup.py", "build_ffi.py", "csrc")),
                       reason="needs the source tree"),
]

_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".benchmarks",
                                 ".pytest_cache", "*.so", "*.pyd", "*.o", "_native.c", "tests", "benchmarks", ".venv*")


def _copy_source(dest: str) -> str:
    src = os.path.join(dest, "src-copy")
    shutil.copytree(ROOT, src, ignore=_IGNORE)
    return src


def _pip_wheel(src: str, out: str, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    """pip wheel of the copied tree: in this environment when it has what the build needs
    (setuptools >= 77, cffi), else with pip's isolated build environment."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out, src]
    try:
        import cffi  # noqa: F401
        import setuptools
        if int(setuptools.__version__.split(".")[0]) >= 77:
            cmd.insert(4, "--no-build-isolation")
    except ImportError:
        pass
    env = dict(os.environ, **(env_extra or {}))
    env.pop("NATIVEMEM_CFLAGS", None)  # a release build
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=out)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("wheel"))
    r = _pip_wheel(_copy_source(tmp), tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    found = [f for f in os.listdir(tmp) if f.endswith(".whl")]
    assert len(found) == 1, found
    return os.path.join(tmp, found[0])


def _abi3_build() -> bool:
    return (sys.implementation.name == "cpython" and not hasattr(sys, "gettotalrefcount")
            and not sysconfig.get_config_var("Py_GIL_DISABLED"))


def test_wheel_is_tagged_abi3(wheel):
    name = os.path.basename(wheel)
    if not _abi3_build():
        pytest.skip("free-threaded and debug CPython builds cannot use the limited API")
    assert re.match(r"nativemem-[^-]+-cp311-abi3-[^-]+\.whl$", name), name
    with zipfile.ZipFile(wheel) as z:
        wheel_meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/WHEEL"))).decode()
        exts = [n for n in z.namelist() if re.match(r"nativemem/_native\..*(so|pyd)$", n)]
    assert re.search(r"^Tag: cp311-abi3-", wheel_meta, re.M), wheel_meta
    assert len(exts) == 1 and (exts[0].endswith(".abi3.so") or exts[0].endswith(".pyd")), exts


def test_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta_text = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    meta = email.parser.Parser().parsestr(meta_text)
    assert tuple(int(x) for x in meta["Metadata-Version"].split(".")) >= (2, 4)  # License-Expression
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Author"] or meta["Author-email"]
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert urls["Homepage"] == "https://github.com/nativemem/nativemem"
    assert {"Source", "Issues", "Changelog"} <= set(urls)
    classifiers = meta.get_all("Classifier")
    for c in ("Programming Language :: Python :: 3 :: Only", "Programming Language :: Python :: 3.11",
              "Programming Language :: Python :: 3.14", "Programming Language :: Python :: Implementation :: CPython",
              "Operating System :: POSIX :: Linux", "Operating System :: MacOS",
              "Operating System :: Microsoft :: Windows"):
        assert c in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the SPDX expression says it
    assert meta["Description-Content-Type"] == "text/markdown"
    for f in ("nativemem/py.typed", "nativemem/_core.pyi", "nativemem/_native.pyi", "nativemem/nativemem.supp"):
        assert f in names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="release flags are for GCC/Clang on Linux")
def test_release_extension_has_no_debug_info(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as z:
        ext = next(n for n in z.namelist() if re.match(r"nativemem/_native\..*so$", n))
        data = z.read(ext)
    assert data[:4] == b"\x7fELF"
    assert b".debug_info" not in data and b".debug_line" not in data
    assert b".symtab" in data  # the symbol table stays: Valgrind, perf and gdb name nativemem's functions


@pytest.mark.skipif(sys.platform == "win32", reason="CC is how setuptools is given a compiler on Unix")
def test_missing_compiler_is_one_clear_line(tmp_path):
    r = _pip_wheel(_copy_source(str(tmp_path)), str(tmp_path), {"CC": os.path.join(str(tmp_path), "no-such-cc")})
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert NO_COMPILER in out, out[-3000:]
    assert "no-such-cc' was not found" in out


def test_twine_check(wheel):
    pytest.importorskip("twine", reason="twine is not installed")
    r = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", wheel], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
