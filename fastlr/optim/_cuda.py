"""The update of params that are not on the CPU (CUDA), behind one function.

With fastlr's CUDA kernels built (``fastlr._C_cuda``, FASTLR_CUDA=1), CUDA params go
through them (fastlr/_cuda.py): one launch per dtype, no host synchronisation, so the
update is CUDA-graph capturable. Schedules are evaluated on the device from a per-group
device counter that follows ``group["schedule_t"]`` (so graph replays advance the
schedule); ``state["step"]`` has torch's fused layout (0-dim float32 on the device) and
is advanced by the kernel; grad_scale / found_inf are read in the kernel.

Otherwise (or for what the kernels do not take: non-contiguous or sparse tensors,
params spread over several devices): torch's own fused implementation (foreach for
RMSprop, which has no fused one), with a one-time warning, so results are torch's.
``step_group`` receives the group (its values are already those of the current
step: ``group["lr"]``, momentum / betas[0], with any Schedule evaluated at
``group["schedule_t"]``), the params with grads, their grads and their initialised
state dicts.
"""
from __future__ import annotations

import warnings

import torch
from torch.optim.adagrad import adagrad as _adagrad
from torch.optim.adam import adam as _adam
from torch.optim.rmsprop import rmsprop as _rmsprop
from torch.optim.sgd import sgd as _sgd

from .. import _cuda as _fc

_warned = False
_counters = {}  # (id(group), device index) -> [group, device counter, next host schedule_t]


def _warn_once():
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "fastlr.optim: fastlr's CUDA kernels are not built; params on the GPU are "
            "updated by torch's fused (RMSprop, Adagrad: foreach) implementation",
            stacklevel=5,
        )


def _steps_on(params, states):
    """torch's fused kernels read `step` on the param's device (float32)."""
    steps = []
    for p, s in zip(params, states):
        t = s["step"]
        if t.device != p.device or t.dtype != torch.float32:
            t = s["step"] = t.to(device=p.device, dtype=torch.float32)
        steps.append(t)
    return steps


def step_group(kind, group, params, grads, states, grad_scale=None, found_inf=None):
    """Updates ``params`` (one device type, not CPU) of ``group`` in place.

    kind: "sgd" | "adam" | "rmsprop" | "adagrad"; states: the params' state dicts
    (already initialised as torch does); grad_scale / found_inf: GradScaler's tensors
    or None (a step with found_inf != 0 is not passed here).
    """
    device_type = params[0].device.type
    # meta tensors (shape inference, deferred init) have no data for a kernel: torch's
    # single-tensor code, as torch.optim runs them, with the step counters on the CPU
    meta = device_type == "meta"
    if device_type == _fc._DEVICE_TYPE and _fc._C_cuda is not None and _kernel_step(
        kind, group, params, grads, states, grad_scale, found_inf
    ):
        return
    if not meta:
        _warn_once()
    # torch has no fused RMSprop, and its fused Adagrad is CPU-only: foreach for those
    fused = device_type == "cuda" and kind in ("sgd", "adam")
    foreach = not fused and not meta
    if kind == "sgd":
        use_momentum = group["momentum"] != 0 or "momentum_schedule" in group
        bufs = [s.get("momentum_buffer") for s in states] if use_momentum else []
        _sgd(
            params, grads, bufs, foreach=foreach, fused=fused, grad_scale=grad_scale,
            found_inf=found_inf, weight_decay=group["weight_decay"], momentum=group["momentum"],
            lr=group["lr"], dampening=group["dampening"], nesterov=group["nesterov"],
            maximize=group["maximize"],
        )
        if use_momentum:
            for s, b in zip(states, bufs):
                s["momentum_buffer"] = b
    elif kind == "adam":
        beta1, beta2 = group["betas"]
        amsgrad = group["amsgrad"]
        _adam(
            params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
            _steps_on(params, states) if fused else [s["step"] for s in states],
            foreach=foreach, fused=fused, grad_scale=grad_scale, found_inf=found_inf,
            has_complex=any(torch.is_complex(p) for p in params),
            decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=amsgrad,
            beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=group["maximize"],
        )
    elif kind == "rmsprop":
        momentum = group["momentum"]
        use_momentum = "momentum_schedule" in group or momentum > 0
        if grad_scale is not None:
            grads = [g / grad_scale for g in grads]
        _rmsprop(
            params, grads, [s["square_avg"] for s in states],
            [s["grad_avg"] for s in states] if group["centered"] else [],
            [s["momentum_buffer"] for s in states] if use_momentum else [],
            [s["step"] for s in states], foreach=foreach, maximize=group["maximize"],
            has_complex=any(torch.is_complex(p) for p in params), lr=group["lr"],
            alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
            momentum=momentum, centered=group["centered"],
        )
    elif kind == "adagrad":
        _adagrad(
            params, grads, [s["sum"] for s in states],
            _steps_on(params, states) if fused else [s["step"] for s in states],
            fused=fused, foreach=foreach, grad_scale=grad_scale, found_inf=found_inf,
            has_complex=any(torch.is_complex(p) for p in params), lr=group["lr"],
            weight_decay=group["weight_decay"], lr_decay=group["lr_decay"], eps=group["eps"],
            maximize=group["maximize"],
        )
    else:  # pragma: no cover
        raise ValueError(f"unknown optimizer kind {kind!r}")


