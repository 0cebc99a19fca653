"""Shared machinery of the drop-in torch optimizers: gather, validate, call the kernel.

A subclass says which state tensors its update reads and writes (its *roles*), how torch
initialises them, and how to call its ``fastlr._C`` kernel. This base turns a param group
into kernel calls: one call per (group, dtype) in the common case.

Per-step cost is kept small by caching a *plan* per param group: the params that have
grads, their data addresses, their state tensors and addresses, numels and the buckets
(one per dtype). Each step re-reads only what autograd may change — the grads (new
tensors after ``zero_grad(set_to_none=True)``) — and cheaply checks that the cached facts
still hold (param addresses, which params have grads, state tensor identity, the state
container's version). Anything else rebuilds the plan.

Per-param ``step`` counters stay 0-dim float32 CPU tensors, as torch keeps them, but are
views into one small buffer per plan, so advancing all of them is one ``add_``.
"""
from __future__ import annotations

import functools
import itertools
import operator
import sys
import warnings
from collections import defaultdict

import torch
from torch.optim import optimizer as _torch_optimizer
from torch.optim.optimizer import _get_scalar_dtype

try:  # the C++ RecordFunction behind record_function, without its op dispatch
    from torch._C._profiler import _RecordFunctionFast as _record_function
except ImportError:  # pragma: no cover
    _record_function = torch.autograd.profiler.record_function

from .. import _C
from . import _checkpoint, _cuda

try:  # fastlr.schedules is optional while it is being written
    from ..schedules import Schedule as _Schedule
except ImportError:  # pragma: no cover
    class _Schedule:  # nothing is an instance of it
        pass


_CODES = {
    torch.float32: 0,
    torch.float64: 1,
    torch.bfloat16: 2,
    torch.float16: 3,
    # complex tensors are updated as their real view (torch.view_as_real), as torch does
    torch.complex64: 0,
    torch.complex128: 1,
    torch.complex32: 3,
}
_is_ = operator.is_
_is_not = operator.is_not
_is_contiguous = torch.Tensor.is_contiguous
_data_ptr = torch.Tensor.data_ptr
_nbytes = operator.attrgetter("nbytes")
_increment_version = torch.autograd.graph.increment_version
_get_grad = operator.attrgetter("grad")
_NONE = itertools.repeat(None)  # map(_is_not, xs, _NONE): [x is not None for x in xs]
# largest step count below which a float32 counter advanced by add_(1.0) stays exact
_EXACT_STEPS = float(2**24)
# params on this device type go to fastlr._C; any other to _cuda.step_group (a test double
# changes it to route CPU tensors there, bench/bench_cuda_host.py)
_CPU = "cpu"


def _profile_hook_step(func):
    """torch's ``Optimizer.profile_hook_step`` (the profiler range
    ``Optimizer.step#<class>.step`` and the global and per-optimizer step pre/post hooks,
    in torch's order), with the C++ range object instead of ``record_function``'s op calls.
    Marked ``hooked`` so torch does not wrap it again."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        self = args[0]
        with _record_function(f"Optimizer.step#{self.__class__.__name__}.step"):
            if _torch_optimizer._global_optimizer_pre_hooks or self._optimizer_step_pre_hooks:
                for pre_hook in itertools.chain(
                    _torch_optimizer._global_optimizer_pre_hooks.values(),
                    self._optimizer_step_pre_hooks.values(),
                ):
                    result = pre_hook(self, args, kwargs)
                    if result is not None:
                        if isinstance(result, tuple) and len(result) == 2:
                            args, kwargs = result
                        else:
                            raise RuntimeError(
                                f"{func} must return None or a tuple of (new_args, new_kwargs), "
                                f"but got {result}."
                            )
            out = func(*args, **kwargs)
            self._optimizer_step_code()
            if self._optimizer_step_post_hooks or _torch_optimizer._global_optimizer_post_hooks:
                for post_hook in itertools.chain(
                    self._optimizer_step_post_hooks.values(),
                    _torch_optimizer._global_optimizer_post_hooks.values(),
                ):
                    post_hook(self, args, kwargs)
            return out

    wrapper.hooked = True
    return wrapper


def _compiler_boundary(func):
    """Runs ``func`` eagerly under ``torch.compile``: one graph break per ``opt.step()``,
    nothing of the step traced, nothing guarded on (Dynamo cannot trace the kernel call
    nor a Schedule's NumPy encoding, and tracing the per-param Python gave 16 breaks and
    recompiles per param). A custom op would still trace the plan's Python around it."""
    disable = getattr(torch, "_disable_dynamo", None) or torch.compiler.disable
    wrapped = disable(func)
    wrapped.hooked = True  # torch's _patch_step_function must not wrap it again
    return wrapped


