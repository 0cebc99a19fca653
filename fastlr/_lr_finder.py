"""The LR range test (LR finder): raise the lr every batch, record the loss, suggest an lr.

torch is imported lazily (inside ``find_lr``), matplotlib only by ``LRFinderResult.plot``.
"""
from __future__ import annotations

import copy
import math
import numbers
import warnings

import numpy as np

__all__ = ["find_lr", "LRFinderResult"]

# The ends of the curve that the suggestions ignore, as fastai's lr_find and
# torch-lr-finder's plot do: the first num_steps // 10 points (the EMA is still settling and
# the lr too small to move anything) and the last 5 (the blow-up).
_SKIP_END = 5
_MIN_WINDOW = 3


def _suggestion_window(n, num_steps):
    """Index range [lo, hi) of the recorded points the suggestions look at."""
    lo, hi = num_steps // 10, n - _SKIP_END
    if hi - lo < _MIN_WINDOW:  # stopped early: keep the start skip, give up the end one
        hi = n
    if hi - lo < _MIN_WINDOW:
        lo = 0
    return lo, hi


def _steepest(lrs, losses):
    """Index of the most negative d(loss)/d(log lr) (np.gradient, second-order in the
    interior, on the actual log-lr spacing)."""
    if len(lrs) < 2:
        return 0
    grad = np.gradient(losses, np.log(lrs))
    return int(np.argmin(grad))


def _valley(losses):
    """fastai's ``valley``: the longest decreasing subsequence of the losses; its index
    ``start + int(len/3) + int(len/3/2)``, i.e. about half-way down it
    (fastai/callback/schedule.py; ``start`` as fastai computes it)."""
    n = len(losses)
    if n == 0:
        return 0
    lds = np.ones(n, dtype=np.int64)
    for i in range(1, n):
        prev = lds[:i][losses[:i] > losses[i]]
        if prev.size:
            lds[i] = prev.max() + 1
    max_end = int(np.argmax(lds))  # first index of the longest run, as fastai's loop keeps
    max_start = max_end - int(lds[max_end])
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return min(max(idx, 0), n - 1)


