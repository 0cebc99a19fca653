"""The update of params that are not on the CPU (CUDA), behind one function.

With fastlr's CUDA kernels built (``fastlr._C_cuda``, FASTLR_CUDA=1), CUDA params go
through them (fastlr/_cuda.py): one launch per dtype, no host synchronisation, so the
update is CUDA-graph capturable. A group's lists are validated and gathered once, and
the launches repeated while cheap per-step checks hold (DeviceStep). Schedules are
evaluated on the device from a per-group device counter that follows
``group["schedule_t"]`` (so graph replays advance the schedule); ``state["step"]`` has
torch's fused layout (0-dim float32 on the device) and is advanced by the kernel;
grad_scale / found_inf are read in the kernel.

Otherwise (or for what the kernels do not take: non-contiguous or sparse tensors,
params spread over several devices): torch's own fused implementation (foreach for
RMSprop, which has no fused one), with a one-time warning, so results are torch's.
``step_group`` receives the group (its values are already those of the current
step: ``group["lr"]``, momentum / betas[0], with any Schedule evaluated at
``group["schedule_t"]``), the params with grads, their grads and their initialised
state dicts.
"""
from __future__ import annotations

import operator
import warnings

import torch
from torch.optim.adagrad import adagrad as _adagrad
from torch.optim.adam import adam as _adam
from torch.optim.rmsprop import rmsprop as _rmsprop
from torch.optim.sgd import sgd as _sgd
from torch.utils.weak import WeakIdKeyDictionary

from .. import _cuda as _fc

_warned = set()
# Each group's device counter, keyed weakly by the group's first param (a group is a dict,
# which takes no weak reference) so that it, and the group, go with the model:
# first param -> {device index: [id(group), device counter, next host schedule_t]}
_counters = WeakIdKeyDictionary()


def _warn_once(built):
    """Once per reason: the kernels are not built, or these tensors do not fit them."""
    if built in _warned:
        return
    _warned.add(built)
    why = ("some params or grads do not fit them (sparse, non-contiguous, on several devices, "
           "another device type or dtype)" if built else "they are not built")
    warnings.warn(
        f"fastlr.optim: fastlr's CUDA kernels are not used because {why}; these params are "
        "updated by torch's fused (RMSprop, Adagrad: foreach) implementation",
        stacklevel=5,
    )


def _steps_on(params, states):
    """torch's fused kernels read `step` on the param's device (float32); the caller
    stores them (_store) once the update has accepted its input."""
    return [t if t.device == p.device and t.dtype == torch.float32
            else t.to(device=p.device, dtype=torch.float32)
            for p, t in zip(params, (s["step"] for s in states))]


def _store(states, key, tensors):
    for s, t in zip(states, tensors):
        s[key] = t


def step_group(kind, group, params, grads, states, grad_scale=None, found_inf=None):
    """Updates ``params`` (one device type, not CPU) of ``group`` in place.

    kind: "sgd" | "adam" | "rmsprop" | "adagrad"; states: the params' state dicts
    (already initialised as torch does); grad_scale / found_inf: GradScaler's tensors
    or None (a step with found_inf != 0 is not passed here). Returns a DeviceStep that
    repeats the update cheaply on later steps, or None.
    """
    device_type = params[0].device.type
    # meta tensors (shape inference, deferred init) have no data for a kernel: torch's
    # single-tensor code, as torch.optim runs them, with the step counters on the CPU
    meta = device_type == "meta"
    built = _fc._C_cuda is not None
    if built and device_type == _fc._DEVICE_TYPE:
        done = _kernel_step(kind, group, params, grads, states, grad_scale, found_inf)
        if done is not False:
            return done
    if not meta:
        _warn_once(built)
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
            _store(states, "momentum_buffer", bufs)
    elif kind == "adam":
        beta1, beta2 = group["betas"]
        amsgrad = group["amsgrad"]
        steps = _steps_on(params, states) if fused else [s["step"] for s in states]
        _adam(
            params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if amsgrad else [], steps,
            foreach=foreach, fused=fused, grad_scale=grad_scale, found_inf=found_inf,
            has_complex=any(torch.is_complex(p) for p in params),
            decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=amsgrad,
            beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=group["maximize"],
        )
        _store(states, "step", steps)
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
        steps = _steps_on(params, states) if fused else [s["step"] for s in states]
        _adagrad(
            params, grads, [s["sum"] for s in states], steps, fused=fused, foreach=foreach,
            grad_scale=grad_scale, found_inf=found_inf,
            has_complex=any(torch.is_complex(p) for p in params), lr=group["lr"],
            weight_decay=group["weight_decay"], lr_decay=group["lr_decay"], eps=group["eps"],
            maximize=group["maximize"],
        )
        _store(states, "step", steps)
    else:  # pragma: no cover
        raise ValueError(f"unknown optimizer kind {kind!r}")
    return None


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
    owner = group["params"][0]
    per_device = _counters.get(owner)
    if per_device is None:
        per_device = _counters[owner] = {}
    entry = per_device.get(device.index)
    if entry is None or entry[0] != id(group):
        counter = torch.full((), float(t), dtype=torch.float32, device=device)
        entry = per_device[device.index] = [id(group), counter, t]
    elif entry[2] != t:
        entry[1].fill_(float(t))
    entry[2] = t + 1
    return entry[1]


