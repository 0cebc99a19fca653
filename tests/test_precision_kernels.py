"""The NumPy kernels' precision options: float32 master weights, float32/bfloat16 state
for any params, float32 grads with masters, and stochastic rounding.

Rounding to nearest is checked bit for bit over whole trajectories against fastlr's
NumPy reference run on float32 copies (the master copy, the grads cast to float32, the
state rounded to its dtype after every step). Stochastic rounding is checked per step
(every 16-bit store is one of the two 16-bit neighbours of the float32 result), for
unbiasedness, and for bit-identical results across thread counts, CPU levels, list
compositions and processes.
"""
import hashlib
import subprocess
import sys

import numpy as np
import pytest

import fastlr
from fastlr import _C
from fastlr import _reference as ref

from conftest import subprocess_kwargs, supported_cpu_levels

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)

SIZES = (0, 1, 17, 1000)  # empty, single, odd tail, several vectors
STEPS = 4

# name -> (kernel, reference, state-list keywords (first one positional), options)
OPTIMIZERS = {
    "sgd": (fastlr.sgd_step, ref.sgd_step, (), dict(lr=0.3)),
    "sgd_nesterov_wd": (fastlr.sgd_step, ref.sgd_step, ("momentum_buffers",),
                        dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adam_l2_amsgrad": (fastlr.adam_step, ref.adam_step, ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
                        dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    "adamw": (fastlr.adam_step, ref.adam_step, ("exp_avgs", "exp_avg_sqs"),
              dict(lr=1e-2, betas=None, weight_decay=0.1, decoupled_weight_decay=True)),
    "rmsprop_centered_momentum": (fastlr.rmsprop_step, ref.rmsprop_step,
                                  ("square_avgs", "grad_avgs", "momentum_buffers"),
                                  dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.01)),
    "adagrad": (fastlr.adagrad_step, ref.adagrad_step, ("state_sums",),
                dict(lr=0.1, lr_decay=0.01, weight_decay=0.01)),
}

# (param, grad, state, master): every combination the kernels build beyond torch's layout
PRECISIONS = [
    (BF16, BF16, F32, True), (BF16, F32, F32, True), (BF16, BF16, BF16, True), (BF16, F32, BF16, True),
    (F16, F16, F32, True), (F16, F32, F32, True), (F16, F16, BF16, True), (F16, F32, BF16, True),
    (F32, F32, BF16, False), (BF16, BF16, F32, False), (F16, F16, F32, False), (F16, F16, BF16, False),
]


def _ids(prec):
    p, g, s, m = prec
    return f"{p.name}-g{g.name}-s{s.name}" + ("-master" if m else "")


def _call(name, params, grads, states, step, **extra):
    kernel, _, keys, options = OPTIMIZERS[name]
    kwargs = {k: v for k, v in options.items() if k != "betas"}
    kwargs.update(extra)
    kwargs.update(zip(keys[1:], states[1:]))
    if kernel is fastlr.sgd_step:
        return kernel(params, grads, states[0] if states else None, step=step, **kwargs)
    return kernel(params, grads, *states[:1], step=step, **kwargs)


def _reference(name, params, grads, states, step, stochastic_rounding=False):
    _, reference, keys, options = OPTIMIZERS[name]
    kwargs = {k: v for k, v in options.items() if k != "betas"}
    if stochastic_rounding and reference is ref.adam_step:  # its one-division arithmetic
        kwargs["stochastic_rounding"] = True
    kwargs.update(zip(keys[1:], states[1:]))
    if reference is ref.sgd_step:
        return reference(params, grads, states[0] if states else None, step=step, **kwargs)
    return reference(params, grads, *states[:1], step=step, **kwargs)


