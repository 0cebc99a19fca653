"""The NumPy face of the kernels: in-place optimizer updates of NumPy arrays.

Every argument is one ndarray or a list of them; one call updates them all through a
single multi-threaded C++ call. Everything is validated before any array is touched.

Precision options, the same for every kernel (keyword-only):

- ``master_params``: float32 arrays, one per bfloat16/float16 param. The update runs on
  them in float32 and writes each param as its master rounded to nearest, in the same
  pass (the param is not read). Grads may then be float32 or the params' dtype.
- State arrays may be stored in float32 or bfloat16 (``ml_dtypes.bfloat16``) whatever the
  params' dtype (or in the params' dtype without masters); all state arrays of a call
  share one dtype. Arithmetic is float32 (float64 for float64 params).
- ``stochastic_rounding=True``: every store into a 16-bit array (a param without master,
  a bfloat16 state) rounds stochastically, with counter-based random bits from
  (``seed``, ``step``, ``tensor_ids[i]``, element index): the same for any thread count,
  CPU level or chunking, and the same as fastlr.optim's with the same tensor ids.
"""
from __future__ import annotations

import bisect
import math
import numbers

import numpy as np

from . import _C, _quant8
from .schedules import Schedule

__all__ = ["sgd_step", "adam_step", "adam8bit_step", "rmsprop_step", "adagrad_step", "sgd8bit_step",
           "rmsprop8bit_step", "adagrad8bit_step", "quantize8bit", "dequantize8bit"]

_DTYPE_CODES = {"float32": 0, "float64": 1, "bfloat16": 2, "float16": 3}
_MAX_STEP = 2**53
_SIXTEEN_BIT = ("bfloat16", "float16")
_VECTORIZED_SPANS = 48  # from this many updated arrays on, the overlap check runs in NumPy


# ------------------------------------------------------------- validation ---
_NAMES = {}


def _name(dtype):
    """dtype.name, cached: NumPy builds it in Python on every access (a few µs a call)."""
    name = _NAMES.get(dtype)
    if name is None:
        name = _NAMES[dtype] = dtype.name
    return name


def _as_list(x, name, *, n=None):
    if isinstance(x, np.ndarray):
        arrays = [x]
    elif isinstance(x, (list, tuple)):
        arrays = list(x)
    else:
        raise TypeError(f"{name} must be a numpy.ndarray or a list of them, got {type(x).__name__}")
    for i, a in enumerate(arrays):
        if type(a) is not np.ndarray:
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{name}[{i}] must be a numpy.ndarray, got {type(a).__name__}")
            # a subclass (matrix, memmap, ...) may override size/shape:
            arrays[i] = a.view(np.ndarray)  # the same memory, seen as a plain array
    if n is not None and len(arrays) != n:
        raise ValueError(f"{name} has {len(arrays)} arrays but params has {n}")
    return arrays


def _check_arrays(name, arrays, params, dtype, *, updated):
    for i, a in enumerate(arrays):
        if a.dtype != dtype or not a.dtype.isnative:
            raise TypeError(f"{name}[{i}] has dtype {a.dtype}, expected {dtype} (dtypes must not be mixed)")
        if a.shape != params[i].shape:
            raise ValueError(f"{name}[{i}] has shape {a.shape}, but params[{i}] has shape {params[i].shape}")
        flags = a.flags  # (a new object at each access)
        if not flags.c_contiguous:
            raise ValueError(f"{name}[{i}] must be C-contiguous (updates happen in place; pass np.ascontiguousarray)")
        if updated and not flags.writeable:
            raise ValueError(f"{name}[{i}] is read-only")


def _real(x, name):
    if type(x) is float and x == x:  # the common case, without the ABC check (x == x: not NaN)
        return x
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    try:
        x = float(x)
    except OverflowError:  # an int or Fraction beyond the float range
        raise ValueError(f"{name} is too large for a float: {x!r}") from None
    if math.isnan(x):
        raise ValueError(f"{name} must not be NaN")
    return x


def _non_negative(x, name):
    x = _real(x, name)
    if x < 0:
        raise ValueError(f"Invalid {name} value: {x} (must be >= 0)")
    return x


def _schedule_or_value(x, name, check):
    """A Schedule is passed as its C++ encoding (value then acts as a scale of 1.0). Only
    fastlr's own classes: their constructors validate what the encoding holds."""
    if isinstance(x, Schedule):
        return 1.0, x._encoding
    return check(x, name), None


def _step(step, name="step", *, required):
    if type(step) is int and 1 <= step <= _MAX_STEP:  # the common case, without the ABC checks
        return step
    if step is None:
        if required:
            raise ValueError(f"{name} is required (the 1-based index of this update)")
        return None
    integral = isinstance(step, numbers.Integral) or (
        isinstance(step, numbers.Real) and float(step).is_integer())
    if isinstance(step, (bool, np.bool_)) or not integral:
        raise TypeError(f"{name} must be an integer >= 1, got {step!r}")
    step = int(step)
    if step < 1:
        raise ValueError(f"{name} must be >= 1, got {step}")
    if step > _MAX_STEP:  # the kernels take step as a double; beyond 2**53 it is inexact
        raise ValueError(f"{name} must be <= 2**53, got {step}")
    return step


