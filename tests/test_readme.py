"""Every ```python block of README.md runs as written, each in a fresh interpreter.

A block whose first line is ``# requires: cuda`` runs only where torch sees a GPU; one whose
first line is ``# skip: <reason>`` is not run (keep those rare: say why). Some blocks'
printed results are checked too, where the README quotes them."""
import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

from conftest import subprocess_kwargs

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    text = README.read_text(encoding="utf-8")
    found = []
    heading = "top"
    for m in re.finditer(r"^(#{2,4} [^\n]*)$|^```python\n(.*?)^```", text, re.S | re.M):
        if m.group(1):
            heading = m.group(1).lstrip("# ").strip()
        else:
            line = text.count("\n", 0, m.start()) + 1
            found.append(pytest.param(m.group(2), id=f"L{line}-{re.sub(r'[^A-Za-z0-9]+', '-', heading)[:40]}"))
    return found


# heading words -> regexes the block's output must match (the README quotes these results)
EXPECTED_OUTPUT = {
    "Switching-from-torch": [r"OneCycle lr only: +\|loss - torch's\| = (\d\.\d\de-0[1-3])\n",
                   r"\+ OneCycleMomentum beta1: \|loss - torch's\| = (0\.00e\+00|\d\.\d\de-(0[6-9]|1\d))\n"],
    "NumPy-kernels": [r"\[-2\.7\]"],
    "fastlr-numpy": [r"\[ 1\.\s+-2\.\s+0\.5\]"],
}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_has_blocks():
    ids = [p.id for p in _blocks()]
    assert len(ids) >= 10
    for key in EXPECTED_OUTPUT:  # each quoted result is checked by some block
        assert sum(key in i for i in ids) == 1, key


@pytest.mark.parametrize("code", _blocks())
def test_readme_block_runs(code, tmp_path, request):
    first = code.splitlines()[0] if code.strip() else ""
    if first.startswith("# skip:"):
        pytest.skip(first[len("# skip:"):].strip())
    if first.startswith("# requires: cuda"):
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")
    if "import torch" in code:
        pytest.importorskip("torch")
    if "matplotlib" in code or ".plot(" in code:
        pytest.importorskip("matplotlib")
    kw = subprocess_kwargs()
    kw["cwd"] = str(tmp_path)
    kw["env"].update(MPLBACKEND="Agg", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="2")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        kw["env"].pop(k, None)
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"README block failed:\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"
    for key, patterns in EXPECTED_OUTPUT.items():
        if key in request.node.callspec.id:
            for pat in patterns:
                assert re.search(pat, r.stdout), f"output does not match {pat!r}:\n{r.stdout}"


def test_readme_names_this_distribution_and_install_hints_work_from_a_checkout():
    text = README.read_text(encoding="utf-8")
    # PyPI's "fastlr" is another project: no instruction may install it
    assert not re.search(r"pip install [\"']?fastlr\[", text)
    assert "fastlr-kernels" in text and 'pip install ".[plot]"' in text
    pyproject = README.with_name("pyproject.toml").read_text()
    assert re.search(r'^name = "fastlr-kernels"', pyproject, re.M)
    assert README.with_name("LICENSE").read_text().startswith("BSD 3-Clause License")
    for path in README.parent.joinpath("fastlr").rglob("*.py"):
        assert not re.search(r"pip install [\"']?fastlr\[", path.read_text()), path
    assert os.path.isfile(README.with_name("MANIFEST.in"))
