"""Learning-rate (and momentum) schedules evaluated in C++.

A schedule is an immutable, picklable, hashable value: ``s(t)`` is the value used by the
update that follows ``t`` completed updates (t = 0, 1, 2, ...), the same indexing as a
torch scheduler after ``t`` calls of ``.step()``. ``s.values(n)`` evaluates t = 0..n-1
(or an array of steps) in one C++ call. The optimizers and kernels take a schedule
wherever they take ``lr`` (or ``momentum`` / ``beta1``) and evaluate it in C++ from the
step count, so scheduling costs nothing per step in Python.

Every schedule is a plain formula of ``t``, written once in ``csrc/fastlr/schedule.hpp``
(following torch's closed forms operation by operation) and once in Python in
``fastlr/_schedule_ref.py`` for the tests. ``s._encoding`` is the flat float64 array that
describes it to C++ (layout documented at the top of schedule.hpp).

Past its end a finite schedule holds its last value. Composites (:class:`Warmup`,
:class:`Sequential`) join simple schedules.

>>> from fastlr.schedules import OneCycle
>>> s = OneCycle(max_lr=0.1, total_steps=100)
>>> round(s(0), 6), round(s(29), 6), int(s.values(100).argmax())
(0.004, 0.1, 29)
"""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np

__all__ = [
    "Schedule",
    "as_schedule",
    "Constant",
    "StepDecay",
    "MultiStep",
    "Exponential",
    "InverseTime",
    "Polynomial",
    "Linear",
    "Cosine",
    "CosineRestarts",
    "Cyclic",
    "OneCycle",
    "OneCycleMomentum",
    "Warmup",
    "InverseSqrt",
    "Sequential",
    "RangeTest",
    "Table",
    "Lambda",
]

# Integers travel to C++ inside a float64 array: exact up to 2**53.
_MAX_INT = 2**53

_NO_DEFAULT = object()


def _schedule_values(enc, steps):
    from . import _C  # imported lazily: the pure-Python parts work without the build

    return _C.schedule_values(enc, steps)


def _schedule_at(enc, t):
    from . import _C

    return _C.schedule_at(enc, t)


# ---------------------------------------------------------------------------------------
# argument validation (ArgumentTypeError for the wrong type, ValueError for a bad value;
# both name the argument)


class ArgumentTypeError(TypeError, ValueError):
    """A schedule argument of the wrong type (a float step count, a str lr, ...). Both a
    TypeError and a ValueError: torch's schedulers raise ValueError for such arguments
    (``OneCycleLR(total_steps=100.0)``), so code written for either catches it."""


