"""fastlr.optim.X(state_dtype="8bit"): whole trajectories against the NumPy kernels and
against a float32 reference that quantizes as specified (fastlr._quant8, torch.optim's
arithmetic), heavy-tailed gradients against float32 AdamW and torchao's semantics, state
dicts both ways, bad input."""
import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastlr  # noqa: E402
import fastlr.optim  # noqa: E402
from fastlr import _quant8  # noqa: E402
from test_quant8 import _new_state, _ref_step  # noqa: E402  (the NumPy float32 reference step)

# a matrix and a vector in 8-bit (the vector with a partial last block), two small tensors
# that keep float32 state
SHAPES = [(64, 96), (4096 + 17,), (300,), (7, 5)]
STEPS = 30


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(dtype) for s in SHAPES]


def _grads(step, dtype=torch.float32):
    g = torch.Generator().manual_seed(1000 + step)
    scale = float(torch.exp(torch.empty(1).uniform_(-6, 1, generator=g)))
    return [(torch.randn(s, generator=g) * scale * (torch.rand(s, generator=g) < 0.9)).to(dtype) for s in SHAPES]


def _np(t):
    """A NumPy view of a CPU tensor (bfloat16 through ml_dtypes)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(pytest.importorskip("ml_dtypes").bfloat16)
    return t.numpy()


def _run(opt_cls, params, steps=STEPS, dtype=torch.float32, **kw):
    opt = opt_cls(params, **kw)
    for step in range(1, steps + 1):
        for p, g in zip(params, _grads(step, dtype)):
            p.grad = g
        opt.step()
    return opt


HYPER = [
    dict(cls="AdamW", lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1),
    dict(cls="Adam", lr=1e-2, betas=(0.8, 0.999), weight_decay=0.01, amsgrad=True),
    dict(cls="Adam", lr=1e-3, eps=1e-6),
]


def _case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items() if k != "betas")


# ------------------------------------------------------------ trajectories ---


@pytest.mark.parametrize("case", HYPER, ids=_case_id)
def test_trajectory_matches_float32_reference(case):
    """float32 params: the 8-bit tensors bit for bit against the NumPy reference of the
    encoding (fastlr._quant8 quantization, torch.optim.Adam's float32 arithmetic), the small
    ones against torch.optim's float32 step (to test_optim.py's float32 tolerance)."""
    case = dict(case)
    cls = case.pop("cls")
    params = _params()
    ref = [p.clone() for p in params]
    opt = _run(getattr(fastlr.optim, cls), params, state_dtype="8bit", **case)
    torch_ref = getattr(torch.optim, cls)(ref[2:], foreach=False, **case)
    b1, b2 = case.get("betas", (0.9, 0.999))
    wd = case.get("weight_decay", 0.01 if cls == "AdamW" else 0.0)
    amsgrad = case.get("amsgrad", False)
    q8 = [(_np(p).reshape(-1), _new_state(p.numel(), 256)) for p in ref[:2]]
    for step in range(1, STEPS + 1):
        grads = _grads(step)
        for (p, st), g in zip(q8, grads[:2]):
            _ref_step(p, _np(g).reshape(-1), st, step, case["lr"], b1, b2, case.get("eps", 1e-8), wd,
                      cls == "AdamW", amsgrad, "fastlr", 256)
        for p, g in zip(ref[2:], grads[2:]):
            p.grad = g
        torch_ref.step()
    for p, r in zip(params[:2], ref[:2]):
        torch.testing.assert_close(p, r, rtol=0, atol=0)
    for p, r in zip(params[2:], ref[2:]):  # torch's vectorised lerp rounds differently (test_optim.py)
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-6)
    roles = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")[: 3 if amsgrad else 2]
    for p, (_, st) in zip(params[:2], q8):
        s = opt.state[p]
        assert sorted(s) == sorted(["step"] + [r + x for r in roles for x in ("_codes", "_scale")])
        assert float(s["step"]) == STEPS
        for role, k in zip(roles, "mvx"):
            np.testing.assert_array_equal(s[role + "_codes"].numpy().reshape(-1), st[k + "c"])
            np.testing.assert_array_equal(s[role + "_scale"].numpy(), st[k + "s"])
    for p, r in zip(params[2:], ref[2:]):
        for role in roles:
            assert opt.state[p][role].dtype == torch.float32
            torch.testing.assert_close(opt.state[p][role], torch_ref.state[r][role], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype, sr", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True),
                                       (torch.float16, True)])
def test_trajectory_matches_numpy_kernels(dtype, sr):
    """The same trajectory through fastlr.adam8bit_step (the 8-bit tensors, in the bucket's
    order: the stochastic rounding is keyed by it) and fastlr.adam_step with float32 state
    (the small tensors), for float32 and bfloat16 params, rounded to nearest or
    stochastically."""
    params = _params(dtype)
    ref = [_np(p.clone()).copy() for p in params]
    kw = dict(lr=3e-3, weight_decay=0.05, stochastic_rounding=sr, seed=11)
    opt = _run(fastlr.optim.AdamW, params, dtype=dtype, state_dtype="8bit", **kw)
    sts = [{k: v.reshape(p.shape) if k.endswith("c") else v for k, v in _new_state(p.size, 256).items()}
           for p in ref[:2]]
    small = [(np.zeros(p.shape, np.float32), np.zeros(p.shape, np.float32)) for p in ref[2:]]
    common = dict(lr=3e-3, weight_decay=0.05, decoupled_weight_decay=True, stochastic_rounding=sr, seed=11)
    for step in range(1, STEPS + 1):
        grads = [_np(g) for g in _grads(step, dtype)]
        fastlr.adam8bit_step(ref[:2], grads[:2], [s["mc"] for s in sts], [s["ms"] for s in sts],
                             [s["vc"] for s in sts], [s["vs"] for s in sts], step=step, **common)
        fastlr.adam_step(ref[2:], grads[2:], [m for m, _ in small], [v for _, v in small], step=step,
                         tensor_ids=[2, 3], **common)
    for p, r in zip(params, ref):
        np.testing.assert_array_equal(_np(p).view(np.uint8), r.view(np.uint8))
    for p, st in zip(params[:2], sts):
        np.testing.assert_array_equal(opt.state[p]["exp_avg_codes"].numpy(), st["mc"])
        np.testing.assert_array_equal(opt.state[p]["exp_avg_sq_scale"].numpy(), st["vs"])


def test_same_as_adamw8bit_fastlr_variant():
    """Adam8bit(variant="fastlr") is the same encoding and arithmetic, block 256."""
    a, b = _params(), _params()
    opt = _run(fastlr.optim.AdamW, a, lr=1e-2, state_dtype="8bit")
    _run(fastlr.optim.AdamW8bit, b, lr=1e-2, variant="fastlr")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert opt._fastlr_plans  # the later steps went through the cached plan


def test_maximize_and_grad_scale():
    """maximize=True steps along +grad (the same as -grad without it); GradScaler's
    grad_scale is divided out in the kernel."""
    a, b, c = _params(), _params(), _params()
    opt_a = fastlr.optim.Adam(a, lr=1e-2, maximize=True, state_dtype="8bit")
    opt_b = fastlr.optim.Adam(b, lr=1e-2, state_dtype="8bit")
    opt_c = fastlr.optim.Adam(c, lr=1e-2, state_dtype="8bit")
    for step in range(1, 6):
        grads = _grads(step)
        for p, q, r, g in zip(a, b, c, grads):
            p.grad, q.grad, r.grad = g.clone(), -g, g * 1024.0
        opt_a.step()
        opt_b.step()
        opt_c.step(grad_scale=torch.tensor(1024.0))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    opt_d = fastlr.optim.Adam(_params(), lr=1e-2, state_dtype="8bit")
    d = opt_d.param_groups[0]["params"]
    for step in range(1, 6):
        for p, g in zip(d, _grads(step)):
            p.grad = g
        opt_d.step()
    for x, y in zip(c, d):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_schedule_and_param_groups():
    """An lr Schedule (evaluated in the step, as without 8-bit) and per-group options: an
    8-bit group next to a float32 one, each as it would be alone."""
    sched = fastlr.Cosine(1e-2, 20)
    a, b, c = _params(), _params(), _params()
    opt = fastlr.optim.AdamW([{"params": a[:2], "state_dtype": "8bit"}, {"params": a[2:]}], lr=sched)
    opt_8 = fastlr.optim.AdamW(b[:2], lr=1e-2, state_dtype="8bit")
    opt_32 = fastlr.optim.AdamW(c[2:], lr=1e-2)
    for step in range(1, 11):
        for g_opt in (opt_8, opt_32):
            g_opt.param_groups[0]["lr"] = sched(step - 1)
        for x, y, z, g in zip(a, b, c, _grads(step)):
            x.grad, y.grad, z.grad = g, g.clone(), g.clone()
        opt.step()
        opt_8.step()
        opt_32.step()
    for x, y in zip(a[:2] + a[2:], b[:2] + c[2:]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert "exp_avg_codes" in opt.state[a[0]] and "exp_avg_codes" not in opt.state[a[2]]
    assert opt.state[a[3]]["exp_avg"].dtype == torch.float32


# ------------------------------------------------------ heavy-tailed grads ---


def _heavy_tailed(opt_cls, steps=60, **kw):
    """A 64x64 weight whose gradients are heavy-tailed: 1 % of the elements ~1e2, the rest
    ~1e-4 (and zero every third step). The largest parameter difference from float32
    torch.optim.AdamW."""
    rng = np.random.default_rng(5)
    w = torch.zeros(64, 64)
    ref = w.clone()
    opt = opt_cls([w], lr=1e-3, **kw)
    opt_ref = torch.optim.AdamW([ref], lr=1e-3, foreach=False)
    for step in range(1, steps + 1):
        g = rng.standard_normal(w.numel()) * 1e-4
        big = rng.random(w.numel()) < 0.01
        g[big] = rng.standard_normal(big.sum()) * 1e2
        if step % 3 == 0:
            g[~big] = 0.0
        g = torch.from_numpy(g.astype(np.float32)).reshape(w.shape)
        w.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        opt_ref.step()
    return float((w - ref).abs().max())


def test_heavy_tailed_grads_track_float32_adamw():
    """The issue's point: with torchao's encoding (AdamW8bit) an element whose exp_avg_sq
    falls below its block's smallest code steps by lr·m/eps; state_dtype="8bit" (√v
    quantized, the zero-code guard) stays within Adam's own bound. AdamW moves a param by
    at most about lr per step (|m̂|/√v̂ ≤ 1 for steady gradients; the guard bounds a
    restarted element's step by lr·(1−β1)/√(1−β2)·√bc2/bc1 ≈ 3.2·lr), so over 60 steps
    no element can be further than 2·lr·60 from float32 unless a step left that bound."""
    fastlr_err = _heavy_tailed(fastlr.optim.AdamW, state_dtype="8bit")
    torchao_err = _heavy_tailed(fastlr.optim.AdamW8bit)
    print(f"largest |param - float32 AdamW| after 60 steps: state_dtype='8bit' {fastlr_err:.3g}, "
          f"AdamW8bit (torchao semantics) {torchao_err:.3g}")
    assert fastlr_err < 2 * 1e-3 * 60
    assert torchao_err > 100 * fastlr_err


# ------------------------------------------------------------ state dicts ---


def _stepped(n_steps=10, **kw):
    params = _params()
    opt = fastlr.optim.AdamW(params, lr=1e-2, state_dtype="8bit", **kw)
    for step in range(1, n_steps + 1):
        for p, g in zip(params, _grads(step)):
            p.grad = g
        opt.step()
    return params, opt


def _continue(params, opt, first=11, last=20):
    for step in range(first, last + 1):
        for p, g in zip(params, _grads(step)):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("amsgrad", [False, True])
def test_state_dict_round_trip(amsgrad):
    params, opt = _stepped(amsgrad=amsgrad)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["state_dtype"] == "8bit"
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    params2 = [p.clone() for p in params]
    opt2 = fastlr.optim.AdamW(params2, lr=1e-2, state_dtype="8bit", amsgrad=amsgrad)
    opt2.load_state_dict(loaded)
    st = opt2.state[params2[0]]
    assert st["exp_avg_codes"].dtype == torch.uint8 and st["exp_avg_scale"].dtype == torch.float32
    _continue(params, opt)
    _continue(params2, opt2)
    for a, b in zip(params, params2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_state_dict_with_fsdp2_scales_loads_unsharded():
    """FSDP2 keeps the scales of a param whose rows are whole blocks as (rows, blocks per
    row); its gathered (full) state dict loads into an unsharded optimizer and continues
    exactly as the (blocks,) layout."""
    def stepped():
        g = torch.Generator().manual_seed(5)
        params = [torch.randn(s, generator=g) for s in ((20, 256), (9, 512))]
        opt = fastlr.optim.AdamW(params, lr=1e-2, state_dtype="8bit")
        return params, opt

    def run(params, opt, first, last):
        for step in range(first, last + 1):
            g = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()

    params, opt = stepped()
    run(params, opt, 1, 5)
    sd = copy.deepcopy(opt.state_dict())
    for pid, st in sd["state"].items():
        for key in [k for k in st if k.endswith("_scale")]:
            st[key] = st[key].reshape(params[pid].shape[0], -1)  # (20, 1), (9, 2)
    params2, opt2 = stepped()
    with torch.no_grad():
        for p, q in zip(params, params2):
            q.copy_(p)
    opt2.load_state_dict(sd)
    assert opt2.state[params2[1]]["exp_avg_scale"].shape == (18,)
    run(params, opt, 6, 10)
    run(params2, opt2, 6, 10)
    for a, b in zip(params, params2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_torch_state_dict_loads_quantized():
    """A torch.optim.AdamW (float32) state_dict loaded into an 8-bit optimizer: the 8-bit
    tensors hold the quantized moments (√v for exp_avg_sq), the small ones float32."""
    params = _params()
    ref = torch.optim.AdamW(params, lr=1e-2)
    for step in range(1, 6):
        for p, g in zip(params, _grads(step)):
            p.grad = g
        ref.step()
    opt = fastlr.optim.AdamW([p.clone() for p in params], lr=1e-2, state_dtype="8bit")
    opt.load_state_dict(ref.state_dict())
    q = opt.param_groups[0]["params"]
    for p, r in zip(q[:2], params[:2]):
        s, t = opt.state[p], ref.state[r]
        codes, scales = _quant8.quantize(t["exp_avg"].numpy(), 256, True)
        np.testing.assert_array_equal(s["exp_avg_codes"].numpy(), codes)
        np.testing.assert_array_equal(s["exp_avg_scale"].numpy(), scales)
        codes, scales = _quant8.quantize(t["exp_avg_sq"].numpy(), 256, False, "sqrt")
        np.testing.assert_array_equal(s["exp_avg_sq_codes"].numpy(), codes)
        assert "exp_avg" not in s and float(s["step"]) == 5
    for p, r in zip(q[2:], params[2:]):
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref.state[r]["exp_avg_sq"], rtol=0, atol=0)
    _continue(q, opt, 6, 8)  # and it steps


def test_to_torch_state_dict_dequantizes():
    params, opt = _stepped()
    sd = opt.state_dict()
    before = copy.deepcopy(sd)
    out = fastlr.optim.to_torch_state_dict(sd)
    assert "state_dtype" not in out["param_groups"][0]
    for pid, p in enumerate(params):
        s = out["state"][pid]
        assert sorted(s) == ["exp_avg", "exp_avg_sq", "step"]
        assert s["exp_avg"].dtype == torch.float32 and s["exp_avg"].shape == p.shape
    s0 = sd["state"][0]
    np.testing.assert_array_equal(
        out["state"][0]["exp_avg_sq"].numpy(),
        _quant8.dequantize(s0["exp_avg_sq_codes"].numpy(), s0["exp_avg_sq_scale"].numpy(), 256, False, "sqrt"))
    torch.testing.assert_close(out["state"][2]["exp_avg"], sd["state"][2]["exp_avg"], rtol=0, atol=0)
    torch.testing.assert_close(sd["state"][0]["exp_avg_codes"], before["state"][0]["exp_avg_codes"])  # input kept
    # torch.optim.AdamW and fastlr's float32 AdamW load it and continue
    tparams = [p.clone() for p in params]
    topt = torch.optim.AdamW(tparams, lr=1e-2)
    topt.load_state_dict(copy.deepcopy(out))  # (torch keeps the loaded tensors: not shared)
    fparams = [p.clone() for p in params]
    fopt = fastlr.optim.AdamW(fparams, lr=1e-2)
    fopt.load_state_dict(copy.deepcopy(out))
    assert fopt.state[fparams[0]]["exp_avg"].dtype == torch.float32
    _continue(tparams, topt, 11, 13)
    _continue(fparams, fopt, 11, 13)
    for a, b in zip(tparams, fparams):
        torch.testing.assert_close(a, b)
    # and back: the dequantized state re-quantizes to the same codes
    opt2 = fastlr.optim.AdamW([p.clone() for p in params], lr=1e-2, state_dtype="8bit")
    opt2.load_state_dict(out)
    s = opt2.state[opt2.param_groups[0]["params"][0]]
    torch.testing.assert_close(s["exp_avg_sq_codes"], s0["exp_avg_sq_codes"], rtol=0, atol=0)
    # state_dict_to_float32 (the Adam8bit classes' converter) knows this encoding too
    out2 = fastlr.optim.state_dict_to_float32(sd)
    torch.testing.assert_close(out2["state"][0]["exp_avg_sq"], out["state"][0]["exp_avg_sq"], rtol=0, atol=0)


def test_adamw8bit_dicts_both_ways():
    """fastlr.optim.AdamW8bit's dicts (their group keys name block and encoding) load into
    state_dtype="8bit": the fastlr variant's codes are taken over (the same trajectory
    continues), torchao's linear exp_avg_sq is re-encoded; and back."""
    a, b = _params(), _params()
    fast = _run(fastlr.optim.AdamW8bit, a, steps=5, lr=1e-2, variant="fastlr")
    opt = fastlr.optim.AdamW([p.clone() for p in a], lr=1e-2, state_dtype="8bit")
    opt.load_state_dict(copy.deepcopy(fast.state_dict()))
    assert "block_size" not in opt.param_groups[0] and "exp_avg_sq_encoding" not in opt.param_groups[0]
    back = fastlr.optim.AdamW8bit([p.clone() for p in a], lr=1e-2, variant="fastlr")
    back.load_state_dict(copy.deepcopy(opt.state_dict()))
    runs = [(fast, a), (opt, opt.param_groups[0]["params"]), (back, back.param_groups[0]["params"])]
    for step in range(6, 9):
        for o, ps in runs:
            for p, g in zip(ps, _grads(step)):
                p.grad = g
            o.step()
    for _, ps in runs[1:]:
        for x, y in zip(ps, a):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    # torchao's encoding: exp_avg as is, exp_avg_sq dequantized linearly and re-quantized as sqrt
    ao = _run(fastlr.optim.AdamW8bit, b, steps=5, lr=1e-2)
    sd = ao.state_dict()
    opt = fastlr.optim.AdamW([p.clone() for p in b], lr=1e-2, state_dtype="8bit")
    opt.load_state_dict(copy.deepcopy(sd))
    s, t = opt.state[opt.param_groups[0]["params"][0]], sd["state"][0]
    torch.testing.assert_close(s["exp_avg_codes"], t["exp_avg_codes"], rtol=0, atol=0)
    v = _quant8.dequantize(t["exp_avg_sq_codes"].numpy(), t["exp_avg_sq_scale"].numpy(), 256, False, "linear")
    np.testing.assert_array_equal(s["exp_avg_sq_codes"].numpy(), _quant8.quantize(v, 256, False, "sqrt")[0])
    out = fastlr.optim.to_torch_state_dict(sd)
    np.testing.assert_array_equal(out["state"][0]["exp_avg_sq"].numpy(), v)
    torch.testing.assert_close(out["state"][0]["exp_avg_sq"],
                               fastlr.optim.state_dict_to_float32(sd)["state"][0]["exp_avg_sq"], rtol=0, atol=0)