_ROLE_NAMES = {
    "sgd": ("params", "grads", "momentum_buffers"),
    "adam": ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
    "rmsprop": ("params", "grads", "square_avgs", "grad_avgs", "momentum_buffers"),
    "adagrad": ("params", "grads", "state_sums"),
}
_data_ptr = torch.Tensor.data_ptr
_get_device = torch.Tensor.get_device
_is_contiguous = torch.Tensor.is_contiguous
_dtype = operator.attrgetter("dtype")
_shape = operator.attrgetter("shape")


def _options(kind, group):
    """The group's current options as the kernel takes them: the state keys in role
    order (None: unused role), the scalar arguments, the schedules."""
    lr_sched = group.get("lr_schedule")
    m_sched = group.get("momentum_schedule")
    lr = float(group["lr_scale"] if lr_sched is not None else group["lr"])
    wd = float(group["weight_decay"])
    maximize = bool(group["maximize"])
    if kind == "sgd":
        use_momentum = group["momentum"] != 0 or m_sched is not None
        return (("momentum_buffer" if use_momentum else None,),
                dict(lr=lr, momentum=1.0 if m_sched is not None else float(group["momentum"]),
                     dampening=float(group["dampening"]), nesterov=bool(group["nesterov"]),
                     weight_decay=wd, maximize=maximize),
                {"lr_schedule": lr_sched, "momentum_schedule": m_sched})
    if kind == "adam":
        amsgrad = bool(group["amsgrad"])
        return (("exp_avg", "exp_avg_sq", "max_exp_avg_sq" if amsgrad else None),
                dict(lr=lr, beta1=1.0 if m_sched is not None else float(group["betas"][0]),
                     beta2=float(group["betas"][1]), eps=float(group["eps"]), weight_decay=wd,
                     decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
                     amsgrad=amsgrad, maximize=maximize),
                {"lr_schedule": lr_sched, "beta1_schedule": m_sched})
    if kind == "rmsprop":
        momentum = group["momentum"]
        use_momentum = m_sched is not None or momentum > 0
        centered = bool(group["centered"])
        return (("square_avg", "grad_avg" if centered else None,
                 "momentum_buffer" if use_momentum else None),
                dict(lr=lr, alpha=float(group["alpha"]), eps=float(group["eps"]), weight_decay=wd,
                     momentum=1.0 if m_sched is not None else float(momentum), centered=centered,
                     maximize=maximize),
                {"lr_schedule": lr_sched, "momentum_schedule": m_sched})
    if kind == "adagrad":
        return (("sum",),
                dict(lr=lr, lr_decay=float(group["lr_decay"]), weight_decay=wd,
                     eps=float(group["eps"]), maximize=maximize),
                {"lr_schedule": lr_sched})
    raise ValueError(f"unknown optimizer kind {kind!r}")  # pragma: no cover


