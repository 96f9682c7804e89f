"""The benchmark machinery (no timing assertions: figures belong to benchmarks/)."""
from __future__ import annotations

import builtins
import dataclasses
import importlib
import importlib.util
import io
import json
import os
import re
import sys
import zipfile

import pytest

import nativemem
from nativemem import bench
from nativemem._ffi import ffi, lib
from conftest import run_python


def test_c_loops_perform_the_operations_they_claim():
    a = nativemem.allocator("libc")
    ops = ffi.new("uint64_t *")
    assert lib.nm_bench_pairs(a.cdata, 64, 1234, ops) > 0
    assert ops[0] == 1234 and a.stats().total_allocs == a.stats().total_frees == 1234
    b = nativemem.allocator("libc")
    assert lib.nm_bench_batch(b.cdata, 32, 100, 7, ops) > 0
    assert ops[0] == 700 and b.stats().total_allocs == 700 and b.stats().live_blocks == 0
    c = nativemem.allocator("libc")
    assert lib.nm_bench_mix(c.cdata, 8, 1024, 50, 5000, 1, ops) > 0
    st = c.stats()
    assert ops[0] == 5000 and st.total_allocs == 5000 and st.live_blocks == 0
    d = nativemem.allocator("libc")
    assert lib.nm_bench_larson(d.cdata, 16, 64, 100, 3000, 2, ops) > 0
    assert ops[0] == 6000 and d.stats().total_allocs == 6000 and d.stats().live_blocks == 0
    e = nativemem.allocator("libc")
    assert lib.nm_bench_prodcons(e.cdata, 64, 5000, ops) > 0
    assert ops[0] == 5000 and e.stats().total_frees == 5000 and e.stats().live_blocks == 0
    p = nativemem.Pool(64)
    assert lib.nm_pool_bench_pairs(p.cdata, 1000) > 0 and lib.nm_pool_bench_batch(p.cdata, 10, 10) > 0
    st = p.stats()
    assert st.allocations == 1100 and st.live == 0
    assert lib.nm_bench_pool_larson(p.cdata, 50, 1000, 2, ops) > 0 and ops[0] == 2000
    assert p.stats().live == 0


def test_run_rows_and_ratios():
    rows = bench.run(quick=True, only="pool", reps=1)
    assert rows and {r.area for r in rows} == {"pool"}
    for r in rows:
        assert r.median_ns > 0 and r.min_ns <= r.median_ns <= r.max_ns and r.reps == 1
        assert r.reference == "libc" and r.ratio is not None
    libc_rows = [r for r in rows if r.contender == "libc"]
    assert all(abs(r.ratio - 1.0) < 1e-9 for r in libc_rows)
    with pytest.raises(ValueError):
        bench.run(only="nope")


def test_table_and_markdown():
    rows = [bench.Row("a", "w", "libc", "C", 10.0, 9.0, 11.0, 3, 1.0, "libc"),
            bench.Row("a", "w", "pool", "C", 5.0, 4.0, 6.0, 3, 0.5, "libc")]
    text = bench.render_table(rows)
    assert "a / w" in text and "0.50x" in text
    md = bench.render_table(rows, markdown=True)
    assert md.splitlines()[0].startswith("| area |") and "| 0.50x libc |" in md


def test_cli_json_schema(tmp_path):
    out = tmp_path / "b.json"
    r = run_python(["-m", "nativemem", "bench", "--quick", "--only", "pool", "--reps", "1", "--json", str(out)])
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["schema"] == bench.SCHEMA and data["quick"] is True
    assert {"platform", "cpu", "cores", "python", "backends"} <= set(data["machine"])
    keys = {"area", "workload", "contender", "level", "median_ns", "min_ns", "max_ns", "reps", "ratio", "reference", "ops",
            "process"}
    assert data["rows"] and all(set(row) == keys for row in data["rows"])
    assert all(row["process"] in ("main", "child") for row in data["rows"])
    assert isinstance(data["notes"], list)
    assert all(row["area"] == "pool" for row in data["rows"])
    assert "pool / alloc+free pair" in r.stdout


def test_missing_matplotlib_message(monkeypatch, capsys, tmp_path):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    rc = bench.main(["--quick", "--only", "pool", "--plot", str(tmp_path / "x.png")])
    assert rc == 2
    assert "pip install 'nativemem[plot]'" in capsys.readouterr().err


def test_quick_comparison_prints_every_backend(capsys):
    bench.quick_comparison()
    out = capsys.readouterr().out
    for b in nativemem.backends():
        if b.available:
            assert b.name in out
    assert "pool" in out and "x)" in out