@pytest.mark.parametrize("key, value, match", [
    ("exp_avg_codes", lambda s: s.to(torch.int8), "uint8"),
    ("exp_avg_codes", lambda s: s.reshape(-1), "shape"),
    ("exp_avg_sq_scale", lambda s: s[:-1], r"\(24,\)"),
    ("exp_avg_sq_scale", lambda s: s.double(), "float32"),
    ("exp_avg_scale", None, "exp_avg_codes"),
])
def test_bad_state_dict_refused(key, value, match):
    params, opt = _stepped()
    sd = copy.deepcopy(opt.state_dict())
    if value is None:
        del sd["state"][0][key]
    else:
        sd["state"][0][key] = value(sd["state"][0][key])
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    for pid in before["state"]:
        for k, v in before["state"][pid].items():
            torch.testing.assert_close(after["state"][pid][k], v, rtol=0, atol=0)


# -------------------------------------------------------------- bad input ---


@pytest.mark.parametrize("bad", ["int8", "8-bit", torch.uint8, torch.int8, 8])
def test_bad_state_dtype(bad):
    with pytest.raises(TypeError, match=r'None, torch.float32, torch.bfloat16 or "8bit"'):
        fastlr.optim.AdamW(_params(), state_dtype=bad)


def test_float64_params_refused():
    """8-bit state is for float32/16-bit params: a float64 param's state stays float64, so
    state_dtype="8bit" on a group holding one is a TypeError (put it in a group of its own
    without the option)."""
    p = torch.zeros(5000, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        fastlr.optim.Adam([p], state_dtype="8bit")
    q = torch.zeros(5000)
    opt = fastlr.optim.Adam([{"params": [q], "state_dtype": "8bit"}, {"params": [p]}], lr=0.1)
    q.grad, p.grad = torch.ones(5000), torch.ones(5000, dtype=torch.float64)
    opt.step()
    assert "exp_avg_codes" in opt.state[q] and opt.state[p]["exp_avg"].dtype == torch.float64


def test_refused_combinations():
    with pytest.raises(NotImplementedError, match="8bit"):
        fastlr.optim.SGDScheduleFree(_params(), lr=0.1, state_dtype="8bit")
    fastlr.optim.AdamW(_params(), state_dtype="8bit", master_weights=True)  # float32: no master, fine
    fastlr.optim.SGD(_params(torch.float16), lr=0.1, momentum=0.9, state_dtype="8bit", stochastic_rounding=True)


# ------------------------------------------- SGD, RMSprop, Adagrad, masters ---

OTHERS = [
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.1, maximize=True)),
    ("RMSprop", dict(lr=1e-3, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01)),
    ("RMSprop", dict(lr=1e-3)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01)),
]
_OTHER_ROLES = {"SGD": ("momentum_buffer",), "RMSprop": ("square_avg", "grad_avg", "momentum_buffer"),
                "Adagrad": ("sum",)}