def _seed(seed):
    if type(seed) is int and 0 <= seed < 2**64:  # the common case, without the ABC check
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def _tensor_ids(ids, n):
    if ids is None:
        return None
    if isinstance(ids, np.ndarray):
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)):
        raise TypeError(f"tensor_ids must be a list of integers, got {type(ids).__name__}")
    if len(ids) != n:
        raise ValueError(f"tensor_ids has {len(ids)} ids but params has {n}")
    out = []
    for i, t in enumerate(ids):
        if type(t) is not int:  # (the common case skips the ABC check)
            if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral):
                raise TypeError(f"tensor_ids[{i}] must be an integer, got {type(t).__name__}")
            t = int(t)
        if not 0 <= t < 2**63:
            raise ValueError(f"tensor_ids[{i}] must be in [0, 2**63), got {t}")
        out.append(t)
    if len(set(out)) != len(out):
        first = {}
        for i, t in enumerate(out):
            if t in first:
                raise ValueError(f"tensor_ids[{i}] repeats tensor_ids[{first[t]}] ({t}): the two tensors "
                                 "would draw the same stochastic-rounding bits")
            first[t] = i
    return out


class _Call:
    """Validated arrays of one call: dtype codes, numels and data addresses per role."""

    def __init__(self, params, grads, master_params=None, stochastic_rounding=False, seed=0,
                 tensor_ids=None, grads_name="grads"):
        self.params = _as_list(params, "params")
        self.n = len(self.params)
        self.grads = _as_list(grads, grads_name, n=self.n)
        if self.n == 0:
            self.dtype = np.dtype(np.float32)
        else:
            self.dtype = self.params[0].dtype
            if _name(self.dtype) not in _DTYPE_CODES:
                raise TypeError(
                    f"params[0] has dtype {self.dtype}; supported: float32, float64, float16, bfloat16"
                )
            if not self.dtype.isnative:  # '>f4' is named float32 too; the kernels read native order
                raise TypeError(f"params[0] has non-native byte order ({self.dtype.str}); "
                                "convert with a.astype(a.dtype.newbyteorder('='))")
        _check_arrays("params", self.params, self.params, self.dtype, updated=True)
        self.code = _DTYPE_CODES[_name(self.dtype)]
        self.numel = [a.size for a in self.params]
        self._addrs = {}  # id(list) -> its data addresses, read once
        self._updated = [self.params]
        self.masters = None
        grad_dtype = self.dtype
        if master_params is not None:
            self.masters = _as_list(master_params, "master_params", n=self.n)
            if self.n and _name(self.dtype) not in _SIXTEEN_BIT:
                raise TypeError(f"master_params are for bfloat16/float16 params; params[0] has "
                                f"dtype {self.dtype}")
            _check_arrays("master_params", self.masters, self.params, np.dtype(np.float32),
                          updated=True)
            self._updated.append(self.masters)
            if self.n and self.grads[0].dtype == np.float32:
                grad_dtype = np.dtype(np.float32)  # float32 grads: allowed with masters
        _check_arrays(grads_name, self.grads, self.params, grad_dtype, updated=False)
        self.grad_code = _DTYPE_CODES[_name(grad_dtype)]
        self.state_dtype = None  # set by the first state list
        if not isinstance(stochastic_rounding, (bool, np.bool_)):
            raise TypeError(f"stochastic_rounding must be a bool, got {type(stochastic_rounding).__name__}")
        self.stochastic_rounding = bool(stochastic_rounding)
        self.seed = _seed(seed)
        self.tensor_ids = _tensor_ids(tensor_ids, self.n)

    def precision(self):
        """The precision keywords of the _C kernels."""
        return {
            "grad_dtype": self.grad_code,
            "state_dtype": None if self.state_dtype is None else _DTYPE_CODES[_name(self.state_dtype)],
            "masters": self.addresses(self.masters),
            "stochastic_rounding": self.stochastic_rounding,
            "seed": self.seed,
            "tensor_ids": self.tensor_ids,
        }

    def state(self, arrays, name):
        """Validates an updated state list; returns None for a missing one."""
        if arrays is None:
            return None
        arrays = _as_list(arrays, name, n=self.n)
        if self.state_dtype is None and arrays:
            dtype = arrays[0].dtype
            allowed = ["float32", "bfloat16"]
            if self.masters is None and _name(self.dtype) not in allowed:
                allowed.insert(0, _name(self.dtype))
            if _name(dtype) not in allowed or not dtype.isnative:
                raise TypeError(f"{name}[0] has dtype {dtype}; state arrays are "
                                f"{' or '.join(allowed)}" + (" with master_params" if self.masters else ""))
            self.state_dtype = dtype
        _check_arrays(name, arrays, self.params, self.state_dtype or self.dtype, updated=True)
        self._updated.append(arrays)
        return arrays

    def require(self, arrays, name, why):
        if arrays is None:
            raise ValueError(f"{name} is required when {why}")

    def finish(self):
        """Rejects updated arrays that share memory (the same array twice, or overlapping
        views: the result would depend on the thread split), and grads that overlap an
        updated array other than exactly (each element's grad is read before its param or
        state is written, so a grad that *is* one of them is fine; a shifted view would read
        values already updated). Call after every state is added."""
        if sum(map(len, self._updated)) >= _VECTORIZED_SPANS:
            bad = self._overlaps_vectorized()
        else:
            bad = self._overlaps()
        if bad == -1:
            raise ValueError("the same array memory is passed twice among the updated arrays "
                             "(or two of them overlap)")
        if bad is not None:
            raise ValueError(f"grads[{bad}] shares memory with an updated array other than "
                             f"params[{bad}] (a grad may be the very memory of its own param, "
                             "which is read before it is written)")

    def _overlaps(self):
        """finish()'s check: -1 when updated arrays overlap, else the first grad that
        overlaps one other than its param exactly, else None."""
        spans = sorted(
            (p, p + a.nbytes)
            for arrays in self._updated for a, p in zip(arrays, self.addresses(arrays)) if a.size
        )
        for (_, end), (start, _) in zip(spans, spans[1:]):
            if start < end:
                return -1
        starts = [start for start, _ in spans]
        exact = set(spans)
        p_addrs = self.addresses(self.params)
        for i, (g, a) in enumerate(zip(self.grads, self.addresses(self.grads))):
            span = (a, a + g.nbytes)
            if g.size and (_overlaps_inexactly(spans, starts, span)
                           or (span in exact and a != p_addrs[i])):
                return i
        return None

    def _overlaps_vectorized(self):
        """_overlaps() in NumPy: the same answer, faster for hundreds of arrays."""
        addrs = np.array([a for arrays in self._updated for a in self.addresses(arrays)], np.int64)
        sizes = np.array([a.nbytes for arrays in self._updated for a in arrays], np.int64)
        order = np.argsort(addrs, kind="stable")
        order = order[sizes[order] > 0]  # (empty arrays hold no memory)
        starts, ends = addrs[order], addrs[order] + sizes[order]
        if (starts[1:] < ends[:-1]).any():
            return -1
        if not starts.size:
            return None
        g_start = np.array(self.addresses(self.grads), np.int64)
        g_end = g_start + np.array([g.nbytes for g in self.grads], np.int64)
        j = np.searchsorted(starts, g_end) - 1  # as _overlaps_inexactly
        jc = np.maximum(j, 0)
        hit = (j >= 0) & (ends[jc] > g_start) & (g_end > g_start)
        exact = (starts[jc] == g_start) & (ends[jc] == g_end)
        bad = np.flatnonzero(hit & (~exact | (g_start != np.array(self.addresses(self.params), np.int64))))
        return int(bad[0]) if bad.size else None

    def refuse_grads_that_are_params(self, why):
        """For updates where torch writes the param before it reads the grad."""
        for i, (g, a, b) in enumerate(zip(self.grads, self.addresses(self.grads), self.addresses(self.params))):
            if a == b and g.size:
                raise ValueError(f"grads[{i}] is the memory of params[{i}]: {why}; pass a copy")

    def addresses(self, arrays):
        """The data addresses of one validated list (read once per call)."""
        if arrays is None:
            return None
        addrs = self._addrs.get(id(arrays))
        if addrs is None:
            addrs = self._addrs[id(arrays)] = _C.data_ptrs(arrays)
        return addrs


