"""``state_dtype="8bit"`` of fastlr.optim (issue #13): block-wise 8-bit state inside the
precision machinery of ``_precision.py`` (same bucketing, cached plans, one fused call
per bucket); this module holds what is specific to the 8-bit storage.

Each per-element state ``<role>`` of a tensor with at least 4096 elements is stored as
``<role>_codes`` (uint8, the param's shape) and ``<role>_scale`` (float32, one per block
of 256 elements, the last block may be partial): element i is ``map[code]·scale[i//256]``
(fastlr._quant8), with fastlr's encoding: signed roles (``exp_avg``) as they are, unsigned
ones (``exp_avg_sq``, ``max_exp_avg_sq``, ``square_avg``, ``sum``) as their square root, and an element whose √v
dequantizes to 0 restarts its exp_avg too (``fastlr.adam8bit_step(variant="fastlr")``).
Signed roles are ``exp_avg``, ``momentum_buffer`` and ``grad_avg``. Smaller tensors keep
float32 state under torch's keys.

DTensor params (FSDP2) take 8-bit state when they are sharded along dim 0 only (or
replicated) and a row (the elements of one index of dim 0) is whole blocks: every shard is
then whole rows, so its blocks are the unsharded tensor's and the update equals unsharded
training. Codes are DTensors sharded like the param; scales DTensors of shape (rows,
blocks per row), sharded the same way, so that torch.distributed.checkpoint reshards both.
Other DTensor params keep float32 state.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import _C, _quant8
from .._quant8 import BLOCK_SIZE

EIGHT_BIT = "8bit"
_KINDS = ("adam", "sgd", "rmsprop", "adagrad")  # optimizers with an 8-bit kernel
_SQRT = 1  # _C.adam8's flavour: fastlr's encoding, torch.optim.Adam's arithmetic


def quantized(p):
    """Whether p's state is 8-bit (else float32): tensors of at least 4096 elements; a
    DTensor only when its shards are whole rows of whole blocks (module docstring)."""
    if p.numel() < _quant8.MIN_QUANT8_NUMEL:
        return False
    return not is_dtensor(p) or blocks_per_row(p) is not None


def is_dtensor(p):
    return type(p) is not torch.Tensor and hasattr(p, "_local_tensor")


def blocks_per_row(p, block=BLOCK_SIZE):
    """Blocks per row of a DTensor whose shards are whole rows of whole blocks, else None."""
    if p.dim() < 2 or any(not (pl.is_replicate() or pl.is_shard(0)) for pl in p.placements):
        return None
    row = p.numel() // p.shape[0]
    return row // block if row % block == 0 else None


def wrap_sharded(p, codes, scale, block=BLOCK_SIZE):
    """The local (codes, scales) of a DTensor p's 8-bit state as DTensors: the codes sharded
    like p, the scales as (rows, blocks per row) sharded the same way."""
    from torch.distributed.tensor import DTensor

    per_row = blocks_per_row(p, block)
    codes = DTensor.from_local(codes, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                               stride=p.stride())
    scale = DTensor.from_local(scale.reshape(-1, per_row), p.device_mesh, p.placements, run_check=False,
                               shape=(p.shape[0], per_row), stride=(per_row, 1))
    return codes, scale


def storage(p):
    return EIGHT_BIT if quantized(p) else torch.float32


# ------------------------------------------------------------------ options ---
def check_group(where, kind, group):
    """state_dtype="8bit": the combinations the kernels implement (the caller has checked
    the dtypes, devices and float64 params)."""
    if kind not in _KINDS:
        raise NotImplementedError(
            f"{where}state_dtype=\"8bit\" is implemented for SGD, Adam, AdamW, RMSprop and Adagrad "
            "(this optimizer has no 8-bit kernel); use state_dtype=torch.bfloat16 or None"
        )


# -------------------------------------------------------------------- state ---
def init_state(state, p, roles, fill=0.0):
    """8-bit state of the value ``fill`` (0: codes 0, scales 0) for each role."""
    for role in roles:
        new_role(state, role, p, fill)


def new_role(state, role, p, fill=0.0, block=BLOCK_SIZE):
    """Stores one role's 8-bit state of p (DTensors for a DTensor p); returns the (codes,
    scale) tensors the kernel updates (a DTensor's local shards)."""
    local = p._local_tensor if is_dtensor(p) else p
    codes, scale = _quant8.filled(tuple(local.shape), fill, block, *_quant8.ROLES[role])
    codes, scale = torch.from_numpy(codes), torch.from_numpy(scale)
    if is_dtensor(p):
        state[role + "_codes"], state[role + "_scale"] = wrap_sharded(p, codes, scale, block)
        return codes, state[role + "_scale"]._local_tensor
    state[role + "_codes"], state[role + "_scale"] = codes, scale
    return codes, scale


def role_tensors(name, j, state, role, p, kind):
    """(codes, scale) of one role of p, checked (a DTensor's local shards); None for SGD's
    not yet started buffer."""
    codes, scale = state.get(role + "_codes"), state.get(role + "_scale")
    if codes is None and scale is None and kind == "sgd":
        return None
    if is_dtensor(p):
        codes, scale = (getattr(t, "_local_tensor", None) if is_dtensor(t) else None for t in (codes, scale))
        p = p._local_tensor
    check_role(name, j, role, codes, scale, p)
    return codes, scale


def check_role(name, j, role, codes, scale, p, block=BLOCK_SIZE, contiguous_codes=False):
    """RuntimeError unless (codes, scale) can be p's 8-bit state of this block size: uint8
    codes of p's shape (contiguous when the kernel reads them in place), one contiguous
    float32 scale per block (shaped (blocks,), or (rows, blocks per row) as FSDP2 keeps
    them), on the CPU."""
    nb = _quant8.num_blocks(p.numel(), block)
    if (codes is None or scale is None or codes.dtype != torch.uint8 or codes.shape != p.shape
            or (contiguous_codes and not codes.is_contiguous())
            or scale.dtype != torch.float32 or scale.numel() != nb or scale.dim() not in (1, 2)
            or not scale.is_contiguous()
            or codes.device.type != "cpu" or scale.device.type != "cpu"):
        raise RuntimeError(
            f"fastlr.optim.{name}: state['{role}_codes'] / state['{role}_scale'] of params[{j}] must be "
            f"uint8 codes of shape {tuple(p.shape)}{' (contiguous)' if contiguous_codes else ''} and {nb} "
            f"contiguous float32 scales (one per block of {block}) on the CPU"
        )


# param dtype code (float32, bfloat16, float16) -> adam8's store (+1: stochastic rounding)
_ADAM8_STORE = {0: 0, 2: 1, 3: 3}
_COMMON = ("grad_dtype", "masters", "stochastic_rounding", "seed", "tensor_ids")


def call_args(roles, addrs, scales, precision):
    """What every step's call() of one cached bucket passes as it is, built once: the roles'
    (codes, scales) address lists by role, and the 8-bit kernels' precision keywords."""
    return dict(zip(roles, zip(addrs, scales))), {k: precision[k] for k in _COMMON}


def call(kind, group, b, p_addr, g_addr, args, step, gs, t):
    """One fused 8-bit kernel call over a bucket (params of one dtype and step count); args:
    call_args(); t: the completed updates keying SGD's and RMSprop's stochastic rounding."""
    pairs, common = args
    lr, maximize = float(group["lr"]), bool(group["maximize"])
    if kind == "adam":
        store = _ADAM8_STORE[b.code]
        if store in (1, 3) and common["stochastic_rounding"] and common["masters"] is None:
            store += 1  # bfloat16 / float16 params rounded stochastically
        beta1, beta2 = group["betas"]
        x = pairs.get("max_exp_avg_sq", (None, None))
        _C.adam8(store, BLOCK_SIZE, True, _SQRT, b.numel, p_addr, g_addr, *pairs["exp_avg"], *pairs["exp_avg_sq"], *x,
                 step, lr, None, float(beta1), None, float(beta2), float(group["eps"]),
                 float(group["weight_decay"]), bool(group["decoupled_weight_decay"]), bool(group["amsgrad"]),
                 common["seed"], gs, masters=common["masters"], grad_dtype=common["grad_dtype"],
                 maximize=maximize, tensor_ids=common["tensor_ids"])
    elif kind == "sgd":
        _C.sgd8(b.code, b.numel, p_addr, g_addr, pairs.get("momentum_buffer"), lr, None, t,
                float(group["momentum"]), None, float(group["dampening"]), bool(group["nesterov"]),
                float(group["weight_decay"]), maximize, b.first, gs, block_size=BLOCK_SIZE, **common)
    elif kind == "rmsprop":
        _C.rmsprop8(b.code, b.numel, p_addr, g_addr, pairs["square_avg"], pairs.get("grad_avg"),
                    pairs.get("momentum_buffer"), lr, None, t, float(group["alpha"]),
                    float(group["eps"]), float(group["weight_decay"]), float(group["momentum"]), None,
                    bool(group["centered"]), "momentum_buffer" in pairs, maximize, False, gs, block_size=BLOCK_SIZE,
                    **common)
    elif kind == "adagrad":
        _C.adagrad8(b.code, b.numel, p_addr, g_addr, pairs["sum"], step, lr, None, float(group["lr_decay"]),
                    float(group["weight_decay"]), float(group["eps"]), maximize, gs, block_size=BLOCK_SIZE,
                    **common)
    else:
        raise NotImplementedError(kind)


# -------------------------------------------------------------- state dicts ---
# A saved group of fastlr.optim.Adam8bit / AdamW8bit names its block size and exp_avg_sq
# encoding ("linear" for torchao's); state_dtype="8bit" groups are block 256, "sqrt".
SOURCE_KEYS = ("block_size", "exp_avg_sq_encoding")


def source_of(group):
    """(block size, encoding of the unsigned roles) of a saved param group's 8-bit state."""
    return _quant8.saved_source(group, BLOCK_SIZE)


def check_saved(where, key, value, p, block=BLOCK_SIZE):
    """A saved ``<role>_codes`` / ``<role>_scale`` tensor: ValueError unless it fits p."""
    if not torch.is_tensor(value):
        raise ValueError(f"{where}[{key!r}] must be a tensor, got {type(value).__name__}")
    scale_shape = None
    if is_dtensor(p) and blocks_per_row(p, block) is not None:
        scale_shape = (p.shape[0], blocks_per_row(p, block))
    elif value.dim() == 2 and p.dim() >= 1 and value.shape[0] == p.shape[0]:
        scale_shape = (p.shape[0], _quant8.num_blocks(p.numel(), block) // max(p.shape[0], 1))  # FSDP2's, gathered
    _quant8.check_saved_part(f"{where}[{key!r}]", key, str(value.dtype).replace("torch.", ""), value.shape,
                             p.shape, block, scale_shape)


def _saved_role(saved, role, source):
    """(codes, scales, values, source) of one role of a saved per-param state as NumPy
    arrays (None where absent): 8-bit codes and scales of the source's (block size,
    encoding of the unsigned roles), a torchao ``OptimState8bit`` (its own block size,
    linear), or a float tensor."""
    codes, scale, t = saved.get(role + "_codes"), saved.get(role + "_scale"), saved.get(role)
    if codes is None and t is not None and hasattr(t, "codes") and hasattr(t, "scale"):
        codes, scale = t.codes, t.scale  # torchao's OptimState8bit
        source = (t.codes.numel() // max(t.scale.numel(), 1), "linear")
    if codes is not None:
        return (codes.detach().to(torch.uint8).cpu().numpy(),
                None if scale is None else scale.detach().float().cpu().numpy(), None, source)
    return None, None, None if t is None else t.detach().float().cpu().numpy(), source


def convert_loaded(state, saved, p, roles, target, float_dtype, source=(BLOCK_SIZE, "sqrt"), absent_zeros=False):
    """p's state re-read from a saved per-param state in this optimizer's storage: ``target``
    (block size, encoding of the unsigned roles) for 8-bit state, None for float state of
    ``float_dtype`` (_quant8.convert). An absent role is left out (SGD's None buffer: the
    first step creates it), or zeros with ``absent_zeros``."""
    n = p.numel()
    for role in roles:
        codes, scales, values, src = _saved_role(saved, role, source)
        if codes is None and values is None and absent_zeros:
            values = np.zeros(n, np.float32)
        out = _quant8.convert(role, codes, scales, values, src, target, n)
        state.pop(role + "_codes", None)
        state.pop(role + "_scale", None)
        if target is None:
            if out is not None:
                state[role] = torch.from_numpy(out).reshape(p.shape).to(device=p.device, dtype=float_dtype)
            continue
        state.pop(role, None)
        if out is not None:
            state[role + "_codes"] = torch.from_numpy(out[0]).reshape(p.shape)
            state[role + "_scale"] = torch.from_numpy(out[1])


def check_sharded_layout(where, saved, roles, q8, source, target=(BLOCK_SIZE, "sqrt")):
    """NotImplementedError unless a DTensor param's saved state has the layout it will be
    loaded in (8-bit codes and scales of ``target`` when ``q8``, else float tensors): a
    sharded state is loaded as saved, not converted."""
    for role in roles:
        stored_q8 = role + "_codes" in saved or role + "_scale" in saved
        if role in saved or stored_q8:
            if stored_q8 != bool(q8) or (q8 and tuple(source) != tuple(target)):
                raise NotImplementedError(
                    f"{where}: state['{role}'] of a DTensor param (FSDP2) is saved as "
                    f"{'8-bit codes' if stored_q8 else 'a float tensor'} of another layout than this "
                    "optimizer's; converting sharded state is not implemented (load it unsharded)"
                )


def keep_sharded(state, saved, roles, q8):
    """A DTensor param's state loaded as saved (torch.distributed.checkpoint has resharded
    it): 8-bit codes and scales of the layout ``target`` when ``q8``, else float tensors.
    Returns the keys set here. The caller has checked the layout (check_sharded_layout)."""
    kept = set()
    for role in roles:
        codes, scale = saved.get(role + "_codes"), saved.get(role + "_scale")
        if role not in saved and codes is None and scale is None:
            continue
        if q8:
            state.pop(role, None)
            state[role + "_codes"], state[role + "_scale"] = codes, scale
            kept |= {role + "_codes", role + "_scale"}
        else:  # (set here, cast by the caller)
            state[role] = saved[role]
    return kept


def dequantized(saved, source=(BLOCK_SIZE, "sqrt")):
    """A per-param state with every ``<role>_codes`` / ``<role>_scale`` pair as float32
    ``<role>`` in the codes' place (other entries shared)."""
    out = {}
    for key, v in saved.items():
        role = key[: -len("_codes")]
        if key.endswith("_codes") and role in _quant8.ROLES:
            codes, scales, _, src = _saved_role(saved, role, source)
            out[role] = torch.from_numpy(_quant8.convert(role, codes, scales, None, src, None)).reshape(v.shape)
        elif not (key.endswith("_scale") and role + "_codes" in saved) and not (
                key in _quant8.ROLES and key + "_codes" in saved):
            out[key] = v
    return out
