"""fastlr's CUDA kernels over torch CUDA tensors (the optional extension ``fastlr._C_cuda``).

Each function updates lists of tensors in place with one kernel launch per dtype (up to
``_C_cuda.max_tensors_per_launch`` tensors a launch), on the current CUDA stream, without
a host synchronisation: everything that changes from step to step is read on the device,
so a call can be captured in a CUDA graph (``torch.cuda.graph``) and replayed.

- ``steps``: the per-tensor step counters (0-dim tensors on the device; torch's fused
  optimizers keep ``state["step"]`` as float32 there), or one counter shared by all.
  With ``increment=True`` (default) every distinct counter, and ``schedule_step``, is
  advanced by one on the device first, so after the call it holds this update's 1-based
  index, as torch's ``state["step"]`` does.
- ``lr`` / ``momentum`` / ``beta1`` with a ``Schedule``: the value used is
  ``lr * schedule(t)`` (``lr`` acting as a scale), t = ``schedule_step - 1`` when a group
  counter is given, else the tensor's ``step - 1`` (the completed updates).
- ``grad_scale`` / ``found_inf``: GradScaler's float32 device tensors; grads are divided by
  ``grad_scale`` in the kernel, and with ``found_inf != 0`` nothing is written at all
  (counters included).

The update rules are fastlr's (csrc/fastlr/update.hpp: torch.optim's single-tensor
arithmetic, float32 math for float32/bfloat16/float16, float64 for float64).

>>> import torch, fastlr, fastlr._cuda as fc  # doctest: +SKIP
>>> p = [torch.randn(1000, device="cuda")]; g = [torch.randn_like(p[0])]
>>> m, v = [torch.zeros_like(p[0])], [torch.zeros_like(p[0])]
>>> step = torch.zeros((), device="cuda")
>>> fc.adam(p, g, m, v, steps=step, lr=1e-3, lr_schedule=fastlr.Cosine(1.0, 100))
"""
from __future__ import annotations

import torch

try:
    from . import _C_cuda
except ImportError:  # built only with FASTLR_CUDA=1 and nvcc
    _C_cuda = None

__all__ = ["available", "sgd", "adam", "rmsprop", "adagrad", "copy_", "schedule_values"]

_DTYPES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_STEP_DTYPES = {torch.float32: 0, torch.float64: 1, torch.int32: 2, torch.int64: 3}
_encodings = {}  # (Schedule, device index) -> float64 device tensor (schedules are immutable)
_DEVICE_TYPE = "cuda"  # what the kernels take (a test double sets "cpu", with a fake _C_cuda)
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _stream(index):
    """The current stream's cudaStream_t of device `index` (torch.cuda.current_stream
    builds a Stream object: microseconds a call)."""
    if _raw_stream is not None:
        return _raw_stream(index)
    return torch.cuda.current_stream(index).cuda_stream


def available() -> bool:
    """True when the extension is built and a CUDA device is present."""
    return _C_cuda is not None and torch.cuda.is_available()


def _require():
    if _C_cuda is None:
        raise RuntimeError(
            "fastlr was built without its CUDA kernels; rebuild with FASTLR_CUDA=1 "
            "(nvcc on PATH): FASTLR_CUDA=1 pip install ."
        )


def _encoding(schedule, device):
    """The schedule's encoding on `device`, copied once (not inside a graph capture:
    call once eagerly before capturing, as torch requires for optimizer state anyway)."""
    if schedule is None:
        return 0, None
    key = (schedule, device.index)
    enc = _encodings.get(key)
    if enc is None:
        enc_np = getattr(schedule, "_encoding", None)
        if enc_np is None:
            raise TypeError(f"expected a fastlr Schedule, got {type(schedule).__name__}")
        enc = torch.tensor(enc_np, dtype=torch.float64, device=device)
        _encodings[key] = enc
    return enc.data_ptr(), enc