def _overlaps_inexactly(spans, starts, span):
    """Whether `span` overlaps one of the sorted, disjoint `spans` (with their `starts`)
    without being exactly it. Only the last span starting before span's end can reach
    past its start: the spans are disjoint, so their ends grow with their starts."""
    j = bisect.bisect_left(starts, span[1]) - 1
    return j >= 0 and spans[j][1] > span[0] and spans[j] != span


# ---------------------------------------------------------------- kernels ---


def sgd_step(params, grads, momentum_buffers=None, *, lr, momentum=0.0, dampening=0.0,
             nesterov=False, weight_decay=0.0, maximize=False, step=None, master_params=None,
             stochastic_rounding=False, seed=0, tensor_ids=None):
    """One step of torch.optim.SGD over NumPy arrays, in place.

    ``g ← ±grad + weight_decay·θ``; with momentum ``b ← μ·b + (1−dampening)·g``
    (``b ← g`` on the first update, ``step == 1``), ``g ← g + μ·b`` (nesterov) or ``b``;
    then ``θ ← θ − lr·g``.

    Args:
        params, grads, momentum_buffers: an ndarray or a list of them (same dtype,
            C-contiguous, matching shapes); ``momentum_buffers`` is required when
            momentum is not 0.
        lr: float or Schedule (evaluated at ``step - 1``). momentum: float or Schedule.
        step: 1-based index of this update; ``step == 1`` initialises the momentum
            buffers from the gradient; ``None`` takes them as initialised. Required with
            ``stochastic_rounding`` (it keys the random bits).
        master_params, stochastic_rounding, seed, tensor_ids: see the module docstring.

    Returns:
        The learning rate used.

    Example:
        >>> p, g, b = np.ones(3, np.float32), np.full(3, 0.5, np.float32), np.zeros(3, np.float32)
        >>> sgd_step(p, g, b, lr=0.1, momentum=0.9, step=1)
        0.1
    """
    call = _Call(params, grads, master_params, stochastic_rounding, seed, tensor_ids)
    step, lr, lr_enc, momentum, mom_enc, dampening, weight_decay, uses_momentum = _sgd_hyperparameters(
        call, step, lr, momentum, dampening, weight_decay, nesterov)
    bufs = call.state(momentum_buffers, "momentum_buffers")
    if uses_momentum:
        call.require(bufs, "momentum_buffers", "momentum != 0")
    call.finish()
    used_lr, _ = _C.sgd(call.code, call.numel, call.addresses(call.params), call.addresses(call.grads),
                        call.addresses(bufs) if uses_momentum else None, lr, lr_enc,
                        0 if step is None else step - 1, momentum, mom_enc, dampening, bool(nesterov),
                        weight_decay, bool(maximize), step == 1, **call.precision())
    return used_lr