def _numpy_8bit_step(cls, kw, arrays, grads, states, step):
    """One step of the public NumPy 8-bit kernel of cls over the 8-bit arrays."""
    def pair(role):
        return [s[role + "_codes"] for s in states], [s[role + "_scale"] for s in states]

    if cls == "SGD":
        fastlr.sgd8bit_step(arrays, grads, *pair("momentum_buffer"), step=step, **kw)
    elif cls == "RMSprop":
        extra = {}
        if kw.get("centered"):
            extra["grad_avg_codes"], extra["grad_avg_scales"] = pair("grad_avg")
        if kw.get("momentum"):
            extra["momentum_buffer_codes"], extra["momentum_buffer_scales"] = pair("momentum_buffer")
        fastlr.rmsprop8bit_step(arrays, grads, *pair("square_avg"), **kw, **extra)
    else:
        kw = {k: v for k, v in kw.items() if k != "initial_accumulator_value"}
        fastlr.adagrad8bit_step(arrays, grads, *pair("sum"), step=step, **kw)


@pytest.mark.parametrize("cls, kw", OTHERS, ids=lambda x: x if isinstance(x, str) else "-".join(x))
def test_other_optimizers_trajectory(cls, kw):
    """SGD (momentum), RMSprop and Adagrad with state_dtype="8bit": the 8-bit tensors bit for
    bit against fastlr's NumPy 8-bit kernels, the small ones against torch.optim (float32
    state, test_optim.py's tolerance); the 8-bit state stays close to torch.optim's float32
    state (every role within a few codes of its block)."""
    params = _params()
    arrays = [_np(p.clone()).copy() for p in params[:2]]
    ref = [p.clone() for p in params]
    opt = _run(getattr(fastlr.optim, cls), params, state_dtype="8bit", **kw)
    torch_ref = _run(getattr(torch.optim, cls), ref, foreach=False, **kw)
    roles = [r for r in _OTHER_ROLES[cls] if r + "_codes" in opt.state[params[0]]]
    assert roles and all(r in torch_ref.state[ref[0]] for r in roles)
    init = kw.get("initial_accumulator_value", 0.0)
    states = [{r + x: v for r in roles for x, v in zip(("_codes", "_scale"), _new_q8(a, init if r == "sum" else 0))}
              for a in arrays]
    for step in range(1, STEPS + 1):
        _numpy_8bit_step(cls, kw, arrays, [_np(g) for g in _grads(step)[:2]], states, step)
    for p, a, s in zip(params[:2], arrays, states):
        np.testing.assert_array_equal(_np(p), a)
        for key, v in s.items():
            np.testing.assert_array_equal(opt.state[p][key].numpy(), v, err_msg=key)
    for p, r in zip(params[2:], ref[2:]):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-6)
    for p, r in zip(params[:2], ref[:2]):  # 8-bit vs float32 state: within the codes' resolution
        for role in roles:
            signed, enc = _quant8.ROLES[role]
            got = _quant8.dequantize(opt.state[p][role + "_codes"].numpy(), opt.state[p][role + "_scale"].numpy(),
                                     256, signed, enc)
            want = torch_ref.state[r][role].numpy()
            scale = np.abs(want).max()
            assert np.abs(got - want).max() < 0.15 * scale, role


