"""fastlr.optim's precision options (issue #12): master_weights, state_dtype,
stochastic_rounding, seed — against torch.optim over whole trajectories, state dicts both
ways, bad input, GradScaler.

Reference semantics: torch.optim.X(foreach=False) steps float32 copies of the params with
``grad.float()``; after each step every tensor fastlr keeps in 16 bits (a param without
a master, a state tensor with state_dtype) is rounded to it, as fastlr stores it.
"""
import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastlr  # noqa: E402
import fastlr.optim as fo  # noqa: E402
from fastlr.optim import to_torch_state_dict  # noqa: E402

STEPS = 12
SHAPES = [(0,), (1,), (37,), (5, 67)]  # empty, one, odd, not a multiple of any vector width

CONFIGS = {
    "SGD": dict(lr=0.05),
    "SGD-momentum": dict(lr=0.05, momentum=0.9, weight_decay=0.01),
    "SGD-nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "Adam": dict(lr=1e-2),
    "Adam-amsgrad-wd": dict(lr=1e-2, amsgrad=True, weight_decay=0.1),
    "AdamW": dict(lr=1e-2, weight_decay=0.1),
    "RMSprop": dict(lr=1e-2),
    "RMSprop-centered-momentum": dict(lr=1e-2, centered=True, momentum=0.9),
    "Adagrad": dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
}
STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg",
              "grad_avg", "sum")


def cls_name(config):
    return config.split("-")[0]


def make_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(dtype) for s in SHAPES]


def grads_for(step, params, dtype):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g).to(dtype) for p in params]


def ulp16(x, dtype):
    """One unit in the last place of dtype at |x| (the larger of the two neighbours)."""
    x16 = x.to(dtype)
    up = torch.nextafter(x16, torch.full_like(x16, float("inf"))).float()
    down = torch.nextafter(x16, torch.full_like(x16, float("-inf"))).float()
    return torch.maximum(up - x16.float(), x16.float() - down)


def run_pair(config, dtype, options, steps=STEPS, grad_dtype=None):
    """fastlr with options and the float32 reference, stepped with the same grads."""
    kwargs = CONFIGS[config]
    params = make_params(dtype)
    ref = [p.float().clone() for p in params]
    opt = getattr(fo, cls_name(config))(params, **kwargs, **options)
    ropt = getattr(torch.optim, cls_name(config))(ref, **kwargs, foreach=False)
    master = options.get("master_weights", False) and dtype in (torch.bfloat16, torch.float16)
    sdt = options.get("state_dtype")
    for step in range(steps):
        gs = grads_for(step, params, dtype)
        for p, r, g in zip(params, ref, gs):
            if grad_dtype is not None:
                p.grad_dtype = grad_dtype  # torch >= 2.10 checks .grad's dtype against this
                g = g.to(grad_dtype)
            p.grad = g
            r.grad = g.float()
        opt.step()
        ropt.step()
        with torch.no_grad():
            # the reference stores what fastlr stores in 16 bits
            for r in ref:
                if not master and dtype != torch.float32:
                    r.copy_(r.to(dtype))
                for key in STATE_KEYS:
                    t = ropt.state[r].get(key)
                    if t is not None and sdt is not None and sdt != torch.float32:
                        t.copy_(t.to(sdt))
    return params, ref, opt, ropt


def close_trajectory(got, ref, dtype, stored16=True):
    """A trajectory through 16-bit storage: float32 arithmetic in another order can round a
    stored value the other way, and that element then drifts a few 16-bit ulps apart."""
    if got.numel() == 0:
        return
    if got.dtype != torch.float32 or stored16:
        same = (got == ref).double().mean().item()
        assert same >= 0.75, f"only {same:.1%} of the elements are equal"
    eps = torch.finfo(dtype).eps
    # near zero an element is as far off as the steps it took: atol scales with the tensor
    torch.testing.assert_close(got, ref, rtol=8 * eps, atol=2 * eps * ref.abs().max().item())