def _sgd_hyperparameters(call, step, lr, momentum, dampening, weight_decay, nesterov):
    """sgd_step's and sgd8bit_step's hyperparameters, checked: lr and momentum as (value,
    schedule encoding), and whether the momentum buffers are used."""
    lr, lr_enc = _schedule_or_value(lr, "lr", _non_negative)
    momentum, mom_enc = _schedule_or_value(momentum, "momentum", _non_negative)
    dampening = _real(dampening, "dampening")
    weight_decay = _non_negative(weight_decay, "weight_decay")
    step = _step(step, required=lr_enc is not None or mom_enc is not None or call.stochastic_rounding)
    uses_momentum = mom_enc is not None or momentum != 0.0
    if nesterov and (not uses_momentum or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    return step, lr, lr_enc, momentum, mom_enc, dampening, weight_decay, uses_momentum


def adam_step(params, grads, exp_avgs, exp_avg_sqs, *, step, lr, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
              max_exp_avg_sqs=None, maximize=False, master_params=None,
              stochastic_rounding=False, seed=0, tensor_ids=None):
    """One step of torch.optim.Adam (or AdamW with ``decoupled_weight_decay=True``), in place.

    ``m ← lerp(m, g, 1−β1)``, ``v ← β2·v + (1−β2)·g²``,
    ``θ ← θ − lr/(1−β1^step) · m / (√v̂/√(1−β2^step) + eps)`` with ``v̂ = v`` or the running
    maximum (amsgrad). Weight decay is L2 (``g += wd·θ``) or decoupled (``θ *= 1 − lr·wd``).

    Args:
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs: an ndarray or a list of them.
        step: the 1-based index of this update (bias correction).
        lr: float or Schedule; beta1: float or Schedule (both evaluated at ``step - 1``).
        master_params, stochastic_rounding, seed, tensor_ids: see the module docstring.

    Returns:
        The learning rate used.

    Example:
        >>> p = np.ones(4, np.float32); g = np.ones(4, np.float32)
        >>> m, v = np.zeros(4, np.float32), np.zeros(4, np.float32)
        >>> adam_step(p, g, m, v, step=1, lr=1e-3)
        0.001
    """
    call = _Call(params, grads, master_params, stochastic_rounding, seed, tensor_ids)
    step, lr, lr_enc, beta1, b1_enc, beta2, eps, weight_decay = _adam_hyperparameters(
        step, lr, beta1, beta2, eps, weight_decay)
    m = call.state(exp_avgs, "exp_avgs")
    v = call.state(exp_avg_sqs, "exp_avg_sqs")
    call.require(m, "exp_avgs", "calling adam_step")
    call.require(v, "exp_avg_sqs", "calling adam_step")
    vmax = call.state(max_exp_avg_sqs, "max_exp_avg_sqs")
    if amsgrad:
        call.require(vmax, "max_exp_avg_sqs", "amsgrad=True")
    if decoupled_weight_decay and weight_decay != 0.0:
        call.refuse_grads_that_are_params("with decoupled weight decay torch reads the grad after "
                                          "decaying the param")
    call.finish()
    used_lr, _ = _C.adam(call.code, call.numel, call.addresses(call.params), call.addresses(call.grads),
                         call.addresses(m), call.addresses(v), call.addresses(vmax) if amsgrad else None,
                         float(step), lr, lr_enc, beta1, b1_enc, beta2, eps, weight_decay,
                         bool(decoupled_weight_decay), bool(amsgrad), bool(maximize),
                         **call.precision())
    return used_lr


def _adam_hyperparameters(step, lr, beta1, beta2, eps, weight_decay):
    """adam_step's and adam8bit_step's hyperparameters, checked; lr and beta1 as (value,
    schedule encoding)."""
    step = _step(step, required=True)
    lr, lr_enc = _schedule_or_value(lr, "lr", _non_negative)
    beta1, b1_enc = _schedule_or_value(beta1, "beta1", _beta)
    return (step, lr, lr_enc, beta1, b1_enc, _beta(beta2, "beta2"), _non_negative(eps, "eps"),
            _non_negative(weight_decay, "weight_decay"))


_VARIANTS = {"torchao": 0, "fastlr": 1}
_UINT8, _FLOAT32 = np.dtype(np.uint8), np.dtype(np.float32)


def _quant8_state(call, codes, scales, name, block_size):
    """Validates one 8-bit state (codes and block scales) against the params."""
    codes = _as_list(codes, f"{name}_codes", n=call.n)
    scales = _as_list(scales, f"{name}_scales", n=call.n)
    for i, (c, s, p) in enumerate(zip(codes, scales, call.params)):
        if c.dtype != _UINT8:
            raise TypeError(f"{name}_codes[{i}] has dtype {c.dtype}, expected uint8")
        if c.shape != p.shape:
            raise ValueError(f"{name}_codes[{i}] has shape {c.shape}, but params[{i}] has shape {p.shape}")
        nb = _quant8.num_blocks(p.size, block_size)
        if s.dtype != _FLOAT32:
            raise TypeError(f"{name}_scales[{i}] has dtype {s.dtype}, expected float32")
        if s.shape != (nb,):
            raise ValueError(f"{name}_scales[{i}] has shape {s.shape}, expected ({nb},): one scale per "
                             f"block of {block_size} elements of params[{i}]")
        for a, what in ((c, "codes"), (s, "scales")):
            flags = a.flags
            if not flags.c_contiguous:
                raise ValueError(f"{name}_{what}[{i}] must be C-contiguous")
            if not flags.writeable:
                raise ValueError(f"{name}_{what}[{i}] is read-only")
    call._updated += [codes, scales]
    return codes, scales


def adam8bit_step(params, grads, exp_avg_codes, exp_avg_scales, exp_avg_sq_codes, exp_avg_sq_scales, *,
                  step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                  decoupled_weight_decay=False, amsgrad=False, max_exp_avg_sq_codes=None,
                  max_exp_avg_sq_scales=None, block_size=256, variant="fastlr",
                  stochastic_rounding=False, seed=0, master_params=None, maximize=False, tensor_ids=None):
    """One Adam/AdamW step with block-wise 8-bit state, in place (one fused pass).

    Each state is ``codes`` (uint8, the param's shape) and ``scales`` (float32, one per block
    of ``block_size`` elements, the last block may be partial); its value is
    ``map[code]·scale`` (fastlr._quant8: the signed dynamic map for exp_avg, the unsigned one
    for exp_avg_sq). Per block: dequantize, update in float32, re-quantize (scale = block
    absmax, nearest code). Zeros (codes 0, scales 0) are the initial state.

    ``variant="fastlr"``: torch.optim.Adam's arithmetic (but ``·(1/sqrt(bias_correction2))``
    where torch divides: one division per element), ``sqrt(exp_avg_sq)`` is what is
    quantized, and an element whose sqrt(v) dequantizes to 0 restarts its exp_avg too (no
    ``lr·m/eps`` steps on heavy-tailed gradients). ``variant="torchao"``: torchao's
    AdamW8bit arithmetic and encoding (exp_avg_sq as is).

    Args:
        params, grads: float32, bfloat16 or float16 ndarrays (or lists of them).
        step: the 1-based index of this update; lr, beta1: float or Schedule.
        stochastic_rounding: bfloat16 params (float16 too with ``variant="fastlr"``), without
            master_params, are written with stochastic rounding, random bits keyed by (seed,
            step, tensor_ids[i], element).
        master_params: float32 masters of bfloat16/float16 params (``variant="fastlr"``):
            the step runs on the master (grads of the params' dtype or float32) and each
            param is written as its master rounded to nearest (not read).
        maximize: ascend instead of descend.

    Returns:
        The learning rate used.

    Example:
        >>> p = np.ones(512, np.float32); g = np.ones(512, np.float32)
        >>> mc, vc = np.zeros(512, np.uint8), np.zeros(512, np.uint8)
        >>> ms, vs = np.zeros(2, np.float32), np.zeros(2, np.float32)
        >>> adam8bit_step(p, g, mc, ms, vc, vs, step=1, lr=1e-3)
        0.001
    """
    call = _Call(params, grads, master_params, stochastic_rounding, seed, tensor_ids)
    _refuse_float64(call, "adam8bit_step")
    step, lr, lr_enc, beta1, b1_enc, beta2, eps, weight_decay = _adam_hyperparameters(
        step, lr, beta1, beta2, eps, weight_decay)
    block_size = _block_size(block_size)
    if not isinstance(variant, str) or variant not in _VARIANTS:
        raise ValueError(f"variant must be 'fastlr' or 'torchao', got {variant!r}")
    if call.masters is not None and variant != "fastlr":
        raise ValueError("master_params need variant='fastlr'")
    mc, ms = _quant8_state(call, exp_avg_codes, exp_avg_scales, "exp_avg", block_size)
    vc, vs = _quant8_state(call, exp_avg_sq_codes, exp_avg_sq_scales, "exp_avg_sq", block_size)
    xc = xs = None
    if amsgrad:
        if max_exp_avg_sq_codes is None or max_exp_avg_sq_scales is None:
            raise ValueError("max_exp_avg_sq_codes and max_exp_avg_sq_scales are required when amsgrad=True")
        xc, xs = _quant8_state(call, max_exp_avg_sq_codes, max_exp_avg_sq_scales, "max_exp_avg_sq", block_size)
    if decoupled_weight_decay and weight_decay != 0.0:
        call.refuse_grads_that_are_params("with decoupled weight decay the grad is read after "
                                          "decaying the param")
    call.finish()
    store = {"float32": 0, "bfloat16": 1, "float16": 3}[_name(call.dtype)]
    if store in (1, 3) and call.stochastic_rounding and call.masters is None:
        store += 1  # bfloat16 / float16 with stochastic rounding
        if store == 4 and variant != "fastlr":
            raise ValueError("stochastic_rounding of float16 params needs variant='fastlr'")
    a = call.addresses
    used_lr, _ = _C.adam8(store, block_size, True, _VARIANTS[variant], call.numel, a(call.params),
                          a(call.grads), a(mc), a(ms), a(vc), a(vs), a(xc), a(xs), float(step), lr, lr_enc,
                          beta1, b1_enc, beta2, eps, weight_decay, bool(decoupled_weight_decay),
                          bool(amsgrad), call.seed, masters=a(call.masters), grad_dtype=call.grad_code,
                          maximize=bool(maximize), tensor_ids=call.tensor_ids)
    return used_lr


def _refuse_float64(call, name):
    if call.n and _name(call.dtype) == "float64":
        raise TypeError(f"params[0] has dtype float64; {name} supports float32, bfloat16 and float16")


def _block_size(block_size):
    if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, numbers.Integral) \
            or not 1 <= block_size <= 4096:
        raise ValueError(f"block_size must be an integer in [1, 4096], got {block_size!r}")
    return int(block_size)