def _real(cls, name, value, *, lo=None, lo_open=False, hi=None, hi_open=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise ArgumentTypeError(f"{cls}: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{cls}: {name} must be finite, got {value!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{cls}: {name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{cls}: {name} must be {'<' if hi_open else '<='} {hi}, got {value!r}")
    return v


def _int(cls, name, value, *, lo):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ArgumentTypeError(f"{cls}: {name} must be an int, got {type(value).__name__}")
    v = operator.index(value)
    if v < lo:
        raise ValueError(f"{cls}: {name} must be >= {lo}, got {v}")
    if v > _MAX_INT:
        raise ValueError(f"{cls}: {name} must be <= 2**53, got {v}")
    return v


def _bool(cls, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{cls}: {name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _choice(cls, name, value, choices):
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{cls}: {name} must be a str, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{cls}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _int_tuple(cls, name, value, *, lo):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ArgumentTypeError(f"{cls}: {name} must be a list of ints, got {type(value).__name__}")
    out = []
    for i, v in enumerate(value):
        out.append(_int(cls, f"{name}[{i}]", v, lo=lo))
    return tuple(out)


# ---------------------------------------------------------------------------------------


class Schedule:
    """Base class of every schedule: an immutable function of the step count ``t``.

    Subclasses declare their constructor arguments in ``_fields`` (in order) with their
    defaults in ``_defaults``, validate them in ``__init__`` and call ``_init``; they
    implement ``_encode`` (the flat list of floats read by schedule.hpp).
    """

    _fields: tuple = ()
    _defaults: dict = {}
    _momentum = False  # True when the values are momenta (labels in `fastlr plot`)

    def _init(self, **kwargs):
        for k in self._fields:
            object.__setattr__(self, k, kwargs[k])
        # backed by immutable bytes, so no setflags(write=True) can make it writable again
        enc = np.frombuffer(np.asarray(self._encode(), dtype=np.float64).tobytes(), dtype=np.float64)
        object.__setattr__(self, "_enc", enc)

    def _encode(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _args(self):
        return tuple(getattr(self, k) for k in self._fields)

    # -- value semantics --------------------------------------------------------------
    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        return self._args() == other._args()

    def __hash__(self):
        return hash((type(self).__name__, self._args()))

    def __reduce__(self):
        # Rebuilt through the constructor, so a pickle is validated like any other input.
        return (type(self), self._args())

    def __repr__(self):
        parts = []
        for k in self._fields:
            v = getattr(self, k)
            d = self._defaults.get(k, _NO_DEFAULT)
            if d is not _NO_DEFAULT and v == d and type(v) is type(d):
                continue
            if isinstance(v, tuple):
                r = "[" + ", ".join(repr(x) for x in v) + "]"
            else:
                r = repr(v)
            parts.append(f"{k}={r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # -- evaluation -------------------------------------------------------------------
    @property
    def _encoding(self):
        """The read-only contiguous float64 array describing this schedule to C++."""
        return self._enc

    def __call__(self, t):
        """s(t) after ``t`` completed updates: a float for an int ``t``, an array for an
        integer array."""
        if type(t) is int or (
            isinstance(t, (numbers.Integral, np.integer)) and not isinstance(t, (bool, np.bool_))
        ):
            t = operator.index(t)
            if t < 0:
                raise ValueError(f"t must be >= 0, got {t}")
            if t >= 2**63:
                raise ValueError(f"t must be < 2**63, got {t}")
            return _schedule_at(self._enc, t)
        t = np.asarray(t)
        if t.dtype == np.bool_ or not (np.issubdtype(t.dtype, np.integer) or (t.size == 0 and t.ndim)):
            raise TypeError(f"t must be an integer (the count of completed updates) or an integer array, "
                            f"got {t.dtype} {t.tolist() if t.size == 1 else ''}".rstrip())
        if t.size and t.min() < 0:
            raise ValueError("t must be >= 0")
        return self.values(t)

    def values(self, n_or_steps):
        """Values at t = 0..n-1 for an int ``n``, or at every step of an integer array
        (any shape; the result has the same shape), computed in one C++ call.

        >>> Exponential(lr=1.0, gamma=0.5).values(4)
        array([1.   , 0.5  , 0.25 , 0.125])
        """
        if isinstance(n_or_steps, (numbers.Integral, np.integer)) and not isinstance(
            n_or_steps, (bool, np.bool_)
        ):
            n = operator.index(n_or_steps)
            if n < 0:
                raise ValueError(f"n must be >= 0, got {n}")
            steps = np.arange(n, dtype=np.int64)
        else:
            steps = np.asarray(n_or_steps)
            if steps.size == 0 and steps.dtype == np.float64:  # values([]): no steps, no dtype
                steps = steps.astype(np.int64)
            if steps.dtype == np.bool_ or not np.issubdtype(steps.dtype, np.integer):
                raise TypeError(f"steps must be integers, got dtype {steps.dtype}")
            if steps.size and steps.min() < 0:
                raise ValueError("steps must be >= 0")
            steps = steps.astype(np.int64, order="C", copy=False)
        out = _schedule_values(self._enc, steps.reshape(-1))
        return np.asarray(out).reshape(steps.shape)

    def _reference(self, t):
        """The pure-Python formula (fastlr/_schedule_ref.py), used by the tests."""
        from ._schedule_ref import reference

        return reference(self, t)

    def _horizon(self):
        """A number of steps that shows the whole shape (used by `fastlr plot`)."""
        return 1000


def as_schedule(x):
    """``x`` if it is a Schedule, else ``Constant(float(x))`` for a real number >= 0
    (a Python/NumPy number or any 0-dim array-like with ``float()``).

    >>> as_schedule(0.1)
    Constant(lr=0.1)
    """
    if isinstance(x, Schedule):
        return x
    if isinstance(x, (bool, np.bool_)):
        raise TypeError("lr must be a float or a Schedule, got bool")
    if not isinstance(x, (numbers.Real, np.floating, np.integer)):
        if getattr(x, "ndim", None) == 0 or getattr(x, "shape", None) == ():
            x = float(x)
        else:
            raise TypeError(f"lr must be a float or a Schedule, got {type(x).__name__}")
    return Constant(x)


# ---------------------------------------------------------------------------------------


class Constant(Schedule):
    """``s(t) = lr``.

    Args:
        lr: the value (>= 0).

    Counterpart: a torch optimizer without a scheduler.

    >>> Constant(0.1)(5)
    0.1
    """

    _fields = ("lr",)

    def __init__(self, lr):
        self._init(lr=_real("Constant", "lr", lr, lo=0.0))

    def _encode(self):
        return [0, self.lr]


class StepDecay(Schedule):
    """``s(t) = lr * gamma ** (t // step_size)``.

    Args:
        lr: initial value (>= 0).
        step_size: decay period in steps (int >= 1).
        gamma: multiplicative factor (> 0).

    Counterpart: torch ``StepLR(step_size, gamma)``.

    >>> StepDecay(lr=1.0, step_size=2, gamma=0.5).values(5)
    array([1.  , 1.  , 0.5 , 0.5 , 0.25])
    """

    _fields = ("lr", "step_size", "gamma")
    _defaults = {"gamma": 0.1}

    def __init__(self, lr, step_size, gamma=0.1):
        c = "StepDecay"
        self._init(
            lr=_real(c, "lr", lr, lo=0.0),
            step_size=_int(c, "step_size", step_size, lo=1),
            gamma=_real(c, "gamma", gamma, lo=0.0, lo_open=True),
        )

    def _encode(self):
        return [1, self.lr, self.step_size, self.gamma]

    def _horizon(self):
        return 5 * self.step_size


class MultiStep(Schedule):
    """``s(t) = lr * gamma ** (number of milestones <= t)``.

    Args:
        lr: initial value (>= 0).
        milestones: steps (ints >= 0, any order) at which the value is multiplied by
            gamma; a repeated milestone counts as many times as it appears (as torch).
            Stored sorted. Empty: constant.
        gamma: multiplicative factor (> 0).

    Counterpart: torch ``MultiStepLR(milestones, gamma)``.

    >>> MultiStep(lr=1.0, milestones=[2, 3], gamma=0.5).values(5)
    array([1.  , 1.  , 0.5 , 0.25, 0.25])
    """

    _fields = ("lr", "milestones", "gamma")
    _defaults = {"gamma": 0.1}

    def __init__(self, lr, milestones, gamma=0.1):
        c = "MultiStep"
        self._init(
            lr=_real(c, "lr", lr, lo=0.0),
            milestones=tuple(sorted(_int_tuple(c, "milestones", milestones, lo=0))),
            gamma=_real(c, "gamma", gamma, lo=0.0, lo_open=True),
        )

    def _encode(self):
        return [2, self.lr, self.gamma, len(self.milestones), *self.milestones]

    def _horizon(self):
        return int(self.milestones[-1] * 1.25) + 10 if self.milestones else 100


class Exponential(Schedule):
    """``s(t) = lr * gamma ** (t / decay_steps)``; with ``staircase=True`` the exponent is
    ``t // decay_steps``.

    Args:
        lr: initial value (>= 0).
        gamma: decay rate per ``decay_steps`` steps (> 0; > 1 grows).
        decay_steps: steps per factor gamma (int >= 1).
        staircase: decay in discrete jumps.

    Counterparts: torch ``ExponentialLR(gamma)`` (decay_steps=1); Keras
    ``ExponentialDecay(lr, decay_steps, decay_rate=gamma, staircase)``. Never ends.

    >>> Exponential(lr=1.0, gamma=0.5, decay_steps=2).values(3)
    array([1.        , 0.70710678, 0.5       ])
    """

    _fields = ("lr", "gamma", "decay_steps", "staircase")
    _defaults = {"decay_steps": 1, "staircase": False}

    def __init__(self, lr, gamma, decay_steps=1, staircase=False):
        c = "Exponential"
        self._init(
            lr=_real(c, "lr", lr, lo=0.0),
            gamma=_real(c, "gamma", gamma, lo=0.0, lo_open=True),
            decay_steps=_int(c, "decay_steps", decay_steps, lo=1),
            staircase=_bool(c, "staircase", staircase),
        )

    def _encode(self):
        return [3, self.lr, self.gamma, self.decay_steps, float(self.staircase)]

    def _horizon(self):
        if self.gamma == 1.0:
            return 100
        # until the value has changed by a factor of ~100
        n = math.log(100.0) / abs(math.log(self.gamma)) * self.decay_steps
        return int(min(max(n, 10), 10**7))


class InverseTime(Schedule):
    """``s(t) = lr / (1 + decay * t / decay_steps)`` (``t // decay_steps`` with
    ``staircase=True``): the classic time-based decay ``lr0 / (1 + decay * t)``.

    Args:
        lr: initial value (>= 0).
        decay: decay rate (>= 0; 0 is constant).
        decay_steps: int >= 1.
        staircase: decay in discrete jumps.

    Counterparts: Keras ``InverseTimeDecay(lr, decay_steps, decay_rate=decay, staircase)``;
    Keras 2's ``decay=`` optimizer argument (decay_steps=1); torch
    ``LambdaLR(lambda t: 1 / (1 + decay * t))``. Never ends.

    >>> InverseTime(lr=0.1, decay=0.01).values([0, 1, 100])
    array([0.1      , 0.0990099, 0.05     ])
    """

    _fields = ("lr", "decay", "decay_steps", "staircase")
    _defaults = {"decay_steps": 1, "staircase": False}

    def __init__(self, lr, decay, decay_steps=1, staircase=False):
        c = "InverseTime"
        self._init(
            lr=_real(c, "lr", lr, lo=0.0),
            decay=_real(c, "decay", decay, lo=0.0),
            decay_steps=_int(c, "decay_steps", decay_steps, lo=1),
            staircase=_bool(c, "staircase", staircase),
        )

    def _encode(self):
        return [4, self.lr, self.decay, self.decay_steps, float(self.staircase)]

    def _horizon(self):
        if self.decay == 0.0:
            return 100
        return int(min(max(20 * self.decay_steps / self.decay, 10), 10**7))


class Polynomial(Schedule):
    """``s(t) = (lr - end_lr) * (1 - min(t, T) / T) ** power + end_lr``, T = total_steps;
    holds ``end_lr`` from t = T on.

    Args:
        lr: initial value (>= 0).
        total_steps: T (int >= 1).
        end_lr: final value (>= 0).
        power: exponent (> 0).

    Counterparts: torch ``PolynomialLR(total_iters=T, power)`` (end_lr=0); Keras
    ``PolynomialDecay(lr, decay_steps=T, end_learning_rate=end_lr, power)`` (cycle=False).

    >>> Polynomial(lr=1.0, total_steps=4, power=2.0).values(6)
    array([1.    , 0.5625, 0.25  , 0.0625, 0.    , 0.    ])
    """

    _fields = ("lr", "total_steps", "end_lr", "power")
    _defaults = {"end_lr": 0.0, "power": 1.0}

    def __init__(self, lr, total_steps, end_lr=0.0, power=1.0):
        c = "Polynomial"
        self._init(
            lr=_real(c, "lr", lr, lo=0.0),
            total_steps=_int(c, "total_steps", total_steps, lo=1),
            end_lr=_real(c, "end_lr", end_lr, lo=0.0),
            power=_real(c, "power", power, lo=0.0, lo_open=True),
        )

    def _encode(self):
        return [5, self.lr, self.total_steps, self.end_lr, self.power]

    def _horizon(self):
        return self.total_steps + max(1, self.total_steps // 10)


class Linear(Schedule):
    """``s(t) = (1 - a) * start_lr + a * end_lr`` with ``a = min(t, T) / T``,
    T = total_steps: linear to ``end_lr`` at t = T, then constant (Goodfellow et al.,
    *Deep Learning* §8.3.1, "linear decay until iteration tau"). Exact at both ends.
    ``end_lr > start_lr`` ramps up.

    Args:
        start_lr: value at t = 0 (>= 0).
        end_lr: value from t = total_steps on (>= 0).
        total_steps: T (int >= 1).

    Counterparts: torch ``LinearLR(start_factor, end_factor, total_iters=T)`` with
    ``start_lr = base*start_factor``, ``end_lr = base*end_factor``; Keras
    ``PolynomialDecay(start_lr, T, end_lr, power=1)``; optax ``linear_schedule``.

    >>> Linear(start_lr=1.0, end_lr=0.5, total_steps=2).values(4)
    array([1.  , 0.75, 0.5 , 0.5 ])
    """

    _fields = ("start_lr", "end_lr", "total_steps")

    def __init__(self, start_lr, end_lr, total_steps):
        c = "Linear"
        self._init(
            start_lr=_real(c, "start_lr", start_lr, lo=0.0),
            end_lr=_real(c, "end_lr", end_lr, lo=0.0),
            total_steps=_int(c, "total_steps", total_steps, lo=1),
        )

    def _encode(self):
        return [6, self.start_lr, self.end_lr, self.total_steps]

    def _horizon(self):
        return self.total_steps + max(1, self.total_steps // 10)


class Cosine(Schedule):
    """``s(t) = min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2`` for t <= T
    (T = total_steps), ``min_lr`` after (torch continues the cosine upwards instead).

    Args:
        lr: initial value (>= 0).
        total_steps: T (int >= 1).
        min_lr: final value (>= 0; may exceed lr, then it rises).

    Counterparts: torch ``CosineAnnealingLR(T_max=T, eta_min=min_lr)`` closed form;
    Keras ``CosineDecay(lr, T, alpha=min_lr/lr)``; optax ``cosine_decay_schedule``.

    >>> Cosine(lr=1.0, total_steps=2).values(4)
    array([1. , 0.5, 0. , 0. ])
    """

    _fields = ("lr", "total_steps", "min_lr")
    _defaults = {"min_lr": 0.0}

    def __init__(self, lr, total_steps, min_lr=0.0):
        c = "Cosine"
        self._init(
            lr=_real(c, "lr", lr, lo=0.0),
            total_steps=_int(c, "total_steps", total_steps, lo=1),
            min_lr=_real(c, "min_lr", min_lr, lo=0.0),
        )

    def _encode(self):
        return [7, self.lr, self.total_steps, self.min_lr]

    def _horizon(self):
        return self.total_steps + max(1, self.total_steps // 10)


class CosineRestarts(Schedule):
    """SGDR: ``s(t) = min_lr + (lr - min_lr) * (1 + cos(pi * t_cur / T_i)) / 2`` where
    ``t_cur`` counts steps since the last restart and the i-th cycle lasts
    ``T_i = period * period_mult**i`` steps. Never ends.

    Args:
        lr: value at each restart (>= 0).
        period: length of the first cycle (int >= 1).
        period_mult: cycle length multiplier (int >= 1, as torch).
        min_lr: floor (>= 0).

    Counterpart: torch ``CosineAnnealingWarmRestarts(T_0=period, T_mult=period_mult,
    eta_min=min_lr)`` (Loshchilov & Hutter, arXiv:1608.03983); Keras
    ``CosineDecayRestarts`` with m_mul=1.

    >>> CosineRestarts(lr=1.0, period=2).values(5)
    array([1. , 0.5, 1. , 0.5, 1. ])
    """

    _fields = ("lr", "period", "period_mult", "min_lr")
    _defaults = {"period_mult": 1, "min_lr": 0.0}

    def __init__(self, lr, period, period_mult=1, min_lr=0.0):
        c = "CosineRestarts"
        self._init(
            lr=_real(c, "lr", lr, lo=0.0),
            period=_int(c, "period", period, lo=1),
            period_mult=_int(c, "period_mult", period_mult, lo=1),
            min_lr=_real(c, "min_lr", min_lr, lo=0.0),
        )

    def _encode(self):
        return [8, self.lr, self.period, self.period_mult, self.min_lr]

    def _horizon(self):
        return min(sum(self.period * self.period_mult**i for i in range(3)), 10**7)


class Cyclic(Schedule):
    """Cyclical learning rate (Smith, arXiv:1506.01186), with torch's asymmetric halves:
    with ``L = up + down``, ``cycle = floor(1 + t / L)``, ``x = 1 + t / L - cycle``,
    ``h = x / r`` if ``x <= r`` else ``(x - 1) / (r - 1)`` (``r = up / L``),
    ``s(t) = base_lr + (max_lr - base_lr) * h * scale``, where scale is 1 (triangular),
    ``1 / 2**(cycle - 1)`` (triangular2) or ``gamma**t`` (exp_range). Never ends.

    Args:
        base_lr: lower bound (>= 0); ``s(0) = base_lr``.
        max_lr: upper bound (>= 0); ``base_lr > max_lr`` cycles downwards, which is how
            momentum cycles (see :meth:`Cyclic.momentum`).
        step_size_up: steps from base_lr to max_lr (int >= 1).
        step_size_down: steps back (int >= 0; 0 gives a saw-tooth); None means
            step_size_up.
        mode: "triangular", "triangular2" or "exp_range".
        gamma: exp_range factor per step (> 0; above 1 the amplitude grows, as torch
            allows); ignored by the other modes.

    Counterpart: torch ``CyclicLR(base_lr, max_lr, step_size_up, step_size_down, mode,
    gamma)`` lr; bckenstler/CLR.

    >>> Cyclic(base_lr=0.0, max_lr=1.0, step_size_up=2).values(5)
    array([0. , 0.5, 1. , 0.5, 0. ])
    """

    _fields = ("base_lr", "max_lr", "step_size_up", "step_size_down", "mode", "gamma")
    _defaults = {"step_size_down": None, "mode": "triangular", "gamma": 1.0}
    _MODES = ("triangular", "triangular2", "exp_range")

    def __init__(self, base_lr, max_lr, step_size_up, step_size_down=None, mode="triangular", gamma=1.0):
        c = "Cyclic"
        self._init(
            base_lr=_real(c, "base_lr", base_lr, lo=0.0),
            max_lr=_real(c, "max_lr", max_lr, lo=0.0),
            step_size_up=_int(c, "step_size_up", step_size_up, lo=1),
            step_size_down=None if step_size_down is None else _int(c, "step_size_down", step_size_down, lo=0),
            mode=_choice(c, "mode", mode, self._MODES),
            gamma=_real(c, "gamma", gamma, lo=0.0, lo_open=True),
        )

    @classmethod
    def momentum(cls, base_momentum=0.8, max_momentum=0.9, step_size_up=2000, step_size_down=None,
                 mode="triangular", gamma=1.0):
        """The momentum (or Adam beta1) cycle of torch ``CyclicLR(cycle_momentum=True)``:
        ``max_momentum - (max_momentum - base_momentum) * h * scale``, inverse to the lr.
        It is ``Cyclic(base_lr=max_momentum, max_lr=base_momentum, ...)``, bit for bit.

        >>> Cyclic.momentum(0.8, 0.9, step_size_up=2).values(3)
        array([0.9 , 0.85, 0.8 ])
        """
        _real("Cyclic.momentum", "base_momentum", base_momentum, lo=0.0, hi=1.0)
        _real("Cyclic.momentum", "max_momentum", max_momentum, lo=0.0, hi=1.0)
        return cls(max_momentum, base_momentum, step_size_up, step_size_down, mode, gamma)

    def _down(self):
        return self.step_size_up if self.step_size_down is None else self.step_size_down

    def _encode(self):
        mode = self._MODES.index(self.mode)
        return [9, self.base_lr, self.max_lr, self.step_size_up, self._down(), mode, self.gamma]

    def _horizon(self):
        return 4 * (self.step_size_up + self._down())


class OneCycle(Schedule):
    """The 1cycle learning rate (Smith & Topin, arXiv:1708.07120), exactly torch's
    ``OneCycleLR``: from ``initial = max_lr / div_factor`` up to ``max_lr`` at step
    ``pct_start * total_steps - 1``, then down to ``min = initial / final_div_factor`` at
    step ``total_steps - 1`` (held after; torch extrapolates one step further, then
    raises). With ``three_phase=True``: up, back down to ``initial`` at step
    ``2 * pct_start * total_steps - 2``, then to ``min``. Each phase anneals with
    ``end + (start - end) / 2 * (cos(pi * pct) + 1)`` ("cos") or
    ``(end - start) * pct + start`` ("linear"), pct the fraction of the phase done.

    Args:
        max_lr: peak value (>= 0).
        total_steps: number of updates (int >= 1).
        pct_start: fraction of the steps spent rising (0 <= pct_start <= 1).
        anneal: "cos" or "linear" (torch's ``anneal_strategy``).
        div_factor: ``initial = max_lr / div_factor`` (> 0).
        final_div_factor: ``min = initial / final_div_factor`` (> 0).
        three_phase: the paper's three-phase variant.

    Degenerate case: a phase of zero length (``pct_start * total_steps == 1``; torch
    divides by zero) is taken at its end value.

    Counterpart: torch ``OneCycleLR`` lr; momentum: :class:`OneCycleMomentum`.

    >>> s = OneCycle(max_lr=0.1, total_steps=100)
    >>> round(s(0), 6), round(s(29), 6), s(99), s(150)
    (0.004, 0.1, 4e-07, 4e-07)
    """

    _fields = ("max_lr", "total_steps", "pct_start", "anneal", "div_factor", "final_div_factor", "three_phase")
    _defaults = {"pct_start": 0.3, "anneal": "cos", "div_factor": 25.0, "final_div_factor": 1e4, "three_phase": False}

    def __init__(self, max_lr, total_steps, pct_start=0.3, anneal="cos", div_factor=25.0,
                 final_div_factor=1e4, three_phase=False):
        c = "OneCycle"
        self._init(
            max_lr=_real(c, "max_lr", max_lr, lo=0.0),
            total_steps=_int(c, "total_steps", total_steps, lo=1),
            pct_start=_real(c, "pct_start", pct_start, lo=0.0, hi=1.0),
            anneal=_choice(c, "anneal", anneal, ("cos", "linear")),
            div_factor=_real(c, "div_factor", div_factor, lo=0.0, lo_open=True),
            final_div_factor=_real(c, "final_div_factor", final_div_factor, lo=0.0, lo_open=True),
            three_phase=_bool(c, "three_phase", three_phase),
        )

    def _encode(self):
        return [10, self.max_lr, self.total_steps, self.pct_start, float(self.anneal == "linear"),
                self.div_factor, self.final_div_factor, float(self.three_phase)]

    def _horizon(self):
        return self.total_steps


class OneCycleMomentum(Schedule):
    """The momentum (or Adam beta1) of torch ``OneCycleLR(cycle_momentum=True)``: from
    ``max_momentum`` down to ``base_momentum`` while the lr rises, back up to
    ``max_momentum`` while it falls (three_phase: then held at max_momentum). Same phases,
    annealing and end rule as :class:`OneCycle` with the same arguments.

    Args:
        total_steps: number of updates (int >= 1).
        base_momentum: lowest momentum (0 <= m <= 1).
        max_momentum: highest momentum (0 <= m <= 1).
        pct_start, anneal, three_phase: as :class:`OneCycle`.

    Counterpart: torch ``OneCycleLR`` ``group["momentum"]`` / ``group["betas"][0]``.

    >>> m = OneCycleMomentum(total_steps=100)
    >>> m(0), round(m(29), 12), m(99)
    (0.95, 0.85, 0.95)
    """

    _fields = ("total_steps", "base_momentum", "max_momentum", "pct_start", "anneal", "three_phase")
    _defaults = {"base_momentum": 0.85, "max_momentum": 0.95, "pct_start": 0.3, "anneal": "cos",
                 "three_phase": False}
    _momentum = True

    def __init__(self, total_steps, base_momentum=0.85, max_momentum=0.95, pct_start=0.3, anneal="cos",
                 three_phase=False):
        c = "OneCycleMomentum"
        self._init(
            total_steps=_int(c, "total_steps", total_steps, lo=1),
            base_momentum=_real(c, "base_momentum", base_momentum, lo=0.0, hi=1.0),
            max_momentum=_real(c, "max_momentum", max_momentum, lo=0.0, hi=1.0),
            pct_start=_real(c, "pct_start", pct_start, lo=0.0, hi=1.0),
            anneal=_choice(c, "anneal", anneal, ("cos", "linear")),
            three_phase=_bool(c, "three_phase", three_phase),
        )

    def _encode(self):
        return [11, self.total_steps, self.base_momentum, self.max_momentum, self.pct_start,
                float(self.anneal == "linear"), float(self.three_phase)]

    def _horizon(self):
        return self.total_steps


class Warmup(Schedule):
    """Linear warm-up in front of another schedule:
    ``s(t) = schedule(0) * (f + (1 - f) * t / W)`` for ``t < W``, then
    ``schedule(t - W)`` (W = warmup_steps, f = start_factor).

    Args:
        schedule: the schedule that follows (a Schedule, or a number for a Constant).
        warmup_steps: W (int >= 0; 0 is no warm-up).
        start_factor: f, the fraction of ``schedule(0)`` at t = 0 (0 <= f <= 1).

    Counterpart: torch ``SequentialLR([LinearLR(start_factor=f, end_factor=1,
    total_iters=W), <schedule's scheduler>], milestones=[W])`` (torch requires f > 0).

    >>> Warmup(Constant(1.0), warmup_steps=4).values(6)
    array([0.  , 0.25, 0.5 , 0.75, 1.  , 1.  ])
    """

    _fields = ("schedule", "warmup_steps", "start_factor")
    _defaults = {"start_factor": 0.0}

    def __init__(self, schedule, warmup_steps, start_factor=0.0):
        c = "Warmup"
        if not isinstance(schedule, Schedule):
            try:
                schedule = as_schedule(schedule)
            except TypeError as e:
                raise ArgumentTypeError(f"{c}: schedule must be a Schedule or a number, "
                                        f"got {type(schedule).__name__}") from e
            except ValueError as e:
                raise ValueError(f"{c}: schedule: {e}") from e
        self._init(
            schedule=schedule,
            warmup_steps=_int(c, "warmup_steps", warmup_steps, lo=0),
            start_factor=_real(c, "start_factor", start_factor, lo=0.0, hi=1.0),
        )

    def _encode(self):
        return [12, self.warmup_steps, self.start_factor, *self.schedule._encoding]

    def _horizon(self):
        return self.warmup_steps + self.schedule._horizon()

    @property
    def _momentum(self):
        return self.schedule._momentum


class InverseSqrt(Schedule):
    """Inverse square root with linear warm-up from 0: ``s(t) = lr * t / W`` for
    ``t < W``, then ``lr / sqrt((t + timescale - W) / timescale)`` (W = warmup_steps), so
    ``lr * sqrt(W / t)`` with the default timescale.

    Args:
        lr: peak value (>= 0).
        warmup_steps: W (int >= 0).
        timescale: int >= 1; None means W, or 10000 when W = 0 (as transformers).

    Counterpart: transformers ``get_inverse_sqrt_schedule(num_warmup_steps=W,
    timescale)``.

    >>> InverseSqrt(lr=1.0, warmup_steps=4).values([0, 2, 4, 16])
    array([0. , 0.5, 1. , 0.5])
    """

    _fields = ("lr", "warmup_steps", "timescale")
    _defaults = {"timescale": None}

    def __init__(self, lr, warmup_steps, timescale=None):
        c = "InverseSqrt"
        self._init(
            lr=_real(c, "lr", lr, lo=0.0),
            warmup_steps=_int(c, "warmup_steps", warmup_steps, lo=0),
            timescale=None if timescale is None else _int(c, "timescale", timescale, lo=1),
        )

    def _timescale(self):
        if self.timescale is not None:
            return self.timescale
        return self.warmup_steps or 10_000

    def _encode(self):
        return [13, self.lr, self.warmup_steps, self._timescale()]

    def _horizon(self):
        return max(10 * self.warmup_steps, 100)


class Sequential(Schedule):
    """Schedules one after the other: ``s(t) = schedules[i](t - milestones[i-1])`` where
    ``i`` is the number of milestones ``<= t`` (``milestones[-1] = 0``): each schedule
    restarts from its own t = 0 at its milestone.

    Args:
        schedules: list of Schedules (at least one; numbers become Constants).
        milestones: ``len(schedules) - 1`` strictly increasing ints >= 1.

    Counterpart: torch ``SequentialLR(schedulers, milestones)``; optax
    ``join_schedules``.

    >>> Sequential([Constant(1.0), Exponential(0.5, gamma=0.5)], milestones=[2]).values(5)
    array([1.   , 1.   , 0.5  , 0.25 , 0.125])
    """

    _fields = ("schedules", "milestones")

    def __init__(self, schedules, milestones):
        c = "Sequential"
        if isinstance(schedules, (Schedule, str, bytes)) or not hasattr(schedules, "__iter__"):
            raise ArgumentTypeError(f"{c}: schedules must be a list of Schedules, got {type(schedules).__name__}")
        scheds = []
        for i, s in enumerate(schedules):
            if not isinstance(s, Schedule):
                try:
                    s = as_schedule(s)
                except TypeError as e:
                    raise ArgumentTypeError(f"{c}: schedules[{i}] must be a Schedule or a number, "
                                            f"got {type(s).__name__}") from e
                except ValueError as e:
                    raise ValueError(f"{c}: schedules[{i}]: {e}") from e
            scheds.append(s)
        if not scheds:
            raise ValueError(f"{c}: schedules must not be empty")
        ms = _int_tuple(c, "milestones", milestones, lo=1)
        if len(ms) != len(scheds) - 1:
            raise ValueError(
                f"{c}: milestones must have len(schedules) - 1 = {len(scheds) - 1} entries, got {len(ms)}"
            )
        for i in range(1, len(ms)):
            if ms[i] <= ms[i - 1]:
                raise ValueError(f"{c}: milestones must be strictly increasing, got {list(ms)}")
        self._init(schedules=tuple(scheds), milestones=ms)

    def _encode(self):
        n = len(self.schedules)
        head = [14, n, *self.milestones]
        offsets = []
        pos = len(head) + n
        for s in self.schedules:
            offsets.append(pos)
            pos += len(s._encoding)
        enc = head + offsets
        for s in self.schedules:
            enc.extend(s._encoding)
        return enc

    def _horizon(self):
        return (self.milestones[-1] if self.milestones else 0) + self.schedules[-1]._horizon()

    @property
    def _momentum(self):
        return all(s._momentum for s in self.schedules)


class RangeTest(Schedule):
    """The LR range test ramp: ``start_lr * (end_lr / start_lr) ** (t / (n - 1))``
    ("exp") or ``(1 - t / (n - 1)) * start_lr + t / (n - 1) * end_lr`` ("linear"),
    n = num_steps, reaching exactly ``end_lr`` at t = n - 1 and holding it.

    Args:
        start_lr: first value (> 0).
        end_lr: value at t = num_steps - 1 (> 0).
        num_steps: int >= 2.
        mode: "exp" or "linear".

    Counterpart: torch-lr-finder ``ExponentialLR`` / ``LinearLR``; fastai ``lr_find``.

    >>> RangeTest(start_lr=1e-3, end_lr=1.0, num_steps=4).values(4)
    array([0.001, 0.01 , 0.1  , 1.   ])
    """

    _fields = ("start_lr", "end_lr", "num_steps", "mode")
    _defaults = {"mode": "exp"}

    def __init__(self, start_lr, end_lr, num_steps, mode="exp"):
        c = "RangeTest"
        self._init(
            start_lr=_real(c, "start_lr", start_lr, lo=0.0, lo_open=True),
            end_lr=_real(c, "end_lr", end_lr, lo=0.0, lo_open=True),
            num_steps=_int(c, "num_steps", num_steps, lo=2),
            mode=_choice(c, "mode", mode, ("exp", "linear")),
        )

    def _encode(self):
        return [15, self.start_lr, self.end_lr, self.num_steps, float(self.mode == "linear")]

    def _horizon(self):
        return self.num_steps


# ---------------------------------------------------------------------------------------
# schedules given by their values: any per-step Python schedule, looked up in C++

MAX_TABLE_SIZE = 2**20
"""The most values a :class:`Table` (or steps a :class:`Lambda`) holds: 8 MiB of float64,
copied once per device. Longer schedules are closed forms (:class:`Cosine`, ...) or joins
of them (:class:`Sequential`)."""


def _value_array(cls, name, values, *, limit_hint):
    """A read-only float64 copy of ``values`` (1-d, 1..MAX_TABLE_SIZE finite numbers >= 0)."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise ArgumentTypeError(f"{cls}: {name} must be a sequence of numbers, got {type(values).__name__}")
    n = len(values)
    if n == 0:
        raise ValueError(f"{cls}: {name} must not be empty")
    if n > MAX_TABLE_SIZE:
        raise ValueError(f"{cls}: {name} has {n} entries, more than MAX_TABLE_SIZE = 2**20 "
                         f"({MAX_TABLE_SIZE}); {limit_hint}")
    try:
        arr = np.asarray(values)
    except Exception as e:  # ragged lists, objects NumPy cannot read
        raise ArgumentTypeError(f"{cls}: {name} must be a sequence of numbers ({e})") from e
    if arr.ndim != 1 or arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        if arr.dtype == object:  # e.g. a list of 0-dim tensors or Fractions: one by one
            arr = np.array([_real(cls, f"{name}[{i}]", v) for i, v in enumerate(values)])
        else:
            raise ArgumentTypeError(f"{cls}: {name} must be a 1-d sequence of real numbers, "
                                    f"got shape {arr.shape} and dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{cls}: {name}[{i}] must be finite and >= 0, got {arr[i]!r}")
    arr = arr + 0.0  # -0.0 -> 0.0, so equal tables have equal bytes (and hashes)
    return np.frombuffer(arr.tobytes(), dtype=np.float64)


_REPR_VALUES = 1000


def _list_repr(values):
    """The values as a list literal (so the repr rebuilds the schedule), shortened
    with "..." beyond _REPR_VALUES values."""
    v = values.tolist()
    if len(v) <= _REPR_VALUES:
        return "[" + ", ".join(map(repr, v)) + "]"
    return "[" + ", ".join(map(repr, v[:3])) + ", ..., " + repr(v[-1]) + f"] ({len(v)} values)"


class _Tabulated(Schedule):
    """Value semantics over an array field (equality, hash, pickle by value)."""

    def _key(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        h = self.__dict__.get("_hash")
        if h is None:  # hashed once: the CUDA path looks schedules up by hash every step
            h = hash((type(self).__name__, self._key()))
            object.__setattr__(self, "_hash", h)
        return h


class Table(_Tabulated):
    """Explicit values: ``s(t) = values[t]`` for ``t < len(values)``, then the last value.

    Any schedule that can be written down step by step runs in the kernel as a C++
    lookup (one array read per call).

    Args:
        values: 1 to ``MAX_TABLE_SIZE`` (2**20) numbers >= 0 (a list, tuple or 1-d array).

    >>> Table([0.1, 0.05, 0.01]).values(5)
    array([0.1 , 0.05, 0.01, 0.01, 0.01])
    """

    _fields = ("table",)  # the values, read-only (``values()`` evaluates, as everywhere)

    def __init__(self, values):
        self._init(table=_value_array(
            "Table", "values", values,
            limit_hint="use a closed-form schedule (Cosine, OneCycle, ...) or a Sequential of them",
        ))

    def _key(self):
        return self.table.tobytes()

    def _encode(self):
        return np.concatenate(([16.0, float(len(self.table))], self.table))

    def __reduce__(self):  # plain floats: loads under torch.load(weights_only=True)
        return (Table, (self.table.tolist(),))

    def __repr__(self):
        return f"Table({_list_repr(self.table)})"

    def _horizon(self):
        return len(self.table)


class Lambda(_Tabulated):
    """torch's ``LambdaLR`` as a schedule: ``s(t) = lr * fn(t)`` for
    ``t < total_steps``, then ``s(total_steps - 1)``.

    ``fn`` is called once per step at construction; the schedule keeps the factors, not
    the function, so it pickles (even for a lambda or a local function), compares by
    value and runs in C++ by lookup.

    Args:
        lr: base value (>= 0), torch's ``base_lr``.
        fn: a function of the step count returning a factor (a number >= 0), e.g. the
            lambda of transformers' ``get_cosine_schedule_with_warmup`` or of a torch
            ``LambdaLR``; or the ``total_steps`` factors themselves.
        total_steps: number of steps fn is evaluated at, 1 to ``MAX_TABLE_SIZE`` (2**20).

    Counterpart: torch ``LambdaLR(lr_lambda=fn)``; transformers' lambda schedules.

    >>> Lambda(0.1, lambda t: 0.5 ** t, total_steps=3).values(4)
    array([0.1  , 0.05 , 0.025, 0.025])
    """

    _fields = ("lr", "factors", "total_steps")

    def __init__(self, lr, fn, total_steps):
        c = "Lambda"
        lr = _real(c, "lr", lr, lo=0.0)
        n = _int(c, "total_steps", total_steps, lo=1)
        if n > MAX_TABLE_SIZE:
            raise ValueError(f"{c}: total_steps must be <= MAX_TABLE_SIZE = 2**20 ({MAX_TABLE_SIZE}), "
                             f"got {n}; use a closed-form schedule or a Sequential of them")
        if callable(fn):
            factors = []
            for t in range(n):
                f = fn(t)
                try:
                    factors.append(_real(c, f"fn({t})", f, lo=0.0))
                except ArgumentTypeError:
                    if getattr(f, "shape", None) != ():  # a 0-dim tensor / array is a number
                        raise
                    factors.append(_real(c, f"fn({t})", float(f), lo=0.0))
        else:
            if isinstance(fn, (str, bytes, dict)) or not hasattr(fn, "__len__"):
                raise ArgumentTypeError(f"{c}: fn must be a function of t or a sequence of factors, "
                                        f"got {type(fn).__name__}")
            if len(fn) != n:
                raise ValueError(f"{c}: fn given as factors must have total_steps = {n} entries, got {len(fn)}")
            factors = fn
        arr = _value_array(c, "fn" if callable(fn) else "factors", factors, limit_hint="")
        # the values torch's LambdaLR computes, base_lr * lmbda(t), rounded the same way
        object.__setattr__(self, "_values", np.frombuffer((lr * arr).tobytes(), dtype=np.float64))
        self._init(lr=lr, factors=arr, total_steps=n)

    def _key(self):
        return (self.lr, self.total_steps, self.factors.tobytes())

    def _encode(self):
        return np.concatenate(([16.0, float(self.total_steps)], self._values))

    def __reduce__(self):
        return (Lambda, (self.lr, self.factors.tolist(), self.total_steps))

    def __repr__(self):
        return f"Lambda(lr={self.lr!r}, fn={_list_repr(self.factors)}, total_steps={self.total_steps})"

    def _horizon(self):
        return self.total_steps
