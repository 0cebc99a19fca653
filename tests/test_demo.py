"""`fastlr demo`: the data, the light import, and a --quick run producing tables and PNGs."""
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import subprocess_kwargs
from fastlr import _demo


def test_import_is_light():
    code = ("import sys, fastlr._demo, fastlr.cli; "
            "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, **subprocess_kwargs())


def test_make_blobs():
    X, y = _demo.make_blobs()
    assert X.shape == (1000, 2) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [334, 333, 333]
    X2, y2 = _demo.make_blobs()
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(X, _demo.make_blobs(seed=1)[0])
    # clusters of spread ~cluster_std around distinct centres
    for k in range(3):
        assert np.std(X[y == k], axis=0) == pytest.approx([2.0, 2.0], rel=0.15)


def test_quick_run(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from fastlr import cli

    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for key in "abcdefg":
        assert f"({key})" in text
    assert "epochs to 90% test" in text and "suggestion (steepest)" in text
    assert "fastlr.optim vs torch.optim" in text and "speed-up" in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["demo_a_lr_sweep.png", "demo_b_momentum.png", "demo_c_inverse_time.png", "demo_d_plateau.png",
                    "demo_e_adaptive.png", "demo_f_one_cycle.png", "demo_f_range_test.png",
                    "demo_g_schedulefree.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tables = (out / "tables.txt").read_text()
    assert "(a) lr sensitivity" in tables and "one-cycle" in tables and "AdamW-SF" in tables
    # fastlr.optim and torch.optim ran the same trajectories
    rows = [line for line in tables.splitlines() if re.match(r"\s*\([a-g]\)\s+\d+\s", line)]
    assert len(rows) == 7
    for line in rows:
        assert float(line.split()[-1]) <= 0.01, line


def test_bad_arguments_exit_2(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from fastlr import cli

    assert cli.main(["demo", "--quick", "--epochs", "0", "--out", str(tmp_path)]) == 2
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    assert cli.main(["demo", "--quick", "--out", str(in_the_way / "sub")]) == 2
    err = capsys.readouterr().err
    assert "--epochs must be >= 1" in err and "output folder" in err