# ---- jemalloc rows from the child process ------------------------------------------------------
B = importlib.import_module("nativemem.backends")  # nativemem.backends is also a function
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jemalloc_where():
    """'here' (loadable in this process), 'child' (installed, needs the child) or None."""
    if B._load("jemalloc").info.available:
        return "here"
    if sys.platform.startswith("linux") and B.find_library("jemalloc"):
        return "child"
    return None


def _child_rows(rows):
    return [r for r in rows if r.process == "child"]


def test_jemalloc_rows_present_and_labelled():
    where = _jemalloc_where()
    if where is None:
        pytest.skip("jemalloc is not installed (apt-get install libjemalloc2)")
    res = bench.measure(quick=True, only="pool", reps=1)
    je = [r for r in res.rows if r.contender == "jemalloc"]
    assert je and all(r.area == "pool" and r.ratio is not None and r.reference == "libc" for r in je)
    assert res.notes == []
    if where == "here":
        assert not _child_rows(res.rows)
        return
    assert all(r.process == "child" for r in je)
    assert {r.contender for r in _child_rows(res.rows)} == {"jemalloc", "raw jemalloc (no table)", "libc (control)"}
    assert res.child_backends["jemalloc"].endswith("(child process)")
    # every workload of the area has them, next to this process's rows of the same workload
    for wl in {r.workload for r in res.rows}:
        names = {r.contender: r.process for r in res.rows if r.workload == wl}
        assert names["jemalloc"] == "child" and names["libc"] == "main" and names["pool"] == "main"
    text = bench.render_table(res.rows, notes=res.notes)
    assert "jemalloc [child]" in text and "libc (control) [child]" in text
    assert "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=65536" in text.splitlines()[-1]
    md = bench.render_table(res.rows, markdown=True)
    assert "| jemalloc [child] |" in md


@pytest.mark.parametrize("area", ["backends", "numpy", "python"])
def test_jemalloc_rows_in_every_area_comparing_allocators(area):
    if _jemalloc_where() != "child":
        pytest.skip("needs jemalloc installed and not loadable in this process")
    if area == "numpy":
        pytest.importorskip("numpy")
    res = bench.measure(quick=True, only=area, reps=1)
    child = _child_rows(res.rows)
    assert child and res.notes == []
    assert any("jemalloc" in r.contender for r in child) and any(r.contender.endswith("(control)") for r in child)
    if area == "backends":
        names = {r.contender for r in child}
        assert {"jemalloc", "raw jemalloc (no table)", "jemalloc, blocks only"} <= names


def test_jemalloc_absent_is_one_line_reason(monkeypatch):
    if _jemalloc_where() == "here":
        pytest.skip("jemalloc is loaded in this process")
    monkeypatch.setattr(B, "find_library", lambda stem: None)
    notes = []
    rows = bench.run(quick=True, only="pool", reps=1, notes=notes)
    assert rows and not [r for r in rows if "jemalloc" in r.contender or r.process == "child"]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].startswith("jemalloc rows absent:") and "libjemalloc" in notes[0]
    assert bench.render_table(rows, notes=notes).splitlines()[-1] == notes[0]
    # areas that compare no allocators need no note
    assert bench.measure(quick=True, only="refcount", reps=1).notes == []


def test_child_that_cannot_load_jemalloc_gives_its_reason():
    if _jemalloc_where() != "child":
        pytest.skip("needs jemalloc installed and not loadable in this process")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    res = bench.measure(quick=True, only="pool", reps=1, child_env=env)
    assert not _child_rows(res.rows) and res.rows
    assert len(res.notes) == 1 and res.notes[0].startswith("jemalloc rows absent: in a child process")
    assert "static TLS" in res.notes[0]


def test_child_dying_midway_drops_its_rows_only(monkeypatch):
    if _jemalloc_where() != "child":
        pytest.skip("needs jemalloc installed and not loadable in this process")
    asked = []

    class Dying(bench._Child):
        def ask(self, msg, timeout=bench.CHILD_TIMEOUT):
            if msg.get("op") == "run":
                asked.append(msg)
                if len(asked) == 3:
                    self.proc.kill()
                    self.proc.wait()
            return super().ask(msg, timeout)

    monkeypatch.setattr(bench, "_Child", Dying)
    res = bench.measure(quick=True, only="pool", reps=2)
    assert not _child_rows(res.rows)
    assert {r.contender for r in res.rows} >= {"pool", "libc"}
    assert len(res.notes) == 1 and "child process failed (it exited with status -9" in res.notes[0]