def _kernel_step(kind, group, params, grads, states, grad_scale, found_inf):
    """The update by fastlr's CUDA kernels: False (nothing done) for what they do not
    take, else a DeviceStep to repeat it (None when it cannot be repeated as is)."""
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
    counter = _schedule_counter(group, device)
    roles, hyper, schedules = _options(kind, group)
    first = None
    if kind in ("sgd", "rmsprop"):
        first = [False] * len(params)
    # New tensors reach the state only after the launch: one stored before a refused step
    # would be read on the next (an uninitialised first momentum buffer as history).
    if kind == "sgd":
        role_lists = [None]
        if roles[0] is not None:
            bufs = role_lists[0] = [s.get("momentum_buffer") for s in states]
            for i, p in enumerate(params):
                if bufs[i] is None:  # torch's first step: buf = clone(grad), by the kernel
                    bufs[i] = torch.empty_like(p, memory_format=torch.contiguous_format)
                    first[i] = True
        steps = None
    else:
        role_lists = [None if r is None else [s[r] for s in states] for r in roles]
        steps = _steps_on(params, states)
    lists = [[_real(p) for p in params], [_real(g) for g in grads]]
    lists += [None if ts is None else list(map(_real, ts)) for ts in role_lists]
    prep = _fc._prepare(_ROLE_NAMES[kind], lists, steps=steps, schedule_step=counter,
                        increment=True, first=first)
    scalars = _fc._scalars(device, grad_scale, found_inf, counter, schedules)
    _fc._launch(getattr(_fc._C_cuda, kind), prep, None, scalars, hyper)
    if steps is not None:
        _store(states, "step", steps)
    elif role_lists[0] is not None:
        _store(states, "momentum_buffer", role_lists[0])
    if (first is not None and any(first)) or any(map(torch.is_complex, params)):
        return None  # first-step flags, complex views: built afresh next step
    return DeviceStep(kind, roles, counter, params, states, prep)


class DeviceStep:
    """One group's kernel launches, validated once and repeated while what they rely on
    holds. Each step re-reads the grads' addresses and checks cheaply (one C-level pass
    per attribute) that the grads still match the params (device, dtype, shape,
    contiguous, dense) and that the params and state tensors are at the same addresses
    (`p.data = ...`, a state tensor replaced); anything else (other params with grads,
    options choosing other state lists, state_dict loads, added groups) makes a new
    fastlr.optim plan (_base.py) and with it a new DeviceStep. ``step`` returns False,
    having done nothing, when a check fails: the caller then validates and gathers
    everything again (``step_group``), which raises what it raised before."""

    __slots__ = ("kind", "scheduled", "params", "states", "p_addrs", "state_addrs",
                 "devices", "dtypes", "shapes", "prep", "counter")

    def __init__(self, kind, roles, counter, params, states, prep):
        self.kind = kind
        self.scheduled = counter is not None
        self.counter = counter  # prep's increment holds its address
        self.params = params
        self.states = states
        self.prep = prep
        self.p_addrs = list(map(_data_ptr, params))
        keys = [r for r in roles if r is not None] + ([] if kind == "sgd" else ["step"])
        self.state_addrs = []
        for key in keys:
            getter = operator.itemgetter(key)
            self.state_addrs.append((getter, list(map(_data_ptr, map(getter, states)))))
        self.devices = list(map(_get_device, params))
        self.dtypes = list(map(_dtype, params))
        self.shapes = list(map(_shape, params))

    def step(self, group, grads, grad_scale, found_inf):
        _, hyper, schedules = _options(self.kind, group)
        if ("schedule_t" in group) != self.scheduled:  # a Schedule attached: a device counter
            return False
        if list(map(_data_ptr, self.params)) != self.p_addrs:
            return False
        try:
            for getter, addrs in self.state_addrs:
                if list(map(_data_ptr, map(getter, self.states))) != addrs:
                    return False
            g_addrs = list(map(_data_ptr, grads))
        except (KeyError, RuntimeError):  # a state entry deleted; a sparse grad
            return False
        if (
            list(map(_get_device, grads)) != self.devices
            or list(map(_dtype, grads)) != self.dtypes
            or list(map(_shape, grads)) != self.shapes
            or not all(map(_is_contiguous, grads))
        ):
            return False
        device = self.prep.device
        counter = _schedule_counter(group, device)
        if counter is not self.counter:  # a new device counter: the launch must name it
            return False
        scalars = _fc._scalars(device, grad_scale, found_inf, counter, schedules)
        _fc._launch(getattr(_fc._C_cuda, self.kind), self.prep, g_addrs, scalars, hyper)
        return True