class _State(defaultdict):
    """``optimizer.state``: a ``defaultdict(dict)`` that counts its own mutations, so
    cached plans notice a per-param state dict replaced by hand (e.g. by
    ZeroRedundancyOptimizer) without hashing every param each step."""

    def __init__(self, *args):
        super().__init__(dict, *args)
        self.version = 0

    def __reduce__(self):  # pickles as the plain defaultdict torch uses
        return (defaultdict, (dict, dict(self)))

    def __setitem__(self, key, value):
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.version += 1
        super().__delitem__(key)

    def _bump(name):  # noqa: N805 - helper building mutating methods
        method = getattr(defaultdict, name)

        def wrapper(self, *args, **kwargs):
            self.version += 1
            return method(self, *args, **kwargs)

        wrapper.__name__ = name
        return wrapper

    clear = _bump("clear")
    pop = _bump("pop")
    popitem = _bump("popitem")
    update = _bump("update")
    setdefault = _bump("setdefault")
    del _bump


def _is_dense(t):
    """True when t's elements fill its memory span exactly once in some dim order
    (contiguous, channels_last, transposed...), so a flat walk visits each once."""
    if t.is_contiguous():
        return True
    expected = 1
    for d in sorted(range(t.dim()), key=t.stride):
        size = t.shape[d]
        if size != 1:
            if t.stride(d) != expected:
                return False
            expected *= size
    return True


def _dtensor_class():
    """torch's DTensor class if something has imported it (FSDP2, tensor parallel), else
    None: no DTensor can exist before, and importing it here would cost seconds."""
    return getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)


def _local_grad(g, p):
    """The local shard of DTensor grad g laid out like param p. The update is elementwise,
    so each rank updates its shard of p with its shard of the grad and state, no gather."""
    if not hasattr(g, "_local_tensor"):  # a plain tensor (a group mixing both kinds)
        return g
    if g.placements != p.placements or g.device_mesh != p.device_mesh:
        g = g.redistribute(p.device_mesh, p.placements)
    return g._local_tensor


def _same_layout(x, p, p_contiguous):
    return x.is_contiguous() if p_contiguous else x.stride() == p.stride()


class _Bucket:
    """One kernel call: members of one dtype (and, for SGD, one first-step flag)."""

    __slots__ = ("code", "idx", "numel", "first", "tmp")

    def __init__(self, code, first):
        self.code = code
        self.first = first
        self.idx = []  # indices into plan.params
        self.numel = []
        self.tmp = False  # some member goes through contiguous temporaries


class _Plan:
    """What one param group's update looks like until something changes."""

    __slots__ = (
        "group", "params_list", "n_params", "mask", "key", "state", "state_version",
        "params", "p_addrs", "p_contig", "all_direct", "all_contig", "states", "roles", "role_tensors",
        "role_addrs", "buckets", "step_buf", "step_views", "pending", "other", "device_step",
        "direct", "single", "gidx", "full", "fresh", "dtensor",
        # cheap per-step checks: state keys with the step tensors they must still hold and
        # with the state tensors' addresses; grad sizes; the common step count while the
        # step buffer is untouched
        "checks", "addr_checks", "nbytes", "complex", "bump", "step_track", "step_ver", "step_common",
    )


