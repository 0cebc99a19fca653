"""Schedule-free SGD, AdamW and RAdam (Defazio et al., "The Road Less Scheduled", 2024),
fused: drop-in replacements for the ``schedulefree`` package's classes.

Same constructor arguments, defaults, ``train()`` / ``eval()`` switch, group keys
(``k``, ``train_mode``, ``lr_max``, ``weight_sum``, ``scheduled_lr`` ...), state keys
(``z``, ``exp_avg_sq``) and state dicts as ``schedulefree`` 1.4; a state dict saved by one
loads into the other. Each step is one fastlr kernel call per group and dtype (the
package makes about nine passes), each mode switch one; grads are only read (the package
overwrites them with the normalized step). ``lr`` may also be a fastlr Schedule,
evaluated at ``k``, the group's count of completed steps, before the warm-up factor.
The keyword-only precision options ``master_weights`` and ``state_dtype`` of
``fastlr.optim.AdamW`` work here too (``stochastic_rounding`` not yet); by default 16-bit
params compute in float32 and round each stored value to nearest once.

>>> opt = AdamWScheduleFree(model.parameters(), lr=1e-2, warmup_steps=100)  # doctest: +SKIP
>>> opt.train()   # before training: the params hold y
>>> opt.eval()    # before evaluating or saving: the params hold the average x
"""
from __future__ import annotations

import math
import numbers
import operator
import warnings

import torch
from torch import Tensor

from .. import _C
from .._schedulefree_kernels import GROUP_START, STEP_IN_EVAL
from . import _precision
from ._base import (_CODES, _compiler_boundary, _is_dense, _profile_hook_step, _scalar, _Schedule,
                    _State)

__all__ = ["SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree"]

_SGD, _ADAMW, _RADAM = 0, 1, 2
_data_ptr = torch.Tensor.data_ptr
_nbytes = operator.attrgetter("nbytes")
_get_grad = operator.attrgetter("grad")
_get_z = operator.methodcaller("get", "z")
_get_v = operator.methodcaller("get", "exp_avg_sq")
_is = operator.is_
_is_contiguous = torch.Tensor.is_contiguous
_increment_version = torch.autograd.graph.increment_version
_REAL_CODES = {dt: c for dt, c in _CODES.items() if not dt.is_complex}


def _real(x, name, *, low=0.0, high=math.inf, low_open=False, high_open=False):
    """A finite float in the given range, or ValueError / TypeError naming `name`."""
    if isinstance(x, Tensor) and x.numel() == 1 and not x.is_complex():
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not (
        (low < x if low_open else low <= x) and (x < high if high_open else x <= high)
    ) or not math.isfinite(x):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"Invalid {name}: {x} (must be in {lo}{low}, {high}{hi})")
    return x


class _Plan:
    """One group's kernel calls until its params, grads' presence or state change."""

    __slots__ = ("params", "mask", "fused", "fused_idx", "p_addrs", "state", "state_version",
                 "states", "zs", "vs", "buckets", "nbytes", "all_contig", "other", "bump", "single")


