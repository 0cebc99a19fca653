"""Precision options of fastlr.optim: fp32 master weights, the storage dtype of the state,
stochastic rounding (issue #12).

The options live in the param group under ``master_weights``, ``state_dtype``,
``stochastic_rounding`` and ``seed``, and only when they differ from the defaults, so a
default optimizer's groups and state_dict stay exactly torch's. SGD keeps the count of its
stochastically rounded updates under ``sr_t`` (torch's SGD has no per-param step, and the
random bits are keyed by the step).

A group with any option set is updated here: one fused kernel call per (param dtype, grad
dtype, step) bucket reads the grads, updates the master (or the param) and the state in
float32, and stores every 16-bit destination rounded to nearest or stochastically.
"""
from __future__ import annotations

import itertools
import numbers
import operator

import numpy as np
import torch

from .. import _quant8
from . import _quant8_state
from ._quant8_state import EIGHT_BIT  # block-wise 8-bit state (issue #13), fastlr's encoding
from ._base import _Bucket, _local_grad

_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_nbytes = operator.attrgetter("nbytes")
_dtype = operator.attrgetter("dtype")
_step_of = operator.itemgetter("step")
_grad_of = operator.attrgetter("grad")
_is_not = operator.is_not
_NONE = itertools.repeat(None)

OPTIONS = ("master_weights", "state_dtype", "stochastic_rounding", "seed")
_LOW = (torch.bfloat16, torch.float16)
# float16 state is not offered: its range is too narrow for exp_avg_sq (g² of 1e-4 underflows)
_STATE_DTYPES = (torch.float32, torch.bfloat16)
_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------- options ---
def defaults(master_weights=False, state_dtype=None, stochastic_rounding=False, seed=0):
    """The group keys for these options (only those that differ from the defaults),
    validated: TypeError/ValueError naming the argument."""
    out = {}
    check_values("", master_weights, state_dtype, stochastic_rounding, seed)
    if master_weights:
        out["master_weights"] = True
    if state_dtype is not None:
        out["state_dtype"] = state_dtype
    if stochastic_rounding:
        out["stochastic_rounding"] = True
    if seed != 0:
        out["seed"] = int(seed)
    return out


