"""fastlr.optim.Adam / AdamW: torch.optim.Adam / AdamW with one fastlr kernel call per group."""
from __future__ import annotations

import numbers

import torch
from torch import Tensor
from torch.optim.optimizer import _to_scalar

from .. import _C
from . import _precision, _quant8_state
from ._base import FastlrOptimizer, _scalar, _Schedule

__all__ = ["Adam", "AdamW"]


class Adam(FastlrOptimizer):
    """Drop-in ``torch.optim.Adam`` (same arguments, defaults, state and state_dict).

    ``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·g²``,
    ``p ← p − lr/(1−β1^step) · m / (√v/√(1−β2^step) + eps)`` with L2 (or, with
    ``decoupled_weight_decay=True``, AdamW's decoupled) weight decay and optional AMSGrad
    — exactly torch.optim.Adam. ``lr`` and ``betas[0]`` may be fastlr Schedules (kept
    under ``lr_schedule`` / ``momentum_schedule``; ``group["lr"]`` / ``group["betas"][0]``
    show the value the next step uses). ``foreach``, ``fused`` and ``capturable`` are
    accepted and ignored on the CPU.

    Low precision (keyword-only, defaults keep torch's behaviour): ``master_weights=True``
    keeps a float32 ``state["master_param"]`` for bf16/f16 params, ``state_dtype``
    (``torch.float32`` / ``torch.bfloat16``) stores the per-element state,
    ``stochastic_rounding=True`` rounds 16-bit stores stochastically with random bits keyed
    by ``seed``, the step, the tensor and the element (README, "Low precision").
    ``state_dtype="8bit"`` stores the moments of tensors of at least 4096 elements as
    block-wise 8-bit codes and scales (``exp_avg_codes`` / ``exp_avg_scale``, ...), with
    fastlr's encoding (√v quantized; README, "8-bit optimizer state").

    >>> opt = Adam(model.parameters(), lr=Warmup(Cosine(3e-4, 10_000), 500))  # doctest: +SKIP
    """

    _kind = "adam"
    _momentum_key = "betas"
    _old_group_defaults = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                           "differentiable": False, "decoupled_weight_decay": False, "fused": None}

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        master_weights: bool = False,
        state_dtype: torch.dtype | None = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
    ) -> None:
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")  # not IndexError
        lr_sched = isinstance(lr, _Schedule)
        b1_sched = isinstance(betas[0], _Schedule)
        for i, b in enumerate(betas):  # before torch's comparisons, whose TypeError names nothing
            if isinstance(b, _Schedule) and i == 1:
                raise TypeError(f"betas[1] must be a float or a Tensor, got {type(b).__name__}: only betas[0] "
                                "(beta1) may be a Schedule")
            if not isinstance(b, (_Schedule, Tensor, numbers.Real)):
                raise TypeError(f"betas[{i}] must be a float or a Tensor, got {type(b).__name__}")
        if isinstance(lr, Tensor):
            if foreach and not capturable:
                raise ValueError(
                    "lr as a Tensor is not supported for capturable=False and foreach=True"
                )
            if lr.numel() != 1:
                raise ValueError("Tensor lr must be 1-element")
        if not lr_sched and not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not b1_sched and not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not b1_sched and not (
            (isinstance(betas[0], float) and isinstance(betas[1], float))
            or (isinstance(betas[0], Tensor) and isinstance(betas[1], Tensor))
        ):
            raise ValueError("betas must be either both floats or both Tensors")
        for i, b in enumerate(betas):
            if isinstance(b, Tensor):
                if not capturable and foreach:
                    raise ValueError(
                        f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True"
                    )
                if b.numel() != 1:
                    raise ValueError(f"Tensor betas[{i}] must be 1-element")
        betas = tuple(b if isinstance(b, _Schedule) else _to_scalar(b) for b in betas)

        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        defaults.update(_precision.defaults(master_weights, state_dtype, stochastic_rounding, seed))
        super().__init__(params, defaults)

        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def _roles(self, group):
        if group["amsgrad"]:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")

    def _init_state(self, group, p, state):
        state["step"] = self._new_step(p)
        dtype = _precision.state_dtype(group, p)
        if dtype == _precision.EIGHT_BIT:
            _quant8_state.init_state(state, p, self._roles(group))
            return
        state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)

    def _call(self, group, b, addrs, step, grad_scale, **precision):
        beta1, beta2 = group["betas"]
        _C.adam(
            b.code, b.numel, addrs[0], addrs[1], addrs[2], addrs[3],
            addrs[4] if len(addrs) > 4 else None, step, _scalar(group["lr"]), None,
            _scalar(beta1), None, _scalar(beta2), _scalar(group["eps"]),
            _scalar(group["weight_decay"]), bool(group["decoupled_weight_decay"]),
            bool(group["amsgrad"]), bool(group["maximize"]), grad_scale, **precision,
        )

    def _sparse_error(self):
        return "Adam does not support sparse gradients, please consider SparseAdam instead"


class AdamW(Adam):
    """Drop-in ``torch.optim.AdamW``: :class:`Adam` with decoupled weight decay
    (``p ← p·(1 − lr·weight_decay)`` before the Adam update), default weight_decay 1e-2."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        master_weights: bool = False,
        state_dtype: torch.dtype | None = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            master_weights=master_weights,
            state_dtype=state_dtype,
            stochastic_rounding=stochastic_rounding,
            seed=seed,
        )

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