def _q8_pair(call, state):
    """The (codes, scales) address pair of a validated 8-bit state, or None."""
    return None if state is None else (call.addresses(state[0]), call.addresses(state[1]))


def _q8_keywords(call, block_size):
    return {"block_size": block_size, "grad_dtype": call.grad_code, "masters": call.addresses(call.masters),
            "stochastic_rounding": call.stochastic_rounding, "seed": call.seed, "tensor_ids": call.tensor_ids}


def _required_q8_state(call, codes, scales, name, block_size, why):
    if codes is None or scales is None:
        raise ValueError(f"{name}_codes and {name}_scales are required {why}")
    return _quant8_state(call, codes, scales, name, block_size)


_Q8_DOC = """
    Each 8-bit state is ``codes`` (uint8, the param's shape) and ``scales`` (float32, one
    per block of ``block_size`` elements, the last block may be partial), as
    adam8bit_step's: signed states (momentum buffers, grad_avg) hold their value on the
    signed map, non-negative ones (square_avg, sum) their square root on the unsigned map
    (``fastlr.quantize8bit(x, signed=..., block_size=block_size)``). Per block:
    dequantize, torch.optim's update in float32, re-quantize (scale = block absmax,
    nearest code). Zeros (codes 0, scales 0) are an all-zero state."""