class _ScheduleFreeOptimizer(torch.optim.Optimizer):
    """What the three share: the train/eval switch, the bookkeeping call, state, plans.

    A subclass sets ``_kind`` and ``_beta1_key`` and validates its own arguments."""

    _kind = _SGD
    _beta1_key = "momentum"

    def __init__(self, params, defaults):
        self._fastlr_plans = {}
        self._fastlr_warned = False
        self._fastlr_shown = {}  # id(group) -> (group, the lr last shown in group["lr"])
        super().__init__(params, defaults)
        # counts its mutations, so a plan sees a per-param state dict deleted or replaced
        self.state = _State(self.state)

    def __setstate__(self, state):
        super().__setstate__(state)
        if not isinstance(self.state, _State):
            self.state = _State(self.state)
        self.__dict__.setdefault("_fastlr_warned", False)
        self._fastlr_shown = {}
        self._fastlr_plans = {}

    # ------------------------------------------------------------- groups ---
    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if isinstance(group["lr"], _Schedule):
            group["lr_schedule"] = group["lr"]
        sched = group.get("lr_schedule")
        try:  # a refused group is not kept
            if sched is not None:
                if not isinstance(sched, _Schedule):
                    raise TypeError(f"lr_schedule must be a fastlr Schedule, got {type(sched).__name__}")
                group["lr"] = _lr_scale(group) * _C.schedule_at(sched._encoding, int(group["k"]))
                self._fastlr_shown[id(group)] = (group, group["lr"])
            self._check_group(group)
            _precision.check_group(type(self).__name__, group)
        except Exception:
            self.param_groups.pop()
            raise
        # a group added after train() starts in train mode too (the package leaves it in
        # eval mode, and a later eval() then skips it)
        if len(self.param_groups) > 1:
            group["train_mode"] = self.param_groups[0]["train_mode"]
        self._fastlr_plans = {}

    def _check_group(self, group):
        if "lr_schedule" not in group:
            _real(group["lr"], "lr")
        _real(group["weight_decay"], "weight_decay")
        _real(group["r"], "r")
        _real(group["weight_lr_power"], "weight_lr_power")
        if "warmup_steps" in group:
            w = group["warmup_steps"]
            if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 0:
                raise ValueError(f"Invalid warmup_steps: {w!r} (must be an int >= 0)")
        if self._beta1_key == "betas":
            betas = group["betas"]
            if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
                raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
            # beta1 = 0 leaves eval() nothing to recover x from (1 - 1/beta1)
            _real(betas[0], "beta parameter at index 0", low_open=True, high=1.0, high_open=True)
            _real(betas[1], "beta parameter at index 1", high=1.0, high_open=True)
            _real(group["eps"], "epsilon value")
        else:
            m = group["momentum"]
            if not isinstance(m, numbers.Real) or isinstance(m, bool) or not 0.0 < m < 1.0:
                raise ValueError(f"Momentum must be between 0 and 1 exclusive: {m}")

    def load_state_dict(self, state_dict):
        state_dict = _precision.keep_options(self, state_dict)
        for saved, current in zip(state_dict["param_groups"], self.param_groups):
            self._check_group({**current, **saved})  # before anything is loaded
        super().load_state_dict(state_dict)
        # torch casts every state tensor to its param's dtype: masters and state stored in
        # another dtype are re-read in theirs
        _precision.convert_loaded_state(self, state_dict)
        self._fastlr_plans = {}

    def _beta1(self, group):
        return _scalar(group["betas"][0] if self._beta1_key == "betas" else group["momentum"])

    # -------------------------------------------------------- train / eval ---
    @_compiler_boundary
    @torch.no_grad()
    def eval(self):
        """Sets the params to x, the average the schedule-free theory evaluates
        (``p ← lerp(p, z, 1 − 1/β1)``). Call before evaluating or saving."""
        self._switch(train=False)

    @_compiler_boundary
    @torch.no_grad()
    def train(self):
        """Sets the params to y, where gradients are taken (``p ← lerp(p, z, 1 − β1)``).
        Call before training; ``step()`` raises in eval mode."""
        self._switch(train=True)

    def _switch(self, train):
        for group in self.param_groups:
            if bool(group["train_mode"]) == train:
                continue
            beta1 = self._beta1(group)
            weight = 1 - beta1 if train else 1 - 1 / beta1
            if _precision.active(group):
                self._precision_switch(group, weight)
                group["train_mode"] = train
                continue
            fused, other = {}, []
            for p in group["params"]:
                state = self.state.get(p)
                if not state or "z" not in state:
                    continue
                z = state["z"]
                code = _REAL_CODES.get(p.dtype)
                if (code is not None and p.device.type == "cpu" and z.device.type == "cpu"
                        and z.dtype == p.dtype and z.shape == p.shape
                        and ((p.is_contiguous() and z.is_contiguous())
                             or (_is_dense(p) and z.stride() == p.stride()))):
                    fused.setdefault(code, []).append((p, z))
                else:
                    other.append((p, z))
            for code, pairs in fused.items():
                ps = [p for p, _ in pairs]
                _C.schedulefree_lerp(code, [p.numel() for p in ps], list(map(_data_ptr, ps)),
                                     [_data_ptr(z) for _, z in pairs], weight)
                _increment_version([p for p in ps if not p.is_inference()])
            for p, z in other:
                p.lerp_(end=z.to(p.device), weight=weight)
            group["train_mode"] = train

    # ---------------------------------------------------------------- step ---
    # a compiler boundary as fastlr.optim's step: under torch.compile one graph break, the
    # step run eagerly (Dynamo cannot trace a Schedule's encoding nor the kernel call)
    @_compiler_boundary
    @_profile_hook_step
    def step(self, closure=None):
        """Performs a single optimization step (one kernel call per group and dtype).

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError(STEP_IN_EVAL)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if "lr_schedule" in group or isinstance(group["lr"], _Schedule):
                self._sync_schedule(group)
        prev = torch.is_grad_enabled()  # torch.no_grad(), without its Python object
        torch._C._set_grad_enabled(False)
        try:
            # every group's plan (and its checks) before any group is updated
            work = [(group, None if _precision.active(group) else self._plan(group))
                    for group in self.param_groups]
            for group, planned in work:
                if planned is None:
                    self._precision_step(group)
                else:
                    self._step_group(group, *planned)
        finally:
            torch._C._set_grad_enabled(prev)
        return loss

    def _sync_schedule(self, group):
        """Before an update: the attached Schedule gives the lr (as fastlr.optim's classes,
        one warning when something else, e.g. a torch LRScheduler, wrote group["lr"])."""
        lr = group["lr"]
        if isinstance(lr, _Schedule):  # a Schedule written into lr is the one to use now
            group["lr_schedule"] = lr
        sched = group["lr_schedule"]
        shown = _lr_scale(group) * _C.schedule_at(sched._encoding, int(group["k"]))
        # foreign: neither what this optimizer showed last nor lr_scale·s(k) (a new
        # lr_scale set by hand or by fastlr.ReduceLROnPlateau is not)
        written = self._fastlr_shown.get(id(group))
        foreign = written is not None and written[0] is group and lr != written[1]
        if foreign and not isinstance(lr, _Schedule) and lr != shown and not self._fastlr_warned:
            self._fastlr_warned = True
            warnings.warn(
                f"fastlr.optim.{type(self).__name__}: group['lr'] was changed outside the "
                "optimizer (e.g. by a torch LRScheduler) while a fastlr Schedule is attached; "
                "the Schedule wins and the value is overwritten. Scale a schedule with "
                "group['lr_scale'], or pass a float to let a torch scheduler drive it.",
                stacklevel=5,
            )
        group["lr"] = shown

    def _plan(self, group):
        params = group["params"]
        grads = list(map(_get_grad, params))
        mask = [g is not None for g in grads]
        plan = self._fastlr_plans.get(id(group))
        st = self.state
        if not isinstance(st, _State):  # reassigned by hand, e.g. to reset the optimizer
            st = self.state = _State(st)
        # the plan holds the state tensors' addresses: any state dict or tensor replaced
        # since (state cleared or reset by hand) must rebuild it, not write to freed memory
        if (plan is None or plan.params is not params or plan.mask != mask
                or plan.state is not st or plan.state_version != st.version
                or list(map(_data_ptr, plan.fused)) != plan.p_addrs
                or not all(map(_is, map(_get_z, plan.states), plan.zs))
                or (plan.vs is not None and not all(map(_is, map(_get_v, plan.states), plan.vs)))):
            plan = self._build_plan(group, params, grads, mask)
        active = [g for g, m in zip(grads, mask) if m] if not all(mask) else grads
        fused_grads = active if plan.single else [active[i] for i in plan.fused_idx]
        if list(map(_nbytes, fused_grads)) != plan.nbytes or not (
            all(map(_is_contiguous, fused_grads)) if plan.all_contig
            else all(g.stride() == p.stride() for g, p in zip(fused_grads, plan.fused))
        ):  # a grad resized or relaid by hand since the plan was built
            plan = self._build_plan(group, params, grads, mask)
            fused_grads = active if plan.single else [active[i] for i in plan.fused_idx]
        return plan, (active, fused_grads)

    def _build_plan(self, group, params, grads, mask):
        """Validates every grad and state against its param, creates missing state
        (the package's lazy init: z = clone(p), exp_avg_sq = 0) and groups the params
        the kernel can walk flat by dtype."""
        adaptive = self._kind != _SGD
        active = []  # (index among the params with grads, param, grad)
        seen = set()
        j = -1
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is None:
                continue
            j += 1
            if g.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if p.is_complex():
                raise TypeError(f"{type(self).__name__} does not support complex params (params[{i}])")
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"params[{i}]: grad of shape {tuple(g.shape)} and dtype {g.dtype} "
                                 f"for a param of shape {tuple(p.shape)} and dtype {p.dtype}")
            state = self.state.get(p)
            if state:
                for key in ("z", "exp_avg_sq") if adaptive else ("z",):
                    t = state.get(key)
                    if t is None or t.shape != p.shape:
                        raise ValueError(f"params[{i}]: state[{key!r}] is missing or of another shape")
            if id(p) not in seen:  # listed twice: one update, as one call must not write twice
                seen.add(id(p))
                active.append((j, p, g))
        for _, p, _ in active:  # all checks passed: now create the missing state
            state = self.state[p]
            if "z" not in state:
                state["z"] = torch.clone(p, memory_format=torch.preserve_format).detach()
                if adaptive:
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        plan = _Plan()
        plan.params, plan.mask = params, mask
        fused, fused_idx, other, by_code = [], [], [], {}
        for j, p, g in active:
            state = self.state[p]
            z = state["z"]
            v = state.get("exp_avg_sq") if adaptive else None
            code = _REAL_CODES.get(p.dtype)
            if (code is not None and p.device.type == "cpu" and _is_dense(p)
                    and all(t.device.type == "cpu" and t.dtype == p.dtype and t.stride() == p.stride()
                            for t in ((g, z) if v is None else (g, z, v)))):
                by_code.setdefault(code, []).append(len(fused))
                fused.append(p)
                fused_idx.append(j)
            else:
                other.append((j, p))
        plan.fused = fused
        plan.fused_idx = fused_idx
        plan.p_addrs = list(map(_data_ptr, fused))
        plan.states = [self.state[p] for p in fused]
        plan.state, plan.state_version = self.state, getattr(self.state, "version", None)
        plan.zs = [s["z"] for s in plan.states]
        plan.vs = [s["exp_avg_sq"] for s in plan.states] if adaptive else None
        plan.nbytes = [p.nbytes for p in fused]
        plan.all_contig = all(p.is_contiguous() for p in fused)
        plan.other = other
        plan.single = not other and len(by_code) == 1 and len(fused) == sum(mask)
        z_addrs = list(map(_data_ptr, plan.zs))
        v_addrs = [_data_ptr(s["exp_avg_sq"]) for s in plan.states] if adaptive else None
        plan.buckets = [
            (code, idx, [fused[i].numel() for i in idx], [plan.p_addrs[i] for i in idx],
             [z_addrs[i] for i in idx], None if v_addrs is None else [v_addrs[i] for i in idx])
            for code, idx in by_code.items()
        ]
        plan.bump = [p for p in fused if not p.is_inference()]
        self._fastlr_plans[id(group)] = plan
        return plan

    def _kernel_args(self, group):
        """The arguments of _C.schedulefree_step after the tensor lists."""
        sched = group.get("lr_schedule")
        # with a Schedule the kernel evaluates lr_scale·s(k) (fastlr.ReduceLROnPlateau's cuts)
        lr = _lr_scale(group) if sched is not None else _scalar(group["lr"])
        enc = None if sched is None else sched._encoding
        beta1 = self._beta1(group)
        if self._beta1_key == "betas":
            beta2, eps = _scalar(group["betas"][1]), _scalar(group["eps"])
        else:
            beta2, eps = 0.0, 0.0
        return (int(group["k"]), lr, enc, beta1, beta2, eps, _scalar(group["weight_decay"]),
                float(group.get("warmup_steps", 0)), _scalar(group["r"]),
                _scalar(group["weight_lr_power"]), _scalar(group["lr_max"]),
                _scalar(group["weight_sum"]), bool(group.get("silent_sgd_phase", True)))

    def _finish_step(self, group, result):
        """Stores the group's bookkeeping after its step, as the package does."""
        k = int(group["k"])
        group["scheduled_lr"], group["lr_max"], group["weight_sum"] = result[:3]
        group["k"] = k + 1
        sched = group.get("lr_schedule")
        if sched is not None:
            group["lr"] = _lr_scale(group) * _C.schedule_at(sched._encoding, k + 1)
            self._fastlr_shown[id(group)] = (group, group["lr"])

    def _step_group(self, group, plan, grads):
        active, fused_grads = grads
        args = self._kernel_args(group)
        beta2, eps = args[4], args[5]
        g_addrs = list(map(_data_ptr, fused_grads))
        result = None
        for code, idx, numel, p_addrs, z_addrs, v_addrs in plan.buckets:
            if not plan.single:
                g_sub = [g_addrs[i] for i in idx]
            result = _C.schedulefree_step(self._kind, code, numel, p_addrs,
                                          g_addrs if plan.single else g_sub, z_addrs, v_addrs,
                                          *args)
        if result is None or plan.other:  # bookkeeping only, or the values the torch path needs
            result = _C.schedulefree_step(self._kind, 0, [], [], [], [], [], *args)
        scheduled_lr, _, _, ckp1, y_coef, bias_correction2, adaptive = result
        if plan.bump:
            _increment_version(plan.bump)
        if plan.other:
            self._torch_step(group, plan, active, ckp1, y_coef, scheduled_lr, bias_correction2,
                             adaptive, beta2, eps)
        self._finish_step(group, result)

    def _torch_step(self, group, plan, active, ckp1, y_coef, lr, bias_correction2, adaptive,
                    beta2, eps):
        """The package's foreach update for tensors the kernel cannot take (other devices,
        layouts that cannot be walked flat), without writing into the grads."""
        ys = [p for _, p in plan.other]
        gs = [active[j] for j, _ in plan.other]
        zs = [self.state[p]["z"] for p in ys]
        if self._kind != _SGD:
            vs = [self.state[p]["exp_avg_sq"] for p in ys]
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
            if adaptive:
                denom = torch._foreach_div(vs, bias_correction2)
                torch._foreach_sqrt_(denom)
                torch._foreach_add_(denom, eps)
                gs = torch._foreach_div(gs, denom)
        decay = _scalar(group["weight_decay"])
        if decay != 0:
            gs = torch._foreach_add(gs, ys, alpha=decay)
        torch._foreach_lerp_(ys, zs, weight=ckp1)
        torch._foreach_add_(ys, gs, alpha=y_coef)
        torch._foreach_sub_(zs, gs, alpha=lr)

    # ------------------------------------------------------ precision options ---
    # master_weights / state_dtype (fastlr.optim._precision): the update runs on float32
    # work tensors (the master copy, else the param when it is float32) and every 16-bit
    # destination is written from them, rounded to nearest. Stochastic rounding needs the
    # fused precision kernels, which the schedule-free rules are not built into yet.
    def _precision_step(self, group):
        name = type(self).__name__
        keys = ("z", "exp_avg_sq") if self._kind != _SGD else ("z",)
        items, seen = [], set()
        for j, p in enumerate(group["params"]):
            g = p.grad
            if g is None or id(p) in seen:
                continue
            seen.add(id(p))
            master = _precision.uses_master(group, p)
            if g.is_sparse:
                raise RuntimeError(f"{name} does not support sparse gradients")
            if g.shape != p.shape or not (g.dtype == p.dtype or (master and g.dtype == torch.float32)):
                raise ValueError(f"params[{j}]: grad of shape {tuple(g.shape)} and dtype {g.dtype} "
                                 f"for a param of shape {tuple(p.shape)} and dtype {p.dtype}")
            st = self.state.get(p)
            if st:
                sdt = _precision.state_dtype(group, p)
                for key in keys:
                    t = st.get(key)
                    if t is None or t.shape != p.shape or t.dtype != sdt:
                        raise ValueError(f"params[{j}]: state[{key!r}] is missing or not of shape "
                                         f"{tuple(p.shape)} and dtype {sdt}")
            items.append((j, p, g))
        for _, p, _ in items:  # all checks passed: the missing state, from the param
            st = self.state[p]
            if "z" not in st:
                sdt = _precision.state_dtype(group, p)
                if _precision.uses_master(group, p):
                    st["master_param"] = p.detach().to(torch.float32, copy=True)
                st["z"] = p.detach().to(sdt, copy=True)
                if len(keys) > 1:
                    st["exp_avg_sq"] = torch.zeros(p.shape, dtype=sdt)
        args = self._kernel_args(group)
        step = int(group["k"]) + 1
        result = None
        for code, entries in self._work_buckets(group, items).items():
            tensors = [[w for w, _, _ in role] for role in zip(*(e[0] for e in entries))]
            grads = [e[1] for e in entries]
            addrs = [list(map(_data_ptr, ts)) for ts in tensors]
            result = _C.schedulefree_step(self._kind, code, [t.numel() for t in tensors[0]],
                                          addrs[0], list(map(_data_ptr, grads)), addrs[1],
                                          addrs[2] if len(addrs) > 2 else None, *args)
            self._write_back(group, entries, step)
        if result is None:
            result = _C.schedulefree_step(self._kind, 0, [], [], [], [], [], *args)
        _increment_version([p for _, p, _ in items if not p.is_inference()])
        self._finish_step(group, result)

    def _work_buckets(self, group, items):
        """Per work dtype: ([(work, destination or None, tensor id) for y, z (, v)], grad)."""
        first_id = _precision._first_tensor_id(self, group)
        keys = ("z", "exp_avg_sq") if self._kind != _SGD else ("z",)
        buckets = {}
        for j, p, g in items:
            st = self.state[p]
            work = torch.float64 if p.dtype == torch.float64 else torch.float32
            roles = []
            if _precision.uses_master(group, p):
                roles.append((st["master_param"], p, None))  # the param: its master, to nearest
            else:
                roles.append(_work(p, work, first_id + j))
            roles += [_work(st[key], work, first_id + j) for key in keys]
            if g is not None:
                g = g.detach()
                if g.dtype != work or not g.is_contiguous():
                    g = g.to(work).contiguous()
            buckets.setdefault(_CODES[work], []).append((roles, g))
        return buckets

    def _write_back(self, group, entries, step):
        for roles, _ in entries:
            for w, dst, _ in roles:
                if dst is not None:
                    dst.copy_(w)  # rounded to nearest

    def _precision_switch(self, group, weight):
        items = [(j, p, None) for j, p in enumerate(group["params"])
                 if "z" in self.state.get(p, {})]
        for code, entries in self._work_buckets(group, items).items():
            ys = [roles[0][0] for roles, _ in entries]
            zs = [roles[1][0] for roles, _ in entries]
            _C.schedulefree_lerp(code, [y.numel() for y in ys], list(map(_data_ptr, ys)),
                                 list(map(_data_ptr, zs)), weight)
            # only the param is written (role 0); the step key 0 keeps the bits apart
            # from the updates' (steps >= 1)
            self._write_back(group, [([roles[0]], g) for roles, g in entries], 0)
        _increment_version([p for _, p, _ in items if not p.is_inference()])


def _lr_scale(group):
    """The factor on an attached Schedule (fastlr.ReduceLROnPlateau's cuts; 1 without)."""
    return float(group.get("lr_scale", 1.0))


def _precision_defaults(master_weights, state_dtype, stochastic_rounding, seed):
    if stochastic_rounding is True:
        raise NotImplementedError("stochastic_rounding is not available for the schedule-free "
                                  "optimizers yet (master_weights and state_dtype are)")
    return _precision.defaults(master_weights, state_dtype, stochastic_rounding, seed)


def _work(t, work, tid):
    """(a work tensor of dtype `work` for t, t if it must be written back else None, tid)."""
    if t.dtype == work and t.is_contiguous():
        return (t, None, tid)
    return (t.detach().to(work).contiguous(), t, tid)


def _lr_arg(lr):
    if isinstance(lr, _Schedule):
        return lr
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        lr = lr.item()
    return _real(lr, "learning rate")


class SGDScheduleFree(_ScheduleFreeOptimizer):
    """Schedule-free SGD (``schedulefree.SGDScheduleFree``).

    With ĝ = g + weight_decay·y and c the averaging weight of this step:
    ``y ← lerp(y, z, c) + lr·(momentum·(1−c) − 1)·ĝ``, ``z ← z − lr·ĝ``; the params hold y
    in train mode and x = (y − (1−momentum)·z)/momentum in eval mode. ``lr`` is warmed up
    linearly over ``warmup_steps``; ``c = w_k / Σ w`` with ``w_k = (k+1)^r · lr_max^weight_lr_power``.
    Needs a 10–50× larger lr than SGD with a schedule (default 1.0).

    >>> opt = SGDScheduleFree(model.parameters(), lr=1.0, warmup_steps=100)  # doctest: +SKIP
    """

    _kind = _SGD
    _beta1_key = "momentum"

    def __init__(self, params, lr: float | Tensor = 1.0, momentum: float = 0.9,
                 weight_decay: float = 0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2, foreach: bool | None = True, *,
                 master_weights: bool = False, state_dtype: torch.dtype | None = None,
                 stochastic_rounding: bool = False, seed: int = 0):
        lr = _lr_arg(lr)
        if not isinstance(momentum, numbers.Real) or isinstance(momentum, bool) or not 0 < momentum < 1:
            raise ValueError(f"Momentum must be between 0 and 1 exclusive: {momentum}")
        defaults = dict(lr=lr, momentum=momentum, r=r, warmup_steps=warmup_steps,
                        weight_lr_power=weight_lr_power, weight_decay=weight_decay, foreach=foreach,
                        **GROUP_START)
        defaults.update(_precision_defaults(master_weights, state_dtype, stochastic_rounding, seed))
        super().__init__(params, defaults)


class AdamWScheduleFree(_ScheduleFreeOptimizer):
    """Schedule-free AdamW (``schedulefree.AdamWScheduleFree``), winner of AlgoPerf 2024's
    self-tuning track.

    ``v ← β2·v + (1−β2)·g²``, ĝ = g / (√(v/(1−β2^(k+1))) + eps) + weight_decay·y, then the
    schedule-free step of :class:`SGDScheduleFree` with β1 in place of momentum. Typical lr:
    1–10× that of AdamW with a schedule (default 0.0025).

    >>> opt = AdamWScheduleFree(model.parameters(), lr=1e-2, warmup_steps=100)  # doctest: +SKIP
    """

    _kind = _ADAMW
    _beta1_key = "betas"

    def __init__(self, params, lr: float | Tensor = 0.0025, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, foreach: bool | None = True, *,
                 master_weights: bool = False, state_dtype: torch.dtype | None = None,
                 stochastic_rounding: bool = False, seed: int = 0):
        lr = _lr_arg(lr)
        defaults = dict(lr=lr, betas=betas, eps=eps, r=r, warmup_steps=warmup_steps,
                        weight_lr_power=weight_lr_power, weight_decay=weight_decay, foreach=foreach,
                        **GROUP_START)
        defaults.update(_precision_defaults(master_weights, state_dtype, stochastic_rounding, seed))
        super().__init__(params, defaults)


class RAdamScheduleFree(_ScheduleFreeOptimizer):
    """Schedule-free RAdam (``schedulefree.RAdamScheduleFree``): no warm-up to tune.

    As :class:`AdamWScheduleFree` with lr multiplied by RAdam's rectification
    ``√((ρ_t−4)(ρ_t−2)ρ_∞ / ((ρ_∞−4)(ρ_∞−2)ρ_t))`` once ``ρ_t > 4``; before that the step
    is plain SGD, or with ``silent_sgd_phase=True`` (default) only v is updated.
    """

    _kind = _RADAM
    _beta1_key = "betas"

    def __init__(self, params, lr: float | Tensor = 0.0025, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, foreach: bool | None = True,
                 silent_sgd_phase: bool = True, *, master_weights: bool = False,
                 state_dtype: torch.dtype | None = None, stochastic_rounding: bool = False,
                 seed: int = 0):
        lr = _lr_arg(lr)
        defaults = dict(lr=lr, betas=betas, eps=eps, r=r, weight_lr_power=weight_lr_power,
                        weight_decay=weight_decay, foreach=foreach, silent_sgd_phase=silent_sgd_phase,
                        **GROUP_START)
        defaults.update(_precision_defaults(master_weights, state_dtype, stochastic_rounding, seed))
        super().__init__(params, defaults)
