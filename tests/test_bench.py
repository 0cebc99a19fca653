"""Smoke tests of `fastlr bench` and the roofline kernel. Nothing here times anything."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import subprocess_kwargs
from fastlr import _C


def test_bench_module_imports_without_torch():
    code = "import sys, fastlr._bench; sys.exit('torch' in sys.modules or 'tqdm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], **subprocess_kwargs()).returncode == 0


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_roofline_reads_and_writes_back_unchanged(k, dtype, num_threads):
    num_threads(2)
    rng = np.random.default_rng(k)
    sizes = [0, 1, 17, 40_000, 70_001]
    arrays = [[rng.integers(0, 2**15, n).astype(dtype) for n in sizes] for _ in range(k + 1)]
    before = [[a.copy() for a in role] for role in arrays]
    addr = [[a.ctypes.data for a in role] for role in arrays]
    code = {np.float32: 0, np.float64: 1, np.uint16: 2}[dtype]
    _C.roofline(code, sizes, addr[0], addr[1], addr[2:])
    for role, ref in zip(arrays, before):
        for a, b in zip(role, ref):
            np.testing.assert_array_equal(a, b)


def test_roofline_rejects_more_than_three_states():
    a = np.zeros(4, np.float32)
    with pytest.raises(ValueError):
        _C.roofline(0, [4], [a.ctypes.data], [a.ctypes.data], [[a.ctypes.data]] * 4)


def test_bench_quick_writes_json(tmp_path, torch):
    pytest.importorskip("tqdm")
    from fastlr import cli

    out = tmp_path / "bench.json"
    # --reps 1 keeps the smoke test short; the budget loop still takes several samples
    assert cli.main(["bench", "--quick", "--reps", "1", "--no-progress", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    meta, results = data["meta"], data["results"]
    assert meta["torch"] == torch.__version__ and meta["cpu_level"] == _C.cpu_level()
    assert meta["openmp"] == _C.openmp and meta["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert {r["workload"] for r in results} == {"medium", "small"}
    for r in results:
        assert r["contenders"], r
        for c in r["contenders"].values():
            assert c["samples"] >= 1 and c["median_s"] > 0
        if r["schedule"] is None:
            assert r["roofline_gbps"] > 0
        # every cell is judged, and its verdict travels with its ratios and intervals
        assert r["trusted"] == (not r["flags"]) and set(r["flags"]) <= {"busy", "drifting", "wide"}
        assert r["stats"]["verdict"]["flags"] == r["flags"] and r["stats"]["host"]["other_cores"] is not None
        if "speedup_vs_torch_best" in r:
            lo, hi = r["speedup_vs_torch_best_ci"]
            assert lo <= r["speedup_vs_torch_best"] <= hi
    assert meta["expected_s"] < 60 and meta["host"]["other_cores_max"] >= meta["host"]["other_cores_start"]
    assert any(r["schedule"] == "onecycle" for r in results)


def test_bench_refuses_an_unwritable_json_path_before_running(tmp_path, capsys):
    from fastlr import cli

    for path in (tmp_path / "missing" / "b.json", tmp_path):
        assert cli.main(["bench", "--quick", "--no-progress", "--json", str(path)]) == 2
        err = capsys.readouterr().err
        assert "cannot write --json" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--reps", "0"])
    assert e.value.code == 2


def test_bench_filters(tmp_path, torch, capsys):
    from fastlr import cli

    out = tmp_path / "b.json"
    argv = ["bench", "--optimizer", "adagrad", "--workload", "small", "--threads", "1", "--reps", "1",
            "--no-schedule", "--no-progress", "--json", str(out)]
    assert cli.main(argv) == 0
    results = json.loads(out.read_text())["results"]
    assert [(r["optimizer"], r["workload"], r["threads"]) for r in results] == [("adagrad", "small", 1)]
    assert "| Adagrad |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["bench", "--optimizer", "lion"])


def _synthetic_result(flags):
    """One bench cell whose every ratio is 3366.82 with the interval [1, 4000]."""
    from fastlr import _bench
    from fastlr._benchstats import CellResult, Ratio, Verdict

    c = {k: {"median_s": t, "min_s": t, "max_s": t, "q1_s": t, "q3_s": t, "samples": 5, "inner": 1}
         for k, t in (("roofline", 1e-3), ("fastlr", 1e-3), ("forloop", 9.0), ("foreach", 8.0), ("fused", 3.4))}
    res = {"optimizer": "sgd", "label": "SGD(m=0.9)", "workload": "small", "dtype": "float32", "threads": 2,
           "schedule": None, "numel": 99000, "tensors": 100, "bytes_per_element": 20, "contenders": c}
    ratios = {k: Ratio(3366.82, 1.0, 4000.0, 5) for k in _bench.cell_ratios(list(c))}
    _bench._summarize(res, CellResult([], ratios, Verdict(tuple(flags)), None))
    return res


def test_bench_table_marks_untrusted_cells_and_counts_them():
    from fastlr import _bench

    meta = {"cpu": "x", "cores": 2, "cpu_level": "avx2", "torch": "t", "numpy": "n", "fastlr": "f", "date": "d",
            "env": {}, "wall_s": 1.0, "host": {"other_cores_start": 1.0, "other_cores_max": 1.1, "retries": 1}}
    busy, quiet = _synthetic_result(["busy", "drifting"]), _synthetic_result([])
    text = _bench.format_table([busy], meta)
    row = next(line for line in text.splitlines() if line.startswith("| SGD"))
    assert "3366" not in row and "? (1.00-4000x) (fused)" in row and row.endswith("| busy+drifting |")
    assert "0 of 1 cells trustworthy; 1 marked (busy 1, drifting 1)." in text
    assert "up to 1.10 during it" in text
    text = _bench.format_table([quiet, busy], meta)
    assert "3366.82x [1.00, 4000.00] (fused)" in text and "1 of 2 cells trustworthy" in text
