"""Fuzzing the public NumPy kernels: random shapes, dtypes, strides, lists, aliasing and
hyper-parameters (0, inf, NaN, huge, wrong types) thrown at ``fastlr.sgd_step`` …

Contract checked for every example: either the call succeeds and every updated array
equals ``fastlr._reference`` bit for bit (NaN where it has NaN), grads untouched — or it
raises TypeError/ValueError with a message, and no array was modified. Never another
exception, a crash, a hang or a partial update. Every example also states whether the
input is valid (DESIGN.md's rules), so a bad input that is silently accepted, or a good
one that is refused, fails too.

The budget per test is ``FASTLR_FUZZ_EXAMPLES`` (default 150, so the suite stays fast);
``FASTLR_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py`` is the long run.
"""
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastlr
from fastlr import _reference as ref

from conftest import bfloat16_dtype

EXAMPLES = int(os.environ.get("FASTLR_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_BF16 = bfloat16_dtype()
DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)] + ([_BF16] if _BF16 else [])
BAD_DTYPES = [np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.complex64), np.dtype(np.bool_),
              np.dtype(np.uint16), np.dtype(np.longdouble)]

# kernel -> (state arguments, their "required when" rule)
STATES = {
    "sgd_step": ["momentum_buffers"],
    "adam_step": ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
    "rmsprop_step": ["square_avgs", "grad_avgs", "momentum_buffers"],
    "adagrad_step": ["state_sums"],
}

# ------------------------------------------------------- hyper-parameters ---
# Each strategy yields (value, valid?) pairs.

INF = math.inf
_non_neg_valid = st.one_of(
    st.sampled_from([0.0, 0, 5e-324, 1e-8, 1e-3, 0.1, 0.5, 0.9, 1.0, 3, 10.0, 1e30, 1e300, INF,
                     np.float32(0.25), np.float64(2.0), np.int64(1)]),
    st.floats(0, 1e6),
)
_invalid_any = st.sampled_from([math.nan, np.float64("nan"), "0.1", None, True, 1j, [0.1]])
# Valid values are drawn about 4 times in 5 (a branch is picked uniformly), so that whole
# calls with several hyper-parameters are valid often enough.
_non_neg = st.one_of(
    *[_non_neg_valid.map(lambda v: (v, True))] * 8,
    st.sampled_from([-1e-300, -0.5, -1.0, -INF]).map(lambda v: (v, False)),
    _invalid_any.map(lambda v: (v, False)),
)
_beta = st.one_of(
    *[st.sampled_from([0.0, 1e-12, 0.5, 0.9, 0.999, 0.9999999999999999]).map(lambda v: (v, True))] * 4,
    *[st.floats(0, 1, exclude_max=True).map(lambda v: (v, True))] * 4,
    st.sampled_from([1.0, 1.5, -0.1, INF, -INF]).map(lambda v: (v, False)),
    _invalid_any.map(lambda v: (v, False)),
)
_real = st.one_of(
    *[st.sampled_from([0.0, 0.1, 0.5, 1.0, -0.5, -1e30, 1e30, INF, -INF]).map(lambda v: (v, True))] * 8,
    _invalid_any.map(lambda v: (v, False)),
)
_step_valid = st.one_of(st.integers(1, 50), st.sampled_from([1, 2, 1000, 2**31, 2**53, 7.0]))
_step_invalid = st.sampled_from([0, -1, -(2**40), 1.5, INF, math.nan, True, "1", None, 2**53 + 1, 2**63, 2**64])
_step = st.one_of(*[_step_valid.map(lambda v: (v, True))] * 4, _step_invalid.map(lambda v: (v, False)))
_schedule = st.sampled_from([fastlr.Constant(0.05), fastlr.Cosine(0.1, 10), fastlr.StepDecay(0.2, 3)])


def _maybe_schedule(strategy, valid_schedule=True):
    return st.one_of(strategy, _schedule.map(lambda s: (s, valid_schedule)))


def _bools():
    return st.booleans().map(lambda v: (v, True))