def test_child_that_cannot_start_is_a_note_with_its_stderr():
    if _jemalloc_where() == "here":
        pytest.skip("jemalloc is loaded in this process: no child")
    res = bench.measure(quick=True, only="pool", reps=1, child_env={"PYTHONHOME": "/nonexistent-nativemem"})
    assert res.rows and not _child_rows(res.rows)
    assert len(res.notes) == 1 and "\n" not in res.notes[0]
    assert res.notes[0].startswith("the jemalloc child process failed (it exited with status ")
    assert res.notes[0].endswith(")") and ": " in res.notes[0]  # the last line of its stderr


def test_child_protocol_directly():
    if _jemalloc_where() != "child":
        pytest.skip("needs jemalloc installed and not loadable in this process")
    child = bench._Child()
    try:
        got = child.ask({"op": "setup", "quick": True, "only": "pool"})
        assert got["ok"] and got["version"]
        assert ["pool", "alloc+free pair (64B)", "jemalloc"] in got["rows"]
        i = got["rows"].index(["pool", "alloc+free pair (64B)", "jemalloc"])
        ans = child.ask({"op": "run", "i": i})
        assert ans["ok"] and ans["ns"] > 0 and ans["ops"] > 0
        assert child.ask({"op": "bogus"}) == {"ok": False, "reason": "unknown op 'bogus'"}
    finally:
        child.close()
    assert child.proc.returncode == 0


