"""fastlr.optim.SGD: torch.optim.SGD with the update in one fastlr kernel call per group."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.sgd import sgd as _torch_sgd

from .. import _C
from . import _precision
from ._base import FastlrOptimizer, _scalar, _Schedule, _schedule_peak

__all__ = ["SGD"]


class SGD(FastlrOptimizer):
    """Drop-in ``torch.optim.SGD`` (same arguments, defaults, state and state_dict).

    ``p ← p − lr·b`` with ``b ← momentum·b + (1 − dampening)·g`` (``b := g`` on the first
    step; Nesterov uses ``g + momentum·b``), ``g ← ∇ + weight_decay·p`` — exactly
    torch.optim.SGD. ``lr`` and ``momentum`` may be fastlr Schedules: the group keeps
    them under ``lr_schedule`` / ``momentum_schedule`` and ``group["lr"]`` /
    ``group["momentum"]`` show the value the next step uses. ``foreach`` and ``fused``
    are accepted and ignored.

    Low precision (keyword-only, defaults keep torch's behaviour): ``master_weights=True``
    keeps a float32 ``state["master_param"]`` for bf16/f16 params, ``state_dtype``
    (``torch.float32`` / ``torch.bfloat16`` / ``"8bit"``: block-wise 8-bit
    ``momentum_buffer_codes`` / ``momentum_buffer_scale`` for tensors of at least 4096
    elements) stores the per-element state,
    ``stochastic_rounding=True`` rounds 16-bit stores stochastically with random bits keyed
    by ``seed``, the step, the tensor and the element (README, "Low precision").

    >>> opt = SGD(model.parameters(), lr=OneCycle(0.1, 1000), momentum=OneCycleMomentum(1000))  # doctest: +SKIP
    """

    _kind = "sgd"
    _has_step = False
    _momentum_key = "momentum"
    _sparse_ok = True
    _old_group_defaults = {"nesterov": False, "maximize": False, "foreach": None, "differentiable": False,
                           "fused": False}

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        master_weights: bool = False,
        state_dtype: torch.dtype | None = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
    ) -> None:
        lr_sched = isinstance(lr, _Schedule)
        mom_sched = isinstance(momentum, _Schedule)
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr_sched and lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not mom_sched and momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")

        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        if nesterov and (dampening != 0 or (_schedule_peak(momentum) if mom_sched else momentum) <= 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults.update(_precision.defaults(master_weights, state_dtype, stochastic_rounding, seed))
        super().__init__(params, defaults)

        if fused:
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def _roles(self, group):
        if group["momentum"] != 0 or "momentum_schedule" in group:
            return ("momentum_buffer",)
        return ()

    def _init_state(self, group, p, state):
        pass  # torch creates the momentum buffer from the first gradient

    def _call(self, group, b, addrs, step, grad_scale, t=0, **precision):
        momentum = _scalar(group["momentum"])
        _C.sgd(
            b.code, b.numel, addrs[0], addrs[1], addrs[2] if len(addrs) > 2 else None,
            _scalar(group["lr"]), None, t, momentum, None, _scalar(group["dampening"]),
            bool(group["nesterov"]), _scalar(group["weight_decay"]), bool(group["maximize"]), b.first,
            grad_scale, **precision,
        )

    def _sparse_step(self, group, params, grads, states, grad_scale):
        use_momentum = bool(self._roles(group))
        bufs = [s.get("momentum_buffer") for s in states] if use_momentum else []
        _torch_sgd(
            params, grads, bufs, has_sparse_grad=True, foreach=False, fused=False,
            weight_decay=group["weight_decay"], momentum=group["momentum"], lr=group["lr"],
            dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
        )
        if use_momentum:
            for s, buf in zip(states, bufs):
                s["momentum_buffer"] = buf
