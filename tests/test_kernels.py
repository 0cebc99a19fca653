"""The NumPy kernels (fastlr.sgd_step ...) against the pure-NumPy reference and torch.optim.

- vs fastlr._reference: bit-identical for every dtype. The reference follows torch's
  single-tensor code operation by operation and the build disables FP contraction, so
  there is no rounding difference to tolerate (16-bit: both compute in float32 and round
  to nearest even once per update).
- vs torch.optim (foreach=False), 60 steps: float64 to 1e-12 and float32 to 1e-6,
  relative to max(each array's scale, 1) (torch's vectorized lerp uses an FMA, so the last bits
  differ). float16/bfloat16: torch run in float32 and fed our 16-bit state before every
  step; its result rounded to 16 bits must be within one 16-bit ulp of ours (or 1e-6 of
  the array's scale; at least 99% of the elements equal).
- tails, list form, 1 vs 2 threads, every CPU level, FP contraction, schedules,
  hypothesis properties.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastlr
from fastlr import _C
from fastlr import _reference as ref

from conftest import (TORCH_CASES, TORCH_DEFAULT_LR, bfloat16_dtype, subprocess_kwargs, supported_cpu_levels,
                      torch_cases)

STEPS = 60
TAIL_SIZES = [0, 1, 7, 15, 16, 17, 33, 1000, 70000]  # 70000 > 2 grains: two threads split it
SMALL_SIZES = [0, 1, 7, 17, 33, 1000]

_BF16 = bfloat16_dtype()
DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)] + ([_BF16] if _BF16 else [])
LOW = [d for d in DTYPES if d.itemsize == 2]

# torch.optim state key of each kernel state argument.
TORCH_KEY = {
    "momentum_buffers": "momentum_buffer", "exp_avgs": "exp_avg", "exp_avg_sqs": "exp_avg_sq",
    "max_exp_avg_sqs": "max_exp_avg_sq", "square_avgs": "square_avg", "grad_avgs": "grad_avg",
    "state_sums": "sum",
}


# ------------------------------------------------------------------ driver ---


def translate(name, torch_kwargs):
    """torch constructor kwargs -> (kernel name, kernel kwargs, initial state value)."""
    kw = dict(torch_kwargs)
    lr = float(kw.pop("lr", TORCH_DEFAULT_LR[name]))
    init = 0.0
    if name == "SGD":
        return "sgd_step", {"lr": lr, **kw}, init
    if name in ("Adam", "AdamW"):
        beta1, beta2 = kw.pop("betas", (0.9, 0.999))
        if name == "AdamW":
            kw.setdefault("weight_decay", 1e-2)
            kw["decoupled_weight_decay"] = True
        return "adam_step", {"lr": lr, "beta1": beta1, "beta2": beta2, **kw}, init
    if name == "RMSprop":
        return "rmsprop_step", {"lr": lr, **kw}, init
    init = kw.pop("initial_accumulator_value", 0.0)
    return "adagrad_step", {"lr": lr, **kw}, init


class Run:
    """One trajectory: params and the state arrays the options need, stepped by a module
    (fastlr or fastlr._reference) that provides the kernel functions."""

    def __init__(self, kernel, kwargs, params, init=0.0):
        self.kernel, self.kwargs, self.params = kernel, dict(kwargs), [p.copy() for p in params]
        def on(key):  # a Schedule counts as non-zero
            v = kwargs.get(key, 0)
            return hasattr(v, "_encoding") or v > 0

        names = {
            "sgd_step": ["momentum_buffers"] if on("momentum") else [],
            "adam_step": ["exp_avgs", "exp_avg_sqs"] + (["max_exp_avg_sqs"] if kwargs.get("amsgrad") else []),
            "rmsprop_step": ["square_avgs"] + (["grad_avgs"] if kwargs.get("centered") else [])
            + (["momentum_buffers"] if on("momentum") else []),
            "adagrad_step": ["state_sums"],
        }[kernel]
        self.state = {n: [np.full_like(p, init if n == "state_sums" else 0) for p in params] for n in names}

    def step(self, module, grads, step):
        return getattr(module, self.kernel)(self.params, grads, step=step, **self.state, **self.kwargs)

    def arrays(self):
        return {"params": self.params, **self.state}


def make_data(sizes, dtype, steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(steps)]
    return params, grads


def assert_identical(a, b):
    """Bit for bit, except that NaNs compare by position only: the 16-bit stores make every
    NaN torch's canonical one (bfloat16 0x7FC0, float16 0x7E00), while the reference's
    ml_dtypes/NumPy conversions keep the sign."""
    for role in a:
        for i, (x, y) in enumerate(zip(a[role], b[role])):
            assert x.dtype == y.dtype
            xf, yf = x.astype(np.float32), y.astype(np.float32)
            np.testing.assert_array_equal(np.isnan(xf), np.isnan(yf), err_msg=f"{role}[{i}] NaN positions")
            keep = ~np.isnan(xf)
            np.testing.assert_array_equal(x.view(f"u{x.itemsize}")[keep], y.view(f"u{y.itemsize}")[keep],
                                          err_msg=f"{role}[{i}]")


def assert_close(ours, theirs, rtol, what):
    """|ours - theirs| <= rtol * max(|theirs|, the array's scale, 1): values start O(1),
    so an element that cancelled towards 0 keeps an absolute tolerance of O(rtol)."""
    scale = max(float(np.max(np.abs(theirs))), 1.0) if theirs.size else 1.0
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale, err_msg=what)


# ------------------------------------------------------- vs the reference ---


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,torch_kwargs", torch_cases())
def test_matches_reference_bit_for_bit(name, torch_kwargs, dtype):
    kernel, kwargs, init = translate(name, torch_kwargs)
    params, grads = make_data(SMALL_SIZES, dtype, steps=STEPS)
    ours, theirs = Run(kernel, kwargs, params, init), Run(kernel, kwargs, params, init)
    for step in range(1, STEPS + 1):
        assert ours.step(fastlr, grads[step - 1], step) == theirs.step(ref, grads[step - 1], step)
    assert_identical(ours.arrays(), theirs.arrays())


# ------------------------------------------------------------ vs torch.optim ---


def torch_optimizer(torch, name, torch_kwargs, tensors):
    cls = getattr(torch.optim, name)
    return cls(tensors, foreach=False, **torch_kwargs)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-6)], ids=["float64", "float32"])
@pytest.mark.parametrize("name,torch_kwargs", torch_cases())
def test_matches_torch(torch, name, torch_kwargs, dtype, rtol):
    kernel, kwargs, init = translate(name, torch_kwargs)
    params, grads = make_data([1, 17, 1000], dtype)
    ours = Run(kernel, kwargs, params, init)
    tparams = [torch.from_numpy(p.copy()) for p in params]
    opt = torch_optimizer(torch, name, torch_kwargs, tparams)
    for step in range(1, STEPS + 1):
        ours.step(fastlr, grads[step - 1], step)
        for p, g in zip(tparams, grads[step - 1]):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
    for role, arrays in ours.arrays().items():
        for i, a in enumerate(arrays):
            t = tparams[i] if role == "params" else opt.state[tparams[i]][TORCH_KEY[role]]
            assert_close(a, t.numpy(), rtol, f"{role}[{i}]")


def _as_float32(a):
    return a.astype(np.float32)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name,torch_kwargs", torch_cases())
def test_low_precision_matches_torch_float32(torch, name, torch_kwargs, dtype):
    """Each 16-bit update = torch's float32 update of the same 16-bit values, rounded once."""
    kernel, kwargs, init = translate(name, torch_kwargs)
    params, grads = make_data([1, 17, 1000], dtype, steps=20)
    ours = Run(kernel, kwargs, params, init)
    tparams = [torch.from_numpy(_as_float32(p)) for p in params]
    opt = torch_optimizer(torch, name, torch_kwargs, tparams)
    tdtype = torch.float16 if dtype == np.float16 else torch.bfloat16
    ulp = 2.0**-10 if dtype == np.float16 else 2.0**-7
    tiny = 2.0**-24 if dtype == np.float16 else 0.0
    equal = total = 0
    for step in range(1, 21):
        # Feed torch our current 16-bit values, upcast.
        for role, arrays in ours.arrays().items():
            for i, a in enumerate(arrays):
                if role == "params":
                    tparams[i].copy_(torch.from_numpy(_as_float32(a)))
                elif tparams[i] in opt.state:
                    opt.state[tparams[i]][TORCH_KEY[role]].copy_(torch.from_numpy(_as_float32(a)))
        ours.step(fastlr, grads[step - 1], step)
        for p, g in zip(tparams, grads[step - 1]):
            p.grad = torch.from_numpy(_as_float32(g))
        opt.step()
        for role, arrays in ours.arrays().items():
            for i, a in enumerate(arrays):
                t = tparams[i] if role == "params" else opt.state[tparams[i]][TORCH_KEY[role]]
                theirs = t.to(tdtype).float().numpy()
                # atol: a lerp that cancels to 0 here leaves an FMA residual of a float32
                # ulp of the operands in torch.
                atol = max(tiny, 1e-6 * float(np.max(np.abs(theirs), initial=0.0)))
                np.testing.assert_allclose(_as_float32(a), theirs, rtol=ulp, atol=atol,
                                           err_msg=f"step {step} {role}[{i}]")
                equal += int(np.sum(_as_float32(a) == theirs))
                total += a.size
    assert equal >= 0.99 * total


def test_torch_cases_cover_optim_db(torch):
    """Every option combination torch's own optimizer tests use is in TORCH_CASES."""
    try:
        from torch.testing._internal.common_optimizers import optim_db
    except Exception as e:  # internal module: needs expecttest, may move between versions
        pytest.skip(f"torch's optim_db is not importable: {e}")
    checked = 0
    for info in optim_db:
        name = info.optim_cls.__name__
        if name not in TORCH_CASES:
            continue
        for oi in info.optim_inputs_func(device="cpu"):
            # A tensor lr is a float32 0.001: compare it as the float it stands for.
            kw = {k: (float(f"{v.item():.7g}") if isinstance(v, torch.Tensor) else v) for k, v in oi.kwargs.items()}
            assert kw in TORCH_CASES[name], f"{name} {oi.desc}: {kw} missing from TORCH_CASES"
            checked += 1
    assert checked >= 30


# ------------------------------------------------- tails, lists, threads, levels ---

# The richest mode of each kernel (every state array in play).
RICH = [
    ("sgd_step", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
    ("sgd_step", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "maximize": True}),
    ("adam_step", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    ("adam_step", {"lr": 0.01, "decoupled_weight_decay": True, "weight_decay": 0.1, "maximize": True}),
    ("rmsprop_step", {"lr": 0.01, "centered": True, "momentum": 0.5, "weight_decay": 0.1}),
    ("adagrad_step", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1}),
]
RICH_IDS = [f"{k}-{i}" for i, (k, _) in enumerate(RICH)]


def run_steps(kernel, kwargs, sizes, dtype, steps=4, one_call=True):
    params, grads = make_data(sizes, dtype, steps=steps)
    run = Run(kernel, kwargs, params, init=0.1)
    for step in range(1, steps + 1):
        if one_call:
            run.step(fastlr, grads[step - 1], step)
        else:  # one call per array, each in its single-array form
            for i in range(len(sizes)):
                getattr(fastlr, kernel)(run.params[i], grads[step - 1][i], step=step,
                                        **{k: v[i] for k, v in run.state.items()}, **kwargs)
    return run.arrays()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel,kwargs", RICH, ids=RICH_IDS)
def test_tail_sizes_match_reference(kernel, kwargs, dtype):
    for n in TAIL_SIZES:
        params, grads = make_data([n], dtype, steps=3)
        ours, theirs = Run(kernel, kwargs, params, 0.1), Run(kernel, kwargs, params, 0.1)
        for step in (1, 2, 3):
            ours.step(fastlr, grads[step - 1][0], step)
            theirs.step(ref, grads[step - 1][0], step)
        assert_identical(ours.arrays(), theirs.arrays())


@pytest.mark.parametrize("kernel,kwargs", RICH, ids=RICH_IDS)
def test_list_form_equals_single_array_form(kernel, kwargs):
    sizes = TAIL_SIZES + [3, 0, 70000, 5]
    assert_identical(run_steps(kernel, kwargs, sizes, np.float32),
                     run_steps(kernel, kwargs, sizes, np.float32, one_call=False))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel,kwargs", RICH, ids=RICH_IDS)
def test_one_and_two_threads_bit_identical(kernel, kwargs, dtype, num_threads):
    sizes = [70000, 17, 40000, 33, 0, 1000]  # both a split tensor and a split inside a list
    num_threads(1)
    one = run_steps(kernel, kwargs, sizes, dtype)
    num_threads(2)
    two = run_steps(kernel, kwargs, sizes, dtype)
    num_threads(3)  # more threads than the grain allows: clamped
    three = run_steps(kernel, kwargs, sizes, dtype)
    assert_identical(one, two)
    assert_identical(one, three)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel,kwargs", RICH, ids=RICH_IDS)
def test_every_cpu_level_matches_reference(kernel, kwargs, dtype, cpu_level):
    sizes = [0, 1, 7, 15, 16, 17, 33, 1000]
    params, grads = make_data(sizes, dtype, steps=3)
    ours, theirs = Run(kernel, kwargs, params, 0.1), Run(kernel, kwargs, params, 0.1)
    for step in (1, 2, 3):
        ours.step(fastlr, grads[step - 1], step)
        theirs.step(ref, grads[step - 1], step)
    assert_identical(ours.arrays(), theirs.arrays())


@pytest.mark.parametrize("kernel,kwargs", RICH, ids=RICH_IDS)
def test_cpu_levels_bit_identical_to_each_other(kernel, kwargs):
    before = _C.cpu_level()
    results = []
    try:
        for level in supported_cpu_levels():
            _C.set_cpu_level(level)
            results.append(run_steps(kernel, kwargs, [1000, 17, 70000], np.float32))
    finally:
        _C.set_cpu_level(before)
    for r in results[1:]:
        assert_identical(results[0], r)


def test_cpu_level_control():
    assert _C.cpu_level() in supported_cpu_levels()
    assert fastlr.build_info()["cpu_level"] == _C.cpu_level()
    with pytest.raises(ValueError, match="unknown CPU level"):
        _C.set_cpu_level("sse9")


def test_bad_cpu_level_setting_named_at_import():
    """A bad FASTLR_CPU_LEVEL fails the import with an error naming the setting (it said only
    "unknown CPU level 'sse9'", from every fastlr command)."""
    import subprocess
    import sys

    kw = subprocess_kwargs()
    kw["env"]["FASTLR_CPU_LEVEL"] = "sse9"
    out = subprocess.run([sys.executable, "-c", "import fastlr"], capture_output=True, text=True, **kw)
    assert out.returncode != 0
    assert "FASTLR_CPU_LEVEL=sse9: unknown CPU level 'sse9' (expected baseline, avx2 or avx512)" in out.stderr


def _fused_exact(p, a, g):
    """round(p + a*g) with one rounding, element by element, via exact rationals."""
    from fractions import Fraction

    t = p.dtype.type
    return np.array([t(float(Fraction(float(x)) + Fraction(float(a)) * Fraction(float(y)))) for x, y in zip(p, g)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_no_fma_contraction(dtype, cpu_level):
    """p + (-lr)*g is rounded twice (product, then sum), never fused, at every level.

    float32: the fused value is computed in float64, where the product is exact (the
    float64 sum's own rounding is harmless here); float64: in exact rationals.
    """
    rng = np.random.default_rng(1)
    n = 1031
    p = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    lr = 0.3
    ours = p.copy()
    fastlr.sgd_step(ours, g, lr=lr)
    neg_lr = dtype(-lr)
    unfused = p + neg_lr * g
    if dtype == np.float32:
        fused = (p.astype(np.float64) + np.float64(neg_lr) * g.astype(np.float64)).astype(dtype)
    else:
        fused = _fused_exact(p, neg_lr, g)
    assert np.count_nonzero(fused != unfused) > 10  # the test can tell the two apart
    np.testing.assert_array_equal(ours, unfused)


def test_thread_count_api(num_threads):
    fastlr.set_num_threads(2)
    assert fastlr.get_num_threads() == 2 == fastlr.build_info()["num_threads"]
    with pytest.raises(ValueError):
        fastlr.set_num_threads(0)
    with pytest.raises(TypeError):
        fastlr.set_num_threads(1.5)
    with pytest.raises(ValueError, match="4096"):
        fastlr.set_num_threads(2**40)  # OpenMP would try to start that many threads
    fastlr.set_num_threads(np.int64(1))
    assert fastlr.get_num_threads() == 1


# --------------------------------------------------------------- schedules ---

def _schedules():
    mod = pytest.importorskip("fastlr.schedules")
    if not hasattr(mod, "StepDecay"):
        pytest.skip("fastlr.schedules has no StepDecay yet")
    return mod


@pytest.mark.parametrize("kernel,kwargs", RICH, ids=RICH_IDS)
def test_lr_schedule_is_evaluated_at_step_minus_one(kernel, kwargs):
    S = _schedules()
    sched = S.StepDecay(kwargs["lr"], step_size=2, gamma=0.5)
    params, grads = make_data([33, 1000], np.float64, steps=6)
    ours, theirs = Run(kernel, {**kwargs, "lr": sched}, params), Run(kernel, kwargs, params)
    for step in range(1, 7):
        expected = kwargs["lr"] * 0.5 ** ((step - 1) // 2)
        theirs.kwargs["lr"] = expected
        assert ours.step(fastlr, grads[step - 1], step) == pytest.approx(expected, rel=1e-15)
        theirs.step(ref, grads[step - 1], step)
    assert_identical(ours.arrays(), theirs.arrays())


@pytest.mark.parametrize("kernel,key", [("sgd_step", "momentum"), ("rmsprop_step", "momentum"),
                                        ("adam_step", "beta1")])
def test_momentum_schedule(kernel, key):
    S = _schedules()
    sched = S.StepDecay(0.9, step_size=3, gamma=0.5)
    kwargs = {"lr": 0.01, key: sched}
    params, grads = make_data([17, 1000], np.float32, steps=7)
    ours, theirs = Run(kernel, kwargs, params), Run(kernel, {"lr": 0.01, key: 0.9}, params)
    for step in range(1, 8):
        theirs.kwargs[key] = sched(step - 1)
        ours.step(fastlr, grads[step - 1], step)
        theirs.step(ref, grads[step - 1], step)
    assert_identical(ours.arrays(), theirs.arrays())


@pytest.mark.parametrize("kernel", ["sgd_step", "rmsprop_step"])
def test_schedule_requires_step(kernel):
    S = _schedules()
    p, g, s = np.ones(3), np.ones(3), np.zeros(3)
    args = (p, g, s)
    with pytest.raises(ValueError, match="step"):
        getattr(fastlr, kernel)(*args, lr=S.StepDecay(0.1, step_size=2))
    np.testing.assert_array_equal(p, 1.0)


# ---------------------------------------------------------------- properties ---

_hyper = {
    "sgd_step": st.fixed_dictionaries({
        "lr": st.floats(0, 1), "momentum": st.sampled_from([0.0, 0.5, 0.9]),
        "weight_decay": st.sampled_from([0.0, 1e-2]), "maximize": st.booleans()}),
    "adam_step": st.fixed_dictionaries({
        "lr": st.floats(0, 1), "beta1": st.floats(0, 0.99), "beta2": st.floats(0, 0.9999),
        "eps": st.floats(1e-12, 1e-2), "weight_decay": st.sampled_from([0.0, 0.1]),
        "decoupled_weight_decay": st.booleans(), "amsgrad": st.booleans(), "maximize": st.booleans()}),
    "rmsprop_step": st.fixed_dictionaries({
        "lr": st.floats(0, 1), "alpha": st.floats(0, 1), "eps": st.floats(1e-12, 1e-2),
        "momentum": st.sampled_from([0.0, 0.9]), "centered": st.booleans(),
        "weight_decay": st.sampled_from([0.0, 0.1]), "maximize": st.booleans()}),
    "adagrad_step": st.fixed_dictionaries({
        "lr": st.floats(0, 1), "lr_decay": st.floats(0, 1), "eps": st.floats(1e-12, 1e-2),
        "weight_decay": st.sampled_from([0.0, 0.1]), "maximize": st.booleans()}),
}
_shapes = st.lists(st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple), min_size=0, max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), shapes=_shapes, dtype=st.sampled_from(DTYPES), steps=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
@pytest.mark.parametrize("kernel", sorted(_hyper))
def test_property_matches_reference(kernel, data, shapes, dtype, steps, seed):
    kwargs = data.draw(_hyper[kernel])
    rng = np.random.default_rng(seed)
    params = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]
    ours, theirs = Run(kernel, kwargs, params, 0.1), Run(kernel, kwargs, params, 0.1)
    for step in range(1, steps + 1):
        grads = [np.asarray(rng.standard_normal(s) * 10.0 ** rng.integers(-3, 3), dtype=dtype) for s in shapes]
        ours.step(fastlr, grads, step)
        theirs.step(ref, grads, step)
    assert_identical(ours.arrays(), theirs.arrays())


def test_data_ptrs_reads_the_array_addresses():
    from fastlr import _C

    arrays = [np.zeros(5, np.float32), np.zeros((3, 4))[1:], np.zeros(0)]
    assert _C.data_ptrs(arrays) == [a.__array_interface__["data"][0] for a in arrays]
    with pytest.raises(TypeError, match="item 1"):
        _C.data_ptrs([arrays[0], [1.0, 2.0]])