def check_values(where, master_weights, state_dtype, stochastic_rounding, seed):
    if not isinstance(master_weights, bool):
        raise TypeError(f"{where}master_weights must be a bool, got {type(master_weights).__name__}")
    if state_dtype is not None and not (
        (isinstance(state_dtype, torch.dtype) and state_dtype in _STATE_DTYPES)
        or (isinstance(state_dtype, str) and state_dtype == EIGHT_BIT)
    ):
        raise TypeError(
            f"{where}state_dtype must be None, torch.float32, torch.bfloat16 or \"8bit\", "
            f"got {state_dtype!r}"
        )
    if not isinstance(stochastic_rounding, bool):
        raise TypeError(
            f"{where}stochastic_rounding must be a bool, got {type(stochastic_rounding).__name__}"
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{where}seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed <= _MASK64:
        raise ValueError(f"{where}seed must be in [0, 2**64), got {seed}")


def check_group(name, group, kind=None):
    """Validates a group's options against its params (before the group is added)."""
    where = f"fastlr.optim.{name}: "
    check_values(
        where, group.get("master_weights", False), group.get("state_dtype"),
        group.get("stochastic_rounding", False), group.get("seed", 0),
    )
    if "sr_t" in group:
        t = group["sr_t"]
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t <= 2**53:
            raise ValueError(f"{where}sr_t must be an int in [0, 2**53], got {t!r}")
    if not active(group):
        return
    sdt = group.get("state_dtype")
    for i, p in enumerate(group["params"]):
        if p.is_complex():
            raise TypeError(
                f"{where}params[{i}] is complex ({p.dtype}); master_weights, state_dtype and "
                "stochastic_rounding support real params only"
            )
        if p.dtype == torch.float64 and sdt is not None:
            raise TypeError(
                f"{where}state_dtype={sdt} with the float64 params[{i}]: the state of a float64 "
                "param stays float64 (pass state_dtype=None, or put it in its own param group)"
            )
        if p.device.type != "cpu":
            raise NotImplementedError(
                f"{where}params[{i}] is on {p.device}: master_weights, state_dtype and "
                "stochastic_rounding are implemented for CPU params"
            )
    if sdt == EIGHT_BIT:
        _quant8_state.check_group(where, kind, group)


def _option_text(sdt):
    return '"8bit"' if sdt == EIGHT_BIT else str(sdt)


def active(group):
    return bool(
        group.get("master_weights") or group.get("state_dtype") is not None
        or group.get("stochastic_rounding")
    )


def uses_master(group, p):
    return bool(group.get("master_weights")) and p.dtype in _LOW


def state_dtype(group, p):
    """Storage dtype of p's per-element state: the option, else torch's layout (the dtype of
    the tensor being updated: float32 when p has a master copy). With state_dtype="8bit":
    "8bit" for tensors of at least 4096 elements, float32 for smaller ones."""
    sdt = group.get("state_dtype")
    if sdt == EIGHT_BIT:
        return _quant8_state.storage(p)
    if sdt is not None:
        return sdt
    return torch.float32 if uses_master(group, p) else p.dtype


# ------------------------------------------------------------------ step ---
def step_group(opt, group, gs, grad_scale):
    """One update of a group with precision options (CPU params)."""
    roles = opt._roles(group)
    if _cached_step(opt, group, (roles, _options(group)), gs):
        return
    name = type(opt).__name__
    first_id = _first_tensor_id(opt, group)
    sr = bool(group.get("stochastic_rounding"))
    seed = int(group.get("seed", 0))
    sdt = group.get("state_dtype")
    items = []
    seen = set()
    for j, p in enumerate(group["params"]):
        g = p.grad
        if g is None or id(p) in seen:
            continue  # (a param listed twice is updated once)
        seen.add(id(p))
        if g.is_sparse:
            raise NotImplementedError(
                f"fastlr.optim.{name}: sparse gradients with master_weights, state_dtype or "
                "stochastic_rounding are not supported"
            )
        if p.device.type != "cpu":
            raise NotImplementedError(
                f"fastlr.optim.{name}: params[{j}] is on {p.device}: master_weights, state_dtype "
                "and stochastic_rounding are implemented for CPU params"
            )
        if sdt is not None and p.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            # (add_param_group refuses it; a param appended to group["params"] comes here)
            raise TypeError(
                f"fastlr.optim.{name}: state_dtype={_option_text(sdt)} with the {p.dtype} "
                f"params[{j}]: the option is for float32, bfloat16 and float16 params (put it in a group "
                "without the option)"
            )
        pl = getattr(p, "_local_tensor", p)
        gl = _local_grad(g, p)
        master = uses_master(group, p)
        if gl.shape != pl.shape or not (gl.dtype == pl.dtype or (master and gl.dtype == torch.float32)):
            raise RuntimeError(
                f"fastlr.optim.{name}: the grad of params[{j}] has shape {tuple(gl.shape)} and "
                f"dtype {gl.dtype}, but the param has shape {tuple(pl.shape)} and dtype {pl.dtype}"
                + (" (or float32 with master weights)" if master else "")
            )
        items.append((p, pl, gl, j))
    if not items:
        return
    # check every state tensor before any is written
    prepared = []
    for p, pl, gl, j in items:
        st = opt.state[p]
        if len(st) == 0 and (roles or opt._has_step or uses_master(group, p)):
            opt._init_state(group, p, st)
        sdt = state_dtype(group, p)
        q8 = sdt == EIGHT_BIT
        tensors = []
        first = False
        for role in roles:
            if q8:
                t = _quant8_state.role_tensors(name, j, st, role, p, opt._kind)
                if t is None:  # SGD's first momentum step
                    first = True
            else:
                t = st.get(role)
                if t is None and opt._kind == "sgd":
                    first = True
                elif t is None:
                    raise KeyError(role)
                else:
                    t = getattr(t, "_local_tensor", t)
                    if t.shape != pl.shape or t.dtype != sdt:
                        raise RuntimeError(
                            f"fastlr.optim.{name}: state['{role}'] of params[{j}] has shape "
                            f"{tuple(t.shape)} and dtype {t.dtype}; expected {tuple(pl.shape)}, {sdt}"
                        )
            tensors.append(t)
        m = None
        if uses_master(group, p):
            m = st.get("master_param")
            if m is not None:
                m = getattr(m, "_local_tensor", m)
                if m.shape != pl.shape or m.dtype != torch.float32:
                    raise RuntimeError(
                        f"fastlr.optim.{name}: state['master_param'] of params[{j}] has shape "
                        f"{tuple(m.shape)} and dtype {m.dtype}; expected {tuple(pl.shape)}, float32"
                    )
        prepared.append((p, pl, gl, j, st, tensors, m, first, q8))
    sgd_t = group.get("sr_t", 0)
    buckets = {}
    for k, entry in enumerate(prepared):
        pl, gl, st = entry[1], entry[2], entry[4]
        step = float(st["step"]) + 1.0 if opt._has_step else None
        buckets.setdefault((pl.dtype, gl.dtype, step, entry[7], entry[8]), []).append(k)
    calls = [_run_bucket(opt, group, roles, key, [prepared[k] for k in members], members, gs, sr, seed,
                         first_id, sgd_t)
             for key, members in buckets.items()]
    _remember(opt, group, (roles, _options(group)), calls, prepared)
    if opt._kind == "sgd" and sr:
        group["sr_t"] = sgd_t + 1
    if opt._has_step:
        torch._foreach_add_([entry[4]["step"] for entry in prepared], 1.0)
    # the kernel wrote through raw pointers: tell autograd, as torch's in-place updates do
    bump = [entry[0] for entry in prepared if not entry[0].is_inference()]
    if bump:
        torch.autograd.graph.increment_version(bump)


class _Call:
    """One fused kernel call of a group's step, as the cached plan repeats it: the members
    (positions in the step's list of updated params), their addresses and the options."""

    __slots__ = ("b", "members", "p_addr", "checks", "addrs", "precision", "g_dtype", "q8", "q8_args")

    def run(self, opt, group, g_addr, step, gs):
        kind = opt._kind
        # SGD's and RMSprop's rounding key takes the completed updates
        t = group.get("sr_t", 0) if kind == "sgd" else int(step) - 1 if kind == "rmsprop" else None
        if self.q8:
            _quant8_state.call(kind, group, self.b, self.p_addr, g_addr, self.q8_args, step, gs, t)
        elif t is None:
            opt._call(group, self.b, (self.p_addr, g_addr, *self.addrs), step, gs, **self.precision)
        else:
            opt._call(group, self.b, (self.p_addr, g_addr, *self.addrs), step, gs, t=t, **self.precision)


def _run_bucket(opt, group, roles, key, entries, members, gs, sr, seed, first_id, sgd_t):
    """One fused kernel call: the params (and masters) of one dtype and step count, their
    grads, and the state in its storage dtype. Tensors the kernel cannot walk flat go
    through contiguous temporaries of the same dtype, copied back after the call.
    Returns the call for the cached plan, or None when it cannot be repeated as is."""
    p_dtype, g_dtype, step, first, q8 = key
    b = _Bucket(_CODES[p_dtype], first)
    p_addr, g_addr, m_addr, ids, r_addr = [], [], [], [], [[] for _ in roles]
    s_addr = [[] for _ in roles]
    copy_back, keep = [], []

    def flat(t):
        if t.is_contiguous():
            return t
        c = t.contiguous()
        copy_back.append((t, c))
        return c

    master = uses_master(group, entries[0][0])
    sdt = state_dtype(group, entries[0][0])
    for p, pl, gl, j, st, tensors, m, _, _ in entries:
        if master and m is None:  # created on the first update from the param
            m = pl.detach().to(torch.float32, copy=True).contiguous()
            st["master_param"] = m if pl is p else _like_dtensor(p, m)
        pm = flat(pl)
        g = gl if gl.is_contiguous() else gl.contiguous()
        if g is not gl:
            keep.append(g)
        p_addr.append(pm.data_ptr())
        g_addr.append(g.data_ptr())
        b.numel.append(pm.numel())
        ids.append(first_id + j)
        if master:
            m_addr.append(flat(m).data_ptr())
        for r, (role, t) in enumerate(zip(roles, tensors)):
            if q8:
                if t is None:  # SGD's first momentum step: the kernel starts the buffer
                    t = _quant8_state.new_role(st, role, p)
                r_addr[r].append(flat(t[0]).data_ptr())
                s_addr[r].append(t[1].data_ptr())
                continue
            if t is None:  # SGD's first momentum buffer: the kernel writes the grad into it
                t = torch.zeros(pl.shape, dtype=sdt)
                st[role] = t if pl is p else _like_dtensor(p, t)
            r_addr[r].append(flat(t).data_ptr())
    precision = dict(
        grad_dtype=_CODES[g_dtype], state_dtype=_CODES[torch.float32 if q8 else sdt],
        masters=m_addr if master else None, stochastic_rounding=sr, seed=seed, tensor_ids=ids,
    )
    call = _Call()
    call.b, call.members, call.p_addr, call.addrs = b, members, p_addr, r_addr
    call.precision, call.g_dtype, call.q8 = precision, g_dtype, q8
    call.q8_args = _quant8_state.call_args(roles, r_addr, s_addr, precision) if q8 else None
    call.checks = [(operator.itemgetter(role + "_codes" if q8 else role), addrs)
                   for role, addrs in zip(roles, r_addr)]
    if q8:
        call.checks += [(operator.itemgetter(role + "_scale"), addrs) for role, addrs in zip(roles, s_addr)]
    if master:
        call.checks.append((operator.itemgetter("master_param"), m_addr))
    call.run(opt, group, g_addr, step, gs)
    for dst, src in copy_back:
        dst.copy_(src)
    if copy_back or keep or first or any(e[1] is not e[0] for e in entries):
        return None  # temporaries, SGD's first step or DTensor shards: not worth caching
    return call


# ------------------------------------------------------------ cached steps ---
# Also the cached step of fastlr.optim.Adam8bit / AdamW8bit (adam8bit.py): an optimizer
# with ``_fastlr_plans``, a versioned ``state`` (_base._State), ``_kind`` and ``_has_step``,
# whose calls have ``run``, ``members``, ``checks`` and ``g_dtype`` as _Call's.
class _Plan:
    """What the last step of a group looked like, while nothing changed: one kernel call
    per bucket (dtype, storage) over contiguous, local tensors of one step count."""

    __slots__ = ("group", "params_list", "mask", "version", "key", "gidx", "params", "p_addrs", "calls",
                 "checks", "states", "steps", "step_buf", "bump", "nbytes", "g_dtypes", "sr_t")


def _options(group):
    return tuple(group.get(k) for k in OPTIONS)


def _remember(opt, group, key, calls, prepared):
    """Caches the step just taken (``calls`` over ``prepared``'s (p, pl, gl, j, st, ...)
    entries) as the plan of the group's next steps; ``key`` is what else the calls depend
    on (the roles and options): a step with another key takes the general path."""
    plan_key = ("precision", id(group))
    opt._fastlr_plans.pop(plan_key, None)
    if any(c is None for c in calls):
        return
    if opt._has_step and len({float(e[4]["step"]) for e in prepared}) != 1:
        return  # buckets of different step counts: the general path
    plan = _Plan()
    plan.group = group
    plan.params_list = group["params"]
    plan.mask = [p.grad is not None for p in group["params"]]
    plan.version = opt.state.version
    plan.key = key
    plan.params = [e[0] for e in prepared]
    plan.p_addrs = [e[0].data_ptr() for e in prepared]
    states = [e[4] for e in prepared]
    grads = [e[2] for e in prepared]
    # the calls' members in call order, so each step checks and reads them with flat maps
    order = [k for c in calls for k in c.members]
    plan.gidx = [prepared[k][3] for k in order]
    plan.states = [states[k] for k in order]
    plan.nbytes = [grads[k].nbytes for k in order]
    plan.g_dtypes = [c.g_dtype for c in calls for _ in c.members]
    plan.calls = []
    start = 0
    for c in calls:
        plan.calls.append((c, start, start + len(c.members)))
        start += len(c.members)
    # state tensors by address: (getter, the call's states, their addresses)
    plan.checks = [(getter, plan.states[lo:hi], addrs) for c, lo, hi in plan.calls for getter, addrs in c.checks]
    plan.steps = plan.step_buf = None
    if opt._has_step:
        # torch's 0-dim step tensors, as views into one buffer: one add_ advances them all
        plan.step_buf = torch.tensor([float(s["step"]) for s in states], dtype=states[0]["step"].dtype)
        views = list(plan.step_buf.unbind())
        for s, view in zip(states, views):
            s["step"] = view
        plan.steps = [views[k] for k in order]
    plan.bump = [p for p in plan.params if not p.is_inference()]
    plan.sr_t = opt._kind == "sgd" and bool(group.get("stochastic_rounding"))
    opt._fastlr_plans[plan_key] = plan


def _cached_step(opt, group, key, gs):
    """The step through the plan of the last one when every cached fact still holds (the
    checks of fastlr.optim's own plans); False to take the general path."""
    plan = opt._fastlr_plans.get(("precision", id(group)))
    if plan is None:
        return False
    params = group["params"]
    grads_all = list(map(_grad_of, params))
    if (
        plan.group is not group or plan.params_list is not params
        or list(map(_is_not, grads_all, _NONE)) != plan.mask
        or plan.version != opt.state.version or plan.key != key
        or list(map(_data_ptr, plan.params)) != plan.p_addrs
    ):
        return False
    grads = [grads_all[j] for j in plan.gidx]
    states = plan.states
    try:
        g_addrs = list(map(_data_ptr, grads))  # (a sparse grad has none)
        for getter, call_states, addrs in plan.checks:
            if list(map(_data_ptr, map(getter, call_states))) != addrs:
                return False
    except (RuntimeError, KeyError):
        return False
    if (list(map(_nbytes, grads)) != plan.nbytes or list(map(_dtype, grads)) != plan.g_dtypes
            or not all(map(_is_contiguous, grads))):
        return False
    step = None
    if plan.steps is not None:
        if not all(map(operator.is_, map(_step_of, states), plan.steps)):
            return False
        values = plan.step_buf.tolist()
        if values.count(values[0]) != len(values):
            return False
        step = values[0] + 1.0
    for call, lo, hi in plan.calls:
        call.run(opt, group, g_addrs[lo:hi], step, gs)
    if plan.sr_t:
        group["sr_t"] = group.get("sr_t", 0) + 1
    if plan.steps is not None:
        plan.step_buf.add_(1.0)
    if plan.bump:
        torch.autograd.graph.increment_version(plan.bump)
    return True


def _like_dtensor(p, local):
    """A DTensor with p's mesh and placements around the local shard (FSDP2 state)."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, p.device_mesh, p.placements, run_check=False,
                              shape=p.shape, stride=p.stride())


def _first_tensor_id(opt, group):
    n = 0
    for g in opt.param_groups:
        if g is group:
            return n
        n += len(g["params"])
    return n


# ------------------------------------------------------------ state dicts ---
def _torch_state_dtype(x):
    """The NumPy face saves state_dtype by name."""
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(x, x) if isinstance(x, str) else x


def loaded_options(saved, current):
    """The options a saved group loads with: its own when it has any (the ones left out are
    the defaults), else, for torch.optim's layout, those of the optimizer's group."""
    if any(k in saved for k in OPTIONS):
        return {k: saved[k] for k in OPTIONS if k in saved}
    return {k: current[k] for k in OPTIONS if k in current}


def keep_options(opt, state_dict):
    """A saved group without any option (torch.optim's layout) takes the optimizer's group's
    options: the state converts to them. A group saved with options restores exactly those,
    the ones left out being the defaults (seed 0, state_dtype None, ...): filling them from
    the optimizer would resume another run. The saved options are checked against the
    optimizer's params before anything is loaded."""
    name = f"{type(opt).__name__}.load_state_dict: param_groups"
    groups, changed = [], False
    for g, (saved, current) in enumerate(zip(state_dict["param_groups"], opt.param_groups)):
        options = loaded_options(saved, current)
        if any(k not in saved for k in options):
            saved = {**saved, **options}
            changed = True
        if isinstance(saved.get("state_dtype"), str):
            saved = {**saved, "state_dtype": _torch_state_dtype(saved["state_dtype"])}
            changed = True
        check_group(f"{name}[{g}]", {**saved, "params": current["params"]}, opt._kind)
        groups.append(saved)
    if changed:
        state_dict = {**state_dict, "param_groups": groups}
    return state_dict


def convert_loaded_state(opt, state_dict):
    """After torch's load_state_dict (which casts every state tensor to its param's dtype):
    state of groups with options is re-read from the saved tensors in its storage dtype,
    masters are kept in float32, or created from the param when the dict has none."""
    saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
    params = [(p, group) for group in opt.param_groups for p in group["params"]]
    saved_state = state_dict["state"]
    source = {pid: _quant8_state.source_of(g) for g in state_dict["param_groups"] for pid in g["params"]}
    for group in opt.param_groups:  # an Adam8bit dict's keys: read below, not kept
        for key in _quant8_state.SOURCE_KEYS:
            group.pop(key, None)
    for pid, (p, group) in zip(saved_ids, params):
        saved = saved_state.get(pid)
        if not saved or p not in opt.state:
            continue
        st = opt.state[p]
        converted = ()
        if group.get("state_dtype") == EIGHT_BIT or any(k.endswith("_codes") for k in saved):
            # 8-bit storage here or in the saved dict: converted role by role
            roles = opt._roles(group)
            q8 = group.get("state_dtype") == EIGHT_BIT and _quant8_state.quantized(p)
            if _quant8_state.is_dtensor(p):
                converted = _quant8_state.keep_sharded(st, saved, roles, q8)  # (checked before the load)
            else:
                _quant8_state.convert_loaded(st, saved, p, roles, (_quant8.BLOCK_SIZE, "sqrt") if q8 else None,
                                             state_dtype(group, p) if active(group) else p.dtype, source[pid])
                converted = {r + suffix for r in roles for suffix in ("", "_codes", "_scale")}
        if not active(group):
            st.pop("master_param", None)  # loaded without master weights: the param is it
            continue
        step = st.get("step")
        if torch.is_tensor(step) and step.dtype != torch.float32:  # (an int step of the NumPy face)
            st["step"] = torch.tensor(float(step), dtype=torch.float32)
        sdt = state_dtype(group, p)
        for key, v in saved.items():
            if key == "step" or not torch.is_tensor(v) or key in converted:
                continue
            if key == "master_param":
                if uses_master(group, p):
                    st[key] = v.to(device=p.device, dtype=torch.float32)
                else:
                    st.pop(key, None)
            else:
                st[key] = v.to(device=p.device, dtype=sdt)
        if uses_master(group, p) and "master_param" not in st:
            st["master_param"] = p.detach().to(torch.float32, copy=True)


def _tensors(entry):
    """A fastlr.numpy per-param state as torch.optim keeps it: arrays as tensors (ml_dtypes'
    bfloat16 as torch.bfloat16), the int step as a 0-dim float32 tensor."""
    out = {}
    for key, v in entry.items():
        if isinstance(v, np.ndarray):
            v = (torch.from_numpy(v.astype(np.float32)).bfloat16() if v.dtype.name == "bfloat16"
                 else torch.from_numpy(np.array(v, copy=True)))
        elif key == "step" and isinstance(v, numbers.Real) and not isinstance(v, bool):
            v = torch.tensor(float(v), dtype=torch.float32)
        out[key] = v
    return out


def to_torch_state_dict(state_dict, params=None):
    """Turns a fastlr.optim state_dict saved with ``master_weights`` / ``state_dtype`` /
    ``stochastic_rounding`` into one that ``torch.optim.X.load_state_dict`` loads and
    continues from: 16-bit state tensors become float32, 8-bit ones (``<role>_codes`` and
    ``<role>_scale``) float32 ``<role>``, ``master_param`` and fastlr's group keys are
    dropped. Pass ``params`` (the params the torch optimizer will update, in the
    optimizer's order: e.g. the float32 copies of the classic recipe, or the bf16 model
    itself) to copy each master into its param, rounded to the param's dtype.

    The input is not modified; tensors that need no conversion are shared. A
    ``fastlr.numpy`` state_dict (arrays, an int step) converts too.

    >>> sd = to_torch_state_dict(fastlr_opt.state_dict(), params=model32.parameters())  # doctest: +SKIP
    >>> torch.optim.AdamW(model32.parameters()).load_state_dict(sd)  # doctest: +SKIP
    """
    if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
        raise TypeError("to_torch_state_dict: expected an optimizer state_dict (a dict with "
                        "'state' and 'param_groups')")
    if any(isinstance(v, np.ndarray) for s in state_dict["state"].values() for v in s.values()):
        state_dict = {**state_dict, "state": {pid: _tensors(s) for pid, s in state_dict["state"].items()}}
    ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
    targets = None
    if params is not None:
        targets = list(params)
        if len(targets) != len(ids):
            raise ValueError(f"to_torch_state_dict: params has {len(targets)} tensors; the "
                             f"state_dict's param_groups list {len(ids)}")
        for i, (pid, t) in enumerate(zip(ids, targets)):
            m = state_dict["state"].get(pid, {}).get("master_param")
            if not torch.is_tensor(t):
                raise TypeError(f"to_torch_state_dict: params[{i}] must be a tensor, got {type(t).__name__}")
            if m is not None and tuple(m.shape) != tuple(t.shape):
                raise ValueError(f"to_torch_state_dict: params[{i}] has shape {tuple(t.shape)}, its "
                                 f"master_param {tuple(m.shape)}")
    position = {pid: i for i, pid in enumerate(ids)}
    source = {pid: _quant8_state.source_of(g) for g in state_dict["param_groups"] for pid in g["params"]}
    state, masters = {}, []
    for pid, s in state_dict["state"].items():
        if any(key.endswith("_codes") for key in s):  # 8-bit state
            src = source.get(pid, (_quant8.BLOCK_SIZE, "sqrt"))
            for key, v in s.items():
                role = key[: -len("_codes")] if key.endswith("_codes") else key[: -len("_scale")]
                if key.endswith(("_codes", "_scale")) and role in _quant8.ROLES:
                    codes = s.get(role + "_codes")
                    shape = codes.shape if torch.is_tensor(codes) else ()
                    _quant8_state.check_saved(f"to_torch_state_dict: state[{pid!r}]", key, v,
                                              torch.empty(shape, device="meta"), src[0])
            s = _quant8_state.dequantized(s, src)
        out = {}
        for key, v in s.items():
            if key == "master_param":
                if targets is not None:
                    masters.append((targets[position[pid]], v))
                continue
            if key != "step" and torch.is_tensor(v) and v.dtype in _LOW:
                v = v.float()
            out[key] = v
        state[pid] = out
    # the params change only once every entry has converted
    with torch.no_grad():
        for t, v in masters:
            t.copy_(v)
    groups = [{k: v for k, v in g.items() if k not in OPTIONS + ("sr_t",) + _quant8_state.SOURCE_KEYS}
              for g in state_dict["param_groups"]]
    return {"state": state, "param_groups": groups}
