"""Small stateful optimizers over lists of NumPy arrays, for code that computes its own
gradients: ``fastlr.numpy.SGD / Adam / AdamW / RMSprop / Adagrad``.

The constructors take torch.optim's keyword arguments and defaults; the state and
``state_dict()`` follow torch's layout (``{"state": {i: {...}}, "param_groups": [...]}``
with torch's state keys), so a torch.optim state_dict loads here. Each step is one
fastlr kernel call per param group (and dtype), updating the arrays in place.

``lr`` (and ``momentum`` / ``betas[0]``) may be a fastlr Schedule: the group keeps it under
``"lr_schedule"`` (``"momentum_schedule"``) with a float ``"lr_scale"`` (1.0), counts its
completed steps in ``"schedule_t"``, and after each step ``group["lr"]`` shows the value
the next update uses — the contract of ``fastlr.optim``.

>>> import numpy as np
>>> from fastlr.numpy import Adam
>>> w = np.zeros(3, np.float32)
>>> opt = Adam([w], lr=0.1)
>>> opt.step([np.ones(3, np.float32)])
>>> w
array([-0.1, -0.1, -0.1], dtype=float32)
"""
from __future__ import annotations

import copy
import math
import numbers

import numpy as np

from . import _C, _kernels, _quant8
from ._kernels import _name  # dtype.name, cached
from .schedules import Schedule

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad",
           "SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree"]

_SUPPORTED = ("float32", "float64", "float16", "bfloat16")


# ------------------------------------------------------------------ checks ---


def _is_schedule(x):
    return isinstance(x, Schedule)


def _real(x, name, *, lo=None, hi=None, hi_open=False, what="value"):
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    try:
        x = float(x)
    except OverflowError:  # an int or Fraction beyond the float range
        raise ValueError(f"Invalid {what}: {x!r} is too large for a float") from None
    if math.isnan(x) or (lo is not None and x < lo) or (hi is not None and (x > hi or (hi_open and x == hi))):
        raise ValueError(f"Invalid {what}: {x}")
    return x


def _flag(x, name):
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(x).__name__}")
    return bool(x)


def _optional_flag(x, name):
    return None if x is None else _flag(x, name)


def _param(a, where):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{where} must be a numpy.ndarray, got {type(a).__name__}")
    if _name(a.dtype) not in _SUPPORTED:
        raise TypeError(f"{where} has dtype {a.dtype}; supported: {', '.join(_SUPPORTED)}")
    if not a.dtype.isnative:
        raise TypeError(f"{where} has non-native byte order ({a.dtype.str}); "
                        "convert with a.astype(a.dtype.newbyteorder('='))")
    flags = a.flags  # (a new object at each access)
    if not flags.c_contiguous:
        raise ValueError(f"{where} must be C-contiguous (it is updated in place)")
    if not flags.writeable:
        raise ValueError(f"{where} is read-only")
    return a


_PRECISION = ("master_weights", "state_dtype", "stochastic_rounding", "seed")


def _state_dtype_name(x, where):
    """None, or "float32" / "bfloat16" from a name, a NumPy dtype (ml_dtypes' bfloat16) or a
    torch dtype (state_dicts move between the faces)."""
    if x is None:
        return None
    if isinstance(x, str) and x == "8bit":
        return x
    name = x if isinstance(x, str) else str(x).replace("torch.", "") if type(x).__module__.startswith(
        "torch") else getattr(np.dtype(x) if _is_dtype_like(x) else None, "name", None)
    if name not in ("float32", "bfloat16"):
        raise TypeError(f"{where}state_dtype must be None, float32, bfloat16 or \"8bit\", got {x!r}")
    return name


def _is_dtype_like(x):
    try:
        np.dtype(x)
    except TypeError:
        return False
    return not isinstance(x, (bool, int, float))


def _precision_defaults(master_weights, state_dtype, stochastic_rounding, seed):
    """The group keys of the precision options that differ from the defaults (fastlr.optim's
    layout)."""
    out = {"master_weights": master_weights, "state_dtype": state_dtype,
           "stochastic_rounding": stochastic_rounding, "seed": seed}
    _check_precision(out, "")
    return {k: v for k, v in out.items() if v is not None and v is not False and not (k == "seed" and v == 0)}


def _check_precision(group, where):
    """Validates (and normalises) a group's precision options in place."""
    for key in ("master_weights", "stochastic_rounding"):
        if key in group:
            _flag(group[key], f"{where}{key}")
    if "state_dtype" in group:
        group["state_dtype"] = _state_dtype_name(group["state_dtype"], where)
    if "seed" in group:
        seed = group["seed"]
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"{where}seed must be an int, got {type(seed).__name__}")
        if not 0 <= seed < 2**64:
            raise ValueError(f"{where}seed must be in [0, 2**64), got {seed}")
    if "sr_t" in group:
        t = group["sr_t"]
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral) or not 0 <= t <= 2**53:
            raise ValueError(f"{where}sr_t must be an int in [0, 2**53], got {t!r}")