def _as_list(x, name):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return [x]
    if not isinstance(x, (list, tuple)):
        raise TypeError(f"{name} must be a tensor or a list of tensors, got {type(x).__name__}")
    return list(x)


def _scalar_tensor(t, name, device):
    if t is None:
        return 0
    if not isinstance(t, torch.Tensor) or t.device != device or t.dtype != torch.float32 or t.numel() != 1:
        raise TypeError(f"{name} must be a one-element float32 tensor on {device}")
    return t.data_ptr()


class _Prepared:
    """Validated tensor lists of one update, grouped by dtype: what a launch needs
    besides the grads' addresses and the per-step scalars."""

    __slots__ = ("device", "index", "step_code", "buckets", "increment")


def _prepare(role_names, roles, *, steps, schedule_step, increment, first=None):
    """Validates the lists (before anything is written) and groups the tensors by dtype;
    None for empty lists. roles: lists in role order (None for an unused role)."""
    params = roles[0]
    n = len(params)
    for name, lst in zip(role_names, roles):
        if lst is not None and len(lst) != n:
            raise ValueError(f"{name}: expected {n} tensors, got {len(lst)}")
    if n == 0:
        return None
    p0 = params[0]
    if not isinstance(p0, torch.Tensor) or p0.device.type != _DEVICE_TYPE:
        raise TypeError("params[0] must be a CUDA tensor")
    device = p0.device
    index = p0.get_device()
    groups = {}
    used = [(name, lst) for name, lst in zip(role_names, roles) if lst is not None]
    for i, p in enumerate(params):
        dtype = p.dtype
        code = _DTYPES.get(dtype)
        if code is None:
            raise TypeError(f"params[{i}]: unsupported dtype {dtype}")
        shape = p.shape
        for name, lst in used:
            t = lst[i]
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{i}] must be a tensor, got {type(t).__name__}")
            if t.get_device() != index:
                raise ValueError(f"{name}[{i}] is on {t.device}, expected {device}")
            if t.dtype != dtype:
                raise TypeError(f"{name}[{i}] has dtype {t.dtype}, expected {dtype}")
            if t.shape != shape:
                raise ValueError(f"{name}[{i}] has shape {tuple(t.shape)}, expected {tuple(shape)}")
            if not t.is_contiguous():
                raise ValueError(f"{name}[{i}] must be contiguous")
        groups.setdefault(code, []).append(i)

    step_list = None
    step_code = 0
    if steps is not None:
        step_list = [steps] * n if isinstance(steps, torch.Tensor) else list(steps)
        if len(step_list) != n:
            raise ValueError(f"steps: expected {n} tensors, got {len(step_list)}")
    counters = list(step_list) if step_list is not None else []
    if schedule_step is not None:
        counters.append(schedule_step)
    if counters:
        step_code = _STEP_DTYPES.get(counters[0].dtype)
        for i, s in enumerate(counters):
            if not isinstance(s, torch.Tensor) or s.device != device or s.numel() != 1:
                raise TypeError(f"steps[{i}] must be a one-element tensor on {device}")
            if _STEP_DTYPES.get(s.dtype) != step_code or step_code is None:
                raise TypeError(f"steps[{i}]: every counter must have one dtype of "
                                "float32/float64/int32/int64")
    prep = _Prepared()
    prep.device = device
    prep.index = device.index
    prep.step_code = step_code
    # each distinct counter once (a counter shared by all tensors advances by one)
    prep.increment = None
    if increment and counters:
        prep.increment = list(dict.fromkeys(s.data_ptr() for s in counters))
    prep.buckets = []
    for code, idx in groups.items():
        extra = {} if first is None else {"first": [bool(first[i]) for i in idx]}
        prep.buckets.append((
            code, idx, len(idx) == n, [params[i].numel() for i in idx],
            [None if lst is None else [lst[i].data_ptr() for i in idx] for lst in roles],
            None if step_list is None else [step_list[i].data_ptr() for i in idx], extra,
        ))
    return prep


