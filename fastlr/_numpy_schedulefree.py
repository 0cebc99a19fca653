"""``fastlr.numpy.SGDScheduleFree / AdamWScheduleFree / RAdamScheduleFree``: the
``schedulefree`` package's optimizers over lists of NumPy arrays.

Same arguments, defaults, group keys, ``train()`` / ``eval()`` and state keys (``z``,
``exp_avg_sq``) as the package; ``state_dict()`` has torch's layout (``{"state": {i:
{...}}, "param_groups": [...]}``), and a state dict of the package (tensors) loads here.

>>> import numpy as np
>>> from fastlr.numpy import SGDScheduleFree
>>> w = np.zeros(3, np.float32)
>>> opt = SGDScheduleFree([w], lr=0.5)
>>> opt.train()
>>> opt.step([np.ones(3, np.float32)])
>>> opt.eval()   # w now holds x, the average
"""
from __future__ import annotations

import copy

import numpy as np

from . import _C
from . import _schedulefree_kernels as _k
from .schedules import Schedule

__all__ = ["SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree"]


def _shown_lr(group, k):
    """The lr update k + 1 uses: lr_scale·s(k) (fastlr.ReduceLROnPlateau scales it)."""
    return float(group.get("lr_scale", 1.0)) * _C.schedule_at(group["lr_schedule"]._encoding, int(k))


def _kernel_lr(group, step):
    """The kernel's lr argument: the Schedule itself, or its value scaled by lr_scale."""
    sched = group.get("lr_schedule")
    if sched is None:
        return group["lr"]
    if float(group.get("lr_scale", 1.0)) == 1.0:
        return sched
    return _shown_lr(group, step - 1)


