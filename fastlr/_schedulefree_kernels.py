"""NumPy kernels of the schedule-free optimizers (Defazio et al., 2024), exactly the
``schedulefree`` package's update: ``fastlr.sgd_schedulefree_step``,
``adamw_schedulefree_step``, ``radam_schedulefree_step`` and the mode switches
``schedulefree_eval`` / ``schedulefree_train``.

A step takes the group's bookkeeping (``lr_max``, ``weight_sum``; start them at -1.0 and
0.0) and returns the new values, which the caller passes to the next step. ``params``
hold y (train mode), ``zs`` start as copies of the params and ``exp_avg_sqs`` as zeros.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from . import _C
from ._kernels import _Call, _non_negative, _real, _schedule_or_value, _step

# a param group's bookkeeping as schedulefree's constructors start it (fastlr.numpy's and
# fastlr.optim's schedule-free groups)
GROUP_START = {"k": 0, "train_mode": False, "weight_sum": 0.0, "lr_max": -1.0, "scheduled_lr": 0.0}
STEP_IN_EVAL = (  # schedulefree's message
    "Optimizer was not in train mode when step is called. Please insert .train() and "
    ".eval() calls on the optimizer. See documentation for details."
)

__all__ = [
    "ScheduleFreeStep",
    "sgd_schedulefree_step",
    "adamw_schedulefree_step",
    "radam_schedulefree_step",
    "schedulefree_eval",
    "schedulefree_train",
]


class ScheduleFreeStep(NamedTuple):
    """What a schedule-free step leaves in the group: the lr it used (after warm-up or
    rectification), and ``lr_max`` / ``weight_sum`` to pass to the next step."""

    scheduled_lr: float
    lr_max: float
    weight_sum: float


def _state(call, arrays, name):
    """A state list in the params' dtype (the schedule-free kernels have no state_dtype)."""
    arrays = call.state(arrays, name)
    if arrays and call.n and arrays[0].dtype != call.dtype:
        raise TypeError(f"{name}[0] has dtype {arrays[0].dtype}; the schedule-free kernels keep "
                        f"their state in the params' dtype ({call.dtype})")
    return arrays


def _open_unit(x, name):
    x = _real(x, name)
    if not 0.0 < x < 1.0:
        raise ValueError(f"Invalid {name}: {x} (must be in (0, 1))")
    return x


def _finite_non_negative(x, name):
    x = _non_negative(x, name)
    if math.isinf(x):
        raise ValueError(f"Invalid {name}: {x} (must be finite)")
    return x


def _bookkeeping(lr_max, weight_sum):
    lr_max = _real(lr_max, "lr_max")
    weight_sum = _non_negative(weight_sum, "weight_sum")
    return lr_max, weight_sum


def _warmup(warmup_steps):
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"Invalid warmup_steps: {warmup_steps!r} (must be an int >= 0)")
    return float(warmup_steps)


def _run(kind, call, zs, vs, step, lr, lr_enc, beta1, beta2, eps, weight_decay, warmup, r,
         weight_lr_power, lr_max, weight_sum, silent):
    out = _C.schedulefree_step(
        kind, call.code, call.numel, call.addresses(call.params), call.addresses(call.grads),
        call.addresses(zs), call.addresses(vs), step - 1, lr, lr_enc, beta1, beta2, eps,
        weight_decay, warmup, r, weight_lr_power, lr_max, weight_sum, silent)
    return ScheduleFreeStep(*out[:3])


def sgd_schedulefree_step(params, grads, zs, *, step, lr, momentum=0.9, weight_decay=0.0,
                          warmup_steps=0, r=0.0, weight_lr_power=2.0, lr_max=-1.0,
                          weight_sum=0.0):
    """One step of schedule-free SGD (``schedulefree.SGDScheduleFree``), in place.

    With ``k = step − 1``: ``lr_k = lr·min(1, (k+1)/warmup_steps)``,
    ``lr_max = max(lr_max, lr_k)``, ``w = (k+1)^r · lr_max^weight_lr_power``,
    ``weight_sum += w``, ``c = w / weight_sum``; ĝ = g + weight_decay·y;
    ``y ← lerp(y, z, c) + lr_k·(momentum·(1−c) − 1)·ĝ``, ``z ← z − lr_k·ĝ``.

    Args:
        params: y (the params in train mode); grads; zs: the z sequence (start: copies
            of the params). Each an ndarray or a list of them.
        step: 1-based index of this update. lr: float or Schedule (at ``step − 1``).
        lr_max, weight_sum: the values the previous step returned (-1.0 and 0.0 first).

    Returns:
        :class:`ScheduleFreeStep` ``(scheduled_lr, lr_max, weight_sum)``.

    Example:
        >>> y = np.ones(3, np.float32); z = y.copy(); g = np.full(3, 0.5, np.float32)
        >>> sgd_schedulefree_step(y, g, z, step=1, lr=0.1)
        ScheduleFreeStep(scheduled_lr=0.1, lr_max=0.1, weight_sum=0.010000000000000002)
    """
    call = _Call(params, grads)
    step = _step(step, required=True)
    lr, lr_enc = _schedule_or_value(lr, "lr", _finite_non_negative)
    momentum = _open_unit(momentum, "momentum")
    weight_decay = _non_negative(weight_decay, "weight_decay")
    warmup = _warmup(warmup_steps)
    r = _finite_non_negative(r, "r")
    weight_lr_power = _finite_non_negative(weight_lr_power, "weight_lr_power")
    lr_max, weight_sum = _bookkeeping(lr_max, weight_sum)
    zs = _state(call, zs, "zs")
    call.require(zs, "zs", "calling sgd_schedulefree_step")
    call.finish()
    return _run(0, call, zs, None, step, lr, lr_enc, momentum, 0.0, 0.0, weight_decay, warmup,
                r, weight_lr_power, lr_max, weight_sum, True)