def _state_init(name, key, shape, dtype, rng):
    """Second moments stay >= 0, and above a centered RMSprop's grad_avg squared."""
    if key in ("exp_avg_sqs", "max_exp_avg_sqs", "square_avgs", "state_sums"):
        return rng.uniform(0.5, 1.0, shape).astype(dtype)
    return (0.05 * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("prec", PRECISIONS, ids=_ids)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_round_to_nearest_trajectory_matches_float32_reference(name, prec):
    p_dtype, g_dtype, s_dtype, master = prec
    keys = OPTIMIZERS[name][2]
    rng = np.random.default_rng(hash((name, _ids(prec))) % 2**32)
    masters = [rng.standard_normal(n).astype(F32) for n in SIZES]
    params = [m.astype(p_dtype) for m in masters]
    states = [[_state_init(name, k, n, s_dtype, rng) for n in SIZES] for k in keys]
    # the reference: float32 copies of everything; the param is the master (or the param)
    r_params = [m.copy() for m in masters] if master else [p.astype(F32) for p in params]
    r_states = [[s.astype(F32) for s in lst] for lst in states]
    for step in range(1, STEPS + 1):
        grads = [rng.standard_normal(n).astype(g_dtype) for n in SIZES]
        _call(name, params, grads, states, step, master_params=masters if master else None)
        _reference(name, r_params, [g.astype(F32) for g in grads], r_states, step)
        # what the kernel stores: state in its dtype, the param in its dtype
        for lst in r_states:
            for s in lst:
                s[...] = s.astype(s_dtype).astype(F32)
        if not master:
            for r in r_params:
                r[...] = r.astype(p_dtype).astype(F32)
    for i in range(len(SIZES)):
        if master:
            np.testing.assert_array_equal(masters[i], r_params[i])
        np.testing.assert_array_equal(params[i], r_params[i].astype(p_dtype))
        for lst, r_lst in zip(states, r_states):
            np.testing.assert_array_equal(lst[i], r_lst[i].astype(s_dtype))


@pytest.mark.parametrize("s_dtype", [F32, BF16])
@pytest.mark.parametrize("name", ["adamw", "sgd_nesterov_wd", "rmsprop_centered_momentum", "adagrad"])
def test_float64_params_with_lower_precision_state(name, s_dtype):
    """Arithmetic in float64; only the state is stored in float32/bfloat16."""
    keys = OPTIMIZERS[name][2]
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(n) for n in SIZES]
    states = [[_state_init(name, k, n, s_dtype, rng) for n in SIZES] for k in keys]
    r_params = [p.copy() for p in params]
    r_states = [[s.astype(F64) for s in lst] for lst in states]
    for step in range(1, STEPS + 1):
        grads = [rng.standard_normal(n) for n in SIZES]
        _call(name, params, grads, states, step)
        _reference(name, r_params, grads, r_states, step)
        for lst in r_states:
            for s in lst:
                s[...] = s.astype(s_dtype).astype(F64)
    tol = 1e-6 if s_dtype == F32 else 1e-2
    for i in range(len(SIZES)):
        np.testing.assert_allclose(params[i], r_params[i], rtol=tol, atol=tol)
        for lst, r_lst in zip(states, r_states):
            np.testing.assert_allclose(lst[i].astype(F64), r_lst[i], rtol=tol, atol=tol)