class FastlrOptimizer(torch.optim.Optimizer):
    """Base of fastlr.optim's classes (not public API)."""

    _kind = ""  # "sgd" | "adam" | "rmsprop" | "adagrad"
    _has_step = True  # keeps state["step"]
    _momentum_key = None  # "momentum" or "betas" (index 0): may be a Schedule
    _sparse_ok = False  # torch's class accepts sparse grads (delegated to torch)
    _old_group_defaults = {}  # torch's __setstate__: group keys older pickles lack

    # ------------------------------------------------------------------ setup ---
    def __init__(self, params, defaults):
        self._fastlr_plans = {}
        self._fastlr_written = {}
        self._fastlr_warned = False
        super().__init__(params, defaults)
        self.state = _State(self.state)
        # GradScaler hands us grad_scale / found_inf: the kernel unscales in place of
        # a separate pass, and a step with an inf/nan gradient is skipped.
        self._step_supports_amp_scaling = True

    def __setstate__(self, state):
        super().__setstate__(state)
        if not isinstance(self.state, _State):
            self.state = _State(self.state)
        self.__dict__.setdefault("_fastlr_written", {})
        self.__dict__.setdefault("_fastlr_warned", False)
        self._fastlr_plans = {}
        self._step_supports_amp_scaling = True
        for group in self.param_groups:
            for key, value in self._old_group_defaults.items():
                group.setdefault(key, value)
            if self._has_step:  # an old pickle's number: torch's step tensor
                for p in group["params"]:
                    s = self.state.get(p)
                    if s and not torch.is_tensor(s["step"]):
                        s["step"] = self._new_step(p).fill_(float(s["step"]))

    def __getstate__(self):
        return {
            "defaults": self.defaults,
            "state": defaultdict(dict, self.state),
            "param_groups": self.param_groups,
        }

    def add_param_group(self, param_group):
        # checked before torch adds the group, so a refused group is not left behind
        if isinstance(param_group, dict):
            _check_not_differentiable(
                type(self).__name__,
                param_group.get("differentiable", self.defaults.get("differentiable", False)),
            )
            if self._momentum_key == "betas":
                betas = param_group.get("betas", self.defaults.get("betas"))
                if isinstance(betas, (tuple, list)) and betas and isinstance(betas[0], _Schedule):
                    peak = _schedule_peak(betas[0])
                    if not peak < 1.0:  # torch's range check, on the values the schedule takes
                        raise ValueError(f"Invalid beta parameter at index 0: {peak} "
                                         f"(the largest value of {betas[0]!r})")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _precision.check_group(type(self).__name__, group, self._kind)
        except Exception:
            self.param_groups.pop()  # a refused group is not left behind
            raise
        self._attach_schedules(group)
        self._fastlr_plans = {}

    def load_state_dict(self, state_dict):
        # Refuse a state_dict the kernels cannot use before anything is modified.
        _checkpoint.check_state_dict(self, state_dict)
        state_dict = _precision.keep_options(self, state_dict)
        super().load_state_dict(state_dict)
        _precision.convert_loaded_state(self, state_dict)
        self._fastlr_plans = {}
        self._fastlr_written = {}

    def _attach_schedules(self, group):
        """Moves a Schedule given as lr / momentum / betas[0] to lr_schedule /
        momentum_schedule and shows s(t) in the plain key."""
        lr = group["lr"]
        if isinstance(lr, _Schedule):
            group["lr_schedule"] = lr
        sched = group.get("lr_schedule")
        if sched is not None and not isinstance(sched, _Schedule):
            raise TypeError(f"lr_schedule must be a fastlr Schedule, got {type(sched).__name__}")
        msched = None
        key = self._momentum_key
        if key is not None:
            m = group[key][0] if key == "betas" else group[key]
            if isinstance(m, _Schedule):
                group["momentum_schedule"] = m
            msched = group.get("momentum_schedule")
            if msched is not None and not isinstance(msched, _Schedule):
                raise TypeError(
                    f"momentum_schedule must be a fastlr Schedule, got {type(msched).__name__}"
                )
        if sched is None and msched is None:
            return
        if sched is not None:
            group.setdefault("lr_scale", 1.0)
        group.setdefault("schedule_t", 0)
        self._show_schedules(group, group["schedule_t"])

    def _show_schedules(self, group, t):
        """Writes the values update t uses into group["lr"] (and momentum / betas[0])."""
        sched = group.get("lr_schedule")
        lr = mom = None
        if sched is not None:
            lr = group["lr_scale"] * _C.schedule_at(sched._encoding, t)
            group["lr"] = lr
        msched = group.get("momentum_schedule")
        if msched is not None:
            mom = _C.schedule_at(msched._encoding, t)
            if self._momentum_key == "betas":
                group["betas"] = (mom, group["betas"][1])
            else:
                group["momentum"] = mom
        self._fastlr_written[id(group)] = (
            group, lr, mom, t, group.get("lr_scale"), sched, msched,
        )

    def _sync_schedules(self, group):
        """Before an update: make group values equal the schedules at schedule_t; warn
        once when something else (a torch LRScheduler) wrote them in between."""
        key = self._momentum_key
        m = None if key is None else (group[key][0] if key == "betas" else group[key])
        if isinstance(group["lr"], _Schedule) or isinstance(m, _Schedule):
            # a Schedule written into lr / momentum is the one to use from now on, not a
            # foreign value: ZeroRedundancyOptimizer writes back the constructor's Schedule
            # before the first step of a group added with add_param_group
            self._attach_schedules(group)
            return
        t = group["schedule_t"]
        record = self._fastlr_written.get(id(group))
        if (
            record is not None
            and record[0] is group
            and record[3] == t
            and record[4] == group.get("lr_scale")
            and record[5] is group.get("lr_schedule")
            and record[6] is group.get("momentum_schedule")
            and (record[1] is None or group["lr"] == record[1])
            and (record[2] is None or m == record[2])
        ):
            return  # the values of update t are shown already and nobody changed them
        if record is not None and record[0] is group and not self._fastlr_warned:
            lr_w, mom_w = record[1], record[2]
            changed = []
            if lr_w is not None and group["lr"] != lr_w:
                sched = group["lr_schedule"]
                if group["lr"] != group["lr_scale"] * _C.schedule_at(sched._encoding, t):
                    changed.append("lr")
            if mom_w is not None:
                key = self._momentum_key
                m = group[key][0] if key == "betas" else group[key]
                if m != mom_w:
                    changed.append("betas[0]" if key == "betas" else key)
            if changed:
                self._fastlr_warned = True
                warnings.warn(
                    f"fastlr.optim.{type(self).__name__}: group['{changed[0]}'] was changed "
                    "outside the optimizer (e.g. by a torch LRScheduler) while a fastlr "
                    "Schedule is attached; the Schedule wins and the value is overwritten. "
                    "Scale a schedule with group['lr_scale'], or pass a float to let a torch "
                    "scheduler drive it.",
                    stacklevel=4,
                )
        self._show_schedules(group, t)

    # ---------------------------------------------------------- subclass API ---
    def _roles(self, group):
        """State keys the kernel reads/writes for this group's options, in call order."""
        raise NotImplementedError

    def _init_state(self, group, p, state):
        """torch's lazy state initialisation for p (any device)."""
        raise NotImplementedError

    def _call(self, group, b, addrs, step, grad_scale):
        """Calls the kernel for bucket b; addrs = (params, grads, *roles) address lists."""
        raise NotImplementedError

    def _sparse_step(self, group, params, grads, states, grad_scale):
        raise NotImplementedError

    def _sparse_error(self):
        raise NotImplementedError

    # ------------------------------------------------------------------- step ---
    @_compiler_boundary
    @_profile_hook_step
    def step(self, closure=None, *, grad_scale=None, found_inf=None):
        """Performs a single optimization step (one kernel call per group and dtype).

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
            grad_scale, found_inf (Tensor, optional): AMP scale and inf flag; normally
                set by ``torch.amp.GradScaler`` as attributes of the optimizer.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if grad_scale is None:
            grad_scale = getattr(self, "grad_scale", None)
        if found_inf is None:
            found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and float(found_inf) != 0.0:
            return loss  # GradScaler found inf/nan: skip the whole step, change nothing
        gs = 1.0 if grad_scale is None else float(grad_scale)
        if not isinstance(self.state, _State):  # reassigned by hand, e.g. to reset it
            self.state = _State(self.state)
        prev = torch.is_grad_enabled()  # torch.no_grad(), without its Python object
        torch._C._set_grad_enabled(False)
        try:
            for group in self.param_groups:
                self._step_group(group, gs, grad_scale, found_inf)
            if grad_scale is not None:
                self._unscale_grads(grad_scale)
        finally:
            torch._C._set_grad_enabled(prev)
        return loss

    def _unscale_grads(self, grad_scale):
        """torch's fused CPU kernels write the unscaled grads back (and GradScaler unscales
        them beforehand for the others), so code reading .grad after the step (logging,
        grad norms) sees the same values with fastlr. One foreach pass after the update."""
        grads = [
            g for group in self.param_groups for p in group["params"]
            if (g := p.grad) is not None and g.layout == torch.strided and g.device.type == _CPU
        ]
        if grads:
            torch._foreach_div_(grads, grad_scale)

    def _step_group(self, group, gs, grad_scale, found_inf):
        scheduled = "schedule_t" in group
        if scheduled:
            self._sync_schedules(group)
        if _precision.active(group):
            _precision.step_group(self, group, gs, grad_scale)
            if scheduled:
                group["schedule_t"] += 1
                self._show_schedules(group, group["schedule_t"])
            return
        params_all = group["params"]
        grads_all = list(map(_get_grad, params_all))
        mask = list(map(_is_not, grads_all, _NONE))
        roles = self._roles(group)
        plan = self._fastlr_plans.get(id(group))
        st = self.state
        if (
            plan is None
            or plan.group is not group
            or plan.params_list is not params_all
            or plan.n_params != len(params_all)
            or plan.mask != mask
            or plan.key != roles
            or plan.state is not st
            or plan.state_version != st.version
        ):
            plan = self._build_plan(group, params_all, grads_all, mask, roles)
        if plan is None:  # sparse grads: this step goes the slow way
            self._step_uncached(group, params_all, grads_all, roles, gs, grad_scale, found_inf)
        else:
            self._run_plan(group, plan, grads_all, gs, grad_scale, found_inf)
        if scheduled:
            group["schedule_t"] += 1
            self._show_schedules(group, group["schedule_t"])

    def _run_plan(self, group, plan, grads_all, gs, grad_scale, found_inf):
        if plan.other:
            self._step_other(group, plan, grads_all, grad_scale, found_inf)
        if not plan.params:
            return
        roles = plan.key
        # cached facts still true? (param storage swapped via .data, state tensors replaced)
        stale = False
        if plan.fresh:
            plan.fresh = False
        else:
            stale = list(map(_data_ptr, plan.params)) != plan.p_addrs
            if not stale and plan.checks is not None:
                states = plan.states
                try:
                    # state tensors by address: a tensor replaced in the state dict, or one
                    # whose storage moved (share_memory_(), `t.data = t.data.clone()`)
                    for getter, addrs in plan.addr_checks:
                        if list(map(_data_ptr, map(getter, states))) != addrs:
                            stale = True
                            break
                    else:
                        for getter, tensors in plan.checks:
                            if not all(map(_is_, map(getter, states), tensors)):
                                stale = True
                                break
                except KeyError:  # a state entry deleted by hand: rebuild (re-initialises)
                    stale = True
            elif not stale:  # DTensor params: compare local shards
                for role, tensors in zip(plan.roles, plan.role_tensors):
                    current = [s[role] for s in plan.states]
                    if plan.dtensor:
                        current = [getattr(t, "_local_tensor", t) for t in current]
                    if not all(map(_is_, current, tensors)):
                        stale = True
                        break
                if plan.step_views is not None and not all(
                    map(_is_, [s["step"] for s in plan.states], plan.step_views)
                ):
                    stale = True
        if stale:
            plan = self._build_plan(group, group["params"], grads_all, plan.mask, plan.key)
            if plan is None:
                self._step_uncached(group, group["params"], grads_all, roles, gs, grad_scale, found_inf)
                return
        grads = grads_all if plan.full else [grads_all[j] for j in plan.gidx]
        if plan.dtensor:
            grads = [_local_grad(g, p) for g, p in zip(grads, plan.dtensor)]
        if list(map(_nbytes, grads)) != plan.nbytes:
            # a grad of another size or width than its param (`g.data = ...`, `g.set_()`): the
            # kernel would read past it. A rebuild checks every grad against its param.
            plan = self._build_plan(group, group["params"], grads_all, plan.mask, plan.key)
            if plan is None:
                self._step_uncached(group, group["params"], grads_all, roles, gs, grad_scale, found_inf)
                return
            grads = grads_all if plan.full else [grads_all[j] for j in plan.gidx]
            if plan.dtensor:
                grads = [_local_grad(g, p) for g, p in zip(grads, plan.dtensor)]
        if plan.complex:  # a lazily conjugated / negated grad: its memory holds the other values
            grads = [g.resolve_conj().resolve_neg() if g.is_conj() or g.is_neg() else g for g in grads]
        try:
            g_addrs = list(map(_data_ptr, grads))
        except RuntimeError:  # a sparse grad has no data pointer
            self._fastlr_plans.pop(id(group), None)
            self._step_uncached(group, group["params"], grads_all, plan.key, gs, grad_scale, found_inf)
            return
        # Each grad must be laid out like its param, since the kernel walks both flat (a
        # grad object seen contiguous before may not be now: `g.data = g.data.t()`).
        grads_ok = plan.all_direct and (
            all(map(_is_contiguous, grads)) if plan.all_contig
            else all(map(_same_layout, grads, plan.params, plan.p_contig))
        )
        # step counts: a Python mirror of the common count while nothing but our add_
        # touched the buffer (its version counter is shared by the step views)
        buf = plan.step_buf
        steps = common = None
        if buf is not None:
            if plan.step_track and plan.step_ver == buf._version:
                common = plan.step_common
            if common is None:
                steps = buf.tolist()
                if steps.count(steps[0]) == len(steps):
                    common = steps[0]
        if plan.single and grads_ok and (buf is None or common is not None):
            self._call(group, plan.buckets[0], (plan.p_addrs, g_addrs, *plan.role_addrs),
                       None if buf is None else common + 1.0, gs)
        else:
            if buf is not None and steps is None:
                steps = buf.tolist()
            self._run_buckets(group, plan, grads, steps, gs)
        if buf is not None:
            buf.add_(1.0)
            if plan.step_track:
                nxt = None if common is None else common + 1.0
                if nxt is not None and not (nxt.is_integer() and 0.0 < nxt < _EXACT_STEPS):
                    nxt = None
                plan.step_common = nxt
                plan.step_ver = buf._version
        if plan.bump:
            # the kernel wrote through raw pointers: tell autograd, as torch's in-place
            # updates do, so a backward through values saved before the step raises
            _increment_version(plan.bump)
        for p, role, t in plan.pending:
            self.state[p][role] = t  # torch stores the first momentum buffer after the step
        if plan.pending:
            self._fastlr_plans.pop(id(group), None)

    def _run_buckets(self, group, plan, grads, steps, gs):
        """General case: several dtypes, first-step buffers, temporaries for
        non-contiguous tensors, differing step counts."""
        params = plan.params
        for b in plan.buckets:
            p_mem, g_mem, r_mem, copy_back = [], [], [[] for _ in plan.roles], []
            for i in b.idx:
                p = params[i]
                g = grads[i]
                p_contig = plan.p_contig[i]
                if plan.direct[i]:
                    pm = p
                    rm = [plan.role_tensors[r][i] for r in range(len(plan.roles))]
                else:  # run through contiguous temporaries, copied back after the call
                    pm = p.contiguous()
                    rm = [t.contiguous() for t in (plan.role_tensors[r][i] for r in range(len(plan.roles)))]
                    if pm is not p:
                        copy_back.append((p, pm))
                    for r, t in enumerate(rm):
                        orig = plan.role_tensors[r][i]
                        if t is not orig:
                            copy_back.append((orig, t))
                    p_contig = True
                if not _same_layout(g, pm, p_contig):
                    g = torch.empty_like(pm).copy_(g)
                p_mem.append(pm)
                g_mem.append(g)
                for r in range(len(plan.roles)):
                    r_mem[r].append(rm[r])
            addrs = (
                [t.data_ptr() for t in p_mem],
                [t.data_ptr() for t in g_mem],
                *[[t.data_ptr() for t in ts] for ts in r_mem],
            )
            if steps is None:
                self._call(group, b, addrs, None, gs)
            else:
                # one call per distinct step count (params that missed updates lag behind)
                by_step = {}
                for k, i in enumerate(b.idx):
                    by_step.setdefault(steps[i], []).append(k)
                if len(by_step) == 1:
                    self._call(group, b, addrs, steps[b.idx[0]] + 1.0, gs)
                else:
                    for s, ks in by_step.items():
                        sub = _Bucket(b.code, b.first)
                        sub.numel = [b.numel[k] for k in ks]
                        sub_addrs = tuple([a[k] for k in ks] for a in addrs)
                        self._call(group, sub, sub_addrs, s + 1.0, gs)
            for dst, src in copy_back:
                dst.copy_(src)

    # ------------------------------------------------------------------- plan ---
    def _build_plan(self, group, params_all, grads_all, mask, roles):
        """Gathers, initialises and validates; None when a grad is sparse."""
        st = self.state
        plan = _Plan()
        plan.group = group
        plan.params_list = params_all
        plan.n_params = len(params_all)
        plan.mask = mask
        plan.key = roles
        plan.roles = roles
        plan.other = []  # indices of params on another device (with grads)
        plan.device_step = None
        plan.pending = []
        params, gidx, states, role_tensors = [], [], [], [[] for _ in roles]
        need_state = bool(roles) or self._has_step
        seen = set()
        for j, (p, g) in enumerate(zip(params_all, grads_all)):
            if g is None:
                continue
            if id(p) in seen:
                # a param listed twice (torch warns, then updates it twice per step): updated
                # once, as one kernel call must not write the same memory from two places
                continue
            seen.add(id(p))
            if g.is_sparse:
                return None
            if p.device.type != _CPU:
                plan.other.append(j)
                continue
            if g.shape != p.shape or g.dtype != p.dtype:
                raise RuntimeError(
                    f"fastlr.optim.{type(self).__name__}: the grad of params[{j}] has shape "
                    f"{tuple(g.shape)} and dtype {g.dtype}, but the param has shape {tuple(p.shape)} "
                    f"and dtype {p.dtype}"
                )
            params.append(p)
            gidx.append(j)
            if need_state:
                s = st[p]
                if len(s) == 0:
                    self._init_state(group, p, s)
                states.append(s)
        # DTensor params (FSDP2): the kernel sees local shards of params, grads and state;
        # plan.dtensor keeps the DTensors (state keys, grad placements)
        dt = _dtensor_class()
        plan.dtensor = None
        if dt is not None and any(isinstance(p, dt) for p in params):
            plan.dtensor = params
            params = [getattr(p, "_local_tensor", p) for p in params]
        plan.params = params
        plan.gidx = gidx
        plan.full = len(gidx) == len(params_all)
        plan.states = states
        # roles, validation, layout
        plan.p_contig = []
        plan.direct = []
        buckets = {}
        for i, p in enumerate(params):
            code = _CODES.get(p.dtype)
            if code is None:
                raise TypeError(
                    f"fastlr.optim.{type(self).__name__}: params[{i}] has dtype {p.dtype}; "
                    "supported: float32, float64, bfloat16, float16 (and complex64/128)"
                )
            first = False
            tensors = []
            for r, role in enumerate(roles):
                t = states[i].get(role)
                if t is None and self._kind == "sgd":
                    # torch's first momentum step: buffer := grad (the kernel writes it)
                    key_p = p if plan.dtensor is None else plan.dtensor[i]
                    t = torch.zeros_like(key_p, memory_format=torch.preserve_format)
                    plan.pending.append((key_p, role, t))
                    first = True
                elif t is None:
                    raise KeyError(role)
                if plan.dtensor is not None:
                    t = getattr(t, "_local_tensor", t)
                if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
                    raise RuntimeError(
                        f"fastlr.optim.{type(self).__name__}: state['{role}'] of params[{i}] has "
                        f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}; expected "
                        f"{tuple(p.shape)}, {p.dtype}, {p.device} like the param"
                    )
                tensors.append(t)
                role_tensors[r].append(t)
            p_contig = p.is_contiguous()
            direct = (p_contig or _is_dense(p)) and all(
                _same_layout(t, p, p_contig) for t in tensors
            )
            plan.p_contig.append(p_contig)
            plan.direct.append(direct)
            n = p.numel() * (2 if p.is_complex() else 1)
            key = (code, first)
            b = buckets.get(key)
            if b is None:
                b = buckets[key] = _Bucket(code, first)
            b.idx.append(i)
            b.numel.append(n)
            if not direct:
                b.tmp = True
        plan.buckets = list(buckets.values())
        plan.role_tensors = role_tensors
        plan.all_direct = all(plan.direct)
        plan.all_contig = all(plan.p_contig)
        plan.p_addrs = [p.data_ptr() for p in params]
        plan.nbytes = [p.nbytes for p in params]
        plan.complex = any(p.is_complex() for p in params)
        plan.bump = [p for p in params if not p.is_inference()]
        plan.role_addrs = [[t.data_ptr() for t in ts] for ts in role_tensors]
        plan.single = len(plan.buckets) == 1 and plan.all_direct and not plan.other
        # step counters: views into one buffer, so one add_ advances them all
        plan.step_buf = plan.step_views = None
        if self._has_step and params:
            cpu_steps = [s["step"] for s in states]
            plan.step_buf = torch.tensor(
                [float(x) for x in cpu_steps], dtype=_get_scalar_dtype()
            )
            plan.step_views = list(plan.step_buf.unbind())
            for s, v in zip(states, plan.step_views):
                s["step"] = v
        plan.step_track = plan.step_buf is not None and not plan.step_buf.is_inference()
        plan.step_ver = -1
        plan.step_common = None
        plan.checks = plan.addr_checks = None
        if plan.dtensor is None:
            # state tensors by address (first-step SGD buffers are not in the state yet)
            plan.addr_checks = [] if plan.pending else [
                (operator.itemgetter(role), addrs) for role, addrs in zip(roles, plan.role_addrs)
            ]
            plan.checks = []
            if plan.step_views is not None:
                plan.checks.append((operator.itemgetter("step"), plan.step_views))
        plan.state = st
        plan.state_version = st.version
        plan.fresh = True
        self._fastlr_plans[id(group)] = plan
        return plan

    # --------------------------------------------------------- slow paths ---
    def _step_uncached(self, group, params_all, grads_all, roles, gs, grad_scale, found_inf):
        """A step with sparse grads: torch's own code for those (SGD/Adagrad) or torch's
        error (Adam/RMSprop); the kernel for the rest."""
        sparse_p, sparse_g, dense_g = [], [], []
        for p, g in zip(params_all, grads_all):
            if g is None:
                continue
            if g.is_sparse:
                if not self._sparse_ok:
                    raise RuntimeError(self._sparse_error())
                sparse_p.append(p)
                sparse_g.append(g)
                dense_g.append(None)
            else:
                dense_g.append(g)
        if sparse_p:
            states = []
            for p in sparse_p:
                if roles or self._has_step:
                    s = self.state[p]
                    if len(s) == 0:
                        self._init_state(group, p, s)
                else:  # SGD without momentum keeps no state, as torch
                    s = {}
                states.append(s)
            if gs != 1.0:
                sparse_g = [g * (1.0 / gs) for g in sparse_g]
            self._sparse_step(group, sparse_p, sparse_g, states, grad_scale)
        # the dense rest: a one-off plan over params whose grads are dense
        dense_grads_all = [
            None if (g is None or g.is_sparse) else g for g in grads_all
        ]
        dmask = [g is not None for g in dense_grads_all]
        plan = self._build_plan(group, params_all, dense_grads_all, dmask, roles)
        self._fastlr_plans.pop(id(group), None)
        if plan is not None:
            self._run_plan(group, plan, dense_grads_all, gs, grad_scale, found_inf)

    def _step_other(self, group, plan, grads_all, grad_scale, found_inf):
        """Params on other devices (CUDA): fastlr/optim/_cuda.py; plan.other lists them."""
        other = plan.other  # increasing indices: as many as grads_all means all of them
        grads = grads_all if len(other) == len(grads_all) else [grads_all[j] for j in other]
        cached = plan.device_step
        if cached is not None and cached.step(group, grads, grad_scale, found_inf):
            return
        params_all = plan.params_list
        params, states, new = [], [], []
        need_state = bool(self._roles(group)) or self._has_step
        for j in plan.other:
            p = params_all[j]
            s = self.state.get(p)
            if s is None or (need_state and not s):
                s = {}  # stored once the update has accepted its input
                if need_state:
                    self._init_state(group, p, s)
                new.append((p, s))
            params.append(p)
            states.append(s)
        plan.device_step = _cuda.step_group(
            self._kind, group, params, grads, states, grad_scale, found_inf
        )
        for p, s in new:
            self.state[p] = s

    # ----------------------------------------------------------- helpers ---
    @staticmethod
    def _new_step(p):
        """torch's step tensor for the non-fused, non-capturable path: a 0-dim CPU
        tensor (float32, float64 under a float64 default dtype), also for meta params;
        fused-style 0-dim float32 on the device for other params off the CPU."""
        if p.device.type in ("cpu", "meta"):  # meta: on the CPU as torch keeps it
            return torch.tensor(0.0, dtype=_get_scalar_dtype())
        return torch.zeros((), dtype=torch.float32, device=p.device)


def _schedule_peak(schedule):
    """The largest value a Schedule takes over the steps that show its whole shape (its
    plot horizon, at most 2**16 steps): what torch's range checks are applied to."""
    return float(schedule.values(min(schedule._horizon(), 1 << 16)).max())


def _check_not_differentiable(name, differentiable):
    if differentiable:
        raise NotImplementedError(
            f"fastlr.optim.{name} does not support differentiable=True; use torch.optim.{name}"
        )


def _scalar(x):
    return x if type(x) is float else float(x)


from . import _precision  # noqa: E402  (it builds on this module's helpers)
