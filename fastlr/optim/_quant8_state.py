"""``state_dtype="8bit"`` of fastlr.optim (issue #13): block-wise 8-bit state inside the
precision machinery of ``_precision.py`` (same bucketing, cached plans, one fused call
per bucket); this module holds what is specific to the 8-bit storage.

Each per-element state ``<role>`` of a tensor with at least 4096 elements is stored as
``<role>_codes`` (uint8, the param's shape) and ``<role>_scale`` (float32, one per block
of 256 elements, the last block may be partial): element i is ``map[code]·scale[i//256]``
(fastlr._quant8), with fastlr's encoding: signed roles (``exp_avg``) as they are, unsigned
ones (``exp_avg_sq``, ``max_exp_avg_sq``) as their square root, and an element whose √v
dequantizes to 0 restarts its exp_avg too (``fastlr.adam8bit_step(variant="fastlr")``).
Smaller tensors keep float32 state under torch's keys.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import _C, _quant8

EIGHT_BIT = "8bit"
BLOCK = 256
# role -> (signed map, encoding)
ROLES = {
    "exp_avg": (True, "linear"),
    "exp_avg_sq": (False, "sqrt"),
    "max_exp_avg_sq": (False, "sqrt"),
}
_KINDS = ("adam",)  # optimizers whose 8-bit kernel exists
_STORE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 3}  # _C.adam8's param store
_SQRT = 1  # _C.adam8's flavour: fastlr's encoding, torch.optim.Adam's arithmetic
_LOW = (torch.bfloat16, torch.float16)


def quantized(p):
    """Whether p's state is 8-bit (else float32): tensors of at least 4096 elements."""
    return p.numel() >= _quant8.MIN_QUANT8_NUMEL


def storage(p):
    return EIGHT_BIT if quantized(p) else torch.float32


def num_blocks(p):
    return _quant8.num_blocks(p.numel(), BLOCK)


# ------------------------------------------------------------------ options ---
def check_group(where, kind, group):
    """state_dtype="8bit": the combinations the kernels implement (the caller has checked
    the dtypes, devices and float64 params)."""
    if kind not in _KINDS:
        raise NotImplementedError(
            f"{where}state_dtype=\"8bit\" is implemented for Adam and AdamW (the 8-bit kernels of "
            "this optimizer are not built yet); use state_dtype=torch.bfloat16 or None"
        )
    for i, p in enumerate(group["params"]):
        if group.get("master_weights") and p.dtype in _LOW:
            raise NotImplementedError(
                f"{where}state_dtype=\"8bit\" with master_weights=True on the {p.dtype} params[{i}] "
                "is not implemented yet (the 8-bit kernel has no fp32 master); use bf16 params "
                "with stochastic_rounding=True, or state_dtype=torch.bfloat16 with master weights"
            )
        if group.get("stochastic_rounding") and p.dtype == torch.float16:
            raise NotImplementedError(
                f"{where}state_dtype=\"8bit\" with stochastic_rounding=True on the float16 "
                f"params[{i}]: the 8-bit kernel rounds float16 params to nearest only"
            )
        if type(p) is not torch.Tensor and hasattr(p, "_local_tensor"):
            raise NotImplementedError(
                f"{where}state_dtype=\"8bit\" with the DTensor params[{i}] (FSDP2): 8-bit blocks "
                "of sharded params are not implemented"
            )


# -------------------------------------------------------------------- state ---
def init_state(state, p, roles):
    """Zero 8-bit state (codes 0, scales 0) for each role."""
    nb = num_blocks(p)
    for role in roles:
        state[role + "_codes"] = torch.zeros(p.shape, dtype=torch.uint8)
        state[role + "_scale"] = torch.zeros(nb, dtype=torch.float32)


def new_role(state, role, p):
    state[role + "_codes"] = codes = torch.zeros(p.shape, dtype=torch.uint8)
    state[role + "_scale"] = scale = torch.zeros(num_blocks(p), dtype=torch.float32)
    return codes, scale


def role_tensors(name, j, state, role, p, kind):
    """(codes, scale) of one role of p, checked; None for SGD's not yet started buffer."""
    codes, scale = state.get(role + "_codes"), state.get(role + "_scale")
    if codes is None and scale is None and kind == "sgd":
        return None
    nb = num_blocks(p)
    if (codes is None or scale is None or codes.dtype != torch.uint8 or codes.shape != p.shape
            or scale.dtype != torch.float32 or scale.shape != (nb,) or not scale.is_contiguous()
            or codes.device.type != "cpu" or scale.device.type != "cpu"):
        raise RuntimeError(
            f"fastlr.optim.{name}: state['{role}_codes'] / state['{role}_scale'] of params[{j}] must be "
            f"uint8 codes of shape {tuple(p.shape)} and {nb} contiguous float32 scales (state_dtype=\"8bit\")"
        )
    return codes, scale