def _scalars(device, grad_scale, found_inf, schedule_step, schedules):
    """The launch arguments read on the device besides the lists, validated."""
    out = {"grad_scale": _scalar_tensor(grad_scale, "grad_scale", device),
           "found_inf": _scalar_tensor(found_inf, "found_inf", device),
           "schedule_step": 0 if schedule_step is None else schedule_step.data_ptr()}
    for k, s in schedules.items():
        out[k] = _encoding(s, device)[0]
    return out


def _launch(fn, prep, grads, scalars, hyper):
    """One launch per dtype of `prep`'s lists; grads: the grads' addresses (all tensors,
    in order), or None for those `prep` was made with."""
    inc = prep.increment
    stream = _stream(prep.index)
    for code, idx, whole, numel, addrs, steps, extra in prep.buckets:
        if grads is not None:
            addrs = addrs.copy()
            addrs[1] = grads if whole else [grads[i] for i in idx]
        fn(code, numel, *addrs, **extra, **hyper, **scalars, device=prep.index, stream=stream,
           step_dtype=prep.step_code, steps=steps, increment=inc)
        inc = None  # counters advance once, before the first dtype's update


def _run(fn, role_names, roles, *, steps, schedule_step, increment, grad_scale, found_inf,
         schedules, first=None, **hyper):
    _require()
    prep = _prepare(role_names, roles, steps=steps, schedule_step=schedule_step,
                    increment=increment, first=first)
    if prep is not None:
        scalars = _scalars(prep.device, grad_scale, found_inf, schedule_step, schedules)
        _launch(fn, prep, None, scalars, hyper)


def _first_list(first, n):
    if isinstance(first, bool):
        return [first] * n
    first = list(first)
    if len(first) != n:
        raise ValueError(f"first_step: expected {n} flags, got {len(first)}")
    return first


def sgd(params, grads, momentum_buffers=None, *, lr, momentum=0.0, dampening=0.0,
        nesterov=False, weight_decay=0.0, maximize=False, first_step=False, lr_schedule=None,
        momentum_schedule=None, steps=None, schedule_step=None, increment=True,
        grad_scale=None, found_inf=None):
    """torch.optim.SGD's update. first_step (a bool or one per tensor): the momentum
    buffer is new and becomes the gradient (torch's first step); its old content is
    not read. A schedule needs a counter: ``steps`` or ``schedule_step``."""
    params, grads = _as_list(params, "params"), _as_list(grads, "grads")
    bufs = _as_list(momentum_buffers, "momentum_buffers")
    if (lr_schedule is not None or momentum_schedule is not None) and steps is None and schedule_step is None:
        raise ValueError("a schedule needs a device counter: pass steps or schedule_step")
    _run(_C_cuda.sgd if _C_cuda else None, ("params", "grads", "momentum_buffers"),
         [params, grads, bufs], steps=steps, schedule_step=schedule_step, increment=increment,
         grad_scale=grad_scale, found_inf=found_inf,
         schedules={"lr_schedule": lr_schedule, "momentum_schedule": momentum_schedule},
         first=_first_list(first_step, len(params)), lr=float(lr), momentum=float(momentum),
         dampening=float(dampening), nesterov=bool(nesterov), weight_decay=float(weight_decay),
         maximize=bool(maximize))


def adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, steps, lr,
         beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
         amsgrad=False, maximize=False, lr_schedule=None, beta1_schedule=None,
         schedule_step=None, increment=True, grad_scale=None, found_inf=None):
    """torch.optim.Adam's (AdamW's with decoupled_weight_decay=True) update; the bias
    corrections use each tensor's step."""
    _run(_C_cuda.adam if _C_cuda else None,
         ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
         [_as_list(params, "params"), _as_list(grads, "grads"), _as_list(exp_avgs, "exp_avgs"),
          _as_list(exp_avg_sqs, "exp_avg_sqs"),
          _as_list(max_exp_avg_sqs, "max_exp_avg_sqs") if amsgrad else None],
         steps=steps, schedule_step=schedule_step, increment=increment, grad_scale=grad_scale,
         found_inf=found_inf, schedules={"lr_schedule": lr_schedule, "beta1_schedule": beta1_schedule},
         lr=float(lr), beta1=float(beta1), beta2=float(beta2), eps=float(eps),
         weight_decay=float(weight_decay), decoupled_weight_decay=bool(decoupled_weight_decay),
         amsgrad=bool(amsgrad), maximize=bool(maximize))