MODES = {
    "master": dict(master_weights=True),
    "master-bf16state": dict(master_weights=True, state_dtype=torch.bfloat16),
    "bf16state": dict(state_dtype=torch.bfloat16),
    "f32state": dict(state_dtype=torch.float32),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_master_weights_track_float32_reference(config, dtype):
    params, ref, opt, ropt = run_pair(config, dtype, dict(master_weights=True))
    for p, r in zip(params, ref):
        st = opt.state[p]
        if p.numel():
            assert st["master_param"].dtype == torch.float32
        for key in STATE_KEYS:
            if key in st:
                assert st[key].dtype == torch.float32, key  # torch's layout for the master
        torch.testing.assert_close(st["master_param"], r, rtol=2e-6, atol=2e-6)
        # the param is its master rounded to nearest: within one 16-bit ulp of the reference's
        assert ((p.float() - r).abs() <= ulp16(r, dtype)).all()
        assert torch.equal(p, st["master_param"].to(dtype))


@pytest.mark.parametrize("mode", ["master-bf16state", "bf16state", "f32state"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_state_dtype_trajectories(config, dtype, mode):
    options = MODES[mode]
    params, ref, opt, ropt = run_pair(config, dtype, options)
    sdt = options["state_dtype"]
    master = "master" in mode and dtype != torch.float32
    # a trajectory drifts with the coarser of the param's and the state's storage
    coarse = sdt if master or dtype == torch.float32 or sdt == torch.bfloat16 else dtype
    for p, r in zip(params, ref):
        st = opt.state[p]
        for key in STATE_KEYS:
            if key in st:
                assert st[key].dtype == sdt, key
                close_trajectory(st[key].float(), ropt.state[r][key].float(), coarse,
                                 stored16=sdt != torch.float32)
        got = st["master_param"] if master else p.float()
        if dtype == sdt == torch.float32:
            torch.testing.assert_close(got, r, rtol=2e-6, atol=2e-6)
        else:
            close_trajectory(got, r, coarse, stored16=not master and dtype != torch.float32)


@pytest.mark.parametrize("config", ["Adam", "SGD-momentum", "Adagrad"])
def test_master_weights_with_float32_grads(config):
    params, ref, opt, _ = run_pair(config, torch.bfloat16, dict(master_weights=True),
                                   grad_dtype=torch.float32)
    for p, r in zip(params, ref):
        torch.testing.assert_close(opt.state[p]["master_param"], r, rtol=2e-6, atol=2e-6)


def test_float32_and_float64_params_ignore_master_weights():
    for dtype in (torch.float32, torch.float64):
        a = make_params(dtype)
        b = [p.clone() for p in a]
        oa = fo.AdamW(a, lr=1e-2, master_weights=True)
        ob = fo.AdamW(b, lr=1e-2)
        for step in range(4):
            gs = grads_for(step, a, dtype)
            for x, y, g in zip(a, b, gs):
                x.grad, y.grad = g, g.clone()
            oa.step()
            ob.step()
        for x, y in zip(a, b):
            assert torch.equal(x, y)
            assert "master_param" not in oa.state[x]


def test_defaults_keep_torch_state_dict_layout():
    p = torch.randn(10)
    opt = fo.AdamW([p], lr=1e-2)
    ropt = torch.optim.AdamW([p.clone()], lr=1e-2)
    assert opt.state_dict()["param_groups"][0].keys() == ropt.state_dict()["param_groups"][0].keys()
    opt2 = fo.AdamW([p], lr=1e-2, master_weights=False, state_dtype=None, stochastic_rounding=False, seed=0)
    assert opt2.param_groups[0].keys() == opt.param_groups[0].keys()


# ---------------------------------------------------------- stochastic rounding ---
def _tiny_update_run(options, steps, n=4096, lr=1e-4):
    """bf16 params at 1.0 updated by -lr·1 per step: lr is 1/78 of the bf16 ulp at 1."""
    p = torch.ones(n, dtype=torch.bfloat16)
    opt = fo.SGD([p], lr=lr, **options)
    for _ in range(steps):
        p.grad = torch.ones(n, dtype=torch.bfloat16)
        opt.step()
    return p, opt


def test_round_to_nearest_drops_small_updates_stochastic_rounding_keeps_them():
    steps, lr, n = 50, 1e-4, 4096
    p_rn, _ = _tiny_update_run({}, steps, n, lr)
    assert torch.all(p_rn == 1.0)  # every update is below half an ulp: lost
    p_sr, _ = _tiny_update_run(dict(stochastic_rounding=True), steps, n, lr)
    expected = 1.0 - steps * lr
    mean = p_sr.double().mean().item()
    # each element ends at 1 - k·ulp with E = expected; the std of the mean is bounded by
    # ulp·sqrt(steps/4/n) (independent Bernoulli roundings of ≤ ulp each)
    ulp = 2.0**-8  # below 1.0 (bf16 has 8 significant bits)
    bound = 6 * ulp * (steps / 4 / n) ** 0.5
    assert abs(mean - expected) < bound, (mean, expected, bound)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_is_unbiased_for_many_values(dtype):
    """bf16/f16 params at 0 take one SGD step to -0.1·g (a float32 value between two 16-bit
    neighbours); over many seeds the mean of the stored values is -0.1·g."""
    g = torch.linspace(-3, 3, 257).to(dtype)
    target = -(torch.tensor(0.1, dtype=torch.float32) * g.float())  # the kernel's float32 value
    reps = 300
    acc = torch.zeros(g.shape, dtype=torch.float64)
    for seed in range(reps):
        p = torch.zeros(g.shape, dtype=dtype)
        opt = fo.SGD([p], lr=0.1, stochastic_rounding=True, seed=seed)
        p.grad = g
        opt.step()
        assert ((p.float() - target).abs() <= ulp16(target, dtype)).all()  # a neighbour
        acc += p.double()
    mean = acc / reps
    ulp = ulp16(target, dtype).double()
    # per element a Bernoulli over one ulp: the std of the mean is at most ulp / (2 sqrt(reps))
    assert ((mean - target.double()).abs() <= 5 * ulp / (2 * reps**0.5) + 1e-12).all()
    # and not rounding to nearest: most elements took both neighbours
    assert (mean != p.double()).double().mean() > 0.5


def _sr_run(seed=0, threads=None):
    if threads is not None:
        old = fastlr.get_num_threads()
        fastlr.set_num_threads(threads)
    try:
        # one tensor large enough to be split across threads (2**17 elements per thread)
        big = torch.randn(3 * 2**17 + 5, generator=torch.Generator().manual_seed(3)).bfloat16()
        params = make_params(torch.bfloat16) + [big]
        opt = fo.AdamW(params, lr=1e-2, state_dtype=torch.bfloat16, stochastic_rounding=True, seed=seed)
        for step in range(5):
            for p, g in zip(params, grads_for(step, params, torch.bfloat16)):
                p.grad = g
            opt.step()
        return params, opt
    finally:
        if threads is not None:
            fastlr.set_num_threads(old)


def test_stochastic_rounding_is_reproducible_and_keyed_by_seed():
    a, oa = _sr_run(seed=1, threads=1)
    b, ob = _sr_run(seed=1, threads=2)
    c, _ = _sr_run(seed=2)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
        assert torch.equal(oa.state[x]["exp_avg_sq"], ob.state[y]["exp_avg_sq"])
    assert any(not torch.equal(x, z) for x, z in zip(a, c))
    assert oa.state_dict()["param_groups"][0]["seed"] == 1


def test_stochastic_rounding_is_identical_at_every_cpu_level():
    levels = ["baseline", "avx2", "avx512"]
    detected = fastlr._C.detected_cpu_level()
    levels = levels[: levels.index(detected) + 1] if detected in levels else ["baseline"]
    before = fastlr._C.cpu_level()
    results = []
    try:
        for level in levels:
            fastlr._C.set_cpu_level(level)
            params, opt = _sr_run(seed=4)
            results.append((params, [opt.state[p]["exp_avg_sq"] for p in params]))
    finally:
        fastlr._C.set_cpu_level(before)
    for params, sqs in results[1:]:
        for x, y in zip(params + sqs, results[0][0] + results[0][1]):
            assert torch.equal(x, y)


def test_sgd_stochastic_rounding_counts_its_steps():
    p, opt = _tiny_update_run(dict(stochastic_rounding=True, seed=9), 3, n=16)
    assert opt.param_groups[0]["sr_t"] == 3
    # the count is saved and restored: a continued run draws the same bits as an unbroken one
    q = torch.ones(16, dtype=torch.bfloat16)
    opt2 = fo.SGD([q], lr=1e-4, stochastic_rounding=True)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    q.copy_(p)
    full, _ = _tiny_update_run(dict(stochastic_rounding=True, seed=9), 5, n=16)
    for _ in range(2):
        q.grad = torch.ones(16, dtype=torch.bfloat16)
        opt2.step()
    assert torch.equal(q, full)


def test_stochastic_rounding_leaves_params_with_masters_rounded_to_nearest():
    params, ref, opt, _ = run_pair("AdamW", torch.bfloat16, dict(master_weights=True, stochastic_rounding=True))
    for p in params:
        assert torch.equal(p, opt.state[p]["master_param"].to(torch.bfloat16))


# ------------------------------------------------------------------ state dicts ---
def _bf16_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3)).to(torch.bfloat16)


def _train(model, opt, steps, start=0):
    for s in range(start, start + steps):
        g = torch.Generator().manual_seed(s)
        x = torch.randn(16, 6, generator=g).to(model[0].weight.dtype)
        y = torch.randn(16, 3, generator=g).to(model[0].weight.dtype)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x).float(), y.float()).backward()
        opt.step()


