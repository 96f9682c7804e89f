"""The benchmark machinery (no timing assertions: figures belong to benchmarks/)."""
from __future__ import annotations

import builtins
import json

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
    keys = {"area", "workload", "contender", "level", "median_ns", "min_ns", "max_ns", "reps", "ratio", "reference", "ops"}
    assert data["rows"] and all(set(row) == keys for row in data["rows"])
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