def _new_q8(a, fill):
    if fill:
        return _quant8.quantize(np.full(a.shape, fill, np.float32), 256, False, "sqrt")
    return np.zeros(a.shape, np.uint8), np.zeros(_quant8.num_blocks(a.size, 256), np.float32)


@pytest.mark.parametrize("cls", ["SGD", "RMSprop", "Adagrad", "AdamW"])
def test_numpy_twins_of_every_optimizer(cls):
    """fastlr.numpy.X(state_dtype="8bit") against fastlr.optim.X, bit for bit, bf16 params
    with stochastic rounding (the random bits are keyed by the same tensor ids and steps)."""
    import fastlr.numpy as fnp

    kw = dict(OTHERS[0][1] if cls == "SGD" else OTHERS[2][1] if cls == "RMSprop" else
              OTHERS[4][1] if cls == "Adagrad" else dict(lr=1e-3, amsgrad=True))
    params = _params(torch.bfloat16)
    arrays = [_np(p.clone()).copy() for p in params]
    opt = getattr(fastlr.optim, cls)(params, state_dtype="8bit", stochastic_rounding=True, seed=3, **kw)
    nopt = getattr(fnp, cls)(arrays, state_dtype="8bit", stochastic_rounding=True, seed=3, **kw)
    for step in range(1, 11):
        grads = _grads(step, torch.bfloat16)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        nopt.step([_np(g).copy() for g in grads])
    for i, (p, a) in enumerate(zip(params, arrays)):
        np.testing.assert_array_equal(_np(p).view(np.uint8), a.view(np.uint8))
        for key, v in opt.state[p].items():
            np.testing.assert_array_equal(np.asarray(nopt.state[i][key]), v.numpy(), err_msg=key)