@pytest.mark.parametrize("options", [
    dict(master_weights=True), dict(master_weights=True, state_dtype=torch.bfloat16),
    dict(state_dtype=torch.bfloat16, stochastic_rounding=True, seed=3),
])
def test_state_dict_round_trip_continues_bit_for_bit(options):
    m1 = _bf16_model()
    o1 = fo.AdamW(m1.parameters(), lr=1e-2, **options)
    _train(m1, o1, 5)
    buf = io.BytesIO()
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict()}, buf)
    _train(m1, o1, 5, start=5)
    buf.seek(0)
    ck = torch.load(buf)  # weights_only: dtypes and the option keys load
    m2 = _bf16_model(seed=1)
    m2.load_state_dict(ck["model"])
    o2 = fo.AdamW(m2.parameters(), lr=1e-2)  # the options come back from the state_dict
    o2.load_state_dict(ck["opt"])
    for key in options:
        assert o2.param_groups[0][key] == options[key]
    _train(m2, o2, 5, start=5)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
        for key, v in o1.state[a].items():
            assert torch.equal(v, o2.state[b][key]), key
            assert v.dtype == o2.state[b][key].dtype


def test_torch_state_dict_loads_and_converts():
    model = _bf16_model()
    topt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, topt, 3)
    sd = topt.state_dict()
    opt = fo.AdamW(model.parameters(), lr=1e-2, master_weights=True, state_dtype=torch.bfloat16)
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["master_weights"] is True  # the optimizer's options stay
    for p in model.parameters():
        st = opt.state[p]
        assert st["master_param"].dtype == torch.float32
        assert torch.equal(st["master_param"], p.float())
        assert st["exp_avg"].dtype == torch.bfloat16
        assert torch.equal(st["exp_avg"], topt.state[p]["exp_avg"])
    _train(model, opt, 2, start=3)  # and continues


