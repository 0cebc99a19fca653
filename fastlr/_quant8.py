"""Block-wise 8-bit state: the dynamic maps, a NumPy reference of the quantization, and
conversions between 8-bit and float32 state (no torch needed).

A state tensor of n elements is stored as ``codes`` (uint8, one per element) and
``scales`` (float32, one per block of ``block_size`` elements; the last block may be
partial): element i is ``map[codes[i]] * scales[i // block_size]``, with the signed map
for ``exp_avg`` and the unsigned one for ``exp_avg_sq``. Encoding ``"sqrt"`` (fastlr's
``state_dtype="8bit"``) stores sqrt(exp_avg_sq) instead, which halves its dynamic range
(see the README, "8-bit optimizer state").
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _C

SIGNED_MAP = _C.quant8_map(True)
UNSIGNED_MAP = _C.quant8_map(False)
SIGNED_MAP.flags.writeable = False
UNSIGNED_MAP.flags.writeable = False
ENCODINGS = ("linear", "sqrt")
BLOCK_SIZE = 256  # the default block (state_dtype="8bit"'s, torchao's, bitsandbytes')
MIN_QUANT8_NUMEL = 4096  # smaller tensors keep 32-bit state (bitsandbytes' and torchao's rule)
# per-element state role -> (signed map, encoding of state_dtype="8bit")
ROLES = {
    "exp_avg": (True, "linear"),
    "exp_avg_sq": (False, "sqrt"),
    "max_exp_avg_sq": (False, "sqrt"),
    "momentum_buffer": (True, "linear"),
    "grad_avg": (True, "linear"),
    "square_avg": (False, "sqrt"),
    "sum": (False, "sqrt"),
}


def reference_codes(x, qmap):
    """Nearest codes of float32 values: torchao's branchless binary search and its float32
    rounding test (ties to the upper code; NaN gives code 0). The definition the kernels'
    vectorized search is checked against."""
    x = np.asarray(x, dtype=np.float32)
    qmap = np.asarray(qmap, dtype=np.float32)
    codes = np.where(x >= qmap[128], 128, 0)
    for s in (64, 32, 16, 8, 4, 2, 1):
        codes += np.where(x >= qmap[codes + s], s, 0)
    up = np.minimum(codes + 1, 255)
    lo, hi = qmap[codes], qmap[up]
    with np.errstate(invalid="ignore"):
        codes = np.where(x - lo >= (hi - lo) * np.float32(0.5), up, codes)
    return codes.astype(np.uint8)


def num_blocks(numel, block_size):
    return -(-int(numel) // int(block_size))


def saved_source(group, block_size=BLOCK_SIZE, where="state_dict['param_groups']"):
    """(block size, encoding of the unsigned roles) a saved param group names for its 8-bit
    state (fastlr.optim.Adam8bit's dicts do; state_dtype="8bit" is block 256, "sqrt")."""
    block = group.get("block_size", block_size)
    if isinstance(block, (bool, np.bool_)) or not isinstance(block, numbers.Integral) or not 1 <= block <= 4096:
        raise ValueError(f"{where}: block_size must be an integer in [1, 4096], got {block!r}")
    encoding = group.get("exp_avg_sq_encoding", "sqrt")
    if encoding not in ("sqrt", "linear"):
        raise ValueError(f"{where}: exp_avg_sq_encoding must be 'sqrt' or 'linear', got {encoding!r}")
    return int(block), encoding


def filled(shape, fill, block_size, signed, encoding="sqrt"):
    """(codes, scales) of a state whose elements all hold ``fill``: codes and scales 0 for
    0 (where the kernels start), else its quantization (Adagrad's initial_accumulator_value)."""
    if fill == 0:
        numel = int(np.prod(shape, dtype=np.int64))
        return np.zeros(shape, np.uint8), np.zeros(num_blocks(numel, block_size), np.float32)
    return quantize(np.full(shape, fill, np.float32), block_size, signed, encoding)


def check_saved_part(where, key, dtype_name, shape, param_shape, block_size, scale_shape=None):
    """ValueError unless a saved ``<role>_codes`` (uint8, the param's shape) or
    ``<role>_scale`` (float32, one per block, or of ``scale_shape``) of this dtype and shape
    fits the param (the load-time check of fastlr.optim's and fastlr.numpy's 8-bit state)."""
    codes = key.endswith("_codes")
    numel = int(np.prod(param_shape, dtype=np.int64))
    want_shape = tuple(param_shape) if codes else tuple(scale_shape or (num_blocks(numel, block_size),))
    want_dtype = "uint8" if codes else "float32"
    if dtype_name != want_dtype or tuple(shape) != want_shape:
        raise ValueError(f"{where} has dtype {dtype_name} and shape {tuple(shape)}; expected {want_dtype} "
                         + ("codes of the param's shape " if codes else f"scales (one per block of {block_size}) ")
                         + f"{want_shape}")


def block_absmax(x, block_size):
    """max |x| per block (NaN propagates), clipped below at 1e-12 as torchao's."""
    x = np.abs(np.asarray(x, dtype=np.float32).reshape(-1))
    if x.size == 0:
        return np.zeros(0, np.float32)
    starts = np.arange(0, x.size, block_size)
    with np.errstate(invalid="ignore"):
        amax = np.maximum.reduceat(x, starts)
        nan = np.add.reduceat(np.isnan(x), starts) > 0
    amax[nan] = np.nan
    return np.where(amax < np.float32(1e-12), np.float32(1e-12), amax).astype(np.float32)


def quantize(x, block_size, signed, encoding="linear"):
    """float32 values -> (codes uint8 of x's shape, scales float32 per block): the code of
    x·(1/scale) by the reference search. For the unsigned map with encoding "sqrt", sqrt(x)
    is quantized."""
    x = np.asarray(x, dtype=np.float32)
    flat = x.reshape(-1)
    if not signed and encoding == "sqrt":
        flat = np.sqrt(flat)
    scales = block_absmax(flat, block_size)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # x·(1/scale) in float32, as the kernels (one division per block)
        inv = np.float32(1) / scales
        scaled = flat * np.repeat(inv, block_size)[: flat.size]
    codes = reference_codes(scaled, SIGNED_MAP if signed else UNSIGNED_MAP)
    return codes.reshape(x.shape), scales


def dequantize(codes, scales, block_size, signed, encoding="linear"):
    """(codes, scales) -> float32 values of the codes' shape."""
    codes = np.asarray(codes)
    qmap = SIGNED_MAP if signed else UNSIGNED_MAP
    flat = qmap[codes.reshape(-1).astype(np.intp)] * np.repeat(np.asarray(scales, np.float32), block_size)[: codes.size]
    if not signed and encoding == "sqrt":
        flat = flat * flat
    return flat.astype(np.float32).reshape(codes.shape)


def convert(role, codes, scales, values, source, target, numel=None):
    """One role of a loaded per-param state in the storage ``target``: (codes, scales) of
    its (block size, encoding of the unsigned roles), or float32 values for None; None when
    the role is absent. The saved role is ``codes`` and ``scales`` of ``source``'s layout,
    or float ``values`` (NumPy arrays). Codes already in the target's layout are taken over,
    anything else is dequantized and / or quantized; the result never shares the inputs'
    memory. ``numel``: the param's, checked (ValueError) when given. Both faces' loads
    (fastlr.numpy, fastlr.optim) convert through this."""
    signed = ROLES[role][0]
    if codes is not None:
        block = source[0]
        if numel is not None:
            if scales is None or codes.size != numel:
                raise ValueError(f"state '{role}_codes' does not match a param of {numel} elements")
            if scales.size != num_blocks(numel, block):
                raise ValueError(f"state '{role}_scale' has {scales.size} blocks, expected "
                                 f"{num_blocks(numel, block)} (block_size={block})")
        if target is not None and block == target[0] and (signed or source[1] == target[1]):
            return np.array(codes, np.uint8, order="C"), np.array(scales, np.float32).reshape(-1)
        values = dequantize(codes, scales, block, signed, "linear" if signed else source[1])
    elif values is None:
        return None
    elif numel is not None and values.size != numel:
        raise ValueError(f"state '{role}' has {values.size} elements, the param {numel}")
    if target is None:
        return np.array(values, np.float32)
    return quantize(values, target[0], signed, "linear" if signed else target[1])