def test_default_keywords_keep_todays_kernel():
    """No precision keyword, or the defaults spelled out, give today's result: state in
    the params' dtype, computed in float32, rounded to nearest once per step."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal(1000).astype(BF16)
    g = rng.standard_normal(1000).astype(BF16)
    m, v = np.zeros(1000, BF16), np.zeros(1000, BF16)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    r = [p.astype(F32), g.astype(F32), np.zeros(1000, F32), np.zeros(1000, F32)]
    fastlr.adam_step(p, g, m, v, step=1, lr=1e-2)
    fastlr.adam_step(p2, g, m2, v2, step=1, lr=1e-2, master_params=None, stochastic_rounding=False,
                     seed=5, tensor_ids=[9])
    ref.adam_step(*r, step=1, lr=1e-2)
    for a, b, c in ((p, p2, r[0]), (m, m2, r[2]), (v, v2, r[3])):
        assert a.tobytes() == b.tobytes()
        np.testing.assert_array_equal(a, c.astype(BF16))


# ------------------------------------------------------- stochastic rounding ---


def _neighbours(exact, dtype):
    """The 16-bit values just below and above |exact| (toward and away from zero)."""
    near = exact.astype(dtype)
    over = np.abs(near.astype(F32)) > np.abs(exact)
    down = np.where(over, np.nextafter(near, np.zeros_like(near)), near)
    away = np.where(np.signbit(exact), -np.inf, np.inf).astype(dtype)
    up = np.nextafter(down, away)
    return down, up


def _check_stochastic(result, exact, dtype):
    down, up = _neighbours(exact, dtype)
    ok = (result == down) | (result == up)
    exactly = exact == down.astype(F32)
    assert ok.all(), (result[~ok][:5], exact[~ok][:5])
    np.testing.assert_array_equal(result[exactly], down[exactly])
    return (result != down).mean()


SR_PRECISIONS = [
    (BF16, BF16, BF16, False), (F16, F16, F16, False), (F32, F32, BF16, False),
    (BF16, BF16, F32, False), (F16, F16, BF16, False), (BF16, BF16, BF16, True), (F16, F32, BF16, True),
]


@pytest.mark.parametrize("prec", SR_PRECISIONS, ids=_ids)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_stochastic_rounding_stores_a_neighbour_of_the_float32_result(name, prec):
    p_dtype, g_dtype, s_dtype, master = prec
    keys = OPTIMIZERS[name][2]
    rng = np.random.default_rng(3)
    n = 4099
    masters = [rng.standard_normal(n).astype(F32)]
    params = [m.astype(p_dtype) for m in masters]
    states = [[_state_init(name, k, n, s_dtype, rng)] for k in keys]
    grads = [rng.standard_normal(n).astype(g_dtype)]
    step = 2  # not a first step: momentum buffers are read
    r_params = [m.copy() for m in masters] if master else [p.astype(F32) for p in params]
    r_states = [[s.astype(F32) for s in lst] for lst in states]
    _call(name, params, grads, states, step, master_params=masters if master else None,
          stochastic_rounding=True, seed=11)
    _reference(name, r_params, [g.astype(F32) for g in grads], r_states, step,
               stochastic_rounding=True)
    if master:  # the master is exact and the param is it rounded to nearest
        np.testing.assert_array_equal(masters[0], r_params[0])
        np.testing.assert_array_equal(params[0], r_params[0].astype(p_dtype))
    elif p_dtype == F32:
        np.testing.assert_array_equal(params[0], r_params[0])
    else:
        _check_stochastic(params[0], r_params[0], p_dtype)
    for lst, r_lst in zip(states, r_states):
        if s_dtype == F32:
            np.testing.assert_array_equal(lst[0], r_lst[0])
        else:
            _check_stochastic(lst[0], r_lst[0], s_dtype)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("master", [False, True], ids=["f32-sbf16", "bf16-master-sbf16"])
def test_stochastic_rounding_adam_divides_once(master, amsgrad):
    """The stochastic-rounding Adam leaves multiply by 1/sqrt(bias_correction2) (one
    division per element, not torch's two): float results (params from zero, masters)
    are the reference's with that arithmetic, bit for bit, and differ from torch's."""
    rng = np.random.default_rng(8)
    n = 4099
    g = rng.standard_normal(n).astype(BF16 if master else F32)
    states = [(0.05 * rng.standard_normal(n)).astype(BF16), rng.uniform(0.5, 1.0, n).astype(BF16)]
    if amsgrad:
        states.append(rng.uniform(0.5, 1.0, n).astype(BF16))
    before = [s.astype(F32) for s in states]
    result = np.zeros(n, F32)  # from zero, the param is the step itself: no bits hidden
    kw = dict(step=2, lr=1e-2, amsgrad=amsgrad)
    fastlr.adam_step(np.zeros(n, BF16) if master else result, g, *states[:2],
                     max_exp_avg_sqs=states[2] if amsgrad else None,
                     master_params=result if master else None, stochastic_rounding=True, seed=4, **kw)
    expected = {}
    for one_division in (False, True):
        r = [np.zeros(n, F32), g.astype(F32), *(s.copy() for s in before)]
        ref.adam_step(*r[:4], max_exp_avg_sqs=r[4] if amsgrad else None,
                      stochastic_rounding=one_division, **kw)
        expected[one_division] = r[0]
    np.testing.assert_array_equal(result, expected[True])
    assert (result != expected[False]).any()


def _round_many_bf16(x, draws):
    """`draws` stochastic roundings of x to bfloat16 through the kernels: SGD's first
    momentum step stores the float32 grad in a bfloat16 momentum buffer."""
    out = np.empty((draws, x.size), BF16)
    for k in range(draws):
        p, buf = np.zeros(x.size, F32), np.empty(x.size, BF16)
        fastlr.sgd_step(p, x, buf, lr=0.0, momentum=0.5, step=1, stochastic_rounding=True, seed=k)
        out[k] = buf
    return out


@pytest.mark.parametrize("dtype", [BF16, F16])
def test_stochastic_rounding_is_unbiased(dtype):
    """The mean of many roundings is the float32 value: |mean - x| within 5 standard
    errors of a Bernoulli draw between the two neighbours."""
    rng = np.random.default_rng(1)
    draws = 400
    if dtype == BF16:
        x = rng.standard_normal(512).astype(F32)
        x[:4] = [1.0 + 2.0**-9, -(1.0 + 2.0**-9), 3e-41, 1.0]  # a quarter ulp, a subnormal, exact
        rounded = _round_many_bf16(x, draws).astype(F64)
    else:
        # a float16 param p = 0 - lr * 1: lr between float16 neighbours (normal and subnormal)
        lrs = np.concatenate([rng.uniform(0.5, 2.0, 256), rng.uniform(0, 6e-5, 256)]).astype(F32)
        rounded = np.empty((draws, lrs.size))
        for j, lr in enumerate(lrs):
            for k in range(draws // 8):  # enough draws per value, fewer calls
                p = np.zeros(8, F16)
                fastlr.sgd_step(p, np.ones(8, F16), lr=float(lr), step=1, stochastic_rounding=True,
                                seed=k, tensor_ids=[j])
                rounded[8 * k: 8 * k + 8, j] = p
        x = -lrs  # the kernel computes 0 + (-lr) * 1 in float32: exactly -lr
    down, up = _neighbours(x, dtype)
    gap = np.abs(up.astype(F64) - down.astype(F64))
    frac = np.abs(x.astype(F64) - down.astype(F64)) / np.where(gap == 0, 1, gap)
    mean = rounded.mean(axis=0)
    se = gap * np.sqrt(np.maximum(frac * (1 - frac), 1e-12) / draws)
    err = np.abs(mean - x.astype(F64))
    assert (err <= 5 * se + 1e-30).all(), np.max(err / np.maximum(se, 1e-45))
    # and it does round: values between neighbours take both
    between = (frac > 0.2) & (frac < 0.8)
    assert between.sum() > 50
    assert ((rounded[:, between] == down[between].astype(F64)).any(axis=0)).all()


def _sr_adam_bytes(n=300_001, extra_first=False, ids=None):
    """One stochastic-rounding AdamW step on bf16 params and state (plus a second
    tensor); returns the bytes of the big tensor's param and state."""
    rng = np.random.default_rng(5)
    p = (rng.standard_normal(n) * 0.1).astype(BF16)
    g = rng.standard_normal(n).astype(BF16)
    m, v = (0.01 * rng.standard_normal(n)).astype(BF16), rng.uniform(0, 1e-3, n).astype(BF16)
    lists = [[p], [g], [m], [v]]
    if extra_first:  # another tensor before it in the same call
        q = rng.standard_normal(777).astype(BF16)
        lists = [[q.copy(), *lists[0]], [q.copy(), *lists[1]], [q.copy(), *lists[2]],
                 [np.abs(q), *lists[3]]]
    fastlr.adam_step(*lists, step=3, lr=1e-3, weight_decay=0.1, decoupled_weight_decay=True,
                     stochastic_rounding=True, seed=123, tensor_ids=ids)
    return hashlib.sha256(p.tobytes() + m.tobytes() + v.tobytes()).hexdigest()


def test_stochastic_rounding_same_bits_for_any_threads_levels_and_list():
    before_threads, before_level = fastlr.get_num_threads(), _C.cpu_level()
    expected = _sr_adam_bytes(ids=[4])
    try:
        for threads in (1, 2, 3):
            fastlr.set_num_threads(threads)
            for level in supported_cpu_levels():
                _C.set_cpu_level(level)
                assert _sr_adam_bytes(ids=[4]) == expected, (threads, level)
                # the same tensor id in another list composition: the same bits
                assert _sr_adam_bytes(extra_first=True, ids=[0, 4]) == expected, (threads, level)
    finally:
        fastlr.set_num_threads(before_threads)
        _C.set_cpu_level(before_level)
    # the key changes with the seed's inputs: another tensor id gives other bits
    assert _sr_adam_bytes(ids=[5]) != expected


def test_stochastic_rounding_same_bits_in_a_process_forced_to_avx2():
    if "avx2" not in supported_cpu_levels():
        pytest.skip("no AVX2 on this CPU")
    code = ("import sys; sys.path.insert(0, %r); import test_precision_kernels as t; "
            "print(t._sr_adam_bytes(ids=[4]))" % str(__import__("pathlib").Path(__file__).parent))
    kwargs = subprocess_kwargs()
    kwargs["env"] = dict(kwargs["env"], FASTLR_CPU_LEVEL="avx2", OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         **kwargs)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == _sr_adam_bytes(ids=[4])


def test_stochastic_rounding_depends_on_seed_and_step():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4096).astype(F32)

    def buf_after(seed, step):
        p, buf = np.zeros(x.size, F32), np.zeros(x.size, BF16)
        fastlr.sgd_step(p, x, buf, lr=0.0, momentum=0.5, dampening=0.5, step=step,
                        stochastic_rounding=True, seed=seed)
        return buf.tobytes()

    assert buf_after(0, 2) == buf_after(0, 2)
    assert buf_after(0, 2) != buf_after(1, 2)
    assert buf_after(0, 2) != buf_after(0, 3)
    assert buf_after(2**64 - 1, 2) != buf_after(0, 2)