def test_float32_state_is_kept_when_loading_a_master_weight_dict():
    m1 = _bf16_model()
    o1 = fo.Adam(m1.parameters(), lr=1e-2, master_weights=True)
    _train(m1, o1, 3)
    m2 = copy.deepcopy(m1)
    o2 = fo.Adam(m2.parameters(), lr=1e-2, master_weights=True)
    o2.load_state_dict(o1.state_dict())
    for a, b in zip(m1.parameters(), m2.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "master_param"):
            assert o2.state[b][key].dtype == torch.float32
            assert torch.equal(o2.state[b][key], o1.state[a][key])  # not squeezed through bf16


@pytest.mark.parametrize("name", ["AdamW", "SGD", "RMSprop", "Adagrad"])
def test_to_torch_state_dict_continues_in_torch(name):
    kwargs = dict(lr=1e-2)
    if name == "SGD":
        kwargs["momentum"] = 0.9
    model = _bf16_model()
    opt = getattr(fo, name)(model.parameters(), master_weights=True, state_dtype=torch.bfloat16, **kwargs)
    _train(model, opt, 4)
    model32 = copy.deepcopy(model).float()
    sd = to_torch_state_dict(opt.state_dict(), params=model32.parameters())
    for p, q in zip(model.parameters(), model32.parameters()):
        assert torch.equal(q, opt.state[p]["master_param"])  # the master went into the param
    for s in sd["state"].values():
        assert "master_param" not in s
        for k, v in s.items():
            if k != "step":
                assert v.dtype == torch.float32
    assert "master_weights" not in sd["param_groups"][0]
    topt = getattr(torch.optim, name)(model32.parameters(), foreach=False, **kwargs)
    topt.load_state_dict(sd)
    _train(model32, topt, 3, start=4)
    _train(model, opt, 3, start=4)
    for p, q in zip(model.parameters(), model32.parameters()):
        # bf16 state rounds where torch's float32 state does not: close, not equal
        torch.testing.assert_close(opt.state[p]["master_param"], q, rtol=2e-2, atol=2e-3)