# ---- progress ----------------------------------------------------------------------------------
def test_progress_lines_without_a_tty():
    r = run_python(["-m", "nativemem", "bench", "--quick"], timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("bench: started: quick run")
    assert re.fullmatch(r"bench: done: \d+ rows from \d+ measurements in \d+ s", lines[-1]), lines[-1]
    assert "\r" not in r.stderr and "\033" not in r.stderr
    for line in lines[1:-1]:  # the periodic lines, when the run lasts long enough for them
        assert re.match(r"bench: \d+/\d+ measurements, \d+ s \(", line), line
    assert "backends / malloc+free 64B" in r.stdout


def test_progress_periodic_and_tty_modes():
    out = io.StringIO()
    p = bench._Progress(out, every=0.0, tty=False)
    p.start("x")
    for i in range(1, 4):
        p(i, 3, f"pool: w: c{i}")
    p.finish(2)
    lines = out.getvalue().splitlines()
    assert lines[0] == "bench: started: x"
    assert re.fullmatch(r"bench: 2/3 measurements, \d+ s \(pool: w: c2\)", lines[2])
    assert lines[-1].startswith("bench: done: 2 rows from 3 measurements")
    term = io.StringIO()
    t = bench._Progress(term, tty=True)
    t.start("x")
    t(1, 3, "pool: w: c1")
    t.finish(1)
    assert term.getvalue() == "\r\033[K[1/3] pool: w: c1\r\033[K"


# ---- the chart ---------------------------------------------------------------------------------
def test_plot_one_log_chart_per_area(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.figure
    seen = []
    real = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **k):
        seen.append([(ax.get_xscale(), ax.get_title(), [t.get_text() for t in ax.texts]) for ax in fig.axes])
        return real(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    png = tmp_path / "b.png"
    rows = [bench.Row("pool", "w1", "libc", "C", 10.0, 9.0, 11.0, 3, 1.0, "libc"),
            bench.Row("pool", "w1", "pool", "C", 5.0, 4.0, 6.0, 3, 0.5, "libc"),
            bench.Row("pool", "w1", "jemalloc", "C", 8.0, 7.0, 9.0, 3, 0.8, "libc", process="child"),
            bench.Row("pool", "w2", "libc", "C", 100.0, 90.0, 110.0, 3, 1.0, "libc"),
            bench.Row("python", "w3", "bytearray", "python", 90.0, 80.0, 95.0, 3, 1.0, "bytearray"),
            bench.Row("python", "w3", "Buffer", "python", 900.0, 800.0, 950.0, 3, 10.0, "bytearray")]
    bench.plot(rows, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (axes,) = seen
    charts = [a for a in axes if a[1]]
    assert [c[1].split(":")[0] for c in charts] == ["pool", "python"]
    assert all(c[0] == "log" for c in charts)
    assert any(t.startswith("0.50x") for t in charts[0][2]) and any(t.startswith("10.00x") for t in charts[1][2])


def test_cli_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "b.png"
    r = run_python(["-m", "nativemem", "bench", "--quick", "--only", "pool", "--reps", "1", "--plot", str(png)],
                   timeout=300)
    assert r.returncode == 0, r.stderr
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


# ---- the benchmarks file in the package ---------------------------------------------------------
def test_benchmarks_file_is_package_data():
    assert os.path.isfile(bench.benchmarks_path())
    with open(bench.benchmarks_path()) as f:
        assert f.read().startswith("# Benchmarks")
    if not os.path.isfile(os.path.join(ROOT, "pyproject.toml")):
        pytest.skip("needs the source tree")
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        cfg = tomllib.load(f)
    assert "BENCHMARKS.md" in cfg["tool"]["setuptools"]["package-data"]["nativemem"]
    with open(os.path.join(ROOT, "MANIFEST.in")) as f:
        assert re.search(r"^recursive-include src/nativemem .*BENCHMARKS\.md", f.read(), re.M)
    with open(os.path.join(ROOT, "benchmarks", "README.md")) as f:
        assert "src/nativemem/BENCHMARKS.md" in f.read()


@pytest.mark.slow
def test_wheel_ships_the_benchmarks_file(tmp_path):
    if not os.path.isfile(os.path.join(ROOT, "setup.py")):
        pytest.skip("needs the source tree")
    from test_packaging import _copy_source, _pip_wheel
    r = _pip_wheel(_copy_source(str(tmp_path)), str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (whl,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    with zipfile.ZipFile(tmp_path / whl) as z:
        text = z.read("nativemem/BENCHMARKS.md").decode()
    with open(bench.benchmarks_path()) as f:
        assert text == f.read()


def _regenerate_module():
    """benchmarks/regenerate.py as a module (it is not installed: skips without the source tree)."""
    path = os.path.join(ROOT, "benchmarks", "regenerate.py")
    if not os.path.isfile(path):
        pytest.skip("needs the source tree")
    spec = importlib.util.spec_from_file_location("nm_regenerate", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_regenerate_renders_a_run(tmp_path):
    mod = _regenerate_module()
    rows = [bench.Row("pool", "w", "libc", "C", 10.0, 9.0, 11.0, 3, 1.0, "libc"),
            bench.Row("pool", "w", "pool", "C", 12.0, 11.0, 13.0, 3, 1.2, "libc"),
            bench.Row("pool", "w", "jemalloc", "C", 8.0, 7.0, 9.0, 3, 0.8, "libc", process="child")]
    data = {"schema": bench.SCHEMA, "machine": {"platform": "p", "cpu": "c", "cores": 2, "python": "3.11",
                                                 "backends": {"libc": "glibc"}},
            "quick": True, "notes": ["a note"], "rows": [dataclasses.asdict(r) for r in rows]}
    text = mod.render(data, "# Benchmarks\n")
    assert text.startswith("# Benchmarks") and "## Results" in text
    assert "pool at 12.0 ns is 1.20x libc; fastest here: jemalloc [child] (8.0 ns)" in text
    assert "| pool | w | jemalloc [child] | 8.0 |" in text and text.rstrip().endswith("a note")


def test_regenerate_lists_pools_slower_than_a_raw_allocator():
    """The pools' targets are against jemalloc called directly (a [child] row): a pool slower than
    it is listed as a loss with its cause, though both beat the reference (libc through the table)."""
    mod = _regenerate_module()
    wl = "alloc+free pair (64B)"
    rows = [bench.Row("pool", wl, "libc", "C", 16.0, 15.0, 17.0, 3, 1.0, "libc"),
            bench.Row("pool", wl, "pool", "C", 7.0, 6.9, 7.1, 3, 0.44, "libc"),
            bench.Row("pool", wl, "pool, not zeroed", "C", 6.4, 6.3, 6.5, 3, 0.4, "libc"),
            bench.Row("pool", wl, "pool, unchecked", "C", 4.0, 3.9, 4.1, 3, 0.25, "libc"),
            bench.Row("pool", wl, "raw jemalloc (no table)", "C", 5.0, 4.3, 5.7, 3, 0.31, "libc", process="child"),
            bench.Row("pool", wl, "raw free list (floor)", "C", 2.7, 2.6, 2.8, 3, 0.17, "libc")]
    data = {"schema": bench.SCHEMA, "machine": {"platform": "p", "cpu": "c", "cores": 2, "python": "3.11",
                                                 "backends": {"libc": "glibc"}},
            "quick": True, "notes": [], "rows": [dataclasses.asdict(r) for r in rows]}
    text = mod.render(data, "# Benchmarks\n")
    assert f"pool / {wl}: pool at 7.0 ns is 1.40x raw jemalloc (no table) [child] (5.0 ns" in text
    assert "pool, not zeroed at 6.4 ns is 1.28x raw jemalloc" in text and "allocation bitmap" in text
    assert "pool, unchecked at" not in text  # faster than jemalloc: not a loss
    assert "bare per-thread free list in out-of-line functions, is 2.7 ns" in text