class _ScheduleFree:
    _beta1_key = "momentum"
    _state_keys = ("z",)

    def __init__(self, params, defaults):
        from .numpy import _param, _param_groups  # what every fastlr.numpy optimizer applies

        self._param = _param
        self.defaults = defaults
        self.param_groups = []
        self.state = {}
        for g in _param_groups(params):
            self.add_param_group(g)

    @property
    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def add_param_group(self, param_group):
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, np.ndarray) else list(params)
        n0 = len(self._params)
        for i, p in enumerate(params):
            self._param(p, f"params[{n0 + i}]")
        known = {id(p) for p in self._params}
        if any(id(p) in known for p in params) or len({id(p) for p in params}) != len(params):
            raise ValueError("some parameters appear in more than one parameter group")
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        if isinstance(group["lr"], Schedule):
            group["lr_schedule"] = group["lr"]
        self._check(group)
        if self.param_groups:  # a group added after train() starts in train mode too
            group["train_mode"] = self.param_groups[0]["train_mode"]
        if "lr_schedule" in group:
            group["lr"] = _shown_lr(group, group["k"])
        self.param_groups.append(group)

    def _check(self, group):
        """The kernel's own checks, on an empty call: nothing is touched."""
        self._call(group, [], [], [], [])

    def _beta1(self, group):
        return group["betas"][0] if self._beta1_key == "betas" else group["momentum"]

    def train(self):
        """Sets the params to y (``p ← lerp(p, z, 1 − β1)``); call before training."""
        self._switch(True)

    def eval(self):
        """Sets the params to x (``p ← lerp(p, z, 1 − 1/β1)``); call before evaluating
        or saving."""
        self._switch(False)

    def _switch(self, train):
        fn = _k.schedulefree_train if train else _k.schedulefree_eval
        offset = 0
        for group in self.param_groups:
            n = len(group["params"])
            if bool(group["train_mode"]) != train:
                by_dtype = {}
                for i, p in enumerate(group["params"], offset):
                    if "z" in self.state.get(i, {}):
                        by_dtype.setdefault(p.dtype, ([], []))
                        by_dtype[p.dtype][0].append(p)
                        by_dtype[p.dtype][1].append(self.state[i]["z"])
                for ps, zs in by_dtype.values():
                    fn(ps, zs, beta1=self._beta1(group))
                group["train_mode"] = train
            offset += n

    def step(self, grads):
        """One update of every param that has a grad (``None`` skips a param), one kernel
        call per group and dtype. ``grads`` lists one array (or None) per param, in the
        order of the groups."""
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError(_k.STEP_IN_EVAL)
        params = self._params
        grads = [grads] if isinstance(grads, np.ndarray) else list(grads)
        if len(grads) != len(params):
            raise ValueError(f"grads has {len(grads)} entries but there are {len(params)} params")
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is None:
                continue
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grads[{i}] must be a numpy.ndarray or None, got {type(g).__name__}")
            if g.dtype != p.dtype or g.shape != p.shape:
                raise ValueError(f"grads[{i}] has dtype {g.dtype} and shape {g.shape}, "
                                 f"params[{i}] {p.dtype} and {p.shape}")
        for i, (p, g) in enumerate(zip(params, grads)):  # the package's lazy state
            if g is not None and "z" not in self.state.get(i, {}):
                self.state[i] = {"z": p.copy()}
                if len(self._state_keys) > 1:
                    self.state[i]["exp_avg_sq"] = np.zeros_like(p)
        offset = 0
        for group in self.param_groups:
            n = len(group["params"])
            by_dtype = {}
            for i in range(offset, offset + n):
                if grads[i] is not None:
                    entry = by_dtype.setdefault(params[i].dtype, ([], [], [], []))
                    entry[0].append(params[i])
                    entry[1].append(grads[i])
                    for key, lst in zip(self._state_keys, entry[2:]):
                        lst.append(self.state[i][key])
            result = None
            for ps, gs, zs, vs in by_dtype.values() or [([], [], [], [])]:
                result = self._call(group, ps, gs, zs, vs, step=group["k"] + 1)
            group["scheduled_lr"], group["lr_max"], group["weight_sum"] = result
            group["k"] += 1
            if "lr_schedule" in group:
                group["lr"] = _shown_lr(group, group["k"])
            offset += n

    def state_dict(self):
        groups, index = [], 0
        for g in self.param_groups:
            d = {k: copy.copy(v) for k, v in g.items() if k != "params"}
            d["params"] = list(range(index, index + len(g["params"])))
            index += len(g["params"])
            groups.append(d)
        state = {i: {k: v.copy() for k, v in s.items()} for i, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Loads a state dict of this class, of fastlr.optim's or of the package's
        (tensors become arrays of the param's dtype). Checked whole before anything changes."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups)):
            raise ValueError("loaded state dict has a different number of groups or params")
        ids = [i for g in groups for i in g["params"]]
        params = self._params
        new_state = {}
        for saved_id, i in zip(ids, range(len(params))):
            s = state_dict["state"].get(saved_id)
            if not s:
                continue
            p = params[i]
            new_state[i] = {}
            for key in self._state_keys:
                if key not in s:
                    raise ValueError(f"state of params[{i}] has no {key!r}")
                v = s[key]
                if hasattr(v, "detach"):  # a torch tensor: float64 holds every float dtype exactly
                    v = v.detach().cpu().double().numpy()
                v = np.asarray(v)
                if v.shape != p.shape:
                    raise ValueError(f"state[{key!r}] of params[{i}] has shape {v.shape}, param {p.shape}")
                new_state[i][key] = np.ascontiguousarray(v.astype(p.dtype))
        new_groups = []
        for saved, group in zip(groups, self.param_groups):
            g = {k: (float(v) if hasattr(v, "detach") else copy.copy(v))
                 for k, v in saved.items() if k != "params"}
            g["params"] = group["params"]
            self._check(g)
            new_groups.append(g)
        self.param_groups = new_groups
        self.state = new_state


class SGDScheduleFree(_ScheduleFree):
    """Schedule-free SGD over NumPy arrays (``schedulefree.SGDScheduleFree``); see
    :func:`fastlr.sgd_schedulefree_step` for the update."""

    _beta1_key = "momentum"
    _state_keys = ("z",)

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=0, warmup_steps=0, r=0.0,
                 weight_lr_power=2, foreach=True):
        super().__init__(params, dict(lr=lr, momentum=momentum, r=r, warmup_steps=warmup_steps,
                                      weight_lr_power=weight_lr_power, weight_decay=weight_decay,
                                      foreach=foreach, **_k.GROUP_START))

    def _call(self, g, ps, gs, zs, vs, step=1):
        return _k.sgd_schedulefree_step(
            ps, gs, zs, step=step, lr=_kernel_lr(g, step), momentum=g["momentum"],
            weight_decay=g["weight_decay"], warmup_steps=g["warmup_steps"], r=g["r"],
            weight_lr_power=g["weight_lr_power"], lr_max=g["lr_max"], weight_sum=g["weight_sum"])


class AdamWScheduleFree(_ScheduleFree):
    """Schedule-free AdamW over NumPy arrays (``schedulefree.AdamWScheduleFree``); see
    :func:`fastlr.adamw_schedulefree_step` for the update."""

    _beta1_key = "betas"
    _state_keys = ("z", "exp_avg_sq")

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 warmup_steps=0, r=0.0, weight_lr_power=2.0, foreach=True):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, r=r, warmup_steps=warmup_steps,
                                      weight_lr_power=weight_lr_power, weight_decay=weight_decay,
                                      foreach=foreach, **_k.GROUP_START))

    def _call(self, g, ps, gs, zs, vs, step=1):
        return _k.adamw_schedulefree_step(
            ps, gs, zs, vs, step=step, lr=_kernel_lr(g, step), beta1=g["betas"][0],
            beta2=g["betas"][1], eps=g["eps"], weight_decay=g["weight_decay"],
            warmup_steps=g["warmup_steps"], r=g["r"], weight_lr_power=g["weight_lr_power"],
            lr_max=g["lr_max"], weight_sum=g["weight_sum"])


class RAdamScheduleFree(_ScheduleFree):
    """Schedule-free RAdam over NumPy arrays (``schedulefree.RAdamScheduleFree``); see
    :func:`fastlr.radam_schedulefree_step` for the update."""

    _beta1_key = "betas"
    _state_keys = ("z", "exp_avg_sq")

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, r=0.0,
                 weight_lr_power=2.0, foreach=True, silent_sgd_phase=True):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, r=r,
                                      weight_lr_power=weight_lr_power, weight_decay=weight_decay,
                                      foreach=foreach, silent_sgd_phase=silent_sgd_phase, **_k.GROUP_START))

    def _call(self, g, ps, gs, zs, vs, step=1):
        return _k.radam_schedulefree_step(
            ps, gs, zs, vs, step=step, lr=_kernel_lr(g, step), beta1=g["betas"][0],
            beta2=g["betas"][1], eps=g["eps"], weight_decay=g["weight_decay"], r=g["r"],
            weight_lr_power=g["weight_lr_power"], lr_max=g["lr_max"], weight_sum=g["weight_sum"],
            silent_sgd_phase=g["silent_sgd_phase"])
