"""ReduceLROnPlateau with torch's semantics that composes with in-kernel schedules.

Needs no torch: it reads and writes ``optimizer.param_groups`` only, so it drives a
``torch.optim`` optimizer, a ``fastlr.optim`` optimizer, or anything with param groups.
When torch is loaded, the class is also a subclass of torch's ``ReduceLROnPlateau``
(frameworks such as Lightning accept a plateau scheduler by that ``isinstance``);
``fastlr.optim.ReduceLROnPlateau`` always is.
"""
from __future__ import annotations

import math
import numbers
import sys
import warnings

__all__ = ["ReduceLROnPlateau"]


def _is_tensor(x):
    return hasattr(x, "fill_") and hasattr(x, "item")


def _set_lr(group, value):
    # A tensor lr (capturable / compiled optimizers) is updated in place, never replaced by
    # a float (pytorch#163093): exactly what torch's _update_param_group_val does.
    if _is_tensor(group["lr"]):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def _lr_list(optimizer):
    return [g["lr"].clone() if _is_tensor(g["lr"]) else g["lr"] for g in optimizer.param_groups]


def _real(name, value, *, lo=None, lo_open=False, hi=None, hi_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"ReduceLROnPlateau: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"ReduceLROnPlateau: {name} must not be NaN")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"ReduceLROnPlateau: {name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"ReduceLROnPlateau: {name} must be {'<' if hi_open else '<='} {hi}, got {value!r}")
    return value


def _count(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"ReduceLROnPlateau: {name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"ReduceLROnPlateau: {name} must be >= 0, got {value}")
    return int(value)


class _ReduceLROnPlateau:
    """Reduces the learning rate when a metric has stopped improving: torch's
    ``torch.optim.lr_scheduler.ReduceLROnPlateau``, step for step.

    After each ``step(metric)``: the metric is *better* if
    ``metric < best * (1 - threshold)`` ("min", "rel"), ``metric < best - threshold``
    ("min", "abs"), ``metric > best * (1 + threshold)`` ("max", "rel") or
    ``metric > best + threshold`` ("max", "abs"); a better metric becomes ``best`` and
    zeroes the bad-epoch count, any other adds one. During a cooldown the counter
    ``cooldown_counter`` is decremented and the bad count zeroed. When the bad count
    exceeds ``patience`` every group's lr is reduced, the cooldown starts and the bad
    count is zeroed. So with a flat metric the first reduction comes at step
    ``patience + 1`` and then every ``patience + cooldown + 1`` steps.

    Reducing a group:

    * without a schedule (a torch optimizer, or a fastlr group with a float lr):
      ``new = max(lr * factor, min_lr)``, written to ``group["lr"]`` only if
      ``lr - new > eps`` (a tensor lr is filled in place) — torch's rule;
    * with a fastlr Schedule attached (``group["lr_schedule"]``), the lr in use is
      ``lr_scale * s(t)``. The reduction multiplies ``group["lr_scale"]`` by ``factor``,
      so the schedule keeps its shape (a cosine can still be cut on a plateau). The
      floor: with ``lr = lr_scale * s(t)`` the value the next update uses (``t`` = the
      group's completed steps), ``new = max(lr * factor, min_lr)`` exactly as above and,
      if ``lr - new > eps``, ``lr_scale`` becomes ``lr_scale * factor`` (or
      ``lr_scale * min_lr / lr`` where the floor binds). So a reduction never takes the lr
      of the next update below ``min_lr`` and never raises the scale; the schedule's own
      decay after that may (``min_lr`` bounds what the plateau does, not the schedule).
      ``group["lr"]`` is refreshed to the new ``lr_scale * s(t)``.

    Args:
        optimizer: an optimizer with ``param_groups`` (torch.optim, fastlr.optim).
        mode: "min" (the metric should decrease) or "max".
        factor: multiplier of the lr at a reduction, 0 <= factor < 1.
        patience: number of bad epochs tolerated; the next one reduces.
        threshold: the margin that counts as an improvement (>= 0).
        threshold_mode: "rel" or "abs" (see above).
        cooldown: epochs after a reduction during which bad epochs are not counted.
        min_lr: floor of the lr, a float or one per param group.
        eps: a reduction smaller than this is skipped.

    ``state_dict()`` holds the same keys as torch's (so either loads the other's);
    ``get_last_lr()`` lists the lr of every group after the last step.

    >>> import torch, fastlr
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    >>> sched = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    >>> for loss in [1.0, 1.0, 1.0]:
    ...     sched.step(loss)
    >>> sched.get_last_lr()
    [0.5]
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0, eps=1e-8):
        groups = getattr(optimizer, "param_groups", None)
        if not isinstance(groups, list):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer (it has no param_groups list)")
        _real("factor", factor, lo=0.0)
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be < 1.0, got {factor!r}")
        self.factor = factor
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(groups):
                raise ValueError(f"ReduceLROnPlateau: expected {len(groups)} min_lrs, got {len(min_lr)}")
            for i, m in enumerate(min_lr):
                _real(f"min_lr[{i}]", m, lo=0.0)
            self.default_min_lr = None
            self.min_lrs = list(min_lr)
        else:
            _real("min_lr", min_lr, lo=0.0)
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(groups)
        self.patience = _count("patience", patience)
        self.cooldown = _count("cooldown", cooldown)
        self.eps = _real("eps", eps, lo=0.0)
        _real("threshold", threshold, lo=0.0)
        self.last_epoch = 0
        self._last_lr = _lr_list(optimizer)
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        self._reset()

    def _reset(self):
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics, epoch=None):
        """Records one value of the monitored metric (a number or a 0-dim tensor) and
        reduces the lr if it has not improved for more than ``patience`` steps. ``epoch``
        (deprecated in torch, accepted with its warning) sets ``last_epoch``."""
        current = float(metrics)
        if epoch is None:
            self.last_epoch += 1
        else:
            warnings.warn("The epoch parameter in `scheduler.step()` was not necessary and is being "
                          "deprecated where possible. Please use `scheduler.step()` to step the scheduler. "
                          "During the deprecation, if epoch is different from None, the closed form is "
                          "used instead of the new chainable form, where available.", UserWarning)
            self.last_epoch = epoch
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown are ignored
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = _lr_list(self.optimizer)

    def _reduce_lr(self):
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"The number of param groups in the `optimizer` ({len(groups)}) differs from when "
                    f"`ReduceLROnPlateau` was initialized ({len(self.min_lrs)}), usually due to a new "
                    "param group being added to the optimizer. Please modify the `min_lrs` field to "
                    "match the length of the `optimizer` param groups."
                )
            self.min_lrs = [self.default_min_lr] * len(groups)
        for i, group in enumerate(groups):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, self.min_lrs[i])
            if not old_lr - new_lr > self.eps:
                continue
            if group.get("lr_schedule") is None:
                _set_lr(group, new_lr)
                continue
            scale = float(group.get("lr_scale", 1.0))
            # old_lr = scale * s(t) > 0 here (old_lr - new_lr > eps >= 0 and new_lr >= 0).
            if new_lr == old_lr * self.factor:
                new_scale = scale * self.factor
            else:  # the floor binds
                new_scale = scale * (new_lr / old_lr)
            group["lr_scale"] = new_scale
            t = group.get("schedule_t")  # fastlr.optim's count of the group's updates
            if t is None:
                t = group.get("k")  # the schedule-free classes' count
            if t is not None:  # the same product the optimizer shows, to the last bit
                _set_lr(group, new_scale * group["lr_schedule"](int(t)))
            else:
                _set_lr(group, new_scale * (old_lr / scale))

    @property
    def in_cooldown(self):
        return self.cooldown_counter > 0

    def _is_better(self, a, best):
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min" and self.threshold_mode == "abs":
            return a < best - self.threshold
        if self.mode == "max" and self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def _init_is_better(self, mode, threshold, threshold_mode):
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def get_last_lr(self):
        """The lr of every param group after the last ``step`` (or at construction)."""
        return self._last_lr

    def state_dict(self):
        """Every attribute but the optimizer: the same keys as torch's ReduceLROnPlateau."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        """Restores a state saved by ``state_dict()`` (this class's or torch's)."""
        self.__dict__.update(state_dict)
        self._init_is_better(mode=self.mode, threshold=self.threshold, threshold_mode=self.threshold_mode)

    def __repr__(self):
        return (f"ReduceLROnPlateau(mode={self.mode!r}, factor={self.factor}, patience={self.patience}, "
                f"threshold={self.threshold}, threshold_mode={self.threshold_mode!r}, "
                f"cooldown={self.cooldown}, min_lr={self.min_lrs if self.default_min_lr is None else self.default_min_lr}, "
                f"eps={self.eps})")


_torch_class = None


def torch_plateau_class():
    """The class as a subclass of ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (imports
    torch). Its own methods run; torch's constructor does not (nothing of it is needed)."""
    global _torch_class
    if _torch_class is None:
        from torch.optim.lr_scheduler import ReduceLROnPlateau as _TorchPlateau

        _torch_class = type("ReduceLROnPlateau", (_ReduceLROnPlateau, _TorchPlateau), {
            "__module__": __name__,
            "__qualname__": "TorchReduceLROnPlateau",
            "__doc__": _ReduceLROnPlateau.__doc__,
        })
    return _torch_class


# torch already loaded (a training script): the subclass, so isinstance checks of
# torch's plateau scheduler pass; else the plain class (`import fastlr` imports no torch)
_ReduceLROnPlateau.__name__ = "ReduceLROnPlateau"
ReduceLROnPlateau = torch_plateau_class() if "torch" in sys.modules else _ReduceLROnPlateau
TorchReduceLROnPlateau = _torch_class  # pickles by this name