def negates_grads(opt, group):
    """The 8-bit kernel has no maximize: the grads are negated into temporaries."""
    return bool(group.get("maximize"))


def call(opt, group, b, p_addr, g_addr, addrs, scales, step, gs, precision):
    """One fused 8-bit kernel call over a bucket (params of one dtype and step count)."""
    if opt._kind != "adam":
        raise NotImplementedError(opt._kind)
    from ._base import _scalar

    store = {0: 0, 2: 1, 3: 3}[b.code]
    if store == 1 and precision["stochastic_rounding"]:
        store = 2
    beta1, beta2 = group["betas"]
    amsgrad = bool(group["amsgrad"])
    _C.adam8(store, BLOCK, True, _SQRT, b.numel, p_addr, g_addr, addrs[0], scales[0], addrs[1], scales[1],
             addrs[2] if amsgrad else None, scales[2] if amsgrad else None, step, _scalar(group["lr"]), None,
             _scalar(beta1), None, _scalar(beta2), _scalar(group["eps"]), _scalar(group["weight_decay"]),
             bool(group["decoupled_weight_decay"]), amsgrad, precision["seed"], grad_scale=gs)


# -------------------------------------------------------------- state dicts ---
def check_saved(where, key, value, p):
    """A saved ``<role>_codes`` / ``<role>_scale`` tensor: ValueError unless it fits p."""
    if not torch.is_tensor(value):
        raise ValueError(f"{where}[{key!r}] must be a tensor, got {type(value).__name__}")
    if key.endswith("_codes"):
        if value.dtype != torch.uint8 or tuple(value.shape) != tuple(p.shape):
            raise ValueError(f"{where}[{key!r}] has dtype {value.dtype} and shape {tuple(value.shape)}; "
                             f"expected uint8 codes of the param's shape {tuple(p.shape)}")
    else:
        nb = num_blocks(p)
        if value.dtype != torch.float32 or tuple(value.shape) != (nb,):
            raise ValueError(f"{where}[{key!r}] has dtype {value.dtype} and shape {tuple(value.shape)}; "
                             f"expected float32 scales of shape ({nb},) (one per block of {BLOCK})")


def saved_values(saved, role):
    """float32 NumPy values of one role of a saved per-param state (8-bit or float), or None."""
    codes = saved.get(role + "_codes")
    if codes is not None:
        signed, encoding = ROLES[role]
        return _quant8.dequantize(codes.cpu().numpy(), saved[role + "_scale"].cpu().numpy(), BLOCK, signed,
                                  encoding).reshape(-1)
    t = saved.get(role)
    if t is None:
        return None
    return t.detach().float().cpu().contiguous().numpy().reshape(-1).copy()


def convert_loaded(state, saved, p, roles, eight_bit, float_dtype):
    """After torch's load_state_dict: p's state re-read from the saved tensors in this
    group's storage (8-bit codes taken over, float state quantized, or dequantized when the
    group keeps float state of ``float_dtype``)."""
    q8 = eight_bit and quantized(p)
    for role in roles:
        if role + "_codes" in saved and q8:
            state[role + "_codes"] = saved[role + "_codes"].to(torch.uint8).cpu().contiguous().clone()
            state[role + "_scale"] = saved[role + "_scale"].to(torch.float32).cpu().contiguous().clone()
            state.pop(role, None)
            continue
        values = saved_values(saved, role)
        state.pop(role + "_codes", None)
        state.pop(role + "_scale", None)
        if values is None:
            continue
        if q8:
            signed, encoding = ROLES[role]
            codes, scales = _quant8.quantize(values, BLOCK, signed, encoding)
            state[role + "_codes"] = torch.from_numpy(codes).reshape(p.shape)
            state[role + "_scale"] = torch.from_numpy(scales)
            state.pop(role, None)
        else:
            state[role] = torch.from_numpy(np.ascontiguousarray(values)).reshape(p.shape).to(
                device=p.device, dtype=float_dtype)


def dequantized(saved):
    """A per-param state with every ``<role>_codes`` / ``<role>_scale`` pair as float32
    ``<role>`` (other entries shared)."""
    out = {}
    for key, v in saved.items():
        if key.endswith("_scale") and key[: -len("_scale")] in ROLES:
            continue
        if key.endswith("_codes") and key[: -len("_codes")] in ROLES:
            role = key[: -len("_codes")]
            out[role] = torch.from_numpy(saved_values(saved, role)).reshape(v.shape)
        else:
            out[key] = v
    return out
