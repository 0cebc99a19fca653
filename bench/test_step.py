"""pytest-benchmark suites for the optimizer step (not part of the test run):

    pytest bench/ --benchmark-only --benchmark-group-by=group
    pytest bench/ --benchmark-only -k "small and adam" --benchmark-json=out.json

Each group is one optimizer on one workload (float32, fastlr's and torch's default
threads); the members are the roofline (memory-only kernel with the update's bytes),
fastlr.optim, torch.optim for-loop / foreach / fused, the NumPy kernels and the NumPy
reference, plus the OneCycle case on the small workload. `fastlr bench` runs the same
contenders interleaved in one process and prints the table; use it for ratios.
"""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytest_benchmark")

import fastlr  # noqa: E402
from fastlr import _C  # noqa: E402
from fastlr._bench import (  # noqa: E402
    OPTIMIZERS,
    Cell,
    fastlr_contender,
    numpy_contender,
    roofline_contender,
    torch_contender,
)

WORKLOADS = ("medium", "small")


@pytest.fixture(scope="module", params=WORKLOADS)
def cell(request):
    return Cell(torch, request.param, "float32")


def _run(benchmark, cell, opt, impl, contender, group=None):
    spec = OPTIMIZERS[opt]
    benchmark.group = group or f"{cell.workload}-{opt}"
    benchmark.extra_info.update(
        impl=impl, numel=cell.numel, tensors=cell.tensors, bytes_per_element=spec["bytes"],
        bytes_per_step=spec["bytes"] * cell.numel, threads=fastlr.get_num_threads(),
        torch_threads=torch.get_num_threads(), cpu_level=_C.cpu_level(), torch=torch.__version__,
    )
    contender.step()  # warm-up: lazy state, first touch
    benchmark(contender.step)


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("impl", ["roofline", "fastlr", "forloop", "foreach", "fused"])
def test_step(benchmark, cell, opt, impl):
    spec = OPTIMIZERS[opt]
    if impl == "fused" and not spec["fused"]:
        pytest.skip(f"torch.optim.{spec['cls']} has no fused CPU path")
    states = cell.new_states(spec["states"])
    if impl == "roofline":
        c = roofline_contender(cell, spec, states)
    elif impl == "fastlr":
        pytest.importorskip("fastlr.optim")
        c, _ = fastlr_contender(spec, cell.params, states)
    else:
        c, _ = torch_contender(torch, spec, impl, cell.params, states)
    _run(benchmark, cell, opt, impl, c)


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("impl", ["fastlr_np", "numpy_ref"])
def test_numpy_step(benchmark, cell, opt, impl):
    spec = OPTIMIZERS[opt]
    states = cell.new_states(spec["states"])
    if impl == "fastlr_np":
        module = fastlr
    else:
        module = pytest.importorskip("fastlr._reference")
    _run(benchmark, cell, opt, impl, numpy_contender(impl, module, opt, spec, cell, states))


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("impl", ["fastlr", "forloop", "foreach", "fused"])
def test_onecycle_step(benchmark, opt, impl):
    """fastlr with OneCycle evaluated in the kernel vs torch step + OneCycleLR.step()."""
    spec = OPTIMIZERS[opt]
    if impl == "fused" and not spec["fused"]:
        pytest.skip(f"torch.optim.{spec['cls']} has no fused CPU path")
    cell = Cell(torch, "small", "float32")
    states = cell.new_states(spec["states"])
    if impl == "fastlr":
        pytest.importorskip("fastlr.optim")
        c, _ = fastlr_contender(spec, cell.params, states, schedule=True)
    else:
        c, _ = torch_contender(torch, spec, impl, cell.params, states, schedule=True)
    _run(benchmark, cell, opt, impl + "+onecycle", c, group=f"small-onecycle-{opt}")
