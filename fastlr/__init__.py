"""fastlr: fused optimizer-update kernels with learning-rate schedules evaluated in C++.

Three faces over one C++ core: drop-in torch optimizers (``fastlr.optim``), NumPy
kernels (``fastlr.adam_step`` …, no torch needed) and benchmarks (``fastlr bench``).
"""
from __future__ import annotations

import numbers

from . import _C
from ._kernels import (
    adagrad8bit_step, adagrad_step, adam8bit_step, adam_step, dequantize8bit, quantize8bit, rmsprop8bit_step,
    rmsprop_step, sgd8bit_step, sgd_step,
)
from ._schedulefree_kernels import (
    ScheduleFreeStep, adamw_schedulefree_step, radam_schedulefree_step, schedulefree_eval,
    schedulefree_train, sgd_schedulefree_step,
)
from . import numpy  # fastlr.numpy.SGD ...: stateful optimizers over NumPy arrays
from ._version import __version__

__all__ = [
    "__version__",
    "build_info",
    "get_num_threads",
    "set_num_threads",
    "sgd_step",
    "adam_step",
    "adam8bit_step",
    "rmsprop_step",
    "adagrad_step",
    "sgd8bit_step",
    "rmsprop8bit_step",
    "adagrad8bit_step",
    "quantize8bit",
    "dequantize8bit",
    "sgd_schedulefree_step",
    "adamw_schedulefree_step",
    "radam_schedulefree_step",
    "schedulefree_eval",
    "schedulefree_train",
    "ScheduleFreeStep",
]

try:  # the schedules module is optional while it is being built
    from . import schedules as _schedules
    from .schedules import *  # noqa: F401,F403

    __all__ += list(_schedules.__all__)
except ImportError:  # pragma: no cover
    pass

# LR finder and plateau scheduler: loaded on first use (PEP 562), so `import fastlr` stays
# light; find_lr imports torch only when called.
_LAZY = {"find_lr": "._lr_finder", "ReduceLROnPlateau": "._plateau"}
__all__ += list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name == "optim":  # `import fastlr; fastlr.optim.Adam(...)` (imports torch only then)
        import importlib

        return importlib.import_module(".optim", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_MAX_THREADS = 4096


def get_num_threads() -> int:
    """Number of threads the kernels use (default: OpenMP's, honouring OMP_NUM_THREADS)."""
    return _C.get_num_threads()


def set_num_threads(n: int) -> None:
    """Sets the number of threads the kernels use (1 <= n <= 4096), process-wide."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    n = int(n)
    if not 1 <= n <= _MAX_THREADS:  # beyond it OpenMP would try to start that many threads
        raise ValueError(f"n must be in [1, {_MAX_THREADS}], got {n}")
    _C.set_num_threads(n)


def build_info() -> dict:
    """What this build of fastlr is and does on this machine.

    Returns a dict with the version, the compiler, the SIMD level dispatched on this
    CPU (``cpu_level``; ``FASTLR_CPU_LEVEL`` overrides it), the best level the CPU
    supports, OpenMP on/off, the thread count and whether the CUDA kernels are built.
    """
    try:
        from . import _C_cuda  # noqa: F401

        cuda = True
    except ImportError:
        cuda = False
    return {
        "version": __version__,
        "compiler": _C.compiler,
        "cpu_level": _C.cpu_level(),
        "cpu_level_detected": _C.detected_cpu_level(),
        "openmp": bool(_C.openmp),
        "num_threads": _C.get_num_threads(),
        "cuda": cuda,
    }