HPARAMS = {
    "sgd_step": {"lr": _maybe_schedule(_non_neg), "momentum": _maybe_schedule(_non_neg),
                 "dampening": _real, "nesterov": _bools(), "weight_decay": _non_neg,
                 "maximize": _bools()},
    "adam_step": {"lr": _maybe_schedule(_non_neg), "beta1": _maybe_schedule(_beta), "beta2": _beta,
                  "eps": _non_neg, "weight_decay": _non_neg, "decoupled_weight_decay": _bools(),
                  "amsgrad": _bools(), "maximize": _bools()},
    "rmsprop_step": {"lr": _maybe_schedule(_non_neg), "alpha": _non_neg, "eps": _non_neg,
                     "weight_decay": _non_neg, "momentum": _maybe_schedule(_non_neg),
                     "centered": _bools(), "maximize": _bools()},
    "adagrad_step": {"lr": _maybe_schedule(_non_neg), "lr_decay": _non_neg, "eps": _non_neg,
                     "weight_decay": _non_neg, "maximize": _bools()},
}
STEP_REQUIRED = {"sgd_step": False, "adam_step": True, "rmsprop_step": False, "adagrad_step": True}


def _is_schedule(x):
    return isinstance(x, fastlr.Schedule)


def _cross_rules(kernel, kw, states_given):
    """Rules between arguments (DESIGN.md): which combination is valid, which states are needed."""
    need = set()
    ok = True
    step = kw.get("step")
    any_schedule = any(_is_schedule(v) for v in kw.values())
    if kernel == "sgd_step":
        mom = kw["momentum"]
        uses = _is_schedule(mom) or (isinstance(mom, (int, float, np.number)) and not isinstance(mom, bool)
                                      and mom == mom and mom != 0)
        if uses:
            need.add("momentum_buffers")
        if kw["nesterov"] and (not uses or kw["dampening"] != 0):
            ok = False
    elif kernel == "adam_step":
        need |= {"exp_avgs", "exp_avg_sqs"}
        if kw["amsgrad"]:
            need.add("max_exp_avg_sqs")
    elif kernel == "rmsprop_step":
        need.add("square_avgs")
        mom = kw["momentum"]
        if _is_schedule(mom) or (isinstance(mom, (int, float, np.number)) and not isinstance(mom, bool)
                                 and mom == mom and mom > 0):
            need.add("momentum_buffers")
        if kw["centered"]:
            need.add("grad_avgs")
    else:
        need.add("state_sums")
    if any_schedule and step is None:
        ok = False
    if not need <= states_given:
        ok = False
    return ok


# ------------------------------------------------------------------ arrays ---

_SHAPES = st.one_of(
    st.lists(st.integers(0, 9), max_size=3).map(tuple),
    st.sampled_from([(15,), (16,), (17,), (63,), (1000,), (32769,), (70001,), (3, 5, 7)]),
)
_SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e38, -1e38, 1e-45, 6e4, 1e300])


def _values(rng, shape, dtype, special_rate, scale):
    with np.errstate(all="ignore"):
        x = np.asarray(rng.standard_normal(shape) * scale)
        if special_rate and x.size:
            mask = rng.random(shape) < special_rate
            x[mask] = rng.choice(_SPECIALS, size=int(mask.sum()))
        return np.ascontiguousarray(x.astype(dtype))


CORRUPTIONS = ["none"] * 6 + [
    "dtype", "bad_dtype_all", "shape", "noncontig", "fortran", "readonly", "readonly_grad",
    "length", "alias", "overlap", "not_array", "missing", "single_array", "tuple",
]


