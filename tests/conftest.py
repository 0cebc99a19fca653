"""Shared fixtures: CPU levels, thread counts, optional torch and bfloat16."""
import os
import pathlib
import tempfile

import numpy as np
import pytest

import fastlr
from fastlr import _C


def subprocess_kwargs():
    """cwd and env for a child Python that must import the fastlr under test: run it
    outside the checkout (whose uncompiled fastlr/ would shadow an installed one) with
    the tested package's parent directory first on its path."""
    env = dict(os.environ)
    parent = str(pathlib.Path(fastlr.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [parent, env.get("PYTHONPATH")]))
    return {"cwd": tempfile.gettempdir(), "env": env}

_LEVELS = ("baseline", "avx2", "avx512")


def supported_cpu_levels():
    """The dispatch levels this CPU can run, lowest first (on aarch64: baseline only)."""
    best = _C.detected_cpu_level()
    return _LEVELS[: _LEVELS.index(best) + 1] if best in _LEVELS else ("baseline",)


@pytest.fixture(params=supported_cpu_levels())
def cpu_level(request):
    """Runs the test once per CPU level this machine supports, restoring the level after."""
    before = _C.cpu_level()
    _C.set_cpu_level(request.param)
    try:
        yield request.param
    finally:
        _C.set_cpu_level(before)


@pytest.fixture
def restore_cpu_level():
    """For tests that switch CPU levels themselves: the level is restored after the test."""
    before = _C.cpu_level()
    yield
    _C.set_cpu_level(before)


@pytest.fixture
def num_threads():
    """A setter for fastlr's thread count that restores the original count after the test."""
    before = _C.get_num_threads()
    yield _C.set_num_threads
    _C.set_num_threads(before)


@pytest.fixture(scope="session")
def torch():
    """torch, or a skip when it is not installed."""
    return pytest.importorskip("torch")


def bfloat16_dtype():
    """NumPy's bfloat16 (from ml_dtypes), or None when ml_dtypes is not installed."""
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
        return None
    return np.dtype(ml_dtypes.bfloat16)


@pytest.fixture(scope="session")
def bfloat16():
    dt = bfloat16_dtype()
    if dt is None:  # pragma: no cover
        pytest.skip("ml_dtypes is not installed")
    return dt


# Option combinations per optimizer, as torch.optim constructor keyword arguments: every
# input of torch's optim_db (torch.testing._internal.common_optimizers, CPU) plus the
# modes it leaves out (lerp's other branch, nesterov+maximize, amsgrad+AdamW, ...).
TORCH_CASES = {
    "SGD": [
        {}, {"lr": 0.01}, {"lr": 0.001}, {"weight_decay": 0.5}, {"momentum": 0.9},
        {"weight_decay": 0.1, "maximize": True}, {"momentum": 0.9, "dampening": 0.5},
        {"momentum": 0.9, "weight_decay": 0.1}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        {"momentum": 0.9, "nesterov": True, "maximize": True},
        {"momentum": 0.5, "dampening": 0.3, "weight_decay": 0.01, "maximize": True},
    ],
    "Adam": [
        {}, {"lr": 0.01}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "maximize": True},
        {"weight_decay": 0.1, "amsgrad": True}, {"betas": (0.3, 0.9), "eps": 1e-3},
        {"weight_decay": 0.1, "amsgrad": True, "maximize": True, "decoupled_weight_decay": True},
    ],
    "AdamW": [
        {}, {"lr": 0.01}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "maximize": True},
        {"weight_decay": 0.1, "amsgrad": True}, {"weight_decay": 0.0},
    ],
    "RMSprop": [
        {}, {"lr": 0.001}, {"weight_decay": 0.1}, {"maximize": True},
        {"weight_decay": 0.1, "centered": True}, {"maximize": True, "weight_decay": 0.1},
        {"weight_decay": 0.1, "centered": True, "momentum": 0.1},
        {"weight_decay": 0.1, "centered": True, "momentum": 0.1, "maximize": True},
        {"momentum": 0.9}, {"alpha": 0.3, "eps": 1e-3, "centered": True},
    ],
    "Adagrad": [
        {}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "maximize": True}, {"lr": 0.1},
        {"initial_accumulator_value": 0.1, "weight_decay": 0.1},
        {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1}, {"lr": 0.001},
        {"eps": 1e-3, "maximize": True, "lr_decay": 0.1, "initial_accumulator_value": 1.0},
    ],
}

TORCH_DEFAULT_LR = {"SGD": 1e-3, "Adam": 1e-3, "AdamW": 1e-3, "RMSprop": 1e-2, "Adagrad": 1e-2}


def torch_cases():
    """(optimizer name, torch kwargs) pairs with readable ids, for parametrize."""
    return [
        pytest.param(name, kw, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}")
        for name, cases in TORCH_CASES.items()
        for kw in cases
    ]


# ------------------------------------------------ fastlr.optim in training loops ---
def tiny_model(seed=0):
    """An 8 -> 16 -> 2 MLP (the tests of fastlr.optim inside training loops)."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def tiny_data(seed=1):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 8, generator=g), torch.randn(32, 2, generator=g)


def train_step_fn(model, opt, x, y, backend=None, after_step=None):
    """One MSE training step (backward, opt.step(), zero_grad, then after_step()) returning
    the detached loss; compiled by torch.compile with ``backend`` unless it is None."""
    import torch

    def train_step():
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if after_step is not None:
            after_step()
        return loss.detach()

    return train_step if backend is None else torch.compile(train_step, backend=backend)
