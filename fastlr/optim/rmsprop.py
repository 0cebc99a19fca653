"""fastlr.optim.RMSprop: torch.optim.RMSprop with one fastlr kernel call per group."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _C
from . import _precision, _quant8_state
from ._base import FastlrOptimizer, _scalar, _Schedule

__all__ = ["RMSprop"]


class RMSprop(FastlrOptimizer):
    """Drop-in ``torch.optim.RMSprop`` (same arguments, defaults, state and state_dict).

    ``v ← α·v + (1−α)·g²``; centered: ``ḡ ← α·ḡ + (1−α)·g``, ``v̂ = v − ḡ²``;
    ``p ← p − lr·g/(√v̂ + eps)``, or with momentum ``b ← momentum·b + g/(√v̂ + eps)``,
    ``p ← p − lr·b`` — exactly torch.optim.RMSprop. ``lr`` and ``momentum`` may be
    fastlr Schedules (kept under ``lr_schedule`` / ``momentum_schedule``). ``foreach``
    and ``capturable`` are accepted and ignored on the CPU.

    Low precision (keyword-only): ``master_weights``, ``state_dtype``,
    ``stochastic_rounding``, ``seed`` as for :class:`fastlr.optim.Adam`.

    >>> opt = RMSprop(model.parameters(), lr=Exponential(1e-2, gamma=0.999))  # doctest: +SKIP
    """

    _kind = "rmsprop"
    _momentum_key = "momentum"
    _old_group_defaults = {"momentum": 0, "centered": False, "foreach": None, "maximize": False,
                           "differentiable": False, "capturable": False}

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        master_weights: bool = False,
        state_dtype: torch.dtype | None = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not isinstance(lr, _Schedule) and not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not isinstance(momentum, _Schedule) and not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")

        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
        }
        defaults.update(_precision.defaults(master_weights, state_dtype, stochastic_rounding, seed))
        super().__init__(params, defaults)

    @staticmethod
    def _use_momentum(group):
        return "momentum_schedule" in group or group["momentum"] > 0

    def _roles(self, group):
        roles = ("square_avg",)
        if group["centered"]:
            roles += ("grad_avg",)
        if self._use_momentum(group):
            roles += ("momentum_buffer",)
        return roles

    def _init_state(self, group, p, state):
        state["step"] = self._new_step(p)
        dtype = _precision.state_dtype(group, p)
        if dtype == _precision.EIGHT_BIT:
            _quant8_state.init_state(state, p, self._roles(group))
            return
        state["square_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        if self._use_momentum(group):
            state["momentum_buffer"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)

    def _call(self, group, b, addrs, step, grad_scale, t=0, **precision):
        centered = bool(group["centered"])
        use_momentum = self._use_momentum(group)
        k = 3
        grad_avgs = momentum_buffers = None
        if centered:
            grad_avgs = addrs[k]
            k += 1
        if use_momentum:
            momentum_buffers = addrs[k]
        _C.rmsprop(
            b.code, b.numel, addrs[0], addrs[1], addrs[2], grad_avgs, momentum_buffers,
            _scalar(group["lr"]), None, t, _scalar(group["alpha"]), _scalar(group["eps"]),
            _scalar(group["weight_decay"]), _scalar(group["momentum"]), None, centered,
            use_momentum, bool(group["maximize"]), False, grad_scale, **precision,
        )

    def _sparse_error(self):
        return "RMSprop does not support sparse gradients"
