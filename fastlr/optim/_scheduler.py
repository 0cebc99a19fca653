"""In-kernel schedules seen from the frameworks' side.

* :class:`ScheduleLR`: the object to hand a framework (HF Trainer, Lightning, timm-style
  loops) as "the scheduler" of a fastlr optimizer whose lr is a Schedule. It is a real
  ``torch.optim.lr_scheduler.LRScheduler``; it reports the lr the kernel will use and
  never writes one, so it cannot fight the in-kernel schedule.
* :func:`to_torch_state_dict` and :func:`torch_lr_scheduler`: move a checkpoint of a
  scheduled fastlr optimizer into ``torch.optim`` so that torch continues the schedule
  (a plain ``load_state_dict`` would train at the lr shown at save time, forever).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from . import _precision
from ._base import _compiler_boundary, _Schedule

__all__ = ["ScheduleLR", "to_torch_state_dict", "torch_lr_scheduler"]

# Keys fastlr.optim adds to a param group with a Schedule attached.
_FASTLR_GROUP_KEYS = ("lr_schedule", "momentum_schedule", "lr_scale", "schedule_t")

def _schedule_t(group):
    """Updates the group's schedule has made: fastlr.optim's ``schedule_t``, or the
    schedule-free classes' ``k`` (their Schedule is evaluated at k)."""
    t = group.get("schedule_t")
    return int(group.get("k", 0) if t is None else t)


def _lr_values(optimizer):
    # copies, as torch's get_last_lr: a caller editing a tensor must not change the lr
    return [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
            for g in optimizer.param_groups]


class ScheduleLR(LRScheduler):
    """The scheduler of a fastlr optimizer whose schedules run in the kernel.

    A ``torch.optim.lr_scheduler.LRScheduler`` that changes nothing: the optimizer
    evaluates its Schedules itself (``group["lr"]`` shows the value the next update uses).
    ``step()`` records those values and ``get_last_lr()`` returns them, as torch's
    schedulers do: after ``opt.step(); sched.step()`` they are the lr of the next update;
    between the two, the lr of the update just made (what HF Trainer logs). So a
    framework that logs the lr through its scheduler (HF Trainer, Lightning's
    ``LearningRateMonitor``, a timm-style loop) logs the lr in use. Hand it wherever a framework wants a scheduler; stepping it (per update,
    per epoch, or not at all) never changes training.

    Args:
        optimizer: the optimizer (usually a ``fastlr.optim`` one with a Schedule lr; any
            torch optimizer works, the lr then stays what it is).
        last_epoch: torch's resume index (default -1: a fresh scheduler).

    ``step(epoch=None, metric=None)`` counts calls in ``last_epoch`` (an ``epoch``
    sets it, without torch's deprecation warning); ``step_update(num_updates,
    metric=None)`` is timm's per-update hook, a no-op. ``state_dict()`` /
    ``load_state_dict()`` round-trip as torch's.

    >>> import torch, fastlr
    >>> w = torch.zeros(3, requires_grad=True)
    >>> opt = fastlr.optim.AdamW([w], lr=fastlr.Warmup(fastlr.Cosine(1e-3, 100), 10))
    >>> sched = fastlr.optim.ScheduleLR(opt)
    >>> w.grad = torch.ones(3); opt.step(); sched.step()
    >>> sched.get_last_lr() == [opt.param_groups[0]["lr"]] == [1e-4]
    True
    """

    def __init__(self, optimizer, last_epoch=-1):
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        """The lr each group's next update uses (what the optimizer shows)."""
        return _lr_values(self.optimizer)

    # a compiler boundary as opt.step(): traced, its reads of the changing group["lr"]
    # floats would be guarded on, and a compiled step calling it recompile every step
    @_compiler_boundary
    def step(self, epoch=None, metric=None):
        """Counts a step and records the optimizer's lr values; changes none (the kernel
        evaluates the schedules)."""
        self._step_count += 1
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        self._last_lr = _lr_values(self.optimizer)

    def step_update(self, num_updates, metric=None):
        """timm's per-update call: nothing to do, the kernel counts updates."""


def _state_dict_of(source, name):
    if isinstance(source, torch.optim.Optimizer):
        return source.state_dict()
    if isinstance(source, Mapping) and "param_groups" in source:
        return source
    raise TypeError(f"{name}: source must be a torch/fastlr optimizer or its state_dict(), "
                    f"got {type(source).__name__}")


def _check_schedule_group(group, where):
    sched = group.get("lr_schedule")
    if sched is not None and not isinstance(sched, _Schedule):
        raise TypeError(f"{where}['lr_schedule'] must be a fastlr Schedule, got {type(sched).__name__}")
    msched = group.get("momentum_schedule")
    if msched is not None and not isinstance(msched, _Schedule):
        raise TypeError(f"{where}['momentum_schedule'] must be a fastlr Schedule, got {type(msched).__name__}")
    return sched, msched