def test_to_torch_state_dict_checks_params():
    model = _bf16_model()
    opt = fo.AdamW(model.parameters(), master_weights=True)
    _train(model, opt, 1)
    with pytest.raises(ValueError, match="params has 1"):
        to_torch_state_dict(opt.state_dict(), params=[torch.zeros(3)])
    with pytest.raises(TypeError, match="state_dict"):
        to_torch_state_dict([1, 2])


@pytest.mark.parametrize("bad, exc, match", [
    (lambda m: m.reshape(-1)[:-1].clone(), ValueError, "shape"),
    (lambda m: m.double(), TypeError, "master_param.*float32"),
    (lambda m: m.bfloat16(), TypeError, "master_param.*float32"),
])
def test_bad_master_param_in_state_dict_is_refused(bad, exc, match):
    model = _bf16_model()
    opt = fo.AdamW(model.parameters(), master_weights=True)
    _train(model, opt, 2)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["master_param"] = bad(sd["state"][0]["master_param"])
    before = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    with pytest.raises(exc, match=match):
        opt.load_state_dict(sd)
    for k, v in opt.state[model[0].weight].items():
        assert torch.equal(v, before[k])


# -------------------------------------------------------------------- bad input ---
@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(state_dtype=torch.int8), TypeError, "state_dtype"),
    (dict(state_dtype="bfloat16"), TypeError, "state_dtype"),
    (dict(state_dtype=torch.float16), TypeError, "state_dtype"),
    (dict(master_weights="yes"), TypeError, "master_weights"),
    (dict(stochastic_rounding=1), TypeError, "stochastic_rounding"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=2**64), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
])
def test_bad_options(cls, kwargs, exc, match):
    p = torch.randn(4, dtype=torch.bfloat16)
    with pytest.raises(exc, match=match):
        getattr(fo, cls)([p], lr=0.1, **kwargs)


def test_bad_options_in_add_param_group_leave_no_group():
    opt = fo.Adam([torch.randn(3)], lr=0.1)
    with pytest.raises(TypeError, match="state_dtype"):
        opt.add_param_group({"params": [torch.randn(3)], "state_dtype": torch.int32})
    assert len(opt.param_groups) == 1
    with pytest.raises(TypeError, match="state_dtype.*float64"):
        opt.add_param_group({"params": [torch.randn(3, dtype=torch.float64)], "state_dtype": torch.bfloat16})
    assert len(opt.param_groups) == 1


def test_float64_with_state_dtype_and_complex_are_refused():
    with pytest.raises(TypeError, match="state_dtype"):
        fo.AdamW([torch.randn(3, dtype=torch.float64)], state_dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="complex"):
        fo.AdamW([torch.randn(3, dtype=torch.complex64)], master_weights=True)


def test_grad_dtype_mismatch_is_refused_before_anything_changes():
    a, b = torch.randn(5).bfloat16(), torch.randn(5).bfloat16()
    opt = fo.Adam([a, b], lr=0.1, state_dtype=torch.bfloat16)
    a.grad = torch.randn(5).bfloat16()
    b.grad_dtype = None
    b.grad = torch.randn(5, dtype=torch.float32)  # float32 grads are for params with masters
    a0, b0 = a.clone(), b.clone()
    with pytest.raises(RuntimeError, match="grad of params\\[1\\]"):
        opt.step()
    assert torch.equal(a, a0) and torch.equal(b, b0)


