"""A straight pure-NumPy reference of each update rule, for the tests and the benchmarks.

Each function has the signature of its kernel (``fastlr.sgd_step`` …) and follows
torch.optim's single-tensor code (foreach=False) one tensor operation at a time, in the
same order: ``-grad`` for maximize, ``grad + wd·param`` for L2 weight decay,
``mul_`` then ``addcmul_`` for the second moments, torch's two-sided ``lerp``, and so on.
float32 and float64 arrays are updated in place in their own precision (scalars are cast
to the array's type, as torch casts a Python scalar); float16 and bfloat16 arrays are
computed in float32 copies and rounded back (to nearest even) once per update, the
fastlr kernels' convention for 16-bit storage.

No validation beyond what the rule needs: the kernels validate, this is the formula.
"""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["sgd_step", "adam_step", "rmsprop_step", "adagrad_step"]

_EXACT = (np.dtype(np.float32), np.dtype(np.float64))


def _list(x):
    if x is None:
        return None
    return [x] if isinstance(x, np.ndarray) else list(x)


def _value(x, step, name):
    """A float, or a Schedule evaluated at ``step - 1`` (completed updates)."""
    if hasattr(x, "_encoding"):
        if step is None:
            raise ValueError(f"step is required when {name} is a Schedule")
        return float(x(step - 1))
    return float(x)


def _compute(*arrays):
    """The arrays in their compute type: float32/float64 as they are, 16-bit as float32 copies."""
    return [a if a is None or a.dtype in _EXACT else a.astype(np.float32) for a in arrays]


def _store(originals, computed):
    """Writes float32 copies back into 16-bit arrays (a no-op for in-place ones)."""
    for dst, src in zip(originals, computed):
        if dst is not None and src is not dst:
            dst[...] = src


def _quiet(fn):
    """Overflow to inf and NaN propagate silently, as in torch."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper


def _lerp_(start, end, weight):
    """torch's ``start.lerp_(end, weight)`` with a scalar weight: exact at both ends."""
    w = start.dtype.type(weight)
    if w < 0.5:
        start += w * (end - start)
    else:
        start[...] = end - (end - start) * (1 - w)


@_quiet
def sgd_step(params, grads, momentum_buffers=None, *, lr, momentum=0.0, dampening=0.0,
             nesterov=False, weight_decay=0.0, maximize=False, step=None):
    """torch.optim.SGD: ``g = ±grad + wd·θ``; ``b = g`` (first) or ``μ·b + (1−dampening)·g``;
    ``g = g + μ·b`` (nesterov) or ``b``; ``θ = θ − lr·g``. Returns the lr used."""
    lr = _value(lr, step, "lr")
    momentum = _value(momentum, step, "momentum")
    params, grads = _list(params), _list(grads)
    bufs = _list(momentum_buffers) or [None] * len(params)
    for arrays in zip(params, grads, bufs):
        p, g, b = _compute(*arrays)
        c = p.dtype.type
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + c(weight_decay) * p
        if momentum != 0:
            if step == 1:
                b[...] = g
            else:
                b *= c(momentum)
                b += c(1.0 - dampening) * g
            g = g + c(momentum) * b if nesterov else b
        p += c(-lr) * g
        _store((arrays[0], arrays[2]), (p, b))
    return lr


@_quiet
def adam_step(params, grads, exp_avgs, exp_avg_sqs, *, step, lr, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
              max_exp_avg_sqs=None, maximize=False, stochastic_rounding=False):
    """torch.optim.Adam / AdamW (``decoupled_weight_decay=True``). Returns the lr used.

    ``stochastic_rounding=True``: the arithmetic of fastlr's stochastic-rounding kernels,
    which multiply by ``1 / sqrt(bias_correction2)`` where torch divides by its square
    root (one division per element instead of two). The rounding itself is not modelled:
    the results are the exact float values those kernels round."""
    lr = _value(lr, step, "lr")
    beta1 = _value(beta1, step, "beta1")
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    params, grads = _list(params), _list(grads)
    vmaxs = _list(max_exp_avg_sqs) or [None] * len(params)
    for arrays in zip(params, grads, _list(exp_avgs), _list(exp_avg_sqs), vmaxs):
        p, g, m, v, vmax = _compute(*arrays)
        c = p.dtype.type
        if maximize:
            g = -g
        if weight_decay != 0:
            if decoupled_weight_decay:
                p *= c(1 - lr * weight_decay)
            else:
                g = g + c(weight_decay) * p
        _lerp_(m, g, 1 - beta1)
        v *= c(beta2)
        v += (c(1 - beta2) * g) * g
        if amsgrad:
            np.maximum(vmax, v, out=vmax)  # propagates NaN, as torch.maximum
        root = np.sqrt(vmax if amsgrad else v)
        if stochastic_rounding:
            denom = root * c(1 / bias_correction2_sqrt)
        else:
            denom = root / c(bias_correction2_sqrt)
        denom += c(eps)
        p += (c(-step_size) * m) / denom
        _store((arrays[0], arrays[2], arrays[3], arrays[4]), (p, m, v, vmax))
    return lr


@_quiet
def rmsprop_step(params, grads, square_avgs, *, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, momentum_buffers=None, centered=False, grad_avgs=None,
                 maximize=False, step=None):
    """torch.optim.RMSprop (``step == 1`` starts the momentum buffers at zero). Returns the lr used."""
    lr = _value(lr, step, "lr")
    momentum = _value(momentum, step, "momentum")
    params, grads = _list(params), _list(grads)
    none = [None] * len(params)
    gas = _list(grad_avgs) or none
    bufs = _list(momentum_buffers) or none
    for arrays in zip(params, grads, _list(square_avgs), gas, bufs):
        p, g, sq, ga, b = _compute(*arrays)
        c = p.dtype.type
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + c(weight_decay) * p
        sq *= c(alpha)
        sq += (c(1 - alpha) * g) * g
        if centered:
            _lerp_(ga, g, 1 - alpha)
            avg = np.sqrt(sq + (c(-1) * ga) * ga)
        else:
            avg = np.sqrt(sq)
        avg += c(eps)
        if momentum > 0:
            if step == 1:
                b[...] = 0
            b *= c(momentum)
            b += g / avg
            p += c(-lr) * b
        else:
            p += (c(-lr) * g) / avg
        _store((arrays[0], arrays[2], arrays[3], arrays[4]), (p, sq, ga, b))
    return lr


@_quiet
def adagrad_step(params, grads, state_sums, *, step, lr, lr_decay=0.0, weight_decay=0.0,
                 eps=1e-10, maximize=False):
    """torch.optim.Adagrad: ``clr = lr/(1 + (step−1)·lr_decay)``, ``s += g²``,
    ``θ −= clr·g/(√s + eps)``. Returns the lr used (before lr_decay)."""
    lr = _value(lr, step, "lr")
    clr = lr / (1 + (step - 1) * lr_decay)
    params, grads = _list(params), _list(grads)
    for arrays in zip(params, grads, _list(state_sums)):
        p, g, s = _compute(*arrays)
        c = p.dtype.type
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + c(weight_decay) * p
        s += g * g
        std = np.sqrt(s)
        std += c(eps)
        p += (c(-clr) * g) / std
        _store((arrays[0], arrays[2]), (p, s))
    return lr