def sgd8bit_step(params, grads, momentum_buffer_codes=None, momentum_buffer_scales=None, *, lr, momentum=0.0,
                 dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False, step=None, block_size=256,
                 master_params=None, stochastic_rounding=False, seed=0, tensor_ids=None):
    """One step of torch.optim.SGD with a block-wise 8-bit momentum buffer, in place (one
    fused pass). Arithmetic and ``step`` as sgd_step's (``step == 1`` starts the buffer
    from the gradient).
    {q8}

    Args:
        params, grads: float32, bfloat16 or float16 ndarrays (or lists of them).
        momentum_buffer_codes, momentum_buffer_scales: required when momentum is not 0.
        lr, momentum: float or Schedule (at ``step - 1``).
        master_params, stochastic_rounding, seed, tensor_ids: see the module docstring.

    Returns:
        The learning rate used.

    Example:
        >>> p, g = np.ones(512, np.float32), np.full(512, 0.5, np.float32)
        >>> bc, bs = np.zeros(512, np.uint8), np.zeros(2, np.float32)
        >>> sgd8bit_step(p, g, bc, bs, lr=0.1, momentum=0.9, step=1)
        0.1
    """
    call = _Call(params, grads, master_params, stochastic_rounding, seed, tensor_ids)
    _refuse_float64(call, "sgd8bit_step")
    step, lr, lr_enc, momentum, mom_enc, dampening, weight_decay, uses_momentum = _sgd_hyperparameters(
        call, step, lr, momentum, dampening, weight_decay, nesterov)
    block_size = _block_size(block_size)
    buf = None
    if uses_momentum:
        buf = _required_q8_state(call, momentum_buffer_codes, momentum_buffer_scales, "momentum_buffer",
                                 block_size, "when momentum != 0")
    call.finish()
    used_lr, _ = _C.sgd8(call.code, call.numel, call.addresses(call.params), call.addresses(call.grads),
                         _q8_pair(call, buf), lr, lr_enc, 0 if step is None else step - 1, momentum, mom_enc,
                         dampening, bool(nesterov), weight_decay, bool(maximize), step == 1,
                         **_q8_keywords(call, block_size))
    return used_lr


def rmsprop8bit_step(params, grads, square_avg_codes, square_avg_scales, *, lr, alpha=0.99, eps=1e-8,
                     weight_decay=0.0, momentum=0.0, momentum_buffer_codes=None, momentum_buffer_scales=None,
                     centered=False, grad_avg_codes=None, grad_avg_scales=None, maximize=False, step=None,
                     block_size=256, master_params=None, stochastic_rounding=False, seed=0, tensor_ids=None):
    """One step of torch.optim.RMSprop with block-wise 8-bit state, in place (one fused
    pass). Arithmetic and ``step`` as rmsprop_step's, with two differences that 8-bit
    state needs (centered only): ``square_avg − grad_avg²`` is clamped at 0 before its
    square root (both are quantized on their own, so it can come out negative), and an
    element whose sqrt(square_avg) dequantizes to 0 restarts its grad_avg from 0 too.
    {q8}

    Args:
        square_avg_codes/scales: sqrt(square_avg) on the unsigned map.
        grad_avg_codes/scales (centered), momentum_buffer_codes/scales (momentum > 0):
            values on the signed map.
        lr, momentum: float or Schedule (at ``step - 1``).
        master_params, stochastic_rounding, seed, tensor_ids: see the module docstring.

    Returns:
        The learning rate used.
    """
    call = _Call(params, grads, master_params, stochastic_rounding, seed, tensor_ids)
    _refuse_float64(call, "rmsprop8bit_step")
    step, lr, lr_enc, alpha, eps, weight_decay, momentum, mom_enc, uses_momentum = _rmsprop_hyperparameters(
        call, step, lr, alpha, eps, weight_decay, momentum)
    block_size = _block_size(block_size)
    sq = _required_q8_state(call, square_avg_codes, square_avg_scales, "square_avg", block_size,
                            "when calling rmsprop8bit_step")
    ga = buf = None
    if centered:
        ga = _required_q8_state(call, grad_avg_codes, grad_avg_scales, "grad_avg", block_size, "when centered=True")
    if uses_momentum:
        buf = _required_q8_state(call, momentum_buffer_codes, momentum_buffer_scales, "momentum_buffer",
                                 block_size, "when momentum > 0")
    call.finish()
    used_lr, _ = _C.rmsprop8(call.code, call.numel, call.addresses(call.params), call.addresses(call.grads),
                             _q8_pair(call, sq), _q8_pair(call, ga), _q8_pair(call, buf), lr, lr_enc,
                             0 if step is None else step - 1, alpha, eps, weight_decay, momentum, mom_enc,
                             bool(centered), uses_momentum, bool(maximize), step == 1,
                             **_q8_keywords(call, block_size))
    return used_lr