class LRFinderResult:
    """What ``find_lr`` recorded and suggests.

    Attributes:
        lrs: the lr of every completed step (NumPy float64 array).
        losses: the smoothed (bias-corrected EMA) loss of every step.
        raw_losses: the loss ``loss_fn(model(x), y)`` of every step, before its update.
        suggestion: the lr of the steepest descent of the smoothed loss against log(lr)
            (points num_steps // 10 … n − 5); the usual pick for SGD / one-cycle max_lr.
        suggestion_min: the lr of the lowest smoothed loss (same window) / 10.
        suggestion_valley: fastai's ``valley`` (about half-way down the longest
            decreasing stretch of the smoothed loss).
        stop_reason: "completed", "diverged" (smoothed > diverge × best) or "nan".
        num_steps: the number of steps asked for.
    """

    def __init__(self, lrs, losses, raw_losses, num_steps, stop_reason):
        self.lrs = np.asarray(lrs, dtype=np.float64)
        self.losses = np.asarray(losses, dtype=np.float64)
        self.raw_losses = np.asarray(raw_losses, dtype=np.float64)
        self.num_steps = num_steps
        self.stop_reason = stop_reason
        n = len(self.lrs)
        if n == 0:
            self.suggestion = self.suggestion_min = self.suggestion_valley = math.nan
            self._window = (0, 0)
            return
        lo, hi = _suggestion_window(n, num_steps)
        self._window = (lo, hi)
        lrs, losses = self.lrs[lo:hi], self.losses[lo:hi]
        i = _steepest(lrs, losses)
        if len(lrs) >= 2 and not np.gradient(losses, np.log(lrs))[i] < 0:
            warnings.warn("find_lr: the smoothed loss never decreases in the sweep; "
                          "suggestion is the lr of its smallest increase (look at the plot)",
                          RuntimeWarning, stacklevel=3)
        self.suggestion = float(lrs[i])
        self.suggestion_min = float(lrs[int(np.argmin(losses))] / 10.0)
        self.suggestion_valley = float(lrs[_valley(losses)])

    def __repr__(self):
        return (f"LRFinderResult(steps={len(self.lrs)}/{self.num_steps}, stop_reason={self.stop_reason!r}, "
                f"suggestion={self.suggestion:.3g}, suggestion_min={self.suggestion_min:.3g}, "
                f"suggestion_valley={self.suggestion_valley:.3g})")

    def plot(self, path=None, ax=None):
        """Loss against lr on a log-x axis, the raw loss faint, the smoothed loss bold,
        the suggestions marked. Saves a PNG to ``path`` (and closes the figure) or returns
        the matplotlib Axes. Needs matplotlib (``pip install matplotlib``)."""
        try:
            import matplotlib
        except ImportError as e:
            raise ModuleNotFoundError('LRFinderResult.plot needs matplotlib: pip install matplotlib (or, in the '
                                      'fastlr checkout, pip install ".[plot]")', name="matplotlib") from e

        if path is not None and ax is None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig = None
        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.plot(self.lrs, self.raw_losses, color="0.75", lw=1, label="loss")
        ax.plot(self.lrs, self.losses, color="C0", lw=2, label="smoothed loss")
        if len(self.lrs):
            marks = [("suggestion (steepest)", self.suggestion, "C3", "o"),
                     ("min / 10", self.suggestion_min, "C2", "s"),
                     ("valley", self.suggestion_valley, "C1", "^")]
            for label, lr, color, marker in marks:
                i = int(np.argmin(np.abs(np.log(self.lrs) - math.log(lr))))
                ax.plot([lr], [self.losses[i]], marker=marker, color=color, ms=8, ls="none",
                        label=f"{label}: {lr:.2g}")
            lo, hi = self._window
            finite = self.losses[lo:hi][np.isfinite(self.losses[lo:hi])]
            if finite.size > 1:  # zoom on the window: from its lowest loss to a bit above its start
                y0, y1 = finite.min(), finite[0]
                if y1 <= y0:
                    y1 = finite.max()
                pad = 0.1 * (y1 - y0) if y1 > y0 else 0.1 * abs(y0) + 1e-12
                ax.set_ylim(y0 - pad, y1 + 3 * pad)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.set_title("LR range test")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        if path is not None:
            ax.figure.savefig(path, bbox_inches="tight")
            if fig is not None:
                plt.close(fig)
            return None
        return ax


# ---------------------------------------------------------------------------------------