def _check_precision_params(group, params, where, eight_bit_roles=()):
    if group.get("state_dtype") is not None:
        for i, p in enumerate(params):
            if p.dtype.name == "float64":
                raise TypeError(f"{where}: state_dtype={group['state_dtype']} with the float64 "
                                f"params[{i}]: the state of a float64 param stays float64")
    if group.get("state_dtype") == "8bit":
        if not eight_bit_roles:
            raise NotImplementedError(f"{where}: state_dtype=\"8bit\" is implemented for SGD, Adam, AdamW, "
                                      "RMSprop and Adagrad (this optimizer has no 8-bit kernel)")


# state_dtype="8bit" (fastlr.optim's layout, fastlr._quant8's encoding): tensors of at least
# 4096 elements keep <role>_codes (uint8, the param's shape) and <role>_scale (float32 per
# block of _quant8.BLOCK_SIZE); signed roles as they are, the others as their square root
def _quantized(group, p):
    return group.get("state_dtype") == "8bit" and p.size >= _quant8.MIN_QUANT8_NUMEL


def _new_8bit(p, fill=0.0):
    return _quant8.filled(p.shape, fill, _quant8.BLOCK_SIZE, False)  # (a fill other than 0: Adagrad's sum)


def _np_dtype(name):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _plain(v):
    """A copy of a loaded hyper-parameter, 1-element torch tensors (torch's tensor lr or
    betas) as floats."""
    if hasattr(v, "detach") and v.numel() == 1:
        return float(v)
    if isinstance(v, tuple):
        return tuple(_plain(x) for x in v)
    return copy.copy(v)


def _param_groups(params):
    """The constructor's `params` (an ndarray, a list of them or a list of group dicts)
    as a list of group dicts, as torch.optim reads it."""
    if isinstance(params, np.ndarray):
        params = [params]
    elif isinstance(params, dict) or not hasattr(params, "__iter__"):
        raise TypeError(f"params must be an ndarray, a list of them or a list of dicts, got {type(params).__name__}")
    groups = list(params)
    if not groups:
        raise ValueError("optimizer got an empty parameter list")
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    return groups