@st.composite
def cases(draw, kernel):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dtype = draw(st.sampled_from(DTYPES))
    shapes = draw(st.lists(_SHAPES, max_size=4))
    special_rate = draw(st.sampled_from([0.0, 0.0, 0.01, 0.3]))
    scale = draw(st.sampled_from([1.0, 1.0, 1e-30, 1e30]))

    kw, valid = {}, True
    for name, strat in HPARAMS[kernel].items():
        if draw(st.booleans()) or name in ("lr",):  # sometimes keep the default
            value, ok = draw(strat)
            kw[name] = value
            valid &= ok
    defaults = {"momentum": 0.0, "dampening": 0.0, "nesterov": False, "amsgrad": False,
                "centered": False}
    full = {**defaults, **kw}
    step_given = draw(st.booleans()) or STEP_REQUIRED[kernel]
    if step_given:
        step, ok = draw(_step)
        if step is None:
            ok = not STEP_REQUIRED[kernel]  # None: "buffers already initialised"
        kw["step"] = step
        full["step"] = step
        valid &= ok
    else:
        full["step"] = None

    arrays = {"params": [_values(rng, s, dtype, special_rate, scale) for s in shapes],
              "grads": [_values(rng, s, dtype, special_rate, scale) for s in shapes]}
    names = STATES[kernel]
    given_states = set()
    for name in names:
        if draw(st.integers(0, 3)) > 0:  # usually give every state
            init = rng.random if name in ("exp_avg_sqs", "max_exp_avg_sqs", "square_avgs", "state_sums") \
                else rng.standard_normal
            arrays[name] = [np.ascontiguousarray((np.abs(init(s)) if init is rng.random else init(s)).astype(dtype))
                            for s in shapes]
            given_states.add(name)
    if not valid:  # a cross rule may raise too; any error is then expected
        pass
    valid &= _cross_rules(kernel, full, given_states) if _hparams_typed(full) else False

    corruption = draw(st.sampled_from(CORRUPTIONS))
    roles = [r for r in arrays if arrays[r]]
    updated = ["params"] + [r for r in names if r in arrays]
    valid_arrays = True
    if corruption == "dtype" and roles:
        role = draw(st.sampled_from(roles))
        i = draw(st.integers(0, len(arrays[role]) - 1))
        other = draw(st.sampled_from([d for d in DTYPES + BAD_DTYPES if d != dtype]))
        with np.errstate(all="ignore"):
            arrays[role][i] = arrays[role][i].astype(other)
        valid_arrays = False
    elif corruption == "bad_dtype_all" and shapes:
        bad = draw(st.sampled_from(BAD_DTYPES))
        with np.errstate(all="ignore"):
            for r in arrays:
                arrays[r] = [a.astype(bad) for a in arrays[r]]
        valid_arrays = False
    elif corruption == "shape" and roles:
        role = draw(st.sampled_from(roles))
        i = draw(st.integers(0, len(arrays[role]) - 1))
        arrays[role][i] = np.zeros(arrays[role][i].shape + (2,), arrays[role][i].dtype)
        valid_arrays = False
    elif corruption == "noncontig" and roles:
        role = draw(st.sampled_from(roles))
        i = draw(st.integers(0, len(arrays[role]) - 1))
        a = arrays[role][i]
        if a.ndim and a.shape[-1] >= 2:
            wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
            wide[..., ::2] = a
            arrays[role][i] = wide[..., ::2]
            valid_arrays = arrays[role][i].flags.c_contiguous
    elif corruption == "fortran" and roles:
        role = draw(st.sampled_from(roles))
        i = draw(st.integers(0, len(arrays[role]) - 1))
        arrays[role][i] = np.asfortranarray(arrays[role][i])
        valid_arrays = arrays[role][i].flags.c_contiguous
    elif corruption == "readonly" and shapes:
        role = draw(st.sampled_from(updated))
        i = draw(st.integers(0, len(shapes) - 1))
        arrays[role][i].setflags(write=False)
        valid_arrays = False
    elif corruption == "readonly_grad" and shapes:
        for g in arrays["grads"]:
            g.setflags(write=False)  # grads are only read: fine
    elif corruption == "length" and roles:
        role = draw(st.sampled_from(roles))
        if draw(st.booleans()):
            arrays[role] = arrays[role][:-1]
        else:
            arrays[role] = arrays[role] + [arrays[role][-1].copy()]
        valid_arrays = False
    elif corruption == "alias" and len(updated) > 1 and shapes:
        a, b = draw(st.lists(st.sampled_from(updated), min_size=2, max_size=2, unique=True))
        i = draw(st.integers(0, len(shapes) - 1))
        arrays[b][i] = arrays[a][i]
        valid_arrays = arrays[a][i].size == 0
    elif corruption == "overlap" and len(updated) > 1 and shapes:
        # two updated arrays that share memory without starting at the same address
        a, b = draw(st.lists(st.sampled_from(updated), min_size=2, max_size=2, unique=True))
        i = draw(st.integers(0, len(shapes) - 1))
        x = arrays[a][i]
        if x.size >= 2:
            base = np.concatenate([x.ravel(), x.ravel()[-1:]])
            arrays[a][i] = base[:-1].reshape(x.shape)
            arrays[b][i] = base[1:].reshape(x.shape)
            valid_arrays = False
    elif corruption == "not_array" and roles:
        role = draw(st.sampled_from(roles))
        if draw(st.booleans()):
            arrays[role] = [a.tolist() for a in arrays[role]]
        else:
            arrays[role] = "not an array"
        valid_arrays = False
    elif corruption == "missing":
        role = draw(st.sampled_from(["params", "grads"] + names))
        arrays[role] = None
        given_states.discard(role)
        if role in ("params", "grads"):
            valid_arrays = False
        else:
            valid &= _cross_rules(kernel, full, given_states) if _hparams_typed(full) else False
    elif corruption == "single_array" and len(shapes) == 1:
        for r in arrays:
            arrays[r] = arrays[r][0]
    elif corruption == "tuple":
        for r in arrays:
            arrays[r] = tuple(arrays[r])
    return kernel, kw, arrays, bool(valid and valid_arrays), corruption