# -------------------------------------------------------------------- GradScaler ---
def test_grad_scaler_unscales_and_skips():
    m1, m2 = _bf16_model(), _bf16_model()
    o1 = fo.AdamW(m1.parameters(), lr=1e-2, master_weights=True, state_dtype=torch.bfloat16)
    o2 = fo.AdamW(m2.parameters(), lr=1e-2, master_weights=True, state_dtype=torch.bfloat16)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000)
    for s in range(4):
        g = torch.Generator().manual_seed(s)
        x = torch.randn(16, 6, generator=g).bfloat16()
        y = torch.randn(16, 3, generator=g).bfloat16()
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
        loss1 = torch.nn.functional.mse_loss(m1(x).float(), y.float())
        scaler.scale(loss1).backward()
        scaler.step(o1)
        scaler.update()
        torch.nn.functional.mse_loss(m2(x).float(), y.float()).backward()
        o2.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        # a power-of-two scale of bf16 grads is exact: the same trajectory
        torch.testing.assert_close(o1.state[a]["master_param"], o2.state[b]["master_param"],
                                   rtol=1e-5, atol=1e-6)
    # an inf gradient: the step is skipped, nothing changes
    before = [(p.clone(), {k: v.clone() for k, v in o1.state[p].items()}) for p in m1.parameters()]
    o1.zero_grad()
    loss = m1(torch.full((2, 6), float("inf")).bfloat16()).float().sum()
    scaler.scale(loss).backward()
    scaler.step(o1)
    for p, (p0, s0) in zip(m1.parameters(), before):
        assert torch.equal(p, p0)
        for k, v in o1.state[p].items():
            assert torch.equal(v, s0[k]), k