class _Optimizer:
    """Param groups, state and the step driver; subclasses name the kernel and state."""

    _momentum_key = None  # "momentum" or "betas": the value a momentum schedule drives

    def __init__(self, params, defaults):
        if defaults.get("differentiable"):
            raise NotImplementedError(f"fastlr.numpy.{type(self).__name__} does not support differentiable=True")
        self.defaults = defaults
        self.param_groups = []
        self.state = {}
        for g in _param_groups(params):
            self.add_param_group(g)

    # -- groups -------------------------------------------------------------------------
    @property
    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def add_param_group(self, param_group):
        """Adds a group ({"params": [...], hyper-parameters overriding the defaults})."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        if isinstance(params, np.ndarray):
            params = [params]
        if not isinstance(params, (list, tuple)):
            raise TypeError("param_group['params'] must be an ndarray or a list of them")
        first = len(self._params)
        params = [_param(p, f"params[{first + i}]") for i, p in enumerate(params)]
        everything = self._params + params
        spans = sorted((a, a + p.nbytes, i) for i, (p, a) in enumerate(zip(everything, _C.data_ptrs(everything)))
                       if p.size)
        for (_, end, i), (start, _, j) in zip(spans, spans[1:]):
            if start < end:
                raise ValueError(f"params[{max(i, j)}] shares memory with params[{min(i, j)}]: "
                                 "some parameters appear more than once")
        group = {k: v for k, v in param_group.items() if k != "params"}
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        group = self._checked_group(group, len(self.param_groups))
        _check_precision_params(group, params, f"param_groups[{len(self.param_groups)}]", self._eight_bit_roles)
        group["params"] = params
        self.param_groups.append(group)
        for i in range(first, first + len(params)):
            self.state[i] = {}
            self._init_state(i, group)

    def _checked_group(self, group, index):
        """A validated copy of a group's hyper-parameters, schedules moved to their keys."""
        group = dict(group)
        where = f"param_groups[{index}]"
        if group.get("differentiable"):
            raise NotImplementedError(f"fastlr.numpy.{type(self).__name__} does not support differentiable=True")
        for key in ("foreach", "fused"):
            _optional_flag(group.get(key), f"{where}['{key}']")
        if _is_schedule(group["lr"]):
            group["lr_schedule"] = group["lr"]
        key = self._momentum_key
        if key is not None:
            m = group[key]
            if key == "betas":
                if not isinstance(m, (tuple, list)) or len(m) != 2:
                    raise TypeError(f"{where}['betas'] must be a pair of floats")
                m = m[0]
            if _is_schedule(m):
                group["momentum_schedule"] = m
        for skey in ("lr_schedule", "momentum_schedule"):
            if skey in group and not _is_schedule(group[skey]):
                raise TypeError(f"{where}['{skey}'] must be a fastlr Schedule, got {type(group[skey]).__name__}")
        if "lr_schedule" in group or "momentum_schedule" in group:
            if "lr_schedule" in group:
                group["lr_scale"] = _real(group.get("lr_scale", 1.0), f"{where}['lr_scale']", lo=0.0,
                                          what="lr_scale")
            t = group.setdefault("schedule_t", 0)
            if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
                raise ValueError(f"{where}['schedule_t'] must be an int >= 0, got {t!r}")
            self._show_schedules(group)
        _check_precision(group, f"{where}: ")
        self._check(group, where)
        return group

    def _show_schedules(self, group):
        t = group["schedule_t"]
        if "lr_schedule" in group:
            group["lr"] = group["lr_scale"] * _C.schedule_at(group["lr_schedule"]._encoding, t)
        if "momentum_schedule" in group:
            m = _C.schedule_at(group["momentum_schedule"]._encoding, t)
            key = self._momentum_key
            group[key] = (m, group[key][1]) if key == "betas" else m

    # -- stepping -----------------------------------------------------------------------
    def step(self, grads):
        """One update of every param whose gradient is not None.

        Args:
            grads: one gradient per parameter, in the order of the params of every group
                (an ndarray alone when there is one parameter); ``None`` skips a param.
        """
        params = self._params
        if isinstance(grads, np.ndarray):
            grads = [grads]
        if not isinstance(grads, (list, tuple)):
            raise TypeError(f"grads must be a list of numpy.ndarray (or None), got {type(grads).__name__}")
        if len(grads) != len(params):
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {len(params)} params")
        checked = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is not None:
                if not isinstance(g, np.ndarray):
                    raise TypeError(f"grads[{i}] must be a numpy.ndarray or None, got {type(g).__name__}")
                if g.dtype != p.dtype and not (g.dtype == np.float32 and self._uses_master(i)):
                    raise TypeError(f"grads[{i}] has dtype {g.dtype}, but params[{i}] has dtype {p.dtype}"
                                    + (" (or float32 with master_weights)" if self._uses_master(i) else ""))
                if g.shape != p.shape:
                    raise ValueError(f"grads[{i}] has shape {g.shape}, but params[{i}] has shape {p.shape}")
                _param(p, f"params[{i}]")  # its flags may have changed since it was added
                g = np.ascontiguousarray(g)  # read only: a copy is fine
            checked.append(g)
        p_addrs = _C.data_ptrs(params)
        given = [i for i, g in enumerate(checked) if g is not None and g.size]
        g_addrs = dict(zip(given, _C.data_ptrs([checked[i] for i in given])))
        self._copy_overlapping_grads(params, p_addrs, checked, g_addrs)
        for k, group in enumerate(self.param_groups):  # users may have edited a group
            self._check(group, f"param_groups[{k}]")
        self._refuse_grads_that_are_params(p_addrs, g_addrs)
        index = 0
        for group in self.param_groups:
            n = len(group["params"])
            idx = [i for i in range(index, index + n) if checked[i] is not None]
            index += n
            if not idx:
                continue
            buckets = {}
            for i in idx:  # fastlr.optim's buckets, in its order (8-bit tensors apart)
                key = (_name(params[i].dtype), _name(checked[i].dtype), self._bucket_key(i, group),
                       _quantized(group, params[i]))
                buckets.setdefault(key, []).append(i)
            for (_, _, key, q8), members in buckets.items():
                self._precision = self._precision_kw(group, members)
                update = self._update_8bit if q8 else self._update
                update(group, key, [params[i] for i in members], [checked[i] for i in members],
                       [self.state[i] for i in members])
            if group.get("stochastic_rounding") and self._momentum_key == "momentum" and not self._has_step:
                group["sr_t"] = group.get("sr_t", 0) + 1
            if "schedule_t" in group:
                group["schedule_t"] += 1
                self._show_schedules(group)

    @staticmethod
    def _copy_overlapping_grads(params, p_addrs, grads, g_addrs):
        """Copies each grad that overlaps a param other than exactly (a shifted view would
        read values the same call already updated), so that every check the kernels make
        passes before the first group is updated. g_addrs: {index: address} of the grads
        given (non-empty)."""
        spans = sorted((a, a + p.nbytes) for p, a in zip(params, p_addrs) if p.size)
        starts = [start for start, _ in spans]
        for i, a in g_addrs.items():
            if _kernels._overlaps_inexactly(spans, starts, (a, a + grads[i].nbytes)):
                grads[i] = grads[i].copy()

    def _refuse_grads_that_are_params(self, p_addrs, g_addrs):
        """AdamW's decay writes the param before torch reads the grad: a grad that is its
        param's memory would read it decayed (the kernels refuse it; here before any group
        is updated)."""
        index = 0
        for group in self.param_groups:
            n = len(group["params"])
            if group.get("decoupled_weight_decay") and group["weight_decay"] != 0:
                for i in range(index, index + n):
                    if g_addrs.get(i) == p_addrs[i]:
                        raise ValueError(f"grads[{i}] is the memory of params[{i}]: with decoupled weight "
                                         "decay torch reads the grad after decaying the param; pass a copy")
            index += n

    def _hyper(self, group):
        """(lr, momentum-or-beta1) this update uses: the schedules' values at schedule_t."""
        if "schedule_t" in group:
            self._show_schedules(group)
        key = self._momentum_key
        mom = None if key is None else (group[key][0] if key == "betas" else group[key])
        return float(group["lr"]), None if mom is None else float(mom)

    # -- precision options --------------------------------------------------------------
    _has_step = True

    def _group_of(self, i):
        for g in self.param_groups:
            if i < len(g["params"]):
                return g
            i -= len(g["params"])
        raise IndexError(i)

    def _uses_master(self, i, group=None):
        group = group or self._group_of(i)
        return bool(group.get("master_weights")) and _name(self._params[i].dtype) in ("bfloat16", "float16")

    def _storage(self, group, p, key):
        """The dtype a state array of p is kept in (fastlr.optim's rule)."""
        if key == "master_param":
            return np.dtype(np.float32)
        name = group.get("state_dtype")
        if name == "8bit":  # (tensors below 4096 elements)
            return np.dtype(np.float32)
        if name is None:
            master = bool(group.get("master_weights")) and _name(p.dtype) in ("bfloat16", "float16")
            return np.dtype(np.float32) if master else p.dtype
        return _np_dtype(name)

    def _zeros(self, group, p, fill=0):
        return np.full(p.shape, fill, dtype=self._storage(group, p, "state"))

    def _precision_kw(self, group, members):
        """The precision keywords of one kernel call over params[members] (tensor ids: the
        params' positions, as fastlr.optim's)."""
        masters = None
        if self._uses_master(members[0], group):
            masters = []
            for i in members:
                m = self.state[i].get("master_param")
                if m is None:  # created on the first update from the param
                    m = self.state[i]["master_param"] = self._params[i].astype(np.float32)
                masters.append(m)
        return {"master_params": masters, "stochastic_rounding": bool(group.get("stochastic_rounding", False)),
                "seed": int(group.get("seed", 0)), "tensor_ids": list(members)}

    # -- state_dict ---------------------------------------------------------------------
    def state_dict(self):
        """{"state": {param index: {key: value}}, "param_groups": [{..., "params": [indices]}]},
        torch's layout; arrays are copies."""
        state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                 for i, s in self.state.items() if s}
        groups, start = [], 0
        for g in self.param_groups:
            d = {k: copy.copy(v) for k, v in g.items() if k != "params"}
            d["params"] = list(range(start, start + len(g["params"])))
            start += len(g["params"])
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Loads a state_dict of this class or of the torch.optim class of the same name
        (tensors are accepted). Everything is validated before anything changes."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise TypeError("state_dict must be a dict with 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, dict):
            raise TypeError("state_dict['param_groups'] must be a list and state_dict['state'] a dict")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        id_map, new_groups, sources = {}, [], []
        start = 0
        for k, (saved, ours) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, dict) or not isinstance(saved.get("params"), (list, tuple)):
                raise TypeError(f"state_dict['param_groups'][{k}] must be a dict with a 'params' list")
            if len(saved["params"]) != len(ours["params"]):
                raise ValueError(f"loaded state dict contains a parameter group ({k}) that doesn't match "
                                 "the size of optimizer's group")
            for j, pid in enumerate(saved["params"]):
                id_map[pid] = start + j
            start += len(ours["params"])
            # fastlr.optim's rule: a group saved without any precision option (torch.optim's
            # layout) takes this group's options; one saved with options restores them (the
            # left-out ones are the defaults, seed 0 included), not the constructor's
            group = {k: v for k, v in self.defaults.items() if k not in _PRECISION}
            if not any(key in saved for key in _PRECISION):
                group.update((key, ours[key]) for key in _PRECISION if key in ours)
            group.update((key, _plain(v)) for key, v in saved.items() if key != "params")
            # fastlr.optim.Adam8bit's dicts name their block size and exp_avg_sq encoding
            source = _quant8.saved_source(group, _quant8.BLOCK_SIZE, f"state_dict['param_groups'][{k}]")
            group.pop("block_size", None)
            group.pop("exp_avg_sq_encoding", None)
            group = self._checked_group(group, k)
            _check_precision_params(group, ours["params"], f"state_dict['param_groups'][{k}]",
                                    self._eight_bit_roles)
            group["params"] = ours["params"]
            new_groups.append(group)
            sources.append(source)
        params = self._params
        new_state = {i: {} for i in range(len(params))}
        for pid, entry in saved_state.items():
            if pid not in id_map:
                raise ValueError(f"state_dict['state'] has an entry for unknown param {pid!r}")
            i = id_map[pid]
            if not isinstance(entry, dict):
                raise TypeError(f"state_dict['state'][{pid!r}] must be a dict")
            eight_bit = tuple(r + x for r in self._eight_bit_roles for x in ("_codes", "_scale"))
            for key in entry:
                if key not in self._state_keys + ("master_param",) + eight_bit:
                    raise ValueError(f"state_dict['state'][{pid!r}] has an unexpected key {key!r} "
                                     f"(expected some of {list(self._state_keys + eight_bit)})")
            k = next(k for k, g in enumerate(new_groups) if any(p is params[i] for p in g["params"]))
            group = new_groups[k]
            new_state[i] = {key: self._load_8bit_value(v, params[i], f"state[{pid!r}][{key!r}]", key, sources[k][0])
                            if key in eight_bit else
                            self._load_value(v, params[i], f"state[{pid!r}][{key!r}]", key,
                                             self._storage(group, params[i], key))
                            for key, v in entry.items() if v is not None}
            self._convert_8bit(new_state[i], group, params[i], f"state[{pid!r}]", sources[k])
            if "master_param" in new_state[i] and not (group.get("master_weights")
                                                       and _name(params[i].dtype) in ("bfloat16", "float16")):
                del new_state[i]["master_param"]  # without master weights the param is it
        for k, group in enumerate(new_groups):
            for i in range(sum(len(g["params"]) for g in new_groups[:k]),
                           sum(len(g["params"]) for g in new_groups[: k + 1])):
                self._check_state(new_state[i], group, f"state[{i}]")
        self.param_groups = new_groups
        self.state = new_state

    _eight_bit_roles = ()  # state_dtype="8bit" is implemented (the roles it quantizes)

    @staticmethod
    def _ensure_8bit(states, params, roles, fill=0.0):
        """Creates missing 8-bit roles (codes and scales of the value ``fill``); returns, per
        role, the kernels' (codes list, scales list)."""
        for s, p in zip(states, params):
            for role in roles:
                if role + "_codes" not in s:
                    s[role + "_codes"], s[role + "_scale"] = _new_8bit(p, fill if role == "sum" else 0.0)
        return {role: ([s[role + "_codes"] for s in states], [s[role + "_scale"] for s in states])
                for role in roles}

    def _q8_call(self, params, grads):
        prec = self._precision
        return _kernels._Call(params, grads, prec["master_params"], prec["stochastic_rounding"], prec["seed"],
                              prec["tensor_ids"])

    @staticmethod
    def _load_8bit_value(v, p, where, key, block):
        """A saved <role>_codes / <role>_scale: uint8 codes of p's shape, float32 block scales."""
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        if not isinstance(v, np.ndarray):
            raise ValueError(f"{where} must be an array, got {type(v).__name__}")
        _quant8.check_saved_part(where, key, _name(v.dtype), v.shape, p.shape, block)
        return np.array(v, order="C", copy=True)

    def _convert_8bit(self, state, group, p, where, source=(_quant8.BLOCK_SIZE, "sqrt")):
        """Loaded state -> this group's storage (_quant8.convert): float state of an 8-bit
        tensor quantized, codes and scales of a float-state tensor dequantized, codes of
        another block size or encoding (``source``: torchao's linear exp_avg_sq) re-quantized."""
        q8 = _quantized(group, p)
        for role in self._eight_bit_roles:
            c, s = role + "_codes", role + "_scale"
            if (c in state) != (s in state):
                raise ValueError(f"{where} has {c if c in state else s!r} but not "
                                 f"{s if c in state else c!r} (8-bit state is codes and scales)")
            if c in state or (q8 and role in state):  # (float state of float storage stays as loaded)
                out = _quant8.convert(role, state.pop(c, None), state.pop(s, None), state.pop(role, None),
                                      source, (_quant8.BLOCK_SIZE, "sqrt") if q8 else None)
                if q8:
                    state[c], state[s] = out
                else:
                    state[role] = out.astype(self._storage(group, p, role))

    @staticmethod
    def _load_value(v, p, where, key, dtype):
        if key == "step":
            if hasattr(v, "detach") and v.numel() == 1 and not v.is_complex() and str(v.dtype) != "torch.bool":
                v = v.item()  # torch keeps the step in a 0-dim tensor
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
                raise TypeError(f"{where} must be a number, got {type(v).__name__}")
            s = float(v)
            if not (0 <= s <= 2**53 and s.is_integer()):  # the kernels take the step as a double
                raise ValueError(f"{where} must be a whole number in [0, 2**53], got {s}")
            return int(s)
        torch_dtype = None
        if hasattr(v, "detach"):  # a torch tensor (float64 holds every value of a smaller type)
            torch_dtype = str(v.dtype).replace("torch.", "")
            v = v.detach().cpu().double().numpy()
        try:
            a = np.asarray(v)
        except Exception:
            raise TypeError(f"{where} must be an array, got {type(v).__name__}") from None
        if a.shape != p.shape:
            raise ValueError(f"{where} has shape {a.shape}, but the param has shape {p.shape}")
        if a.dtype.kind not in "fiu" and a.dtype.name != "bfloat16":
            raise TypeError(f"{where} has dtype {a.dtype}, expected a floating dtype")
        if key == "master_param" and (a.dtype.name if torch_dtype is None else torch_dtype) != "float32":
            raise TypeError(f"{where} has dtype {torch_dtype or a.dtype}; expected float32")
        return np.array(a, dtype=dtype, order="C", copy=True)

    def _require(self, state, keys, where):
        for key in keys:
            if key not in state and not (key + "_codes" in state and key + "_scale" in state):
                raise ValueError(f"{where} is missing '{key}'")

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for k, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {k}")
            lines += [f"    {key}: {v}" for key, v in sorted(g.items()) if key != "params"]
        return "\n".join(lines + [")"])