def adagrad8bit_step(params, grads, state_sum_codes, state_sum_scales, *, step, lr, lr_decay=0.0,
                     weight_decay=0.0, eps=1e-10, maximize=False, block_size=256, master_params=None,
                     stochastic_rounding=False, seed=0, tensor_ids=None):
    """One step of torch.optim.Adagrad with a block-wise 8-bit ``sum``, in place (one fused
    pass). Arithmetic as adagrad_step's.
    {q8}

    Args:
        state_sum_codes/scales: sqrt(sum) on the unsigned map; torch's
            ``initial_accumulator_value`` v is
            ``fastlr.quantize8bit(np.full(shape, v, np.float32), signed=False, block_size=block_size)``.
        step: 1-based index of this update. lr: float or Schedule (at ``step - 1``).
        master_params, stochastic_rounding, seed, tensor_ids: see the module docstring.

    Returns:
        The learning rate used (before ``lr_decay``).
    """
    call = _Call(params, grads, master_params, stochastic_rounding, seed, tensor_ids)
    _refuse_float64(call, "adagrad8bit_step")
    step, lr, lr_enc, lr_decay, weight_decay, eps = _adagrad_hyperparameters(step, lr, lr_decay, weight_decay, eps)
    block_size = _block_size(block_size)
    sums = _required_q8_state(call, state_sum_codes, state_sum_scales, "state_sum", block_size,
                              "when calling adagrad8bit_step")
    call.finish()
    return _C.adagrad8(call.code, call.numel, call.addresses(call.params), call.addresses(call.grads),
                       _q8_pair(call, sums), float(step), lr, lr_enc, lr_decay, weight_decay, eps,
                       bool(maximize), **_q8_keywords(call, block_size))


for _f in (sgd8bit_step, rmsprop8bit_step, adagrad8bit_step):
    if _f.__doc__:  # None under python -OO
        _f.__doc__ = _f.__doc__.replace("{q8}", _Q8_DOC.strip("\n"))


def _beta(x, name):
    x = _real(x, name)
    if not 0.0 <= x < 1.0:
        raise ValueError(f"Invalid {name} parameter: {x} (must be in [0, 1))")
    return x


def _rmsprop_hyperparameters(call, step, lr, alpha, eps, weight_decay, momentum):
    """rmsprop_step's and rmsprop8bit_step's hyperparameters, checked: lr and momentum as
    (value, schedule encoding), and whether the momentum buffers are used."""
    lr, lr_enc = _schedule_or_value(lr, "lr", _non_negative)
    alpha = _non_negative(alpha, "alpha")
    eps = _non_negative(eps, "eps")
    weight_decay = _non_negative(weight_decay, "weight_decay")
    momentum, mom_enc = _schedule_or_value(momentum, "momentum", _non_negative)
    step = _step(step, required=lr_enc is not None or mom_enc is not None or call.stochastic_rounding)
    return step, lr, lr_enc, alpha, eps, weight_decay, momentum, mom_enc, mom_enc is not None or momentum > 0


def rmsprop_step(params, grads, square_avgs, *, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, momentum_buffers=None, centered=False, grad_avgs=None,
                 maximize=False, step=None, master_params=None, stochastic_rounding=False,
                 seed=0, tensor_ids=None):
    """One step of torch.optim.RMSprop, in place.

    ``v ← α·v + (1−α)·g²``; centered: ``ḡ ← lerp(ḡ, g, 1−α)``, ``avg = √(v − ḡ²) + eps``,
    else ``avg = √v + eps``; with momentum ``b ← μ·b + g/avg``, ``θ ← θ − lr·b``, else
    ``θ ← θ − lr·g/avg``.

    Args:
        square_avgs, grad_avgs (centered), momentum_buffers (momentum > 0): state arrays.
        lr, momentum: float or Schedule (evaluated at ``step - 1``).
        step: 1-based index of this update; ``step == 1`` starts the momentum buffers
            from zero as torch does; ``None`` takes them as they are. Required with
            ``stochastic_rounding`` (it keys the random bits).
        master_params, stochastic_rounding, seed, tensor_ids: see the module docstring.

    Returns:
        The learning rate used.
    """
    call = _Call(params, grads, master_params, stochastic_rounding, seed, tensor_ids)
    step, lr, lr_enc, alpha, eps, weight_decay, momentum, mom_enc, uses_momentum = _rmsprop_hyperparameters(
        call, step, lr, alpha, eps, weight_decay, momentum)
    sq = call.state(square_avgs, "square_avgs")
    call.require(sq, "square_avgs", "calling rmsprop_step")
    ga = call.state(grad_avgs, "grad_avgs")
    if centered:
        call.require(ga, "grad_avgs", "centered=True")
    bufs = call.state(momentum_buffers, "momentum_buffers")
    if uses_momentum:
        call.require(bufs, "momentum_buffers", "momentum > 0")
    call.finish()
    used_lr, _ = _C.rmsprop(call.code, call.numel, call.addresses(call.params), call.addresses(call.grads),
                            call.addresses(sq), call.addresses(ga) if centered else None,
                            call.addresses(bufs) if uses_momentum else None, lr, lr_enc,
                            0 if step is None else step - 1, alpha, eps, weight_decay, momentum, mom_enc,
                            bool(centered), uses_momentum, bool(maximize), step == 1,
                            **call.precision())
    return used_lr


