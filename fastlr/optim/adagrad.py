"""fastlr.optim.Adagrad: torch.optim.Adagrad with one fastlr kernel call per group."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.adagrad import adagrad as _torch_adagrad

from .. import _C
from . import _precision, _quant8_state
from ._base import FastlrOptimizer, _scalar, _Schedule

__all__ = ["Adagrad"]


class Adagrad(FastlrOptimizer):
    """Drop-in ``torch.optim.Adagrad`` (same arguments, defaults, state and state_dict).

    ``s ← s + g²``, ``p ← p − lr/(1 + (step−1)·lr_decay) · g/(√s + eps)`` — exactly
    torch.optim.Adagrad, state ``sum`` starting at ``initial_accumulator_value``. ``lr``
    may be a fastlr Schedule (kept under ``lr_schedule``). Sparse gradients go through
    torch's own implementation. ``foreach`` and ``fused`` are accepted and ignored.

    Low precision (keyword-only): ``master_weights``, ``state_dtype``,
    ``stochastic_rounding``, ``seed`` as for :class:`fastlr.optim.Adam`.

    >>> opt = Adagrad(model.parameters(), lr=0.1)  # doctest: +SKIP
    """

    _kind = "adagrad"
    _sparse_ok = True
    _old_group_defaults = {"foreach": None, "maximize": False, "differentiable": False, "fused": None}

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        master_weights: bool = False,
        state_dtype: torch.dtype | None = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not isinstance(lr, _Schedule) and not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(
                f"Invalid initial_accumulator_value value: {initial_accumulator_value}"
            )
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")

        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
        }
        defaults.update(_precision.defaults(master_weights, state_dtype, stochastic_rounding, seed))
        super().__init__(params, defaults)

        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(group, p, self.state[p])

    def share_memory(self) -> None:
        """Calls tensor.share_memory_() on the state sum tensors."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()

    def _roles(self, group):
        return ("sum",)

    def _init_state(self, group, p, state):
        state["step"] = self._new_step(p)
        # torch reads the default here, not the group's value
        init = self.defaults["initial_accumulator_value"]
        init_value = complex(init, init) if torch.is_complex(p) else init
        if _precision.state_dtype(group, p) == _precision.EIGHT_BIT:
            _quant8_state.init_state(state, p, ("sum",), float(init))
            return
        state["sum"] = torch.full_like(p, init_value, dtype=_precision.state_dtype(group, p),
                                      memory_format=torch.preserve_format)

    def _call(self, group, b, addrs, step, grad_scale, **precision):
        _C.adagrad(
            b.code, b.numel, addrs[0], addrs[1], addrs[2], step, _scalar(group["lr"]), None,
            _scalar(group["lr_decay"]), _scalar(group["weight_decay"]), _scalar(group["eps"]),
            bool(group["maximize"]), grad_scale, **precision,
        )

    def _sparse_step(self, group, params, grads, states, grad_scale):
        _torch_adagrad(
            params, grads, [s["sum"] for s in states], [s["step"] for s in states],
            has_sparse_grad=True, foreach=False, fused=False, lr=group["lr"],
            weight_decay=group["weight_decay"], lr_decay=group["lr_decay"], eps=group["eps"],
            maximize=group["maximize"],
        )
