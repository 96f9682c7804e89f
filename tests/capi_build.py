"""Builds a small Python extension from one C file against nativemem.get_include() only, as a
third-party extension using the C API capsule (nm_capi.h) would be built (tests/test_capi.py,
tests/test_hostile_capi.py)."""
import shutil
import subprocess
import sys
import textwrap


def build_capi_extension(src: str, name: str, dest) -> None:
    """Compile `src` (a C file defining PyInit_<name>) into module `name` inside directory `dest`."""
    shutil.copy(src, dest / f"{name}.c")
    (dest / "build_it.py").write_text(textwrap.dedent(f"""
        import nativemem
        from setuptools import Extension, setup
        setup(name="{name}", ext_modules=[Extension("{name}", ["{name}.c"],
                                                    include_dirs=[nativemem.get_include()])],
              script_args=["build_ext", "--inplace", "-q"])
    """))
    r = subprocess.run([sys.executable, "build_it.py"], cwd=dest, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