@pytest.mark.parametrize("cls, kw", [("AdamW", dict(lr=3e-3)), OTHERS[0], OTHERS[2], OTHERS[4]],
                         ids=lambda x: x if isinstance(x, str) else "-".join(x))
def test_master_weights_8bit(cls, kw):
    """bf16 params with float32 masters and 8-bit state: the master follows the same
    update as a float32 param with 8-bit state (bit for bit: the grads are the same bf16
    values), and the param is its master rounded to nearest."""
    p16 = _params(torch.bfloat16)
    p32 = [p.float() for p in p16]
    opt16 = getattr(fastlr.optim, cls)(p16, master_weights=True, state_dtype="8bit", **kw)
    opt32 = getattr(fastlr.optim, cls)(p32, state_dtype="8bit", **kw)
    for step in range(1, 11):
        grads = _grads(step, torch.bfloat16)
        for a, b, g in zip(p16, p32, grads):
            a.grad, b.grad = g, g.float()
        opt16.step()
        opt32.step()
    for a, b in zip(p16, p32):
        master = opt16.state[a]["master_param"]
        torch.testing.assert_close(master, b, rtol=0, atol=0)
        torch.testing.assert_close(a, master.to(torch.bfloat16), rtol=0, atol=0)
        for key, v in opt32.state[b].items():
            torch.testing.assert_close(opt16.state[a][key], v, rtol=0, atol=0)


