"""Audit of issue 15 ("first contact"): install hints, extras, README statements about the
benchmark, `fastlr bench` option handling, CPU affinity, the sdist. Nothing here times
anything; the bench runs are the smallest the CLI allows."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

from conftest import subprocess_kwargs

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TINY = ["--workload", "small", "--threads", "1", "--reps", "1", "--no-progress"]


def _texts_users_read():
    yield README, README.read_text(encoding="utf-8")
    for folder in ("fastlr", "tools", "examples", "bench"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".sh", ".pyi") and path.is_file():
                yield path, path.read_text(encoding="utf-8")


# ------------------------------------------------------------ install hints ---


def test_no_install_hint_names_the_pypi_project_fastlr():
    """PyPI's "fastlr" is another project: `pip install ... "fastlr[peers]"` (with other
    packages before it on the line) installed it. tests/test_readme.py only looked for
    `pip install fastlr[` at the start of the arguments."""
    # the arguments of one pip command (up to &&, ;, |, a backtick or the line's end)
    pattern = re.compile(r"""pip install[^\n`&;|(]*?(?<![\w.-])["']?fastlr(\[|["'`]|[ \t]*$)""", re.M)
    for path, text in _texts_users_read():
        for m in pattern.finditer(text):
            if re.search(r"never\s+`$", text[max(0, m.start() - 12): m.start()]):  # the README's warning
                continue
            line = text[: m.start()].count("\n") + 1
            pytest.fail(f"{path.relative_to(ROOT)}:{line}: {m.group(0)!r} installs PyPI's unrelated 'fastlr'")


def _extras():
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {k: {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in v}
            for k, v in data["project"]["optional-dependencies"].items()}


def test_extras_hold_what_the_readme_says_they_are_for():
    extras = _extras()
    # README Set-up: ".[plot]" for fastlr plot, ".[torch]" for fastlr.optim, ".[bench]" for
    # fastlr bench (which compares against torch.optim: refused without torch), ".[test]"
    assert "matplotlib" in extras["plot"]
    assert "torch" in extras["torch"]
    assert {"torch", "tqdm"} <= extras["bench"], extras["bench"]
    assert {"pytest", "ml_dtypes", "matplotlib"} <= extras["test"]
    assert {"torchao", "torch-optimi", "bitsandbytes"} <= extras["peers"]
    # every extra named by an install hint exists
    for path, text in _texts_users_read():
        for m in re.finditer(r"""["']\.\[([a-z,]+)\]["']""", text):
            for name in m.group(1).split(","):
                assert name in extras, f"{path.relative_to(ROOT)}: extra {name!r} is not in pyproject.toml"


# -------------------------------------------------- README on the benchmark ---


def test_readme_states_the_drift_limit_and_the_probe_the_bench_uses():
    from fastlr import _benchstats

    text = " ".join(README.read_text(encoding="utf-8").split())
    m = re.search(r"\*\*drifting\*\*: a probe kernel \(fastlr's roofline pass over 64 × (\d+)K floats.*?"
                  r"ran over (\d+) % slower", text)
    assert m, "the README's 'drifting' item is missing"
    probe = _benchstats.default_probe()
    assert len(probe.arrays) == 3 * 64
    assert int(m.group(1)) * 1024 == probe.arrays[0].size
    assert int(m.group(2)) == round(100 * _benchstats.MAX_DRIFT)


# ------------------------------------------------------ option combinations ---


@pytest.mark.parametrize("argv, flag", [
    (["--schedulefree", "--quick", "--optimizer", "sgd"], "--optimizer"),
    (["--schedulefree", "--quick", "--dtype", "bfloat16"], "--dtype"),
    (["--schedulefree", "--quick", "--no-schedule"], "--no-schedule"),
    (["--schedulefree", "--quick", "--no-peers"], "--no-peers"),
    (["--precision", "--schedulefree", "--no-peers"], "--schedulefree"),
    (["--quick", "--optimizer", "sgd", "--no-schedule", "--no-numpy", "--no-peers"], "--no-peers"),
])
def test_bench_refuses_options_the_chosen_run_would_ignore(argv, flag, capsys):
    """Each used to run (e.g. the schedule-free AdamW-SF rows for `--optimizer sgd`, in
    float32 for `--dtype bfloat16`) and exit 0 as if the option had been honoured."""
    from fastlr import cli

    assert cli.main(["bench", *argv, *TINY]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and flag in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bench_schedulefree_honours_no_numpy(tmp_path, torch, capsys):
    from fastlr import cli

    out = tmp_path / "sf.json"
    assert cli.main(["bench", "--schedulefree", "--quick", "--no-numpy", *TINY, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert rows and all("fastlr_np" not in r["contenders"] for r in rows)
    assert any("fastlr" in r["contenders"] for r in rows)


def test_interleave_gives_slow_contenders_the_repetitions_asked_for():
    from fastlr._benchstats import Contender, interleave

    def make():
        fast, slow = Contender("fast", lambda: None), Contender("slow", lambda: None)
        fast.warm_s, slow.warm_s = 1e-3, 1e-2  # slow: over 4x the fastest
        return fast, slow

    fast, slow = make()
    interleave([fast, slow], min_reps=6, max_reps=10, budget_s=0.0)
    assert (len(fast.samples), len(slow.samples)) == (6, 3)  # the default: told apart with fewer
    fast, slow = make()
    interleave([fast, slow], min_reps=6, max_reps=10, budget_s=0.0, slow_reps=6)
    assert (len(fast.samples), len(slow.samples)) == (6, 6)


def test_bench_reps_is_a_minimum_for_every_contender(torch, monkeypatch, capsys):
    """--reps says "minimum samples per contender"; contenders over 4x slower than fastlr
    (torch's for-loop) stopped at 3 whatever --reps said, so their intervals could not be
    narrowed by asking for more."""
    from fastlr import _bench, cli

    seen = []
    real = _bench.measure_cell

    def spy(*args, **kw):
        seen.append((kw.get("min_reps"), kw.get("slow_reps")))
        return real(*args, **kw)

    monkeypatch.setattr(_bench, "measure_cell", spy)
    base = ["bench", "--optimizer", "sgd", "--no-schedule", "--no-numpy", "--workload", "small", "--threads", "1",
            "--dtype", "float32", "--no-progress"]
    assert cli.main(base + ["--reps", "4"]) == 0
    assert seen == [(4, 4)]
    seen.clear()
    assert cli.main(base) == 0  # no --reps: 5, and 3 for the slow ones
    assert seen == [(5, 3)]


# ------------------------------------------------------------- CPU affinity ---


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and at least 2 usable CPUs")
def test_bench_default_threads_are_the_usable_cpus(tmp_path, torch):
    """Under `taskset -c 0` (or a container's cpuset) "all cores" ran 2 threads on 1 CPU,
    with no oversubscription warning, and the table said "2 cores"."""
    out = tmp_path / "b.json"
    code = (
        "import os, sys\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from fastlr import _bench, cli\n"
        "assert _bench.default_threads(True) == (1,) and _bench.default_threads(False) == (1,)\n"
        "sys.exit(cli.main(['bench', '--quick', '--workload', 'small', '--optimizer', 'sgd', '--no-schedule',\n"
        f"                  '--no-numpy', '--reps', '1', '--no-progress', '--json', {str(out)!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       **subprocess_kwargs())
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert [row["threads"] for row in data["results"]] == [1]
    assert data["meta"]["cores"] == 1 and data["meta"]["cpu_count"] == os.cpu_count()
    assert "(1 cores" in r.stdout


# ----------------------------------------------------- bench --precision ---


def test_precision_roofline_targets_never_quote_an_untrusted_share():
    from fastlr import _bench_precision

    def row(mode, pct, trusted, flags=()):
        return {"workload": "small", "cell": "bfloat16", "threads": 2, "mode": mode, "label": mode,
                "bytes_per_element": 28, "numel": 10, "median_s": 1e-3, "q1_s": 1e-3, "q3_s": 1e-3,
                "gbps": 1.0, "roofline_median_s": 1e-3, "pct_roofline": pct,
                "pct_roofline_ci": [pct - 30, pct + 40], "trusted": trusted, "flags": list(flags)}

    meta = {"cpu": "x", "cores": 2, "cpu_level": "avx512", "torch": "t", "peers": {}, "date": "d",
            "loadavg": "0", "trust": "1 of 2 cells trustworthy"}
    rows = [row("fastlr master", 95.0, False, ("busy", "wide")), row("fastlr bf16 SR", 91.0, True)]
    text = _bench_precision.format_tables(rows, [], meta)
    line = next(x for x in text.splitlines() if x.startswith("Roofline targets:"))
    assert "fastlr master 2 thr ? (65-135%) (busy+wide)" in line
    assert "95%" not in line
    assert "fastlr bf16 SR 2 thr 91% (met)" in line


# -------------------------------------------------------------------- sdist ---


def test_sdist_ships_the_build_inputs_and_a_runnable_test_suite(tmp_path):
    """The sdist held tests/test_*.py (setuptools' default) but not tests/conftest.py,
    tests/_dist_worker.py or examples/train_ddp.py they import or start: its test suite
    could not run. The build inputs (every source and header, LICENSE, README) are checked
    too, with every #include "..." of csrc resolved inside the archive."""
    pytest.importorskip("pybind11")
    pytest.importorskip("setuptools")
    tree = tmp_path / "src"
    skip = shutil.ignore_patterns(".git", ".venv", ".ci-venv", ".build", "build", "dist", "*.egg-info",
                                  "__pycache__", "*.so", ".pytest_cache", ".hypothesis", ".benchmarks", "out")
    shutil.copytree(ROOT, tree, ignore=skip)
    kw = subprocess_kwargs()
    kw["cwd"] = str(tree)
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
                       capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    (archive,) = (tmp_path / "dist").glob("fastlr_kernels-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for must in ("LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in", "fastlr/_C.pyi",
                 "fastlr/py.typed", "tests/conftest.py", "tests/_dist_worker.py", "examples/train_ddp.py",
                 "tools/gen_quant8_maps.py", "tools/sanitize.sh"):
        assert must in names, must
    for path in ROOT.joinpath("fastlr").rglob("*.py"):
        assert path.relative_to(ROOT).as_posix() in names, path
    for path in ROOT.joinpath("tests").glob("*.py"):
        assert path.relative_to(ROOT).as_posix() in names, path
    sources = [p for p in ROOT.joinpath("csrc").rglob("*") if p.suffix in (".hpp", ".cpp", ".cu", ".cuh", ".h")]
    assert len(sources) > 20
    for path in sources:
        rel = path.relative_to(ROOT).as_posix()
        assert rel in names, rel
        for inc in re.findall(r'^\s*#\s*include\s+"([^"]+)"', path.read_text(), re.M):
            candidates = {(path.parent / inc).resolve(), (ROOT / "csrc" / inc).resolve()}
            found = [c for c in candidates if c.is_file()]
            assert found, f"{rel}: #include \"{inc}\" not found"
            assert any(c.relative_to(ROOT).as_posix() in names for c in found), f"{rel}: {inc} not in the sdist"


# --------------------------------------------------------------------- JSON ---


def _strict_json(text):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_bench_json_is_standard_json_when_an_interval_is_unbounded(tmp_path, torch, monkeypatch, capsys):
    """A cell with one repetition (a busy host, a slow contender over the budget) has
    intervals [0, inf]; --json wrote `Infinity`, which jq, JavaScript and most parsers
    other than Python's reject."""
    from fastlr import _bench, cli

    real = _bench.measure_cell

    def one_repetition(*args, **kw):
        kw.update(min_reps=1, max_reps=1, retries=0)
        return real(*args, **kw)

    monkeypatch.setattr(_bench, "measure_cell", one_repetition)
    out = tmp_path / "b.json"
    argv = ["bench", "--optimizer", "sgd", "--workload", "small", "--dtype", "float32", "--no-schedule",
            "--no-numpy", "--threads", "1", "--no-progress", "--json", str(out)]
    assert cli.main(argv) == 0
    (row,) = _strict_json(out.read_text())["results"]
    assert row["trusted"] is False and "wide" in row["flags"]
    assert row["stats"]["ratios"]["fused"]["hi"] is None  # unbounded: null, not Infinity
    assert "? (" in capsys.readouterr().out