def _adagrad_hyperparameters(step, lr, lr_decay, weight_decay, eps):
    """adagrad_step's and adagrad8bit_step's hyperparameters, checked; lr as (value,
    schedule encoding)."""
    step = _step(step, required=True)
    lr, lr_enc = _schedule_or_value(lr, "lr", _non_negative)
    return (step, lr, lr_enc, _non_negative(lr_decay, "lr_decay"), _non_negative(weight_decay, "weight_decay"),
            _non_negative(eps, "eps"))


def adagrad_step(params, grads, state_sums, *, step, lr, lr_decay=0.0, weight_decay=0.0,
                 eps=1e-10, maximize=False, master_params=None, stochastic_rounding=False,
                 seed=0, tensor_ids=None):
    """One step of torch.optim.Adagrad, in place.

    ``clr = lr / (1 + (step−1)·lr_decay)``, ``s ← s + g²``, ``θ ← θ − clr·g/(√s + eps)``.

    Args:
        state_sums: the accumulators (torch's ``sum``; start them at
            ``initial_accumulator_value``).
        step: 1-based index of this update. lr: float or Schedule (at ``step - 1``).
        master_params, stochastic_rounding, seed, tensor_ids: see the module docstring.

    Returns:
        The learning rate used (before ``lr_decay``).
    """
    call = _Call(params, grads, master_params, stochastic_rounding, seed, tensor_ids)
    step, lr, lr_enc, lr_decay, weight_decay, eps = _adagrad_hyperparameters(step, lr, lr_decay, weight_decay, eps)
    sums = call.state(state_sums, "state_sums")
    call.require(sums, "state_sums", "calling adagrad_step")
    call.finish()
    return _C.adagrad(call.code, call.numel, call.addresses(call.params), call.addresses(call.grads),
                      call.addresses(sums), float(step), lr, lr_enc, lr_decay, weight_decay, eps,
                      bool(maximize), **call.precision())


# ---------------------------------------------------------- 8-bit state ---


def _q8_options(signed, block_size, encoding):
    if not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"signed must be a bool, got {type(signed).__name__}")
    if encoding not in _quant8.ENCODINGS:
        raise ValueError(f"encoding must be 'sqrt' or 'linear', got {encoding!r}")
    return bool(signed), _block_size(block_size)


def quantize8bit(values, *, signed, block_size=256, encoding="sqrt"):
    """An 8-bit state holding ``values``, as the 8-bit kernels store it: ``(codes, scales)``.

    ``codes`` (uint8, the values' shape) index the signed dynamic map (``signed=True``:
    momentum buffers, ``exp_avg``, ``grad_avg``) or the unsigned one (``exp_avg_sq``,
    ``square_avg``, Adagrad's ``sum``); ``scales`` (float32) hold one absmax per block of
    ``block_size`` elements (the last block may be partial). With ``encoding="sqrt"``
    (fastlr's, the kernels' default) an unsigned state stores √value; ``"linear"`` stores
    the value (``adam8bit_step(variant="torchao")``'s exp_avg_sq). Nearest code, as the
    kernels re-quantize.

    Example: torch.optim.Adagrad's ``initial_accumulator_value=0.1`` for a param of 5000
    elements:

        >>> codes, scales = quantize8bit(np.full(5000, 0.1, np.float32), signed=False)
        >>> codes.shape, scales.shape
        ((5000,), (20,))
    """
    signed, block_size = _q8_options(signed, block_size, encoding)
    x = np.asarray(values)
    if x.dtype.kind not in "fiu" and _name(x.dtype) != "bfloat16":
        raise TypeError(f"values must be real numbers, got an array of dtype {x.dtype}")
    x = x.astype(np.float32)
    if not signed and (x < 0).any():
        raise ValueError("values of an unsigned state must be >= 0")
    return _quant8.quantize(x, block_size, signed, encoding)


def dequantize8bit(codes, scales, *, signed, block_size=256, encoding="sqrt"):
    """The float32 values of an 8-bit state ``(codes, scales)`` (quantize8bit's inverse up
    to the rounding to the nearest code), in the codes' shape.

        >>> codes, scales = quantize8bit(np.full(5000, 0.1, np.float32), signed=False)
        >>> float(dequantize8bit(codes, scales, signed=False)[0])  # doctest: +ELLIPSIS
        0.1...
    """
    signed, block_size = _q8_options(signed, block_size, encoding)
    if not isinstance(codes, np.ndarray) or codes.dtype != _UINT8:
        raise TypeError(f"codes must be a uint8 numpy.ndarray, got {getattr(codes, 'dtype', type(codes).__name__)}")
    if not isinstance(scales, np.ndarray) or scales.dtype != _FLOAT32:
        raise TypeError(f"scales must be a float32 numpy.ndarray, got "
                        f"{getattr(scales, 'dtype', type(scales).__name__)}")
    nb = _quant8.num_blocks(codes.size, block_size)
    if scales.shape != (nb,):
        raise ValueError(f"scales has shape {scales.shape}, expected ({nb},): one scale per block of "
                         f"{block_size} codes")
    return _quant8.dequantize(codes, scales, block_size, signed, encoding)