# -------------------------------------------------------------- optimizers ---


class SGD(_Optimizer):
    """torch.optim.SGD over NumPy arrays (state: ``momentum_buffer``)."""

    _state_keys = ("momentum_buffer",)
    _momentum_key = "momentum"

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None, master_weights=False, state_dtype=None, stochastic_rounding=False, seed=0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused,
                                      **_precision_defaults(master_weights, state_dtype, stochastic_rounding, seed)))

    def _check(self, g, where):
        if not _is_schedule(g["lr"]):
            _real(g["lr"], f"{where}['lr']", lo=0.0, what="learning rate")
        if not _is_schedule(g["momentum"]):
            _real(g["momentum"], f"{where}['momentum']", lo=0.0, what="momentum value")
        _real(g["dampening"], f"{where}['dampening']", what="dampening value")
        _real(g["weight_decay"], f"{where}['weight_decay']", lo=0.0, what="weight_decay value")
        for key in ("nesterov", "maximize"):
            _flag(g[key], f"{where}['{key}']")
        if g["nesterov"] and (not self._uses_momentum(g) or g["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    @staticmethod
    def _uses_momentum(g):
        return "momentum_schedule" in g or g["momentum"] != 0

    def _init_state(self, i, group):
        pass

    def _bucket_key(self, i, group):
        s = self.state[i]
        return self._uses_momentum(group) and "momentum_buffer" not in s and "momentum_buffer_codes" not in s

    _eight_bit_roles = ("momentum_buffer",)

    def _update_8bit(self, group, first, params, grads, states):
        """_C.sgd8 as fastlr.optim calls it: the rounding key takes the group's count of
        updates (sr_t), the first-step flag the buffer's."""
        lr, momentum = self._hyper(group)
        call = self._q8_call(params, grads)
        buf = None
        if self._uses_momentum(group):
            codes, scales = self._ensure_8bit(states, params, ("momentum_buffer",))["momentum_buffer"]
            buf = _kernels._quant8_state(call, codes, scales, "momentum_buffer", _quant8.BLOCK_SIZE)
        call.finish()
        _C.sgd8(call.code, call.numel, call.addresses(call.params), call.addresses(call.grads),
                _kernels._q8_pair(call, buf), lr, None, group.get("sr_t", 0), momentum, None,
                float(group["dampening"]), bool(group["nesterov"]), float(group["weight_decay"]),
                bool(group["maximize"]), bool(first), **_kernels._q8_keywords(call, _quant8.BLOCK_SIZE))

    def _check_state(self, state, group, where):
        pass

    _has_step = False

    def _update(self, group, first, params, grads, states):
        lr, momentum = self._hyper(group)
        bufs = None
        if self._uses_momentum(group):
            for s, p in zip(states, params):
                if "momentum_buffer" not in s:
                    s["momentum_buffer"] = self._zeros(group, p)
            bufs = [s["momentum_buffer"] for s in states]
        prec = self._precision
        if not prec["stochastic_rounding"]:
            _kernels.sgd_step(params, grads, bufs, lr=lr, momentum=momentum, dampening=group["dampening"],
                              nesterov=group["nesterov"], weight_decay=group["weight_decay"],
                              maximize=group["maximize"], step=1 if first else None, **prec)
            return
        # the rounding key takes the group's count of updates (sr_t), which the first-step
        # flag of a late param's buffer must not follow: one validated call, both passed
        call = _kernels._Call(params, grads, prec["master_params"], True, prec["seed"], prec["tensor_ids"])
        if bufs is not None:
            bufs = call.state(bufs, "momentum_buffers")
        call.finish()
        _C.sgd(call.code, call.numel, call.addresses(call.params), call.addresses(call.grads),
               call.addresses(bufs), lr, None, group.get("sr_t", 0), momentum if bufs else 0.0, None,
               float(group["dampening"]), bool(group["nesterov"]), float(group["weight_decay"]),
               bool(group["maximize"]), bool(first), **call.precision())


class Adam(_Optimizer):
    """torch.optim.Adam over NumPy arrays (state: ``step``, ``exp_avg``, ``exp_avg_sq``,
    ``max_exp_avg_sq``)."""

    _state_keys = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _momentum_key = "betas"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, master_weights=False, state_dtype=None, stochastic_rounding=False, seed=0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      foreach=foreach, maximize=maximize, capturable=capturable,
                                      differentiable=differentiable, fused=fused,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      **_precision_defaults(master_weights, state_dtype, stochastic_rounding, seed)))

    def _check(self, g, where):
        if not _is_schedule(g["lr"]):
            _real(g["lr"], f"{where}['lr']", lo=0.0, what="learning rate")
        _real(g["eps"], f"{where}['eps']", lo=0.0, what="epsilon value")
        betas = g["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{where}['betas'] must be a pair of floats")
        for k in (0, 1):
            if not (k == 0 and _is_schedule(betas[0])):
                _real(betas[k], f"{where}['betas'][{k}]", lo=0.0, hi=1.0, hi_open=True,
                      what=f"beta parameter at index {k}")
        _real(g["weight_decay"], f"{where}['weight_decay']", lo=0.0, what="weight_decay value")
        for key in ("amsgrad", "maximize", "decoupled_weight_decay", "capturable"):
            _flag(g[key], f"{where}['{key}']")

    def _init_state(self, i, group):
        pass

    def _check_state(self, state, group, where):
        if state:
            self._require(state, ["step", "exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else []),
                          where)

    _eight_bit_roles = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def _bucket_key(self, i, group):
        return self.state[i].get("step", 0)

    def _update(self, group, step, params, grads, states):
        lr, beta1 = self._hyper(group)
        for s, p in zip(states, params):
            if "step" not in s:
                s.update(step=0, exp_avg=self._zeros(group, p), exp_avg_sq=self._zeros(group, p))
            if group["amsgrad"] and "max_exp_avg_sq" not in s:
                s["max_exp_avg_sq"] = self._zeros(group, p)
        _kernels.adam_step(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                           step=step + 1, lr=lr, beta1=beta1, beta2=group["betas"][1], eps=group["eps"],
                           weight_decay=group["weight_decay"],
                           decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=group["amsgrad"],
                           max_exp_avg_sqs=[s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else None,
                           maximize=group["maximize"], **self._precision)
        for s in states:
            s["step"] = step + 1

    def _update_8bit(self, group, step, params, grads, states):
        """One fused 8-bit call (fastlr.adam8bit_step, fastlr's encoding): the same bucket,
        in the same order, as fastlr.optim's, so the stochastic rounding draws the same bits."""
        lr, beta1 = self._hyper(group)
        roles = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())
        for s in states:
            s.setdefault("step", 0)
        kw = {}
        for role, (codes, scales) in self._ensure_8bit(states, params, roles).items():
            kw[role + "_codes"], kw[role + "_scales"] = codes, scales
        _kernels.adam8bit_step(params, grads, step=step + 1, lr=lr, beta1=beta1, beta2=group["betas"][1],
                               eps=group["eps"], weight_decay=group["weight_decay"],
                               decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=group["amsgrad"],
                               maximize=group["maximize"], block_size=_quant8.BLOCK_SIZE, variant="fastlr", **kw,
                               **self._precision)
        for s in states:
            s["step"] = step + 1


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None, master_weights=False, state_dtype=None, stochastic_rounding=False, seed=0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         foreach=foreach, maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
                         master_weights=master_weights, state_dtype=state_dtype,
                         stochastic_rounding=stochastic_rounding, seed=seed)