@pytest.mark.parametrize("cls, kw", [OTHERS[0], OTHERS[2], OTHERS[4]],
                         ids=lambda x: x if isinstance(x, str) else "-".join(x))
def test_other_optimizers_state_dicts(cls, kw):
    """torch.optim's float32 state loads quantized; to_torch_state_dict dequantizes for
    torch.optim; fastlr's own 8-bit state_dict round-trips exactly."""
    params = _params()
    ref = _run(getattr(torch.optim, cls), [p.clone() for p in params], steps=5, **kw)
    opt = getattr(fastlr.optim, cls)([p.clone() for p in params], state_dtype="8bit", **kw)
    opt.load_state_dict(ref.state_dict())
    p0, r0 = opt.param_groups[0]["params"][0], ref.param_groups[0]["params"][0]
    for role in _OTHER_ROLES[cls]:
        if role in ref.state[r0]:
            signed, enc = _quant8.ROLES[role]
            codes, scales = _quant8.quantize(ref.state[r0][role].numpy(), 256, signed, enc)
            np.testing.assert_array_equal(opt.state[p0][role + "_codes"].numpy(), codes)
            np.testing.assert_array_equal(opt.state[p0][role + "_scale"].numpy(), scales)
            assert role not in opt.state[p0]
    sd = opt.state_dict()
    out = fastlr.optim.to_torch_state_dict(sd)
    t = getattr(torch.optim, cls)([p.clone() for p in params], **kw)
    t.load_state_dict(copy.deepcopy(out))
    assert all(k in _OTHER_ROLES[cls] + ("step",) for k in out["state"][0])
    again = getattr(fastlr.optim, cls)([p.clone() for p in params], state_dtype="8bit", **kw)
    again.load_state_dict(copy.deepcopy(sd))
    a, b = opt.param_groups[0]["params"], again.param_groups[0]["params"]
    for step in range(6, 9):
        for x, y, g in zip(a, b, _grads(step)):
            x.grad, y.grad = g, g.clone()
        opt.step()
        again.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# ------------------------------------------------------------ NumPy twins ---

