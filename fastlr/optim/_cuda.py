"""The update of params that are not on the CPU (CUDA), behind one function.

First version: torch's own fused implementation (foreach for RMSprop, which has no fused
one), with a one-time warning, so results are torch's. fastlr's CUDA kernels plug in
here: ``step_group`` receives the group (its values are already those of the current
step: ``group["lr"]``, momentum / betas[0], with any Schedule evaluated at
``group["schedule_t"]``), the params with grads, their grads and their initialised
state dicts.
"""
from __future__ import annotations

import warnings

import torch
from torch.optim.adagrad import adagrad as _adagrad
from torch.optim.adam import adam as _adam
from torch.optim.rmsprop import rmsprop as _rmsprop
from torch.optim.sgd import sgd as _sgd

_warned = False


def _warn_once():
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "fastlr.optim: fastlr's CUDA kernels are not built; params on the GPU are "
            "updated by torch's fused (RMSprop: foreach) implementation",
            stacklevel=5,
        )


def _steps_on(params, states):
    """torch's fused kernels read `step` on the param's device (float32)."""
    steps = []
    for p, s in zip(params, states):
        t = s["step"]
        if t.device != p.device or t.dtype != torch.float32:
            t = s["step"] = t.to(device=p.device, dtype=torch.float32)
        steps.append(t)
    return steps


def step_group(kind, group, params, grads, states, grad_scale=None, found_inf=None):
    """Updates ``params`` (one device type, not CPU) of ``group`` in place.

    kind: "sgd" | "adam" | "rmsprop" | "adagrad"; states: the params' state dicts
    (already initialised as torch does); grad_scale / found_inf: GradScaler's tensors
    or None (a step with found_inf != 0 is not passed here).
    """
    _warn_once()
    fused = params[0].device.type == "cuda"
    if kind == "sgd":
        use_momentum = group["momentum"] != 0 or "momentum_schedule" in group
        bufs = [s.get("momentum_buffer") for s in states] if use_momentum else []
        _sgd(
            params, grads, bufs, foreach=not fused, fused=fused, grad_scale=grad_scale,
            found_inf=found_inf, weight_decay=group["weight_decay"], momentum=group["momentum"],
            lr=group["lr"], dampening=group["dampening"], nesterov=group["nesterov"],
            maximize=group["maximize"],
        )
        if use_momentum:
            for s, b in zip(states, bufs):
                s["momentum_buffer"] = b
    elif kind == "adam":
        beta1, beta2 = group["betas"]
        amsgrad = group["amsgrad"]
        _adam(
            params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
            _steps_on(params, states) if fused else [s["step"] for s in states],
            foreach=not fused, fused=fused, grad_scale=grad_scale, found_inf=found_inf,
            has_complex=any(torch.is_complex(p) for p in params),
            decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=amsgrad,
            beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=group["maximize"],
        )
    elif kind == "rmsprop":
        momentum = group["momentum"]
        use_momentum = "momentum_schedule" in group or momentum > 0
        if grad_scale is not None:
            grads = [g / grad_scale for g in grads]
        _rmsprop(
            params, grads, [s["square_avg"] for s in states],
            [s["grad_avg"] for s in states] if group["centered"] else [],
            [s["momentum_buffer"] for s in states] if use_momentum else [],
            [s["step"] for s in states], foreach=True, maximize=group["maximize"],
            has_complex=any(torch.is_complex(p) for p in params), lr=group["lr"],
            alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
            momentum=momentum, centered=group["centered"],
        )
    elif kind == "adagrad":
        _adagrad(
            params, grads, [s["sum"] for s in states],
            _steps_on(params, states) if fused else [s["step"] for s in states],
            fused=fused, foreach=not fused, grad_scale=grad_scale, found_inf=found_inf,
            has_complex=any(torch.is_complex(p) for p in params), lr=group["lr"],
            weight_decay=group["weight_decay"], lr_decay=group["lr_decay"], eps=group["eps"],
            maximize=group["maximize"],
        )
    else:  # pragma: no cover
        raise ValueError(f"unknown optimizer kind {kind!r}")
