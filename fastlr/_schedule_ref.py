"""Pure-Python formulas of every schedule, one per class, written from the definitions
(not from the C++ encoding). The tests compare the C++ values with these and with torch.
"""
from __future__ import annotations

import math

from . import schedules as S


def _one_cycle(t, total, pct_start, anneal, three_phase, a, b, c):
    # torch OneCycleLR.get_lr, phases (a->b, b->c) or (a->b, b->a, a->c).
    if three_phase:
        phases = [
            (float(pct_start * total) - 1, a, b),
            (float(2 * pct_start * total) - 2, b, a),
            (total - 1, a, c),
        ]
    else:
        phases = [(float(pct_start * total) - 1, a, b), (total - 1, b, c)]
    step = min(t, total - 1)
    start_step = 0.0
    for i, (end_step, sv, ev) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            length = end_step - start_step
            pct = 1.0 if length == 0 else (step - start_step) / length
            if anneal == "cos":
                return ev + (sv - ev) / 2.0 * (math.cos(math.pi * pct) + 1)
            return (ev - sv) * pct + sv
        start_step = end_step
    raise AssertionError("unreachable")


def reference(s, t):
    """s(t) for one int t >= 0, in plain Python floats."""
    t = int(t)
    if t < 0:
        raise ValueError("t must be >= 0")
    if isinstance(s, S.Constant):
        return s.lr
    if isinstance(s, S.StepDecay):
        return s.lr * s.gamma ** (t // s.step_size)
    if isinstance(s, S.MultiStep):
        return s.lr * s.gamma ** sum(1 for m in s.milestones if m <= t)
    if isinstance(s, S.Exponential):
        p = t // s.decay_steps if s.staircase else t / s.decay_steps
        return s.lr * s.gamma ** p
    if isinstance(s, S.InverseTime):
        p = t // s.decay_steps if s.staircase else t / s.decay_steps
        return s.lr / (1 + s.decay * p)
    if isinstance(s, S.Polynomial):
        p = min(t, s.total_steps) / s.total_steps
        return (s.lr - s.end_lr) * (1 - p) ** s.power + s.end_lr
    if isinstance(s, S.Linear):
        a = min(t, s.total_steps) / s.total_steps
        return (1 - a) * s.start_lr + a * s.end_lr
    if isinstance(s, S.Cosine):
        tt = min(t, s.total_steps)
        return s.min_lr + (s.lr - s.min_lr) * (1 + math.cos(math.pi * tt / s.total_steps)) / 2
    if isinstance(s, S.CosineRestarts):
        t_cur, t_i = t, s.period
        while t_cur >= t_i:
            t_cur -= t_i
            t_i *= s.period_mult
        return s.min_lr + (s.lr - s.min_lr) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
    if isinstance(s, S.Cyclic):
        up = float(s.step_size_up)
        down = up if s.step_size_down is None else float(s.step_size_down)
        total = up + down
        ratio = up / total
        cycle = math.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        h = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        if s.mode == "triangular":
            scale = 1.0
        elif s.mode == "triangular2":
            scale = 1 / (2.0 ** (cycle - 1)) if cycle < 1000 else 0.0
        else:
            scale = s.gamma ** t
        return s.base_lr + (s.max_lr - s.base_lr) * h * scale
    if isinstance(s, S.OneCycle):
        initial = s.max_lr / s.div_factor
        low = initial / s.final_div_factor
        return _one_cycle(t, s.total_steps, s.pct_start, s.anneal, s.three_phase, initial, s.max_lr, low)
    if isinstance(s, S.OneCycleMomentum):
        return _one_cycle(t, s.total_steps, s.pct_start, s.anneal, s.three_phase,
                          s.max_momentum, s.base_momentum, s.max_momentum)
    if isinstance(s, S.Warmup):
        w, f = s.warmup_steps, s.start_factor
        if t < w:
            return reference(s.schedule, 0) * (f + (1 - f) * t / w)
        return reference(s.schedule, t - w)
    if isinstance(s, S.InverseSqrt):
        w = s.warmup_steps
        if t < w:
            return s.lr * (t / w)
        ts = s._timescale()
        return s.lr * (1.0 / math.sqrt((t + ts - w) / ts))
    if isinstance(s, S.Sequential):
        i = sum(1 for m in s.milestones if m <= t)
        start = s.milestones[i - 1] if i else 0
        return reference(s.schedules[i], t - start)
    if isinstance(s, S.Table):
        return float(s.table[min(t, len(s.table) - 1)])
    if isinstance(s, S.Lambda):
        return s.lr * float(s.factors[min(t, s.total_steps - 1)])
    if isinstance(s, S.RangeTest):
        n = s.num_steps
        if t >= n - 1:
            return s.end_lr
        r = t / (n - 1)
        if s.mode == "exp":
            return s.start_lr * (s.end_lr / s.start_lr) ** r
        return (1 - r) * s.start_lr + r * s.end_lr
    raise TypeError(f"no reference formula for {type(s).__name__}")