# ----------------------------------------------------------------------- README ---
def test_readme_low_precision_blocks_run(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Low precision")[1].split("\n### ")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 4
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.float32 torch.bfloat16" in out
    assert "float32 bfloat16" in out
    assert "stochastic_rounding=False: mean 1.000" in out
    assert "stochastic_rounding=True: mean 0.990" in out


# ------------------------------------------------------------- the NumPy face ---
NP_CONFIGS = ["SGD", "SGD-momentum", "Adam-amsgrad-wd", "AdamW", "RMSprop-centered-momentum", "Adagrad"]
NP_MODES = {
    "master": dict(master_weights=True),
    "master-bf16state": dict(master_weights=True, state_dtype=torch.bfloat16),
    "bf16state-sr": dict(state_dtype=torch.bfloat16, stochastic_rounding=True, seed=11),
    "sr": dict(stochastic_rounding=True, seed=12),
}


@pytest.mark.parametrize("mode", list(NP_MODES))
@pytest.mark.parametrize("config", NP_CONFIGS)
def test_numpy_twins_equal_torch_face_bit_for_bit(config, mode):
    """fastlr.numpy.X and fastlr.optim.X with the same options: the same kernel, tensor ids
    and steps, so the same bits (stochastic rounding included)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    import fastlr.numpy as fnp

    options = NP_MODES[mode]
    np_options = dict(options)
    if "state_dtype" in np_options:
        np_options["state_dtype"] = ml_dtypes.bfloat16  # NumPy's name for it
    params = make_params(torch.bfloat16)
    arrays = [p.float().numpy().astype(ml_dtypes.bfloat16) for p in params]
    opt = getattr(fo, cls_name(config))(params, **CONFIGS[config], **options)
    nopt = getattr(fnp, cls_name(config))(arrays, **CONFIGS[config], **np_options)
    for step in range(4):
        gs = grads_for(step, params, torch.bfloat16)
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
        nopt.step([g.float().numpy().astype(ml_dtypes.bfloat16) for g in gs])
    for i, (p, a) in enumerate(zip(params, arrays)):
        assert torch.equal(p.float(), torch.from_numpy(a.astype("float32"))), i
        for key, v in opt.state[p].items():
            got = nopt.state[i][key]
            if key == "step":
                assert float(v) == got
            else:
                assert torch.equal(v.float(), torch.from_numpy(np.asarray(got).astype("float32"))), key
    # the options are saved alike, and a torch-face state_dict loads into the NumPy face
    keys = ("master_weights", "stochastic_rounding", "seed")
    assert {k: v for k, v in nopt.state_dict()["param_groups"][0].items() if k in keys} \
        == {k: v for k, v in opt.state_dict()["param_groups"][0].items() if k in keys}
    nopt2 = getattr(fnp, cls_name(config))([a.copy() for a in arrays], **CONFIGS[config])
    nopt2.load_state_dict(opt.state_dict())
    for key in options:
        if key != "state_dtype":
            assert nopt2.param_groups[0][key] == options[key]
    if "state_dtype" in options:
        assert nopt2.param_groups[0]["state_dtype"] == "bfloat16"
    for i, p in enumerate(params):
        for key, v in opt.state[p].items():
            if key != "step":
                got = nopt2.state[i][key]
                assert got.dtype.name == str(v.dtype).replace("torch.", ""), key
                assert torch.equal(v.float(), torch.from_numpy(got.astype("float32"))), key


def test_numpy_twin_bad_options():
    import fastlr.numpy as fnp

    w = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match="state_dtype"):
        fnp.Adam([w], state_dtype="int8")
    with pytest.raises(TypeError, match="master_weights"):
        fnp.Adam([w], master_weights=1)
    with pytest.raises(ValueError, match="seed"):
        fnp.SGD([w], seed=-3)
    with pytest.raises(TypeError, match="state_dtype.*float64"):
        fnp.Adam([np.zeros(3)], state_dtype="bfloat16")


def test_options_per_param_group():
    """Options may differ per group (a group dict overrides the constructor's)."""
    a, b = torch.randn(50).bfloat16(), torch.randn(50).bfloat16()
    opt = fo.AdamW([{"params": [a]}, {"params": [b], "master_weights": False, "state_dtype": None}],
                   lr=1e-2, master_weights=True, state_dtype=torch.bfloat16)
    opt.add_param_group({"params": [torch.randn(4)], "stochastic_rounding": True, "seed": 5})
    for p in (a, b):
        p.grad = torch.randn(50).bfloat16()
    opt.step()
    assert opt.state[a]["master_param"].dtype == torch.float32
    assert opt.state[a]["exp_avg"].dtype == torch.bfloat16
    assert "master_param" not in opt.state[b] and opt.state[b]["exp_avg"].dtype == torch.bfloat16
    assert opt.param_groups[2]["seed"] == 5


def test_sparse_grads_with_options_are_refused():
    emb = torch.nn.Embedding(10, 3, sparse=True).bfloat16()
    opt = fo.SGD(emb.parameters(), lr=0.1, master_weights=True)
    emb(torch.tensor([1, 2])).float().sum().backward()
    with pytest.raises(NotImplementedError, match="sparse"):
        opt.step()


def test_cached_steps_notice_changes():
    """Steps after the first reuse the group's call layout; replaced state, a grad of
    another dtype or a missing grad take the general path (and its checks)."""
    a = [torch.randn(7).bfloat16() for _ in range(3)]
    b = [x.clone() for x in a]
    oa = fo.AdamW(a, lr=1e-2, master_weights=True, state_dtype=torch.bfloat16)
    ob = fo.AdamW(b, lr=1e-2, master_weights=True, state_dtype=torch.bfloat16)

    def both(grads):
        for x, y, g in zip(a, b, grads):
            x.grad = g
            y.grad = None if g is None else g.clone()
        oa.step()
        ob._fastlr_plans.clear()  # ob always takes the general path
        ob.step()

    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        both([torch.randn(7, generator=gen).bfloat16() for _ in a])
    assert oa._fastlr_plans  # a plan is cached
    oa.state[a[1]]["exp_avg"] = oa.state[a[1]]["exp_avg"].clone()  # replaced: rebuilt
    ob.state[b[1]]["exp_avg"] = ob.state[b[1]]["exp_avg"].clone()
    both([torch.randn(7, generator=gen).bfloat16() for _ in a])
    both([None, torch.randn(7, generator=gen).bfloat16(), None])  # a param without a grad
    both([torch.randn(7, generator=gen).bfloat16() for _ in a])
    for x, y in zip(a, b):
        assert torch.equal(x, y)
        for key in oa.state[x]:
            assert torch.equal(oa.state[x][key], ob.state[y][key]), key
    a[0].grad_dtype = None
    a[0].grad = torch.randn(7, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="grad of params\\[0\\]"):
        oa.step()
