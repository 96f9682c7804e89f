"""The C interface as a C programmer and another extension meet it: a backend written in C (one
const ops table, tests/c/example_backend.c), every public header standing alone, and a second
Python extension allocating through a nativemem allocator it receives from Python, with only the
capsule of nm_capi.h (tests/c/capi_user/nmuser.c)."""
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from capi_build import build_capi_extension

import nativemem

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")
CC = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
CC_EXE = CC.split()[0] if CC else "cc"

needs_cc = pytest.mark.skipif(shutil.which(CC_EXE) is None, reason=f"no C compiler ({CC_EXE})")
needs_checkout = pytest.mark.skipif(not os.path.isdir(os.path.join(CSRC, "include")),
                                    reason="the C sources are not beside the tests (an installed copy)")


def test_get_include_has_every_public_header():
    inc = nativemem.get_include()
    names = set(os.listdir(inc))
    for h in ("nativemem.h", "nm_alloc.h", "nm_backends.h", "nm_arena.h", "nm_pool.h", "nm_debug.h",
              "nm_refcount.h", "nm_strtab.h", "nm_cow.h", "nm_prop.h", "nm_numpy.h", "nm_capi.h"):
        assert h in names, h
    assert "nm_internal.h" not in names and "platform.h" not in names  # private headers stay apart
    if os.path.basename(os.path.dirname(inc)) == "nativemem":  # an installed copy: no testing header
        assert "nm_testing.h" not in names


@needs_cc
@needs_checkout
@pytest.mark.skipif(sys.platform == "win32", reason="gcc/clang command lines")
def test_each_public_header_stands_alone(tmp_path):
    inc = os.path.join(CSRC, "include")
    for h in sorted(os.listdir(inc)):
        if not h.endswith(".h") or h == "nm_capi.h":
            continue
        src = tmp_path / "one.c"
        src.write_text(f'#include "{h}"\n#include "{h}"\nint main(void) {{ return 0; }}\n')
        r = subprocess.run(CC.split() + ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{inc}", str(src)],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{h}:\n{r.stderr}"


@needs_cc
@needs_checkout
@pytest.mark.skipif(sys.platform == "win32", reason="gcc/clang command lines")
def test_backend_written_in_c(tmp_path):
    exe = tmp_path / "example"
    srcs = sorted(os.path.join(CSRC, f) for f in os.listdir(CSRC) if f.endswith(".c"))
    r = subprocess.run(CC.split() + ["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-Wno-unused-function",
                                     "-D_DEFAULT_SOURCE", f"-I{CSRC}/include", f"-I{CSRC}", *srcs,
                                     os.path.join(HERE, "c", "example_backend.c"), "-o", str(exe), "-lpthread"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "destroy: 7 mallocs, 7 frees" in r.stdout and "example backend: OK" in r.stdout


@pytest.fixture(scope="module")
def nmuser(tmp_path_factory):
    """The second extension, built with setuptools against nativemem.get_include() only."""
    if shutil.which(CC_EXE) is None and sys.platform != "win32":
        pytest.skip(f"no C compiler ({CC_EXE})")
    d = tmp_path_factory.mktemp("nmuser")
    build_capi_extension(os.path.join(HERE, "c", "capi_user", "nmuser.c"), "nmuser", d)
    return d


def _run(d, code):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=d, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(d)})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_second_extension_allocates_through_a_nativemem_allocator(nmuser):
    out = _run(nmuser, """
        import nativemem, nmuser
        for a in (nativemem.allocator("libc"), nativemem.Arena(1 << 20), nativemem.DebugAllocator()):
            total, live = nmuser.fill(a, 1000)
            assert total == sum(i & 0xFF for i in range(1000)), total
            assert live == 1, live                       # the extension's block, counted by nativemem
            st = a.stats()
            assert st.live_blocks == 0 and st.total_allocs >= 1, st
            assert nmuser.pool_roundtrip(a, 500) == 500
            assert a.stats().live_blocks == 0
        print("ok")
    """)
    assert "ok" in out


def test_second_extension_gets_clear_errors(nmuser):
    out = _run(nmuser, """
        import nativemem, nmuser
        try:
            nmuser.fill(object(), 10)
        except TypeError as e:
            assert "nativemem.Allocator" in str(e), e
        else:
            raise AssertionError("no TypeError")
        a = nativemem.allocator("libc")
        a.close()
        try:
            nmuser.fill(a, 10)
        except nativemem.ClosedError:
            pass
        else:
            raise AssertionError("no ClosedError")
        ar = nativemem.Arena(1 << 16)
        try:
            nmuser.fill(ar, 1 << 20)                     # more than the arena holds
        except MemoryError as e:
            assert "arena" in str(e), e
        else:
            raise AssertionError("no MemoryError")
        assert ar.stats().live_blocks == 0
        print("ok")
    """)
    assert "ok" in out