def _check_real(name, value, *, lo=None, lo_open=False, hi=None, hi_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"find_lr: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"find_lr: {name} must be finite, got {value!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"find_lr: {name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"find_lr: {name} must be {'<' if hi_open else '<='} {hi}, got {value!r}")
    return v


def _batches(data):
    """Yields (x, y) forever: re-iterates ``data`` when it is exhausted, or replays the
    batches already seen when ``data`` is a one-shot iterator."""
    one_shot = iter(data) is data
    seen = [] if one_shot else None
    while True:
        got = False
        for batch in data:
            got = True
            if seen is not None:
                seen.append(batch)
            yield batch
        if not got:
            if seen:
                while True:
                    yield from seen
            raise ValueError("find_lr: data yielded no batches")


def _is_fastlr_optimizer(optimizer):
    return type(optimizer).__module__.startswith("fastlr.")


def find_lr(model, optimizer, loss_fn, data, start_lr=1e-7, end_lr=10, num_steps=100, mode="exp",
            smooth=0.05, diverge=5.0):
    """The LR range test (Smith, arXiv:1506.01186 §3.3; fastai ``lr_find``).

    Trains ``num_steps`` batches with the lr rising from ``start_lr`` to ``end_lr``
    (``fastlr.RangeTest``: ``start·(end/start)^(i/(n−1))`` for "exp",
    linear for "linear"; step i uses the i-th value), records the loss of every batch,
    stops early when it blows up, then **restores** the model and the optimizer.

    * A ``fastlr.optim`` optimizer runs the sweep inside its kernel: the RangeTest is
      attached to every param group as its lr schedule (``lr_scale`` 1) for the sweep.
      A ``torch.optim`` (or any other) optimizer gets ``group["lr"]`` written before
      every step (a tensor lr is filled in place).
    * Smoothing: ``smooth`` is the weight of the newest loss (torch-lr-finder's
      ``smooth_f``; fastai's β = 1 − smooth): ``m_i = (1−smooth)·m_{i−1} + smooth·loss_i``,
      ``m_{−1} = 0``, reported bias-corrected as ``m_i / (1 − (1−smooth)^(i+1))``.
      ``smooth=1`` disables smoothing.
    * Stop: after the first step, once the smoothed loss exceeds ``diverge × best``
      smoothed loss (``best + (diverge − 1)·|best|`` in general, the same for a positive
      best and meaningful for losses that go negative; that step is kept), or at the
      first non-finite loss (not kept).
    * Suggestions (see :class:`LRFinderResult`) skip the first ``num_steps // 10`` and
      the last 5 recorded points. ``suggestion`` = argmin of the gradient of the smoothed
      loss w.r.t. log(lr) — log spacing, not linear lr spacing (Lightning#21141) nor index
      spacing; ``suggestion_min`` = lr of the lowest smoothed loss / 10;
      ``suggestion_valley`` = fastai's valley.
    * Restored afterwards, bit for bit: every parameter and buffer (including
      non-persistent ones) and their ``.grad``, the model's train/eval mode, the
      optimizer's state and param groups (lr included, via a deep copy of its
      ``state_dict``). The RNG state is not restored.

    The loss of step i is ``loss_fn(model(x), y)`` computed *before* the update with
    ``lrs[i]``, as in fastai and torch-lr-finder.

    Args:
        model: a ``torch.nn.Module`` (put in train mode for the sweep).
        optimizer: a torch or fastlr optimizer over (some of) the model's parameters.
        loss_fn: ``loss_fn(model(x), y)`` → a scalar tensor.
        data: an iterable of ``(x, y)`` batches, cycled if shorter than ``num_steps``.
        start_lr, end_lr: the ramp's ends, 0 < start_lr < end_lr.
        num_steps: number of batches (>= 2).
        mode: "exp" or "linear".
        smooth: weight of the newest loss in the EMA, 0 < smooth <= 1.
        diverge: stop factor (> 1).

    Returns:
        :class:`LRFinderResult` with ``lrs``, ``losses``, ``raw_losses``, ``suggestion``,
        ``suggestion_min``, ``suggestion_valley``, ``stop_reason`` and ``plot(path)``.

    >>> res = fastlr.find_lr(model, opt, torch.nn.functional.cross_entropy, loader)  # doctest: +SKIP
    >>> res.plot("lr_find.png"); opt.param_groups[0]["lr"] = res.suggestion        # doctest: +SKIP
    """
    import torch

    from .schedules import RangeTest

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"find_lr: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(getattr(optimizer, "param_groups", None), list):
        raise TypeError(f"find_lr: optimizer must be an optimizer with param_groups, got {type(optimizer).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"find_lr: loss_fn must be callable, got {type(loss_fn).__name__}")
    if not hasattr(data, "__iter__"):
        raise TypeError(f"find_lr: data must be an iterable of (x, y) batches, got {type(data).__name__}")
    start_lr = _check_real("start_lr", start_lr, lo=0.0, lo_open=True)
    end_lr = _check_real("end_lr", end_lr, lo=0.0, lo_open=True)
    if not end_lr > start_lr:
        raise ValueError(f"find_lr: end_lr must be > start_lr, got start_lr={start_lr!r}, end_lr={end_lr!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
        raise TypeError(f"find_lr: num_steps must be an int, got {type(num_steps).__name__}")
    if num_steps < 2:
        raise ValueError(f"find_lr: num_steps must be >= 2, got {num_steps}")
    num_steps = int(num_steps)
    if mode not in ("exp", "linear"):
        raise ValueError(f"find_lr: mode must be 'exp' or 'linear', got {mode!r}")
    smooth = _check_real("smooth", smooth, lo=0.0, lo_open=True, hi=1.0)
    diverge = _check_real("diverge", diverge, lo=1.0, lo_open=True)

    schedule = RangeTest(start_lr, end_lr, num_steps, mode)
    lrs_planned = schedule.values(num_steps)
    fastlr_opt = _is_fastlr_optimizer(optimizer)

    # -- snapshot ---------------------------------------------------------------------
    tensors = dict(model.named_parameters(remove_duplicate=True))
    tensors.update(("buffer:" + k, v) for k, v in model.named_buffers(remove_duplicate=True))
    saved = {k: v.detach().clone() for k, v in tensors.items()}
    saved_grads = {k: (None if v.grad is None else v.grad.detach().clone())
                   for k, v in model.named_parameters(remove_duplicate=True)}
    saved_opt = copy.deepcopy(optimizer.state_dict())
    was_training = model.training

    lrs, losses, raw = [], [], []
    stop_reason = "completed"
    try:
        if fastlr_opt:
            # fastlr.optim evaluates group["lr_scale"] * lr_schedule(schedule_t) in the kernel
            # and counts schedule_t per group: the sweep's ramp starts at its own t = 0.
            for group in optimizer.param_groups:
                group["lr_schedule"] = schedule
                group["lr_scale"] = 1.0
                group["schedule_t"] = 0
                group["lr"] = schedule(0)
        model.train()
        beta = 1.0 - smooth
        avg = 0.0
        best = math.inf
        batches = _batches(data)
        for i in range(num_steps):
            batch = next(batches)
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise ValueError("find_lr: data must yield (x, y) pairs")
            x, y = batch
            lr = float(lrs_planned[i])
            if not fastlr_opt:
                for group in optimizer.param_groups:
                    if torch.is_tensor(group["lr"]):
                        group["lr"].fill_(lr)
                    else:
                        group["lr"] = lr
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            value = float(loss.detach())
            if not math.isfinite(value):
                stop_reason = "nan"
                break
            loss.backward()
            optimizer.step()
            avg = beta * avg + smooth * value
            smoothed = avg / (1.0 - beta ** (i + 1))
            lrs.append(lr)
            raw.append(value)
            losses.append(smoothed)
            if not math.isfinite(smoothed):
                stop_reason = "nan"
                break
            # smoothed > diverge * best, written so that it also means "grew by (diverge - 1)
            # times |best|" for a negative best loss
            if i > 0 and smoothed - best > (diverge - 1.0) * abs(best):
                stop_reason = "diverged"
                break
            best = min(best, smoothed)
    finally:
        with torch.no_grad():
            for k, v in tensors.items():
                v.copy_(saved[k])
        for k, p in model.named_parameters(remove_duplicate=True):
            g = saved_grads[k]
            if g is None:
                p.grad = None
            elif p.grad is not None and p.grad.shape == g.shape and p.grad.dtype == g.dtype:
                p.grad.copy_(g)
            else:
                p.grad = g
        optimizer.load_state_dict(saved_opt)
        _drop_sweep_state(optimizer, saved_opt)
        model.train(was_training)
    return LRFinderResult(lrs, losses, raw, num_steps, stop_reason)


def _drop_sweep_state(optimizer, saved_opt):
    """Forget optimizer state the sweep created for params that had none before, in case
    an optimizer's ``load_state_dict`` keeps entries it was not given."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    had_state = {id(params[i]) for i in saved_opt["state"] if isinstance(i, int) and i < len(params)}
    for p in list(optimizer.state.keys()):
        if id(p) not in had_state:
            del optimizer.state[p]