class RMSprop(_Optimizer):
    """torch.optim.RMSprop over NumPy arrays (state: ``step``, ``square_avg``,
    ``momentum_buffer``, ``grad_avg``)."""

    _state_keys = ("step", "square_avg", "momentum_buffer", "grad_avg")
    _momentum_key = "momentum"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 capturable=False, foreach=None, maximize=False, differentiable=False, *, master_weights=False, state_dtype=None, stochastic_rounding=False, seed=0):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, capturable=capturable, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable,
                                      **_precision_defaults(master_weights, state_dtype, stochastic_rounding, seed)))

    def _check(self, g, where):
        if not _is_schedule(g["lr"]):
            _real(g["lr"], f"{where}['lr']", lo=0.0, what="learning rate")
        _real(g["eps"], f"{where}['eps']", lo=0.0, what="epsilon value")
        if not _is_schedule(g["momentum"]):
            _real(g["momentum"], f"{where}['momentum']", lo=0.0, what="momentum value")
        _real(g["weight_decay"], f"{where}['weight_decay']", lo=0.0, what="weight_decay value")
        _real(g["alpha"], f"{where}['alpha']", lo=0.0, what="alpha value")
        for key in ("centered", "maximize", "capturable"):
            _flag(g[key], f"{where}['{key}']")

    @staticmethod
    def _uses_momentum(g):
        return "momentum_schedule" in g or g["momentum"] > 0

    def _init_state(self, i, group):
        pass

    def _bucket_key(self, i, group):
        return self.state[i].get("step", 0)  # the rounding key takes the step

    _eight_bit_roles = ("square_avg", "grad_avg", "momentum_buffer")

    def _update_8bit(self, group, step, params, grads, states):
        """_C.rmsprop8 as fastlr.optim calls it (zero state read, not restarted)."""
        lr, momentum = self._hyper(group)
        mom = self._uses_momentum(group)
        roles = ("square_avg",) + (("grad_avg",) if group["centered"] else ()) + (("momentum_buffer",) if mom else ())
        for s in states:
            s.setdefault("step", 0)
        call = self._q8_call(params, grads)
        pairs = {role: _kernels._q8_pair(call, _kernels._quant8_state(call, codes, scales, role, _quant8.BLOCK_SIZE))
                 for role, (codes, scales) in self._ensure_8bit(states, params, roles).items()}
        call.finish()
        _C.rmsprop8(call.code, call.numel, call.addresses(call.params), call.addresses(call.grads),
                    pairs["square_avg"], pairs.get("grad_avg"), pairs.get("momentum_buffer"), lr, None, step,
                    float(group["alpha"]), float(group["eps"]), float(group["weight_decay"]), momentum, None,
                    bool(group["centered"]), mom, bool(group["maximize"]), False,
                    **_kernels._q8_keywords(call, _quant8.BLOCK_SIZE))
        for s in states:
            s["step"] += 1

    def _check_state(self, state, group, where):
        if state:
            self._require(state, ["step", "square_avg"] + (["momentum_buffer"] if self._uses_momentum(group) else [])
                          + (["grad_avg"] if group["centered"] else []), where)

    def _update(self, group, _, params, grads, states):
        lr, momentum = self._hyper(group)
        mom = self._uses_momentum(group)
        for s, p in zip(states, params):
            if "step" not in s:
                s.update(step=0, square_avg=self._zeros(group, p))
            if mom and "momentum_buffer" not in s:
                s["momentum_buffer"] = self._zeros(group, p)
            if group["centered"] and "grad_avg" not in s:
                s["grad_avg"] = self._zeros(group, p)
        _kernels.rmsprop_step(params, grads, [s["square_avg"] for s in states], lr=lr, alpha=group["alpha"],
                              eps=group["eps"], weight_decay=group["weight_decay"], momentum=momentum,
                              momentum_buffers=[s["momentum_buffer"] for s in states] if mom else None,
                              centered=group["centered"],
                              grad_avgs=[s["grad_avg"] for s in states] if group["centered"] else None,
                              maximize=group["maximize"], **self._precision,
                              # step == 1 would start the buffers from 0 instead of reading the
                              # zeros (0 * inf momentum is nan in torch); only the rounding key needs it
                              step=states[0]["step"] + 1 if self._precision["stochastic_rounding"] else None)
        for s in states:
            s["step"] += 1