def to_torch_state_dict(source, params=None):
    """A copy of a fastlr optimizer's state_dict in torch.optim's plain layout.

    Groups lose fastlr's schedule keys (``lr_schedule``, ``momentum_schedule``,
    ``lr_scale``, ``schedule_t``); ``lr`` (and ``momentum`` / ``betas[0]``) hold the
    values the next update would use. Load it into the torch.optim class of the same
    name, then continue the schedule with :func:`torch_lr_scheduler` (torch has no
    momentum scheduler: a momentum schedule is frozen at its current value, with a
    warning). State saved with ``master_weights`` / ``state_dtype`` /
    ``stochastic_rounding`` becomes torch's float32 state, their group keys are dropped
    and, with ``params``, each master is copied into its param
    (``fastlr.optim._precision.to_torch_state_dict``). Tensors that need no conversion
    are shared with ``source``, not copied; ``source`` is not modified.

    Args:
        source: a ``fastlr.optim`` optimizer or its ``state_dict()`` (e.g. from a
            checkpoint file).
        params: optional, the params the torch optimizer will update, in its order: each
            receives its ``master_param`` (rounded to the param's dtype).

    Returns:
        dict: ``{"state": ..., "param_groups": [...]}`` for ``torch_optimizer.load_state_dict``.
    """
    sd = _state_dict_of(source, "to_torch_state_dict")
    out = {"state": dict(sd["state"]), "param_groups": [dict(g) for g in sd["param_groups"]]}
    frozen = []
    for i, group in enumerate(out["param_groups"]):
        sched, msched = _check_schedule_group(group, f"to_torch_state_dict: param_groups[{i}]")
        t = _schedule_t(group)
        if sched is not None:
            group["lr"] = float(group.get("lr_scale", 1.0)) * sched(t)
        if msched is not None:
            m = msched(t)
            if "betas" in group:
                group["betas"] = (m, group["betas"][1])
            else:
                group["momentum"] = m
            frozen.append(i)
        for key in _FASTLR_GROUP_KEYS:
            group.pop(key, None)
    if frozen:
        warnings.warn(
            f"to_torch_state_dict: the momentum schedule of param_groups {frozen} is frozen at its "
            "current value (torch.optim has no momentum scheduler)", stacklevel=2,
        )
    return _precision.to_torch_state_dict(out, params)


class ScheduleLambda:
    """``lr_scale * schedule(t0 + k)``: a LambdaLR factor continuing a fastlr group's
    schedule after ``t0`` updates. A callable object (not a function), so torch's
    ``LambdaLR.state_dict()`` saves it and ``load_state_dict`` restores it."""

    def __init__(self, schedule=None, lr_scale=1.0, t0=0):
        self.schedule = schedule
        self.lr_scale = float(lr_scale)
        self.t0 = int(t0)

    def __call__(self, k):
        if self.schedule is None:
            return 1.0
        return self.lr_scale * self.schedule(self.t0 + k)

    def __repr__(self):
        return f"ScheduleLambda({self.schedule!r}, lr_scale={self.lr_scale}, t0={self.t0})"


def torch_lr_scheduler(optimizer, source):
    """A torch ``LambdaLR`` on ``optimizer`` (a torch.optim optimizer) that continues the
    Schedules of ``source`` at the step they reached: after ``k`` of its ``step()`` calls,
    group ``i``'s lr is ``lr_scale * schedule(schedule_t + k)``, the value fastlr would
    use, to the bit. Groups without a Schedule keep their lr.

    Sets ``group["initial_lr"]`` of the scheduled groups to 1.0 (LambdaLR's base, so the
    factor is the lr); call it after ``optimizer.load_state_dict(to_torch_state_dict(source))``.

    Args:
        optimizer: the torch.optim optimizer that continues the training.
        source: the fastlr optimizer or its ``state_dict()``.

    >>> import torch, fastlr
    >>> w = torch.zeros(2, requires_grad=True)
    >>> opt = fastlr.optim.SGD([w], lr=fastlr.Exponential(1.0, gamma=0.5))
    >>> w.grad = torch.ones(2); opt.step()
    >>> sd = opt.state_dict()                        # e.g. from a checkpoint file
    >>> t_opt = torch.optim.SGD([w], lr=0.1)
    >>> t_opt.load_state_dict(fastlr.optim.to_torch_state_dict(sd))
    >>> sched = fastlr.optim.torch_lr_scheduler(t_opt, sd)
    >>> t_opt.step(); sched.step(); t_opt.param_groups[0]["lr"]
    0.25
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"torch_lr_scheduler: optimizer must be a torch Optimizer, got {type(optimizer).__name__}")
    sd = _state_dict_of(source, "torch_lr_scheduler")
    groups = sd["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(f"torch_lr_scheduler: source has {len(groups)} param groups, optimizer has "
                         f"{len(optimizer.param_groups)}")
    lambdas = []
    for i, (saved, group) in enumerate(zip(groups, optimizer.param_groups)):
        sched, _ = _check_schedule_group(saved, f"torch_lr_scheduler: source param_groups[{i}]")
        if sched is None:
            lr = group["lr"]
            group["initial_lr"] = lr.clone() if isinstance(lr, torch.Tensor) else lr
            lambdas.append(ScheduleLambda())
        else:
            group["initial_lr"] = 1.0
            lambdas.append(ScheduleLambda(sched, saved.get("lr_scale", 1.0), _schedule_t(saved)))
    return LambdaLR(optimizer, lambdas)