def _hparams_typed(full):
    """Cross rules only make sense once every hyper-parameter has a usable type."""
    for v in full.values():
        if v is None or isinstance(v, (str, complex, list)):
            if v is None and full.get("step") is None:
                continue
            return False
    return True


# ----------------------------------------------------------------- checks ---


def _flat_arrays(arrays):
    out = []
    for v in arrays.values():
        if isinstance(v, np.ndarray):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(a for a in v if isinstance(a, np.ndarray))
    return out


def _snapshot(arrays):
    return [(a, a.copy()) for a in _flat_arrays(arrays)]


def _unchanged(snapshot):
    return all(a.tobytes() == before.tobytes() for a, before in snapshot)


def _copies(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    return [a.copy() for a in value]


def _check(kernel, kw, arrays, valid, corruption):
    snap = _snapshot(arrays)
    fn = getattr(fastlr, kernel)
    if valid:
        ref_arrays = {k: (_copies(v) if v is not None else None) for k, v in arrays.items()}
        # the kernels take every hyper-parameter as a double: give the reference Python
        # floats too (NumPy 2 keeps np.float32(0.25) * 0 in float32), and step 7.0 as 7
        ref_kw = {k: float(v) if isinstance(v, np.number) else v for k, v in kw.items()}
        if ref_kw.get("step") is not None:
            ref_kw["step"] = int(ref_kw["step"])
        with np.errstate(all="ignore"):
            getattr(ref, kernel)(**ref_arrays, **ref_kw)
    try:
        with np.errstate(all="ignore"):
            fn(**arrays, **kw)
    except (TypeError, ValueError) as e:
        assert str(e), "an error without a message"
        assert _unchanged(snap), f"{type(e).__name__} raised after modifying an array: {e}"
        assert not valid, f"valid input refused ({corruption}): {type(e).__name__}: {e}"
        return "error"
    assert valid, f"invalid input accepted silently (corruption={corruption}, kw={kw})"
    for role, value in arrays.items():
        if value is None:
            continue
        got = [value] if isinstance(value, np.ndarray) else list(value)
        want = [ref_arrays[role]] if isinstance(value, np.ndarray) else list(ref_arrays[role])
        for i, (g, w) in enumerate(zip(got, want)):
            if g.dtype == _BF16:  # NumPy's NaN-aware comparison does not know bfloat16
                g, w = g.astype(np.float32), w.astype(np.float32)
            np.testing.assert_array_equal(g, w, err_msg=f"{role}[{i}] differs from the reference")
    return "ok"


def _fuzz(kernel, data):
    case = data.draw(cases(kernel))
    outcome = _check(*case)
    _COUNTS[kernel][outcome] += 1


_COUNTS = {k: {"ok": 0, "error": 0} for k in STATES}


@pytest.mark.parametrize("kernel", sorted(STATES))
@FUZZ
@given(data=st.data())
def test_fuzz_kernel(kernel, data):
    _fuzz(kernel, data)


def test_fuzz_reached_both_outcomes():
    """The fuzzer explored valid and invalid inputs for every kernel (run after the fuzz tests)."""
    for kernel, counts in _COUNTS.items():
        if sum(counts.values()) == 0:
            pytest.skip("fuzz tests not run in this session")
        assert counts["ok"] > 0 and counts["error"] > 0, (kernel, counts)


# ----------------------------------------------- targeted, deterministic ---


def test_partially_overlapping_state_is_refused():
    """Two updated arrays sharing memory at different addresses would race across threads."""
    base = np.zeros(101, np.float32)
    p, buf = base[:100], base[1:]
    g = np.ones(100, np.float32)
    before = base.copy()
    with pytest.raises(ValueError, match="memory"):
        fastlr.sgd_step(p, g, buf, lr=0.1, momentum=0.9)
    np.testing.assert_array_equal(base, before)


@pytest.mark.parametrize("step", [2**53 + 1, 2**63, 2**64, 10**30, 1e300])
def test_step_beyond_2_53_is_refused(step):
    p, g = np.ones(4, np.float32), np.ones(4, np.float32)
    m, v = np.zeros(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises((TypeError, ValueError), match="step"):
        fastlr.adam_step(p, g, m, v, step=step, lr=0.1)
    with pytest.raises((TypeError, ValueError), match="step"):
        fastlr.sgd_step(p, g, m, lr=0.1, momentum=0.9, step=step)
    with pytest.raises((TypeError, ValueError), match="step"):
        fastlr.adagrad_step(p, g, v, step=step, lr=0.1)
    np.testing.assert_array_equal(p, 1)


@pytest.mark.parametrize("step", [0.0, 0.5, 2.0**53 + 2, 1e30, math.inf, math.nan])
def test_binding_checks_step_itself(step):
    """fastlr.optim hands the kernels torch's float step tensor: the binding validates it
    (an out-of-range double -> int64 conversion is undefined behaviour)."""
    from fastlr import _C

    p, g = np.ones(4, np.float32), np.ones(4, np.float32)
    m, v = np.zeros(4, np.float32), np.zeros(4, np.float32)
    a = [x.__array_interface__["data"][0] for x in (p, g, m, v)]
    with pytest.raises(ValueError, match="step"):
        _C.adam(0, [4], [a[0]], [a[1]], [a[2]], [a[3]], None, step, 0.1, None, 0.9, None, 0.999,
                1e-8, 0.0, False, False, False)
    with pytest.raises(ValueError, match="step"):
        _C.adagrad(0, [4], [a[0]], [a[1]], [a[2]], step, 0.1, None, 0.0, 0.0, 1e-10, False)
    np.testing.assert_array_equal(p, 1)


# --------------------------------------------------- optimizer constructors ---
# fastlr.optim.X and fastlr.numpy.X against torch.optim.X as the oracle: what torch
# refuses, fastlr refuses with TypeError/ValueError; what torch accepts, fastlr accepts,
# and two steps then give torch's result (NaN/inf where torch has them). A Schedule is
# compared with torch given the schedule's first values.

_HP_VALUES = [0, 0.0, 1e-3, 0.5, 0.9, 1, 2.0, 1e30, INF, -INF, math.nan, -1.0, -0.0, True, "0.1", None]
_BETAS = [(0.9, 0.999), (0.0, 0.0), (0.5, 0.99999), (1.0, 0.9), (0.9, 1.0), (-0.1, 0.9), (0.5, math.nan),
          (INF, 0.9), (0.9,), (0.9, 0.999, 0.5), "ab", None, [0.8, 0.9]]
_CTOR_KEYS = {
    "SGD": ["lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"],
    "Adam": ["lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"],
    "AdamW": ["lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"],
    "RMSprop": ["lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"],
    "Adagrad": ["lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize"],
}
_BOOL_KEYS = {"nesterov", "maximize", "amsgrad", "centered"}


@st.composite
def _ctor_kwargs(draw, name):
    kw = {}
    for key in _CTOR_KEYS[name]:
        if not draw(st.booleans()):
            continue
        if key in _BOOL_KEYS:
            kw[key] = draw(st.booleans())
        elif key == "betas":
            kw[key] = draw(st.one_of(st.sampled_from(_BETAS),
                                     _schedule.map(lambda s: (s, 0.999))))
        elif key in ("lr", "momentum") and draw(st.integers(0, 5)) == 0:
            kw[key] = draw(_schedule)
        else:
            kw[key] = draw(st.sampled_from(_HP_VALUES))
    return kw


def _torch_kwargs(kw):
    """The kwargs torch sees: a Schedule replaced by its value at t = 0."""
    out = dict(kw)
    for k, v in kw.items():
        if isinstance(v, fastlr.Schedule):
            out[k] = float(v(0))
        elif k == "betas" and isinstance(v, tuple) and v and isinstance(v[0], fastlr.Schedule):
            out[k] = (float(v[0](0)),) + v[1:]
    return out


def _outcome(fn):
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - classified by the caller
        return None, e


_CTOR_COUNTS = {"accepted": 0, "refused": 0}


def _mistyped(kw, front):
    """A numeric option given as None, a string, a list, NaN or (fastlr.numpy) a bool:
    fastlr may refuse these although torch tolerates them where it never reads them."""
    for k, v in kw.items():
        if k in _BOOL_KEYS or k == "betas" or isinstance(v, fastlr.Schedule):
            continue
        if v is None or isinstance(v, (str, list, tuple)) or (front == "numpy" and isinstance(v, bool)):
            return True
        if isinstance(v, float) and math.isnan(v):
            return True
    return False


_TORCH_LR = {"SGD": 1e-3, "Adam": 1e-3, "AdamW": 1e-3, "RMSprop": 1e-2, "Adagrad": 1e-2}


def _reference_run(name, p0, grads, kw):
    """The same steps through fastlr._reference (torch's formulas, unfused), with torch's
    defaults: the value oracle. torch itself fuses some operations into FMAs on AVX2, which
    moves results that cancel (RMSprop, weight decay against the gradient) by more than any
    fixed tolerance; fastlr matches the unfused order bit for bit."""
    kw = dict(kw)
    kw.setdefault("lr", _TORCH_LR[name])
    p = p0.copy()
    zeros = lambda: np.zeros_like(p)  # noqa: E731
    if name in ("Adam", "AdamW"):
        beta1, beta2 = kw.pop("betas", (0.9, 0.999))
        if name == "AdamW":
            kw.setdefault("weight_decay", 1e-2)
            kw["decoupled_weight_decay"] = True
        m, v, vmax = zeros(), zeros(), zeros()
        for k, g in enumerate(grads):
            ref.adam_step(p, g, m, v, max_exp_avg_sqs=vmax, step=k + 1, beta1=beta1, beta2=beta2, **kw)
    elif name == "SGD":
        b = zeros()
        for k, g in enumerate(grads):
            ref.sgd_step(p, g, b, step=k + 1, **kw)
    elif name == "RMSprop":
        sq, ga, b = zeros(), zeros(), zeros()
        for k, g in enumerate(grads):
            ref.rmsprop_step(p, g, sq, grad_avgs=ga, momentum_buffers=b, step=k + 1, **kw)
    else:
        s = np.full_like(p, kw.pop("initial_accumulator_value", 0.0))
        for k, g in enumerate(grads):
            ref.adagrad_step(p, g, s, step=k + 1, **kw)
    return p


@pytest.mark.parametrize("front", ["optim", "numpy"])
@pytest.mark.parametrize("name", sorted(_CTOR_KEYS))
@FUZZ
@given(data=st.data())
def test_fuzz_constructor(front, name, data):
    torch = pytest.importorskip("torch")
    kw = data.draw(_ctor_kwargs(name))
    p0 = np.linspace(-1, 1, 7, dtype=np.float32)
    grads = [np.cos(3 * p0 + k).astype(np.float32) for k in range(2)]
    if _torch_kwargs(kw) != kw:
        grads = grads[:1]  # torch gets the schedule's first value only

    def make_torch():
        p = torch.nn.Parameter(torch.tensor(p0))
        return p, getattr(torch.optim, name)([p], foreach=False, **_torch_kwargs(kw))

    def run_torch(made):
        p, opt = made
        for g in grads:
            p.grad = torch.tensor(g)
            opt.step()
        return p.detach().numpy().copy()

    if front == "optim":
        optim = pytest.importorskip("fastlr.optim")

        def make():
            p = torch.nn.Parameter(torch.tensor(p0))
            return p, getattr(optim, name)([p], **kw)

        run = run_torch  # a torch optimizer's steps
    else:
        import fastlr.numpy as fnp

        def make():
            p = p0.copy()
            return p, getattr(fnp, name)([p], **kw)

        def run(made):
            p, opt = made
            for g in grads:
                opt.step([g.copy()])
            return p

    with np.errstate(all="ignore"):
        torch_made, torch_error = _outcome(make_torch)  # torch's constructor
        _, torch_step_error = (None, None) if torch_error else _outcome(lambda: run_torch(torch_made))
        made, error = _outcome(make)
        got, step_error = (None, None) if error else _outcome(lambda: run(made))
    if error is not None:
        assert isinstance(error, (TypeError, ValueError)), f"{kw}: {type(error).__name__}: {error}"
        assert str(error)
        # refused where torch refuses, or fails at its first step (betas=(a, b, c):
        # "too many values to unpack"), or for a value of the wrong type that torch only
        # tolerates because these options never read it (dampening=None without momentum)
        assert torch_error or torch_step_error or _mistyped(kw, front), (
            f"torch accepts {kw}, fastlr refuses: {error}")
        _CTOR_COUNTS["refused"] += 1
        return
    if torch_error is not None:
        # torch's constructor refused: fastlr must refuse too, at the latest at its step
        assert step_error is not None and isinstance(step_error, (TypeError, ValueError, RuntimeError)), (
            f"torch refuses {kw} ({type(torch_error).__name__}: {torch_error}), fastlr accepts it")
        _CTOR_COUNTS["refused"] += 1
        return
    if step_error is not None:  # accepted, then refused at the step: only where torch's step fails too
        assert torch_step_error is not None or _mistyped(kw, front), f"{kw}: {type(step_error).__name__}: {step_error}"
        assert isinstance(step_error, (TypeError, ValueError)), f"{kw}: {type(step_error).__name__}: {step_error}"
        _CTOR_COUNTS["refused"] += 1
        return
    _CTOR_COUNTS["accepted"] += 1
    if torch_step_error is not None and _mistyped(kw, front):
        return  # lenient where torch fails late (float("0.1") for dampening): no oracle
    # torch's own step may fail where fastlr's works (weight_decay=True: "Boolean alpha
    # only supported for Boolean results"); the values come from the reference anyway.
    with np.errstate(all="ignore"):
        want = _reference_run(name, p0, grads, kw)
    np.testing.assert_array_equal(got, want, err_msg=f"{kw}")