def rmsprop(params, grads, square_avgs, *, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
            momentum=0.0, momentum_buffers=None, centered=False, grad_avgs=None,
            maximize=False, first_step=False, lr_schedule=None, momentum_schedule=None,
            steps=None, schedule_step=None, increment=True, grad_scale=None, found_inf=None):
    """torch.optim.RMSprop's update (first_step: the momentum buffer's history is zero)."""
    params = _as_list(params, "params")
    use_momentum = momentum > 0 or momentum_schedule is not None
    if (lr_schedule is not None or momentum_schedule is not None) and steps is None and schedule_step is None:
        raise ValueError("a schedule needs a device counter: pass steps or schedule_step")
    _run(_C_cuda.rmsprop if _C_cuda else None,
         ("params", "grads", "square_avgs", "grad_avgs", "momentum_buffers"),
         [params, _as_list(grads, "grads"), _as_list(square_avgs, "square_avgs"),
          _as_list(grad_avgs, "grad_avgs") if centered else None,
          _as_list(momentum_buffers, "momentum_buffers") if use_momentum else None],
         steps=steps, schedule_step=schedule_step, increment=increment, grad_scale=grad_scale,
         found_inf=found_inf,
         schedules={"lr_schedule": lr_schedule, "momentum_schedule": momentum_schedule},
         first=_first_list(first_step, len(params)), lr=float(lr), alpha=float(alpha),
         eps=float(eps), weight_decay=float(weight_decay), momentum=float(momentum),
         centered=bool(centered), maximize=bool(maximize))


def adagrad(params, grads, state_sums, *, steps, lr, lr_decay=0.0, weight_decay=0.0,
            eps=1e-10, maximize=False, lr_schedule=None, schedule_step=None, increment=True,
            grad_scale=None, found_inf=None):
    """torch.optim.Adagrad's update: clr = lr / (1 + (step - 1) * lr_decay)."""
    _run(_C_cuda.adagrad if _C_cuda else None, ("params", "grads", "state_sums"),
         [_as_list(params, "params"), _as_list(grads, "grads"), _as_list(state_sums, "state_sums")],
         steps=steps, schedule_step=schedule_step, increment=increment, grad_scale=grad_scale,
         found_inf=found_inf, schedules={"lr_schedule": lr_schedule}, lr=float(lr),
         lr_decay=float(lr_decay), weight_decay=float(weight_decay), eps=float(eps),
         maximize=bool(maximize))


def copy_(dst, src):
    """dst.copy_(src) by fastlr's copy kernel (the benchmark's bandwidth probe): same
    device, contiguous, a multiple of 16 bytes, 16-byte aligned."""
    _require()
    nbytes = src.numel() * src.element_size()
    if dst.numel() * dst.element_size() != nbytes or dst.device != src.device:
        raise ValueError("dst and src must have the same size and device")
    _C_cuda.copy(src.device.index, _stream(src.device.index),
                 dst.data_ptr(), src.data_ptr(), nbytes)
    return dst


def schedule_values(schedule, t):
    """schedule(t) for an int64 CUDA tensor t, evaluated by the kernels' device code."""
    _require()
    t = t.to(torch.int64).contiguous()
    out = torch.empty(t.shape, dtype=torch.float64, device=t.device)
    ptr, _ = _encoding(schedule, t.device)
    _C_cuda.schedule_values(t.device.index, _stream(t.device.index),
                            ptr, t.data_ptr(), out.data_ptr(), t.numel())
    return out