class Adagrad(_Optimizer):
    """torch.optim.Adagrad over NumPy arrays (state: ``step``, ``sum``, created at
    construction as torch does)."""

    _state_keys = ("step", "sum")

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 foreach=None, *, maximize=False, differentiable=False, fused=None, master_weights=False, state_dtype=None, stochastic_rounding=False, seed=0):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      foreach=foreach, maximize=maximize, differentiable=differentiable,
                                      fused=fused,
                                      **_precision_defaults(master_weights, state_dtype, stochastic_rounding, seed)))

    def _check(self, g, where):
        if not _is_schedule(g["lr"]):
            _real(g["lr"], f"{where}['lr']", lo=0.0, what="learning rate")
        _real(g["lr_decay"], f"{where}['lr_decay']", lo=0.0, what="lr_decay value")
        _real(g["weight_decay"], f"{where}['weight_decay']", lo=0.0, what="weight_decay value")
        _real(g["initial_accumulator_value"], f"{where}['initial_accumulator_value']", lo=0.0,
              what="initial_accumulator_value value")
        _real(g["eps"], f"{where}['eps']", lo=0.0, what="epsilon value")
        _flag(g["maximize"], f"{where}['maximize']")

    _eight_bit_roles = ("sum",)

    def _init_state(self, i, group):
        p = self._params[i]
        if _quantized(group, p):
            codes, scale = _new_8bit(p, group["initial_accumulator_value"])
            self.state[i] = {"step": 0, "sum_codes": codes, "sum_scale": scale}
            return
        self.state[i] = {"step": 0, "sum": self._zeros(group, p, group["initial_accumulator_value"])}

    def _update_8bit(self, group, step, params, grads, states):
        lr, _ = self._hyper(group)
        codes, scales = self._ensure_8bit(states, params, ("sum",), group["initial_accumulator_value"])["sum"]
        _kernels.adagrad8bit_step(params, grads, codes, scales, step=step + 1, lr=lr, lr_decay=group["lr_decay"],
                                  weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                                  block_size=_quant8.BLOCK_SIZE, **self._precision)
        for s in states:
            s["step"] = step + 1

    def _bucket_key(self, i, group):
        return self.state[i]["step"]

    def _check_state(self, state, group, where):
        self._require(state, ["step", "sum"], where)

    def _update(self, group, step, params, grads, states):
        lr, _ = self._hyper(group)
        _kernels.adagrad_step(params, grads, [s["sum"] for s in states], step=step + 1, lr=lr,
                              lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"],
                              maximize=group["maximize"], **self._precision)
        for s in states:
            s["step"] = step + 1


from ._numpy_schedulefree import AdamWScheduleFree, RAdamScheduleFree, SGDScheduleFree  # noqa: E402