NUMPY_CASES = [
    dict(dtype=torch.float32, kw=dict(lr=3e-3, weight_decay=0.1)),
    dict(dtype=torch.float32, kw=dict(lr=1e-2, amsgrad=True, maximize=True)),
    dict(dtype=torch.bfloat16, kw=dict(lr=3e-3, stochastic_rounding=True, seed=5)),
]


@pytest.mark.parametrize("case", NUMPY_CASES, ids=lambda c: f"{c['dtype']}-{'-'.join(c['kw'])}")
def test_numpy_twin_bit_identical(case):
    """fastlr.numpy.AdamW(state_dtype="8bit") over NumPy arrays: the same params and state,
    bit for bit, as fastlr.optim.AdamW, and its state_dict loads into fastlr.optim (and back)."""
    import fastlr.numpy as fnp

    dtype, kw = case["dtype"], case["kw"]
    params = _params(dtype)
    arrays = [_np(p.clone()).copy() for p in params]
    opt = fastlr.optim.AdamW(params, state_dtype="8bit", **kw)
    nopt = fnp.AdamW(arrays, state_dtype="8bit", **kw)
    _step_both(opt, nopt, arrays, range(1, 11), dtype)
    for i, p in enumerate(params):
        for key, v in opt.state[p].items():
            np.testing.assert_array_equal(np.asarray(nopt.state[i][key]), v.numpy(), err_msg=key)
    # the NumPy state_dict continues in fastlr.optim, fastlr.optim's in fastlr.numpy
    opt2 = fastlr.optim.AdamW([p.clone() for p in params], state_dtype="8bit", **kw)
    opt2.load_state_dict({"state": {i: {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                                        for k, v in s.items()}
                                    for i, s in nopt.state_dict()["state"].items()},
                          "param_groups": nopt.state_dict()["param_groups"]})
    arrays2 = [a.copy() for a in arrays]
    nopt2 = fnp.AdamW(arrays2, state_dtype="8bit", **kw)
    nopt2.load_state_dict(opt.state_dict())
    _step_both(opt2, nopt2, arrays2, range(11, 14), dtype)


def _step_both(opt, nopt, arrays, steps, dtype):
    """The same steps through a fastlr.optim optimizer and a fastlr.numpy one (over
    ``arrays``): the params end bit-identical."""
    params = opt.param_groups[0]["params"]
    for step in steps:
        grads = _grads(step, dtype)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        nopt.step([_np(g).copy() for g in grads])
    for p, a in zip(params, arrays):
        np.testing.assert_array_equal(_np(p).view(np.uint8), a.view(np.uint8))