def _adam_args(call, zs, exp_avg_sqs, name, lr, beta1, beta2, eps, weight_decay, r,
               weight_lr_power, lr_max, weight_sum):
    lr, lr_enc = _schedule_or_value(lr, "lr", _finite_non_negative)
    beta1 = _open_unit(beta1, "beta1")
    beta2 = _real(beta2, "beta2")
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"Invalid beta2: {beta2} (must be in [0, 1))")
    eps = _non_negative(eps, "eps")
    weight_decay = _non_negative(weight_decay, "weight_decay")
    r = _finite_non_negative(r, "r")
    weight_lr_power = _finite_non_negative(weight_lr_power, "weight_lr_power")
    lr_max, weight_sum = _bookkeeping(lr_max, weight_sum)
    zs = _state(call, zs, "zs")
    vs = _state(call, exp_avg_sqs, "exp_avg_sqs")
    call.require(zs, "zs", f"calling {name}")
    call.require(vs, "exp_avg_sqs", f"calling {name}")
    call.finish()
    return zs, vs, lr, lr_enc, beta1, beta2, eps, weight_decay, r, weight_lr_power, lr_max, weight_sum


def adamw_schedulefree_step(params, grads, zs, exp_avg_sqs, *, step, lr, beta1=0.9,
                            beta2=0.999, eps=1e-8, weight_decay=0.0, warmup_steps=0, r=0.0,
                            weight_lr_power=2.0, lr_max=-1.0, weight_sum=0.0):
    """One step of schedule-free AdamW (``schedulefree.AdamWScheduleFree``), in place.

    ``v ← β2·v + (1−β2)·g²``, ĝ = g / (√(v/(1−β2^step)) + eps) + weight_decay·y, then the
    update of :func:`sgd_schedulefree_step` with β1 as the momentum.

    Returns:
        :class:`ScheduleFreeStep` ``(scheduled_lr, lr_max, weight_sum)``.

    Example:
        >>> y = np.ones(3); z = y.copy(); v = np.zeros(3); g = np.ones(3)
        >>> adamw_schedulefree_step(y, g, z, v, step=1, lr=1e-2).lr_max
        0.01
    """
    call = _Call(params, grads)
    step = _step(step, required=True)
    warmup = _warmup(warmup_steps)
    a = _adam_args(call, zs, exp_avg_sqs, "adamw_schedulefree_step", lr, beta1, beta2, eps,
                   weight_decay, r, weight_lr_power, lr_max, weight_sum)
    zs, vs, lr, lr_enc, beta1, beta2, eps, weight_decay, r, weight_lr_power, lr_max, weight_sum = a
    return _run(1, call, zs, vs, step, lr, lr_enc, beta1, beta2, eps, weight_decay, warmup, r,
                weight_lr_power, lr_max, weight_sum, True)


def radam_schedulefree_step(params, grads, zs, exp_avg_sqs, *, step, lr, beta1=0.9,
                            beta2=0.999, eps=1e-8, weight_decay=0.0, r=0.0,
                            weight_lr_power=2.0, lr_max=-1.0, weight_sum=0.0,
                            silent_sgd_phase=True):
    """One step of schedule-free RAdam (``schedulefree.RAdamScheduleFree``), in place.

    As :func:`adamw_schedulefree_step` without warm-up, lr multiplied by RAdam's
    rectification once ``ρ_t > 4``; before that an SGD step on the raw grad, or with
    ``silent_sgd_phase`` (default) lr 0 (only v moves).

    Returns:
        :class:`ScheduleFreeStep` ``(scheduled_lr, lr_max, weight_sum)``.
    """
    call = _Call(params, grads)
    step = _step(step, required=True)
    if not isinstance(silent_sgd_phase, bool):
        raise TypeError(f"silent_sgd_phase must be a bool, got {type(silent_sgd_phase).__name__}")
    a = _adam_args(call, zs, exp_avg_sqs, "radam_schedulefree_step", lr, beta1, beta2, eps,
                   weight_decay, r, weight_lr_power, lr_max, weight_sum)
    zs, vs, lr, lr_enc, beta1, beta2, eps, weight_decay, r, weight_lr_power, lr_max, weight_sum = a
    return _run(2, call, zs, vs, step, lr, lr_enc, beta1, beta2, eps, weight_decay, 0.0, r,
                weight_lr_power, lr_max, weight_sum, silent_sgd_phase)


def _lerp(params, zs, weight):
    call = _Call(params, zs, grads_name="zs")
    call.finish()
    _C.schedulefree_lerp(call.code, call.numel, call.addresses(call.params),
                         call.addresses(call.grads), weight)


def schedulefree_eval(params, zs, *, beta1):
    """Train → eval mode: ``params ← lerp(params, zs, 1 − 1/beta1)`` (y to x), in place.
    ``beta1`` is AdamW/RAdam's ``betas[0]`` or SGD's ``momentum``."""
    beta1 = _open_unit(beta1, "beta1")
    _lerp(params, zs, 1 - 1 / beta1)


def schedulefree_train(params, zs, *, beta1):
    """Eval → train mode: ``params ← lerp(params, zs, 1 − beta1)`` (x to y), in place."""
    beta1 = _open_unit(beta1, "beta1")
    _lerp(params, zs, 1 - beta1)
