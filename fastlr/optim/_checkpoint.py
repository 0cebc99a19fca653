"""Validation of a state_dict before ``load_state_dict`` touches the optimizer.

torch.optim's ``load_state_dict`` checks only the number and sizes of the param groups:
a state with a missing key, an unknown key, a tensor of the wrong shape or a non-float
dtype loads silently and fails later, or trains on garbage. fastlr's kernels take raw
pointers, so here every such state_dict is refused up front with a ValueError/TypeError
naming the group, the param and the key, before anything is modified.

Accepted as torch accepts them: a param without state (never stepped), floating-point
state of another float dtype or device (cast/moved to the param's, as torch does), an SGD
``momentum_buffer`` that is absent or None (the next step starts it from the gradient),
group keys added by later torch versions (filled with their defaults).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch

from .. import _quant8
from . import _quant8_state

# Hyper-parameters every torch version has saved: without them a step cannot run.
_GROUP_KEYS = {
    "sgd": ("lr", "momentum", "dampening", "weight_decay", "nesterov"),
    "adam": ("lr", "betas", "eps", "weight_decay", "amsgrad"),
    "rmsprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered"),
    "adagrad": ("lr", "lr_decay", "weight_decay", "eps"),
}
# Every per-param state key the optimizer (torch's or fastlr's) may hold.
_STATE_KEYS = {
    "sgd": ("momentum_buffer",),
    "adam": ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "rmsprop": ("step", "square_avg", "grad_avg", "momentum_buffer"),
    "adagrad": ("step", "sum"),
}
_MAX_STEP = 2**53  # the kernels take the step as a double


def check_state_dict(opt, state_dict):
    """Raises ValueError/TypeError if ``state_dict`` cannot be loaded into ``opt``."""
    name = f"fastlr.optim.{type(opt).__name__}.load_state_dict"
    kind = opt._kind
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{name}: expected a state_dict (a dict), got {type(state_dict).__name__}")
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise ValueError(f"{name}: the state_dict has no {key!r} entry")
    groups, state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(groups, (list, tuple)):
        raise TypeError(f"{name}: state_dict['param_groups'] must be a list, got {type(groups).__name__}")
    if not isinstance(state, Mapping):
        raise TypeError(f"{name}: state_dict['state'] must be a dict, got {type(state).__name__}")
    if len(groups) != len(opt.param_groups):
        raise ValueError(
            f"{name}: loaded state dict has a different number of parameter groups "
            f"({len(groups)}, the optimizer has {len(opt.param_groups)})"
        )

    owner = {}  # saved param id -> (group index, index in group, param, saved group)
    for g, (saved, current) in enumerate(zip(groups, opt.param_groups)):
        if not isinstance(saved, Mapping):
            raise TypeError(f"{name}: param_groups[{g}] must be a dict, got {type(saved).__name__}")
        for key in ("params",) + _GROUP_KEYS[kind]:
            if key not in saved:
                raise ValueError(f"{name}: param_groups[{g}] has no {key!r}")
        _check_schedule_keys(saved, f"{name}: param_groups[{g}]")
        ids = saved["params"]
        if len(ids) != len(current["params"]):
            raise ValueError(
                f"{name}: param_groups[{g}] lists {len(ids)} params, the optimizer's group has "
                f"{len(current['params'])}"
            )
        for i, (pid, p) in enumerate(zip(ids, current["params"])):
            if pid in owner:
                raise ValueError(f"{name}: param id {pid!r} is listed twice in param_groups")
            owner[pid] = (g, i, p, saved)

    allowed = _STATE_KEYS[kind] + ("master_param",)  # the fp32 copy of master_weights=True
    # state_dtype="8bit": a role may be stored as uint8 codes and float32 block scales
    eight_bit = tuple(f"{r}{s}" for r in _STATE_KEYS[kind] if r in _quant8.ROLES
                      for s in ("_codes", "_scale"))
    allowed += eight_bit
    spans = []  # (device, start, end, where) of every state tensor
    for pid, pstate in state.items():
        if pid not in owner:
            raise ValueError(f"{name}: state has an entry for param id {pid!r}, which no param group lists")
        g, i, p, saved = owner[pid]
        where = f"{name}: the state of param_groups[{g}]['params'][{i}]"
        if not isinstance(pstate, Mapping):
            raise TypeError(f"{where} must be a dict, got {type(pstate).__name__}")
        if not pstate:
            continue  # never stepped
        for key in pstate:
            if key not in allowed:
                raise ValueError(f"{where} has an unexpected key {key!r} (expected some of {list(allowed)})")
        required = [r for r in opt._roles(saved) if not (kind == "sgd" and r == "momentum_buffer")]
        if opt._has_step:
            required.append("step")
        for key in eight_bit:
            pair = key[: key.rindex("_")] + ("_scale" if key.endswith("_codes") else "_codes")
            if key in pstate and pair not in pstate:
                raise ValueError(f"{where} has {key!r} but no {pair!r} (8-bit state is codes and scales)")
        for key in required:
            if key not in pstate and not (key + "_codes" in pstate and key + "_scale" in pstate):
                raise ValueError(f"{where} has no {key!r} (needed by the group's options)")
        if _quant8_state.is_dtensor(p):  # sharded state is loaded as saved: the layouts must agree
            from ._precision import loaded_options  # (_precision builds on _base, which imports this)

            sdt = loaded_options(saved, opt.param_groups[g]).get("state_dtype")
            _quant8_state.check_sharded_layout(where, pstate, opt._roles(saved),
                                               sdt == _quant8_state.EIGHT_BIT and _quant8_state.quantized(p),
                                               _quant8_state.source_of(saved))
        for key, value in pstate.items():
            if key == "step":
                _check_step(value, f"{where}['step']")
            elif value is None and kind == "sgd":
                continue  # torch's "no buffer yet"
            elif key in eight_bit:
                _quant8_state.check_saved(where, key, value, p, _quant8_state.source_of(saved)[0])
            else:
                _check_like_param(value, p, f"{where}[{key!r}]")
                if key == "master_param" and value.dtype != torch.float32:
                    raise TypeError(f"{where}['master_param'] has dtype {value.dtype}; expected float32")
                local = getattr(value, "_local_tensor", value)  # a DTensor's shard (FSDP2)
                if local.numel():
                    spans.append((local.device.type, local.data_ptr(), local.data_ptr() + local.nbytes,
                                  f"param_groups[{g}]['params'][{i}][{key!r}]"))
    # the kernels write every state tensor: two of them sharing memory would be updated twice
    spans.sort()
    for a, b in zip(spans, spans[1:]):
        if a[0] == b[0] and b[1] < a[2]:
            raise ValueError(f"{name}: the state of {b[3]} shares memory with that of {a[3]}")


def _check_step(value, where):
    if torch.is_tensor(value):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{where} must be a number or a one-element real tensor, got {value.dtype} "
                            f"of shape {tuple(value.shape)}")
        value = float(value)
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and 0 <= value <= _MAX_STEP and value.is_integer()):
        raise ValueError(f"{where} must be a whole number in [0, 2**53], got {value}")


def _check_schedule_keys(saved, where):
    """The keys fastlr.optim adds to a group with a Schedule attached."""
    from ..schedules import Schedule

    for key in ("lr_schedule", "momentum_schedule"):
        if saved.get(key) is not None and not isinstance(saved[key], Schedule):
            raise TypeError(f"{where}[{key!r}] must be a fastlr Schedule, got {type(saved[key]).__name__}")
    if "schedule_t" in saved:
        t = saved["schedule_t"]
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t <= _MAX_STEP:
            raise ValueError(f"{where}['schedule_t'] must be an int in [0, 2**53], got {t!r}")
    if "lr_scale" in saved:
        v = saved["lr_scale"]
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{where}['lr_scale'] must be a finite number >= 0, got {v!r}")
    if saved.get("lr_schedule") is not None and "lr_scale" not in saved:
        raise ValueError(f"{where} has an 'lr_schedule' but no 'lr_scale'")


def _check_like_param(value, p, where):
    if not torch.is_tensor(value):
        raise TypeError(f"{where} must be a tensor, got {type(value).__name__}")
    if value.layout != torch.strided:
        raise TypeError(f"{where} is a {value.layout} tensor; expected a dense (strided) one like the param")
    if torch._debug_has_internal_overlap(value) == 1:  # e.g. expanded: one element stands for many
        raise ValueError(f"{where} has elements sharing memory (stride 0 or overlapping strides)")
    if not (value.is_floating_point() or value.is_complex()) or value.is_complex() != p.is_complex():
        raise TypeError(f"{where} has dtype {value.dtype}; expected a tensor like the param ({p.dtype})")
    if tuple(value.shape) != tuple(p.shape):
        raise ValueError(f"{where} has shape {tuple(value.shape)}; expected {tuple(p.shape)} like the param")