def test_numpy_state_dict_conversions():
    """fastlr.numpy: a float32 state_dict (torch.optim's) is quantized on loading, codes of
    the wrong dtype or shape are refused before anything changes, and
    fastlr.optim.to_torch_state_dict's output loads into a float32 fastlr.numpy.AdamW."""
    import fastlr.numpy as fnp

    params = _params()
    ref = torch.optim.AdamW(params, lr=1e-2)
    for p, g in zip(params, _grads(1)):
        p.grad = g
    ref.step()
    nopt = fnp.AdamW([_np(p.clone()).copy() for p in params], lr=1e-2, state_dtype="8bit")
    nopt.load_state_dict(ref.state_dict())
    codes, _ = _quant8.quantize(ref.state[params[0]]["exp_avg_sq"].numpy(), 256, False, "sqrt")
    np.testing.assert_array_equal(nopt.state[0]["exp_avg_sq_codes"], codes)
    assert nopt.state[2]["exp_avg"].dtype == np.float32 and "exp_avg_codes" not in nopt.state[2]
    sd = nopt.state_dict()
    before = copy.deepcopy(sd)
    bad = copy.deepcopy(sd)
    bad["state"][0]["exp_avg_codes"] = bad["state"][0]["exp_avg_codes"].astype(np.int16)
    with pytest.raises(ValueError, match="uint8"):
        nopt.load_state_dict(bad)
    bad = copy.deepcopy(sd)
    del bad["state"][1]["exp_avg_sq_scale"]
    with pytest.raises(ValueError, match="exp_avg_sq_scale"):
        nopt.load_state_dict(bad)
    np.testing.assert_array_equal(nopt.state[0]["exp_avg_codes"], before["state"][0]["exp_avg_codes"])
    out = fastlr.optim.to_torch_state_dict({"state": {i: {k: torch.as_tensor(v) for k, v in s.items()}
                                                      for i, s in sd["state"].items()},
                                            "param_groups": sd["param_groups"]})
    plain = fnp.AdamW([_np(p.clone()).copy() for p in params], lr=1e-2)
    plain.load_state_dict(out)
    assert plain.state[0]["exp_avg"].dtype == np.float32 and "exp_avg_codes" not in plain.state[0]


def test_numpy_bad_input():
    import fastlr.numpy as fnp

    with pytest.raises(TypeError, match='"8bit"'):
        fnp.Adam([np.zeros(5000, np.float32)], state_dtype="int8")
    with pytest.raises(TypeError, match="float64"):
        fnp.Adam([np.zeros(5000)], state_dtype="8bit")
    fnp.Adam([np.zeros(5000, np.float16)], state_dtype="8bit", stochastic_rounding=True)
    fnp.SGD([np.zeros(5000, np.float16)], lr=0.1, momentum=0.9, state_dtype="8bit", stochastic_rounding=True)


def test_numpy_loads_adamw8bit_dicts():
    """fastlr.numpy reads an AdamW8bit (torchao encoding) dict as fastlr.optim does."""
    import fastlr.numpy as fnp

    b = _params()
    sd = _run(fastlr.optim.AdamW8bit, b, steps=3, lr=1e-2).state_dict()
    opt = fastlr.optim.AdamW([p.clone() for p in b], lr=1e-2, state_dtype="8bit")
    opt.load_state_dict(copy.deepcopy(sd))
    nopt = fnp.AdamW([_np(p.clone()).copy() for p in b], lr=1e-2, state_dtype="8bit")
    nopt.load_state_dict(copy.deepcopy(sd))
    assert "block_size" not in nopt.param_groups[0]
    for i, p in enumerate(opt.param_groups[0]["params"]):
        for key, v in opt.state[p].items():
            np.testing.assert_array_equal(np.asarray(nopt.state[i][key]), v.numpy(), err_msg=key)


@pytest.mark.parametrize("bad", [dict(block_size=0), dict(block_size=2.5), dict(exp_avg_sq_encoding="log")])
def test_saved_block_size_and_encoding_are_checked_on_load(bad):
    """A saved group's 8-bit source (block size, encoding) is validated: ValueError naming
    it, before anything changes (it was a ZeroDivisionError for block_size=0)."""
    import fastlr.numpy as fnp

    p = torch.randn(5000, requires_grad=True)
    opt = fastlr.optim.AdamW([p], lr=1e-3, state_dtype="8bit")
    p.grad = torch.randn_like(p)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0].update(bad)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="block_size|exp_avg_sq_encoding"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert all(torch.equal(before["state"][0][k], v) for k, v in after["state"][0].items() if torch.is_tensor(v))

    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    nopt = fnp.Adam([x], lr=1e-3, state_dtype="8bit")
    nopt.step([np.ones_like(x)])
    nsd = copy.deepcopy(nopt.state_dict())
    nsd["param_groups"][0].update(bad)
    with pytest.raises(ValueError, match="block_size|exp_avg_sq_encoding"):
        nopt.load_state_dict(nsd)