# ------------------------------------------------------------ fastlr kernels ---

_KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _real(t):
    return torch.view_as_real(t) if t.is_complex() else t


def _schedule_counter(group, device):
    """The group's device counter of completed updates (float32), or None without a
    schedule. It follows group["schedule_t"] when that moves other than by one step
    (load_state_dict, find_lr); otherwise only the kernel advances it, so CUDA-graph
    replays advance the schedule although the host counter does not."""
    if "schedule_t" not in group:
        return None
    t = group["schedule_t"]
    key = (id(group), device.index)
    entry = _counters.get(key)
    if entry is None or entry[0] is not group:
        counter = torch.full((), float(t), dtype=torch.float32, device=device)
        entry = _counters[key] = [group, counter, t]
    elif entry[2] != t:
        entry[1].fill_(float(t))
    entry[2] = t + 1
    return entry[1]


def _kernel_step(kind, group, params, grads, states, grad_scale, found_inf):
    """The update by fastlr's CUDA kernels; False (nothing done) for what they do not take."""
    device = params[0].device
    for p, g in zip(params, grads):
        if (
            p.device != device
            or g.device != device
            or g.is_sparse
            or (p.dtype not in _KERNEL_DTYPES and not p.is_complex())
            or not p.is_contiguous()
            or not g.is_contiguous()
        ):
            return False
    P = [_real(p) for p in params]
    G = [_real(g) for g in grads]
    counter = _schedule_counter(group, device)
    lr_sched = group.get("lr_schedule")
    m_sched = group.get("momentum_schedule")
    lr = group["lr_scale"] if lr_sched is not None else float(group["lr"])
    common = dict(lr=lr, lr_schedule=lr_sched, schedule_step=counter, grad_scale=grad_scale,
                  found_inf=found_inf)
    if kind == "sgd":
        use_momentum = group["momentum"] != 0 or m_sched is not None
        bufs, first = None, False
        if use_momentum:
            first = []
            for p, s in zip(params, states):
                b = s.get("momentum_buffer")
                first.append(b is None)
                if b is None:  # torch's first step: buf = clone(grad), written by the kernel
                    s["momentum_buffer"] = torch.empty_like(p, memory_format=torch.contiguous_format)
            bufs = [_real(s["momentum_buffer"]) for s in states]
        _fc.sgd(P, G, bufs, momentum=1.0 if m_sched is not None else float(group["momentum"]),
                momentum_schedule=m_sched, dampening=float(group["dampening"]),
                nesterov=bool(group["nesterov"]), weight_decay=float(group["weight_decay"]),
                maximize=bool(group["maximize"]), first_step=first, **common)
    elif kind == "adam":
        amsgrad = group["amsgrad"]
        _fc.adam(P, G, [_real(s["exp_avg"]) for s in states],
                 [_real(s["exp_avg_sq"]) for s in states],
                 [_real(s["max_exp_avg_sq"]) for s in states] if amsgrad else None,
                 steps=_steps_on(params, states),
                 beta1=1.0 if m_sched is not None else float(group["betas"][0]),
                 beta1_schedule=m_sched, beta2=float(group["betas"][1]), eps=float(group["eps"]),
                 weight_decay=float(group["weight_decay"]),
                 decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
                 amsgrad=bool(amsgrad), maximize=bool(group["maximize"]), **common)
    elif kind == "rmsprop":
        momentum = group["momentum"]
        use_momentum = m_sched is not None or momentum > 0
        centered = group["centered"]
        _fc.rmsprop(
            P, G, [_real(s["square_avg"]) for s in states],
            grad_avgs=[_real(s["grad_avg"]) for s in states] if centered else None,
            momentum_buffers=[_real(s["momentum_buffer"]) for s in states] if use_momentum else None,
            momentum=1.0 if m_sched is not None else float(momentum), momentum_schedule=m_sched,
            steps=_steps_on(params, states), alpha=float(group["alpha"]),
            eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
            centered=bool(centered), maximize=bool(group["maximize"]), **common)
    elif kind == "adagrad":
        _fc.adagrad(P, G, [_real(s["sum"]) for s in states], steps=_steps_on(params, states),
                    lr_decay=float(group["lr_decay"]), weight_decay=float(group["weight_decay"]),
                    eps=float(group["eps"]), maximize=bool(group["maximize"]), **common)
    else:  # pragma: no cover
        return False
    return True