def test_round_to_nearest_bf16_state_cannot_decay_but_stochastic_does():
    """The failure stochastic rounding fixes: with beta2 = 0.999 a bfloat16 exp_avg_sq
    rounded to nearest never decays (0.001·v is below half an ulp of v)."""
    n = 2048
    v0 = np.full(n, 1.0, BF16)
    results = {}
    for sr in (False, True):
        p, g = np.zeros(n, F32), np.zeros(n, F32)
        m, v = np.zeros(n, BF16), v0.copy()
        for step in range(1, 201):
            fastlr.adam_step(p, g, m, v, step=step, lr=1e-3, stochastic_rounding=sr)
        results[sr] = v.astype(F64).mean()
    assert results[False] == 1.0
    assert abs(results[True] - 0.999**200) < 0.01


# ------------------------------------------------------------------- bad input ---


def _bad_inputs():
    rng = np.random.default_rng(0)
    p = rng.standard_normal(64).astype(BF16)
    g = rng.standard_normal(64).astype(BF16)
    m32 = p.astype(F32)
    s32 = [np.zeros(64, F32), np.zeros(64, F32)]
    sbf = [np.zeros(64, BF16), np.zeros(64, BF16)]
    p32, g32 = p.astype(F32), g.astype(F32)
    return [
        # (kernel args, kwargs, error, message fragment)
        ((p32, g32, *s32), dict(master_params=m32), TypeError, "master_params are for"),
        ((p, g, *s32), dict(master_params=m32.astype(F64)), TypeError, "master_params[0]"),
        ((p, g, *s32), dict(master_params=np.zeros(63, F32)), ValueError, "master_params[0] has shape"),
        ((p, g, *s32), dict(master_params=[m32, m32]), ValueError, "master_params has 2"),
        ((p, g32, *sbf), {}, TypeError, "grads[0]"),
        ((p, g.astype(F16), *s32), dict(master_params=m32), TypeError, "grads[0]"),
        ((p32, g32, np.zeros(64, F16), np.zeros(64, F16)), {}, TypeError, "exp_avgs[0] has dtype float16"),
        ((p32, g32, np.zeros(64, F32), np.zeros(64, BF16)), {}, TypeError, "exp_avg_sqs[0]"),
        ((p, g, np.zeros(64, BF16).reshape(8, 8).T, np.zeros(64, BF16)), {}, ValueError, "exp_avgs[0]"),
        ((p, g, *sbf), dict(seed=-1), ValueError, "seed"),
        ((p, g, *sbf), dict(seed=1.5), TypeError, "seed"),
        ((p, g, *sbf), dict(stochastic_rounding="yes"), TypeError, "stochastic_rounding"),
        ((p, g, *sbf), dict(tensor_ids=[0, 1]), ValueError, "tensor_ids has 2"),
        ((p, g, *sbf), dict(tensor_ids=[-1]), ValueError, "tensor_ids[0]"),
        ((p, g, *sbf), dict(tensor_ids=[1.0]), TypeError, "tensor_ids[0]"),
        ((p, g, m32.astype(BF16), sbf[1]), dict(master_params=[m32]), ValueError, "the same array memory"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_input_refused_before_anything_changes(case):
    args, kwargs, error, fragment = _bad_inputs()[case]
    if "the same array memory" in fragment:  # a master that is also a state
        args = (args[0], args[1], kwargs["master_params"][0].view(BF16)[:64], args[3])
    before = [np.array(a, copy=True) for a in args] + [np.array(v, copy=True) for v in kwargs.values()
                                                        if isinstance(v, np.ndarray)]
    with pytest.raises(error) as info:
        fastlr.adam_step(*args, step=1, lr=0.1, **kwargs)
    assert fragment in str(info.value)
    after = list(args) + [v for v in kwargs.values() if isinstance(v, np.ndarray)]
    for b, a in zip(before, after):
        assert b.tobytes() == np.asarray(a).tobytes()


def test_stochastic_rounding_needs_a_step_for_sgd_and_rmsprop():
    p, g = np.zeros(8, BF16), np.ones(8, BF16)
    with pytest.raises(ValueError, match="step is required"):
        fastlr.sgd_step(p, g, lr=0.1, stochastic_rounding=True)
    with pytest.raises(ValueError, match="step is required"):
        fastlr.rmsprop_step(p, g, np.zeros(8, BF16), lr=0.1, stochastic_rounding=True)
    assert not p.any()


def test_unbuilt_combination_is_a_value_error_from_the_binding():
    """The binding refuses what the kernels do not build (here: float16 state for
    float32 params), naming the combination, before touching memory."""
    p, g = np.zeros(8, F32), np.ones(8, F32)
    s = np.zeros(8, F16)
    addr = _C.data_ptrs
    with pytest.raises(ValueError, match="no kernel for float32 params"):
        _C.adagrad(0, [8], addr([p]), addr([g]), addr([s]), 1.0, 0.1, None, 0.0, 0.0, 1e-10, False,
                   state_dtype=3)
    with pytest.raises(ValueError, match="master weights are for bfloat16/float16"):
        _C.adagrad(0, [8], addr([p]), addr([g]), addr([s]), 1.0, 0.1, None, 0.0, 0.0, 1e-10, False,
                   masters=addr([p]))
    assert not p.any() and not s.any()


def test_readme_numpy_kernel_blocks_run():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### NumPy kernels")[1].split("\n### ")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2 and "master_params=masters" in blocks[1]
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_repeated_tensor_ids_refused_before_anything_changes():
    """Two tensors with one id would draw the same stochastic-rounding bits (accepted
    before); the error names both positions and nothing is written."""
    bf16 = BF16
    ps = [np.full(64, 1.0, bf16), np.full(32, 2.0, bf16)]
    gs = [np.full(64, 0.1, bf16), np.full(32, 0.1, bf16)]
    ms = [np.zeros(64, bf16), np.zeros(32, bf16)]
    vs = [np.zeros(64, bf16), np.zeros(32, bf16)]
    before = [a.copy() for a in ps + ms + vs]
    with pytest.raises(ValueError, match=r"tensor_ids\[1\] repeats tensor_ids\[0\]"):
        fastlr.adam_step(ps, gs, ms, vs, step=1, lr=0.1, stochastic_rounding=True, tensor_ids=[3, 3])
    assert all(b.tobytes() == a.tobytes() for b, a in zip(before, ps + ms + vs))
    fastlr.adam_step(ps, gs, ms, vs, step=1, lr=0.1, stochastic_rounding=True, tensor_ids=[3, 4])
    assert not np.array_equal(ps[0], before[0])
