"""`fastlr plot`: PNG output, overlays, momentum axis, safe parsing, missing matplotlib."""
import argparse
import os
import subprocess
import sys

import pytest

from conftest import subprocess_kwargs
from fastlr import _plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fastlr", "plot", *args],
        capture_output=True, text=True, timeout=120, **subprocess_kwargs(),
    )


def namespace(*argv):
    p = argparse.ArgumentParser()
    _plot.add_arguments(p)
    return p.parse_args(list(argv))


def assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_cli_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "onecycle.png"
    r = run_cli("OneCycle(max_lr=0.1, total_steps=1000)", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert_png(out)


def test_overlay_with_momentum_and_options(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "overlay.png"
    args = namespace(
        "OneCycle(max_lr=0.1, total_steps=500)",
        "OneCycleMomentum(total_steps=500)",
        "Warmup(Cosine(lr=0.1, total_steps=400), warmup_steps=100)",
        "-o", str(out), "--steps", "600", "--logy", "--title", "compare",
    )
    assert _plot.main(args) == 0
    assert_png(out)
    small = tmp_path / "small.png"
    assert _plot.main(namespace("OneCycleMomentum(total_steps=100)", "-o", str(small), "--figsize", "3,2",
                                "--dpi", "60")) == 0
    assert_png(small)
    assert os.path.getsize(small) < os.path.getsize(out)


def test_default_steps_cover_the_schedule(tmp_path):
    pytest.importorskip("matplotlib")
    for expr in ["StepDecay(lr=0.1, step_size=30)", "Exponential(lr=0.1, gamma=0.99)",
                 "Sequential([Constant(0.1), Cosine(0.1, 50)], [10])", "InverseTime(0.1, 0.0)"]:
        out = tmp_path / "x.png"
        assert _plot.main(namespace(expr, "-o", str(out))) == 0
        assert_png(out)


@pytest.mark.parametrize("expr", [
    "__import__('os').system('touch {marker}')",
    "Cosine(lr=__import__('os').system('touch {marker}'), total_steps=10)",
    "[Cosine(0.1, 10) for _ in ().__class__.__bases__[0].__subclasses__()]",
    "Cosine(0.1, 10) if open('{marker}', 'w') else 0",
])
def test_cli_rejects_code_without_running_it(tmp_path, expr):
    marker = tmp_path / "pwned"
    out = tmp_path / "out.png"
    r = run_cli(expr.format(marker=marker), "-o", str(out))
    assert r.returncode == 2
    assert "error" in r.stderr
    assert not marker.exists() and not out.exists()


def test_bad_arguments_exit_2(tmp_path, capsys):
    for argv in (["Cosine(lr=0.1, total_steps=0)"], ["Cosine(0.1)"], ["Nope(1)"], ["Cosine(0.1, 10"],
                 ["Cosine(0.1, 10)", "--steps", "0"], ["Cosine(0.1, 10)", "--steps", str(2**53 + 1)],
                 ["Cosine(0.1, 10)", "--figsize", "3x2"], ["Cosine(0.1, 10)", "--figsize", "0,0"],
                 ["Cosine(0.1, 10)", "--figsize", "nan,4"], ["Cosine(0.1, 10)", "--figsize", "1000,1000"],
                 ["Cosine(0.1, 10)", "--dpi", "0"], ["Cosine(0.1, 10)", "--dpi", "100000"],
                 ["Constant(lr=0.1, lr=0.2)"],  # Python's compiler refuses a repeated keyword
                 ["Constant(" + "-" * 3000 + "1)"], ["Constant(0.1)" + ".a" * 4000],
                 ["Constant(0.1)" + "(1)" * 3000]):
        with pytest.raises(SystemExit) as e:
            _plot.main(namespace(*argv, "-o", str(tmp_path / "o.png")))
        assert e.value.code == 2
        assert "fastlr plot: error" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_bad_output_paths_exit_2_before_plotting(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for out in (str(tmp_path / "missing" / "o.png"), str(tmp_path), str(tmp_path / "o.unknownformat")):
        with pytest.raises(SystemExit) as e:
            _plot.main(namespace("Cosine(0.1, 10)", "-o", out))
        assert e.value.code == 2
        assert "fastlr plot: error" in capsys.readouterr().err
    assert _plot.main(namespace("Cosine(0.1, 10)", "-o", str(tmp_path / "noext"))) == 0
    assert "wrote " + str(tmp_path / "noext.png") in capsys.readouterr().out  # the file written
    assert_png(tmp_path / "noext.png")


def test_long_schedules_are_sampled(tmp_path):
    """A schedule of 2**53 steps is drawn from a bounded number of points, not every step."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "big.png"
    assert _plot.main(namespace("OneCycle(max_lr=0.1, total_steps=9007199254740992)", "-o", str(out))) == 0
    assert_png(out)
    ts = _plot._sample_steps(2**53)
    assert ts[0] == 0 and ts[-1] == 2**53 - 1 and ts.size <= _plot._MAX_POINTS
    assert list(_plot._sample_steps(5)) == [0, 1, 2, 3, 4]


def test_missing_matplotlib_message(tmp_path, monkeypatch, capsys):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(SystemExit) as e:
        _plot.main(namespace("Cosine(0.1, 10)", "-o", str(tmp_path / "o.png")))
    assert e.value.code == 2
    assert 'pip install matplotlib (or, in the fastlr checkout, pip install ".[plot]")' in capsys.readouterr().err


def test_parse_schedule_round_trips_doc_examples():
    from fastlr.schedules import OneCycle

    assert _plot.parse_schedule("OneCycle(max_lr=0.1, total_steps=1000)") == OneCycle(0.1, 1000)
    assert set(_plot.SCHEDULE_CLASSES) >= {"OneCycle", "Warmup", "Sequential", "RangeTest"}
    assert "Schedule" not in _plot.SCHEDULE_CLASSES and "as_schedule" not in _plot.SCHEDULE_CLASSES
