"""8-bit state for every optimizer (fastlr encoding): SGD's momentum buffer, RMSprop's
square_avg / grad_avg / momentum buffer, Adagrad's sum, and Adam with float32 master
weights. Whole trajectories against a float32 reference that dequantizes, applies
torch.optim's update (torch.optim itself on float32 copies where it can; NumPy, operation
for operation, for centered RMSprop, whose clamp torch does not have) and re-quantizes
exactly as specified; bit-identity across CPU levels and thread counts; bad input."""
import numpy as np
import pytest

import fastlr
from conftest import supported_cpu_levels
from fastlr import _C, _quant8

torch = pytest.importorskip("torch")

LEVELS = list(supported_cpu_levels())
f32 = np.float32


def _bf16():
    return pytest.importorskip("ml_dtypes").bfloat16


# ------------------------------------------------------------ the roles ---

def _roles(opt, cfg):
    """(name, signed) of each 8-bit state of one configuration."""
    if opt == "sgd":
        return [("momentum_buffer", True)] if cfg.get("momentum", 0) else []
    if opt == "adam":
        return [("exp_avg", True), ("exp_avg_sq", False)] + ([("max_exp_avg_sq", False)] if cfg.get("amsgrad") else [])
    if opt == "rmsprop":
        return ([("square_avg", False)] + ([("grad_avg", True)] if cfg.get("centered") else [])
                + ([("momentum_buffer", True)] if cfg.get("momentum", 0) else []))
    return [("state_sum", False)]


def _new_state(opt, cfg, n, block):
    nb = _quant8.num_blocks(n, block)
    return {name: [np.zeros(n, np.uint8), np.zeros(nb, f32)] for name, _ in _roles(opt, cfg)}


def _deq(st, name, signed, block):
    c, s = st[name]
    return _quant8.dequantize(c, s, block, signed, "linear" if signed else "sqrt")


# ------------------------------------------------------ the fused kernels ---

def _fused(opt, ps, gs, sts, step, cfg, block, **prec):
    def pair(name):
        return [st[name][0] for st in sts], [st[name][1] for st in sts]

    names = [r for r, _ in _roles(opt, cfg)]
    kw = dict(block_size=block, step=step, **prec)
    if opt == "sgd":
        bc, bs = pair("momentum_buffer") if names else (None, None)
        return fastlr.sgd8bit_step(ps, gs, bc, bs, lr=cfg["lr"], momentum=cfg.get("momentum", 0.0),
                                   dampening=cfg.get("dampening", 0.0), nesterov=cfg.get("nesterov", False),
                                   weight_decay=cfg.get("weight_decay", 0.0), maximize=cfg.get("maximize", False),
                                   **kw)
    if opt == "adam":
        mx = pair("max_exp_avg_sq") if cfg.get("amsgrad") else (None, None)
        return fastlr.adam8bit_step(ps, gs, *pair("exp_avg"), *pair("exp_avg_sq"), lr=cfg["lr"],
                                    beta1=cfg.get("beta1", 0.9), beta2=cfg.get("beta2", 0.999),
                                    weight_decay=cfg.get("weight_decay", 0.0),
                                    decoupled_weight_decay=cfg.get("decoupled", False),
                                    amsgrad=cfg.get("amsgrad", False), max_exp_avg_sq_codes=mx[0],
                                    max_exp_avg_sq_scales=mx[1], maximize=cfg.get("maximize", False), **kw)
    if opt == "rmsprop":
        ga = pair("grad_avg") if cfg.get("centered") else (None, None)
        mb = pair("momentum_buffer") if cfg.get("momentum", 0) else (None, None)
        return fastlr.rmsprop8bit_step(ps, gs, *pair("square_avg"), lr=cfg["lr"], alpha=cfg.get("alpha", 0.99),
                                       eps=cfg.get("eps", 1e-8), weight_decay=cfg.get("weight_decay", 0.0),
                                       momentum=cfg.get("momentum", 0.0), momentum_buffer_codes=mb[0],
                                       momentum_buffer_scales=mb[1], centered=cfg.get("centered", False),
                                       grad_avg_codes=ga[0], grad_avg_scales=ga[1],
                                       maximize=cfg.get("maximize", False), **kw)
    return fastlr.adagrad8bit_step(ps, gs, *pair("state_sum"), lr=cfg["lr"], lr_decay=cfg.get("lr_decay", 0.0),
                                   weight_decay=cfg.get("weight_decay", 0.0), eps=cfg.get("eps", 1e-10),
                                   maximize=cfg.get("maximize", False), **kw)


# ------------------------------------------------------ float32 reference ---

def _torch_step(opt, p, g, state, step, cfg):
    """torch.optim's step (foreach=False) on float32 copies; returns (param, new state)."""
    P = torch.nn.Parameter(torch.from_numpy(p.copy()))
    P.grad = torch.from_numpy(g.copy())
    common = dict(lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0), maximize=cfg.get("maximize", False),
                  foreach=False)
    if opt == "sgd":
        o = torch.optim.SGD([P], momentum=cfg.get("momentum", 0.0), dampening=cfg.get("dampening", 0.0),
                            nesterov=cfg.get("nesterov", False), **common)
    elif opt == "adam":
        cls = torch.optim.AdamW if cfg.get("decoupled") else torch.optim.Adam
        o = cls([P], betas=(cfg.get("beta1", 0.9), cfg.get("beta2", 0.999)), amsgrad=cfg.get("amsgrad", False),
                **common)
    elif opt == "rmsprop":
        o = torch.optim.RMSprop([P], alpha=cfg.get("alpha", 0.99), eps=cfg.get("eps", 1e-8),
                                momentum=cfg.get("momentum", 0.0), centered=cfg.get("centered", False), **common)
    else:
        o = torch.optim.Adagrad([P], lr_decay=cfg.get("lr_decay", 0.0), eps=cfg.get("eps", 1e-10), **common)
    if state:
        o.state[P] = {k: torch.from_numpy(np.array(v, f32)) for k, v in state.items()}
    o.step()
    return P.detach().numpy().copy(), {k: v.numpy().copy() for k, v in o.state[P].items() if k != "step"}


def _lerp(a, b, w):
    w = f32(w)
    return a + w * (b - a) if w < 0.5 else b - (b - a) * (f32(1) - w)


def _rule(opt, cfg, p, g, vals, step):
    """torch.optim's update in NumPy float32, operation for operation as torch's element
    kernels (fastlr/update.hpp), plus the 8-bit rules. vals: the dequantized states, the
    non-negative ones as square roots (as stored); returns p and the new vals."""
    vals = dict(vals)
    g = g * f32(-1.0 if cfg.get("maximize") else 1.0)
    wd = cfg.get("weight_decay", 0.0)
    lr = cfg["lr"]
    if wd and not (opt == "adam" and cfg.get("decoupled")):
        g = g + f32(wd) * p
    if opt == "sgd":
        mom = cfg.get("momentum", 0.0)
        if mom:
            buf = g if step == 1 else vals["momentum_buffer"] * f32(mom) + f32(1 - cfg.get("dampening", 0.0)) * g
            vals["momentum_buffer"] = buf
            g = g + f32(mom) * buf if cfg.get("nesterov") else buf
        return p + f32(-lr) * g, vals
    if opt == "adam":
        b1, b2 = cfg.get("beta1", 0.9), cfg.get("beta2", 0.999)
        r = vals["exp_avg_sq"]
        m = np.where(r == 0, f32(0), vals["exp_avg"])  # restarts where sqrt(v) dequantizes to 0
        if wd and cfg.get("decoupled"):
            p = p * f32(1 - lr * wd)
        m = _lerp(m, g, 1 - b1)
        root = np.sqrt((r * r) * f32(b2) + (f32(1 - b2) * g) * g)
        vals["exp_avg"], vals["exp_avg_sq"] = m, root
        if cfg.get("amsgrad"):
            x = vals["max_exp_avg_sq"]
            root = vals["max_exp_avg_sq"] = np.where((x < root) | np.isnan(root), root, x)
        denom = root * f32(1 / (1 - b2 ** step) ** 0.5) + f32(1e-8)
        return p + (f32(-(lr / (1 - b1 ** step))) * m) / denom, vals
    if opt == "rmsprop":
        alpha = cfg.get("alpha", 0.99)
        r = vals["square_avg"]
        sq = (r * r) * f32(alpha) + (f32(1 - alpha) * g) * g
        vals["square_avg"] = np.sqrt(sq)
        if cfg.get("centered"):
            ga = vals["grad_avg"] = _lerp(np.where(r == 0, f32(0), vals["grad_avg"]), g, 1 - alpha)
            var = sq + (f32(-1) * ga) * ga
            avg = np.sqrt(np.where(var < 0, f32(0), var))  # clamped: quantized, it can be negative
        else:
            avg = np.sqrt(sq)
        avg = avg + f32(cfg.get("eps", 1e-8))
        if cfg.get("momentum", 0.0):
            prev = np.zeros_like(p) if step == 1 else vals["momentum_buffer"] * f32(cfg["momentum"])
            buf = vals["momentum_buffer"] = prev + g / avg
            return p + f32(-lr) * buf, vals
        return p + (f32(-lr) * g) / avg, vals
    r = vals["state_sum"]
    root = vals["state_sum"] = np.sqrt(r * r + g * g)
    clr = lr / (1 + (step - 1) * cfg.get("lr_decay", 0.0))
    return p + (f32(-clr) * g) / (root + f32(cfg.get("eps", 1e-10))), vals


def _ref_step(opt, p, g, st, step, cfg, block):
    """One 8-bit step of one tensor: p, g float32; st updated in place; returns the new p."""
    vals = {name: _quant8.dequantize(*st[name], block, signed) for name, signed in _roles(opt, cfg)}
    with np.errstate(all="ignore"):
        p, vals = _rule(opt, cfg, p, g, vals, step)
    for name, signed in _roles(opt, cfg):
        st[name][0][...], st[name][1][...] = _quant8.quantize(vals[name], block, signed)
    return p


# ------------------------------------------------------------ trajectories ---

CASES = [
    ("sgd", dict(lr=0.05, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01, maximize=True)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    ("sgd", dict(lr=0.05)),
    ("adam", dict(lr=3e-3, beta2=0.99, decoupled=True, weight_decay=0.1)),
    ("adam", dict(lr=3e-3, beta2=0.99, weight_decay=0.01, amsgrad=True, maximize=True)),
    ("rmsprop", dict(lr=1e-3)),
    ("rmsprop", dict(lr=1e-3, momentum=0.9, weight_decay=0.01, maximize=True)),
    ("rmsprop", dict(lr=1e-3, centered=True, alpha=0.9)),
    ("rmsprop", dict(lr=1e-3, centered=True, momentum=0.5, weight_decay=0.01)),
    ("adagrad", dict(lr=0.05)),
    ("adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, maximize=True)),
]
SIZES = [4096, 4096 + 17, 300, 1, 0]  # a partial last block, a tensor smaller than a block, an empty one


def _case_id(c):
    opt, cfg = c
    return opt + "-" + "-".join(f"{k}={v}" for k, v in cfg.items())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_reference_arithmetic_is_torch_optims(case):
    """The NumPy rule (without quantization) agrees with torch.optim on float32 state to
    float32 rounding (torch's CPU kernels contract some operations into FMAs)."""
    opt, cfg = case
    rng = np.random.default_rng(4)
    n = 1000
    p = rng.standard_normal(n).astype(f32)
    vals = {}
    for name, signed in _roles(opt, cfg):
        x = rng.standard_normal(n).astype(f32) * f32(0.1)
        vals[name] = x if signed else np.abs(x) + f32(0.5)  # centered: square_avg > grad_avg^2
    for step in (1, 5):
        g = rng.standard_normal(n).astype(f32)
        ours, new = _rule(opt, cfg, p, g, vals, step)
        state = {k: (v if dict(_roles(opt, cfg))[k] else v * v) for k, v in vals.items()}
        state = {("sum" if k == "state_sum" else k): v for k, v in state.items()}
        if opt == "sgd" and step == 1:
            state = {}
        elif opt != "sgd":
            state["step"] = np.array(step - 1, f32)
        if opt == "rmsprop" and step == 1 and cfg.get("momentum"):
            state["momentum_buffer"] = np.zeros(n, f32)
        theirs, tnew = _torch_step(opt, p, g, state, step, cfg)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
        for name, signed in _roles(opt, cfg):
            t = tnew["sum" if name == "state_sum" else name]
            np.testing.assert_allclose(new[name], t if signed else np.sqrt(t), rtol=1e-6, atol=1e-7, err_msg=name)


def _trajectory(opt, cfg, block, mode, steps, seed=2):
    """Fused and reference trajectories side by side. mode: 'f32' (float32 params), 'bf16'
    (bfloat16 params rounded to nearest), 'master' (bfloat16 params, float32 masters,
    bfloat16 grads), 'master-f32grad' (float16 params, float32 masters and grads)."""
    rng = np.random.default_rng(seed)
    pdt = {"f32": f32, "bf16": _bf16(), "master": _bf16(), "master-f32grad": np.float16}[mode]
    gdt = f32 if mode == "master-f32grad" else pdt
    masters = [rng.standard_normal(n).astype(f32) for n in SIZES]
    ps = [m.astype(pdt) for m in masters]
    if mode in ("f32", "bf16"):
        masters = None
    ref_p = [p.astype(f32) if masters is None else m.copy() for p, m in zip(ps, masters or ps)]
    sts = [_new_state(opt, cfg, n, block) for n in SIZES]
    ref_sts = [_new_state(opt, cfg, n, block) for n in SIZES]
    for step in range(1, steps + 1):
        scale = np.exp(rng.uniform(-6, 1))
        gs = [(rng.standard_normal(n) * scale * (rng.random(n) < 0.9)).astype(gdt) for n in SIZES]
        _fused(opt, ps, gs, sts, step, cfg, block, master_params=masters)
        for i, (g, st) in enumerate(zip(gs, ref_sts)):
            ref_p[i] = _ref_step(opt, ref_p[i], g.astype(f32), st, step, cfg, block)
            if masters is None and pdt is not f32:
                ref_p[i] = ref_p[i].astype(pdt).astype(f32)  # the param is stored rounded to nearest
    return ps, masters, sts, ref_p, ref_sts


def _assert_same(ps, masters, sts, ref_p, ref_sts):
    for i, (p, rp) in enumerate(zip(ps, ref_p)):
        if masters is not None:
            np.testing.assert_array_equal(masters[i], rp, err_msg=f"master {i}")
        want = rp.astype(p.dtype)
        np.testing.assert_array_equal(p.view(np.uint8), want.view(np.uint8), err_msg=f"param {i}")
        for k in sts[i]:
            np.testing.assert_array_equal(sts[i][k][1], ref_sts[i][k][1], err_msg=f"{k} scales, tensor {i}")
            np.testing.assert_array_equal(sts[i][k][0], ref_sts[i][k][0], err_msg=f"{k} codes, tensor {i}")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("block", [256, 64])
def test_trajectory_float32_params(case, block):
    opt, cfg = case
    _assert_same(*_trajectory(opt, cfg, block, "f32", steps=30))


@pytest.mark.parametrize("case", CASES[::2] + [CASES[5]], ids=_case_id)
@pytest.mark.parametrize("mode", ["bf16", "master", "master-f32grad"])
def test_trajectory_16bit_params_and_masters(case, mode):
    opt, cfg = case
    _assert_same(*_trajectory(opt, cfg, 256, mode, steps=30))


def test_master_weights_equal_the_float32_step_on_the_master():
    """Masters: the result is the float32 8-bit step applied to the master with
    grad.float(), then param = master rounded to nearest (bit for bit)."""
    bf16 = _bf16()
    rng = np.random.default_rng(7)
    n = 5000
    master = rng.standard_normal(n).astype(f32)
    p = master.astype(bf16)
    ref = master.copy()
    st = _new_state("adam", {}, n, 256)
    ref_st = _new_state("adam", {}, n, 256)
    for step in range(1, 31):
        g = (rng.standard_normal(n) * 1e-2).astype(bf16)
        fastlr.adam8bit_step(p, g, *st["exp_avg"], *st["exp_avg_sq"], step=step, lr=1e-3, master_params=master)
        fastlr.adam8bit_step(ref, g.astype(f32), *ref_st["exp_avg"], *ref_st["exp_avg_sq"], step=step, lr=1e-3)
    np.testing.assert_array_equal(master, ref)
    np.testing.assert_array_equal(p.view(np.uint16), ref.astype(bf16).view(np.uint16))
    for k in st:
        for a, b in zip(st[k], ref_st[k]):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------- levels, threads, SR ---

LEVEL_CASES = [c for c in CASES if c[0] != "sgd" or c[1].get("momentum")] + [("adam", dict(lr=1e-2))]


def _run(opt, cfg, level, nthreads, mode, steps=3):
    fastlr.set_num_threads(nthreads)
    _C.set_cpu_level(level)
    rng = np.random.default_rng(3)
    sizes = [300_000, 4096, 77]
    bf16 = _bf16() if mode != "f32" else None
    pdt = {"f32": f32, "bf16-sr": bf16, "f16-sr": np.float16, "master": bf16}[mode]
    ps = [rng.standard_normal(n).astype(pdt) for n in sizes]
    masters = [p.astype(f32) for p in ps] if mode == "master" else None
    sts = [_new_state(opt, cfg, n, 256) for n in sizes]
    for step in range(1, steps + 1):
        gs = [rng.standard_normal(n).astype(f32 if masters else pdt) for n in sizes]
        _fused(opt, ps, gs, sts, step, cfg, 256, master_params=masters, stochastic_rounding=mode.endswith("sr"),
               seed=11, tensor_ids=[5, 9, 2])
    return ps, masters, sts


# every rule in float32; the 16-bit storages (shared code) on one case of each optimizer
LEVEL_PARAMS = [(c, "f32") for c in LEVEL_CASES] + [
    (c, mode) for c in (CASES[0], CASES[5], CASES[9], CASES[11])
    for mode in ("bf16-sr", "master")] + [(CASES[0], "f16-sr")]


@pytest.mark.parametrize("case,mode", LEVEL_PARAMS, ids=lambda x: x if isinstance(x, str) else _case_id(x))
def test_threads_and_cpu_levels_bit_identical(case, mode, restore_cpu_level, num_threads):
    opt, cfg = case
    base = _run(opt, cfg, LEVELS[0], 1, mode)
    for level in LEVELS:
        for nt in (1, 2, 3):
            got = _run(opt, cfg, level, nt, mode)
            for a, b in zip(got[0], base[0]):
                np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
            for a, b in zip(got[1] or [], base[1] or []):
                np.testing.assert_array_equal(a, b)
            for s, t in zip(got[2], base[2]):
                for k in s:
                    np.testing.assert_array_equal(s[k][0], t[k][0])
                    np.testing.assert_array_equal(s[k][1], t[k][1])


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("pdt", ["bfloat16", "float16"])
def test_stochastic_rounding_picks_a_neighbour_and_is_unbiased(pdt, opt):
    dt = _bf16() if pdt == "bfloat16" else np.float16
    n = 1 << 16
    cfg = dict(lr=1e-4, momentum=0.9)
    g = np.ones(n, dt)

    def step(**kw):
        p = np.ones(n, dt)
        _fused(opt, [p], [g], [_new_state(opt, cfg, n, 256)], 1, cfg, 256, **kw)
        return p

    p = step(stochastic_rounding=True)
    x = 1 - 1e-4  # float32 result of either step, to ~1e-8
    vals = np.unique(p.astype(np.float64))
    lo, hi = np.float64(np.nextafter(dt(1.0), dt(0.0))), 1.0  # the two neighbours of 1 - 1e-4
    assert set(vals.tolist()) <= {lo, hi} and len(vals) == 2
    assert abs(p.astype(np.float64).mean() - x) < 3 * (hi - lo) / np.sqrt(n)
    assert not np.array_equal(p, step(stochastic_rounding=True, seed=1))  # another seed, other bits
    assert np.all(step().astype(f32) == 1.0)  # to nearest: the update is below half an ulp


# ------------------------------------------------------- special cases ---

def test_centered_rmsprop_clamps_the_variance_at_zero():
    """grad_avg and sqrt(square_avg) are quantized on their own, so square_avg − grad_avg²
    can come out negative: torch.optim's arithmetic would take its square root (NaN); the
    8-bit kernel clamps it at 0 (the step is then lr·g/eps, as torch's for a zero variance)."""
    n = 512
    cfg = dict(lr=1e-3, centered=True, alpha=0.9)
    p = np.zeros(n, f32)
    g = np.ones(n, f32)
    st = _new_state("rmsprop", cfg, n, 256)
    st["square_avg"][0][...], st["square_avg"][1][...] = _quant8.quantize(np.full(n, 0.9, f32), 256, False)
    st["grad_avg"][0][...], st["grad_avg"][1][...] = _quant8.quantize(np.ones(n, f32), 256, True)
    ref_st = {k: [a.copy() for a in v] for k, v in st.items()}
    _fused("rmsprop", [p], [g], [st], 2, cfg, 256)
    ref = _ref_step("rmsprop", np.zeros(n, f32), g, ref_st, 2, cfg, 256)
    np.testing.assert_array_equal(p, ref)
    np.testing.assert_array_equal(p, np.full(n, f32(-1e-3) * f32(1) / f32(1e-8), f32))  # 0.81·0.9 + 0.1 < 1
    P = torch.nn.Parameter(torch.zeros(n))
    P.grad = torch.ones(n)
    o = torch.optim.RMSprop([P], lr=1e-3, alpha=0.9, centered=True, foreach=False)
    o.state[P] = {"step": torch.tensor(1.0), "square_avg": torch.full((n,), 0.81), "grad_avg": torch.ones(n)}
    o.step()
    assert torch.isnan(P).all()  # what the unclamped float32 arithmetic does


def test_adagrad_initial_accumulator_value():
    n, v0 = 1000, 0.1
    p = np.ones(n, f32)
    g = np.full(n, 0.2, f32)
    codes, scales = fastlr.quantize8bit(np.full(n, v0, f32), signed=False)
    fastlr.adagrad8bit_step(p, g, codes, scales, step=1, lr=0.1)
    P = torch.nn.Parameter(torch.ones(n))
    P.grad = torch.full((n,), 0.2)
    torch.optim.Adagrad([P], lr=0.1, initial_accumulator_value=v0, foreach=False).step()
    # sqrt(v0) is each block's absmax: code 255 exactly, so the dequantized sum is v0 up to rounding
    np.testing.assert_allclose(p, P.detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("encoding,block", [("sqrt", 256), ("linear", 64)])
def test_public_quantize8bit_is_the_kernels_encoding(signed, encoding, block):
    """fastlr.quantize8bit / dequantize8bit: the reference quantization the kernels are
    checked against bit for bit (this file's trajectories), for any role, block and encoding."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 300)).astype(f32) * 1e-3
    if not signed:
        x = np.abs(x)
    codes, scales = fastlr.quantize8bit(x, signed=signed, block_size=block, encoding=encoding)
    ref_codes, ref_scales = _quant8.quantize(x, block, signed, encoding)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(scales, ref_scales)
    assert codes.shape == x.shape and scales.shape == (-(-x.size // block),)
    back = fastlr.dequantize8bit(codes, scales, signed=signed, block_size=block, encoding=encoding)
    np.testing.assert_array_equal(back, _quant8.dequantize(codes, scales, block, signed, encoding))
    assert back.dtype == f32 and back.shape == x.shape
    np.testing.assert_allclose(back, x, atol=0.05 * np.abs(x).max())


def test_public_quantize8bit_bad_input():
    x = np.ones(300, f32)
    with pytest.raises(TypeError, match="signed"):
        fastlr.quantize8bit(x, signed=None)
    with pytest.raises(ValueError, match="block_size"):
        fastlr.quantize8bit(x, signed=True, block_size=0)
    with pytest.raises(ValueError, match="encoding"):
        fastlr.quantize8bit(x, signed=True, encoding="log")
    with pytest.raises(ValueError, match="unsigned.*>= 0"):
        fastlr.quantize8bit(-x, signed=False)
    with pytest.raises(TypeError, match="real numbers"):
        fastlr.quantize8bit(np.array(["a"]), signed=True)
    codes, scales = fastlr.quantize8bit(x, signed=True)
    with pytest.raises(TypeError, match="codes"):
        fastlr.dequantize8bit(codes.astype(np.int16), scales, signed=True)
    with pytest.raises(TypeError, match="scales"):
        fastlr.dequantize8bit(codes, scales.astype(np.float64), signed=True)
    with pytest.raises(ValueError, match="scales has shape"):
        fastlr.dequantize8bit(codes, scales, signed=True, block_size=64)


def test_sgd_momentum_schedule_reaching_zero_leaves_the_buffer_alone():
    from fastlr import schedules

    n = 512
    p = np.zeros(n, f32)
    g = np.ones(n, f32)
    bc, bs = np.zeros(n, np.uint8), np.zeros(2, f32)
    mom = schedules.Table([0.9, 0.0])
    fastlr.sgd8bit_step(p, g, bc, bs, lr=0.1, momentum=mom, step=1)
    before = bc.copy(), bs.copy()
    fastlr.sgd8bit_step(p, g, bc, bs, lr=0.1, momentum=mom, step=2)
    np.testing.assert_array_equal(bc, before[0])
    np.testing.assert_array_equal(bs, before[1])
    np.testing.assert_array_equal(p, np.full(n, -0.2, f32))


# ------------------------------------------------------------- bad input ---

def _ok(n=512):
    return (np.zeros(n, f32), np.zeros(n, f32), np.zeros(n, np.uint8), np.zeros(_quant8.num_blocks(n, 256), f32))


def test_bad_input_sgd8():
    p, g, c, s = _ok()
    with pytest.raises(ValueError, match="momentum_buffer_codes"):
        fastlr.sgd8bit_step(p, g, lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match="momentum_buffer_codes"):
        fastlr.sgd8bit_step(p, g, c.astype(np.int8), s, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="momentum_buffer_scales"):
        fastlr.sgd8bit_step(p, g, c, np.zeros(3, f32), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="block_size"):
        fastlr.sgd8bit_step(p, g, c, s, lr=0.1, momentum=0.9, block_size=8192)
    with pytest.raises(ValueError, match="Nesterov"):
        fastlr.sgd8bit_step(p, g, c, s, lr=0.1, momentum=0.9, nesterov=True, dampening=0.1)
    with pytest.raises(ValueError, match="lr"):
        fastlr.sgd8bit_step(p, g, c, s, lr=-1.0, momentum=0.9)
    with pytest.raises(TypeError, match="float64"):
        fastlr.sgd8bit_step(p.astype(np.float64), g.astype(np.float64), c, s, lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match="master_params"):
        fastlr.sgd8bit_step(p, g, c, s, lr=0.1, momentum=0.9, master_params=p.copy())
    with pytest.raises(ValueError, match="step"):
        fastlr.sgd8bit_step(p, g, c, s, lr=0.1, momentum=0.9, stochastic_rounding=True)
    with pytest.raises(ValueError, match="same array memory"):
        fastlr.sgd8bit_step([p, p], [g, g.copy()], [c, c.copy()], [s, s.copy()], lr=0.1, momentum=0.9)
    assert not p.any() and not c.any() and not s.any()


def test_bad_input_rmsprop8_adagrad8():
    p, g, c, s = _ok()
    with pytest.raises(ValueError, match="grad_avg_codes"):
        fastlr.rmsprop8bit_step(p, g, c, s, lr=0.1, centered=True)
    with pytest.raises(ValueError, match="momentum_buffer_codes"):
        fastlr.rmsprop8bit_step(p, g, c, s, lr=0.1, momentum=0.5)
    with pytest.raises(ValueError, match="alpha"):
        fastlr.rmsprop8bit_step(p, g, c, s, lr=0.1, alpha=-1)
    with pytest.raises(ValueError, match="square_avg_codes"):
        fastlr.rmsprop8bit_step(p, g, None, s, lr=0.1)
    with pytest.raises(TypeError, match="square_avg_scales"):
        fastlr.rmsprop8bit_step(p, g, c, s.astype(np.float64), lr=0.1)
    with pytest.raises(ValueError, match="step"):
        fastlr.adagrad8bit_step(p, g, c, s, lr=0.1, step=None)
    with pytest.raises(ValueError, match="lr_decay"):
        fastlr.adagrad8bit_step(p, g, c, s, lr=0.1, step=1, lr_decay=-1)
    with pytest.raises(ValueError, match="state_sum_scales"):
        fastlr.adagrad8bit_step(p, g, c, np.zeros((2, 1), f32), lr=0.1, step=1)
    ro = c.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastlr.adagrad8bit_step(p, g, ro, s, lr=0.1, step=1)
    assert not p.any() and not c.any() and not s.any()


def test_bad_input_masters():
    bf16 = _bf16()
    p, g = np.zeros(512, bf16), np.zeros(512, bf16)
    c, s = np.zeros(512, np.uint8), np.zeros(2, f32)
    m = np.zeros(512, f32)
    with pytest.raises(TypeError, match="master_params"):
        fastlr.adam8bit_step(p, g, c, s, c.copy(), s.copy(), step=1, lr=1e-3, master_params=m.astype(np.float64))
    with pytest.raises(ValueError, match="master_params"):
        fastlr.adam8bit_step(p, g, c, s, c.copy(), s.copy(), step=1, lr=1e-3, master_params=np.zeros(5, f32))
    with pytest.raises(ValueError, match="variant"):
        fastlr.adam8bit_step(p, g, c, s, c.copy(), s.copy(), step=1, lr=1e-3, master_params=m, variant="torchao")
    with pytest.raises(TypeError, match="grads"):  # float32 grads only with masters
        fastlr.adam8bit_step(p, g.astype(f32), c, s, c.copy(), s.copy(), step=1, lr=1e-3)
    with pytest.raises(ValueError, match="tensor_ids"):
        fastlr.adam8bit_step(p, g, c, s, c.copy(), s.copy(), step=1, lr=1e-3, tensor_ids=[1, 2])
    assert not m.any() and not c.any() and not s.any()


def test_bad_input_bindings():
    p, g, c, s = _ok()
    a = _C.data_ptrs
    args = (0, [512], a([p]), a([g]))
    with pytest.raises(ValueError, match="pair"):
        _C.sgd8(*args, a([c]), 0.1, None, 0, 0.9, None, 0.0, False, 0.0, False, True)
    with pytest.raises(ValueError, match="momentum_buffers are required"):
        _C.sgd8(*args, None, 0.1, None, 0, 0.9, None, 0.0, False, 0.0, False, True)
    with pytest.raises(ValueError, match="masters"):
        _C.sgd8(*args, (a([c]), a([s])), 0.1, None, 0, 0.9, None, 0.0, False, 0.0, False, True, masters=a([p]))
    with pytest.raises(ValueError, match="grads"):
        _C.adagrad8(2, [512], a([p]), a([g]), (a([c]), a([s])), 1.0, 0.1, None, 0.0, 0.0, 1e-10, False,
                    grad_dtype=3)
    with pytest.raises(ValueError, match="block_size"):
        _C.rmsprop8(*args, (a([c]), a([s])), None, None, 0.1, None, 0, 0.99, 1e-8, 0.0, 0.0, None, False, False,
                    False, True, block_size=0)
    with pytest.raises(ValueError, match="float32"):
        _C.adagrad8(1, [512], a([p]), a([g]), (a([c]), a([s])), 1.0, 0.1, None, 0.0, 0.0, 1e-10, False)
    assert not p.any() and not c.any() and not s.any()


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_random_bits_keyed_by_tensor_ids_not_by_the_call(opt):
    """One call over two tensors or one call per tensor: the same bits when the tensor
    ids are the same (fastlr.optim buckets params by dtype; the NumPy face may not)."""
    bf16 = _bf16()
    cfg = dict(lr=1e-3, momentum=0.9)
    rng = np.random.default_rng(8)
    sizes = [5000, 700]
    p0 = [rng.standard_normal(n).astype(bf16) for n in sizes]
    gs = [rng.standard_normal(n).astype(bf16) for n in sizes]
    together, apart = [p.copy() for p in p0], [p.copy() for p in p0]
    st_t = [_new_state(opt, cfg, n, 256) for n in sizes]
    st_a = [_new_state(opt, cfg, n, 256) for n in sizes]
    for step in (1, 2):
        _fused(opt, together, gs, st_t, step, cfg, 256, stochastic_rounding=True, seed=5, tensor_ids=[3, 8])
        for i, tid in enumerate([3, 8]):
            _fused(opt, [apart[i]], [gs[i]], [st_a[i]], step, cfg, 256, stochastic_rounding=True, seed=5,
                   tensor_ids=[tid])
    for a, b in zip(together, apart):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))
    other = [p.copy() for p in p0]
    _fused(opt, other, gs, [_new_state(opt, cfg, n, 256) for n in sizes], 1, cfg, 256, stochastic_rounding=True,
           seed=5, tensor_ids=[8, 3])
    once = [p.copy() for p in p0]
    _fused(opt, once, gs, [_new_state(opt, cfg, n, 256) for n in sizes], 1, cfg, 256, stochastic_rounding=True,
           seed=5, tensor_ids=[3, 8])
    assert not np.array_equal(other[0].view(np.uint16), once[0].view(np.uint16))


@pytest.mark.parametrize("opt", ["rmsprop", "adagrad"])
def test_heavy_tailed_grads_bounded_steps(opt):
    """A few gradients ~1e2, the rest ~1e-4 (zero every third step): the small elements'
    accumulators sink below their blocks' resolution and lose their history, so they step
    as from a fresh start. Each step stays within the float32 rule's own bound (Adagrad
    lr, RMSprop lr/sqrt(1 - alpha): the fresh g² is always in the denominator), never
    lr·g/eps; the README quotes the deviations from float32 measured here."""
    rng = np.random.default_rng(5)
    n, lr, alpha = 4096, 1e-3, 0.99
    p = np.zeros(n, f32)
    ref = p.copy()
    acc32 = np.zeros(n, f32)
    acc8 = (np.zeros(n, np.uint8), np.zeros(n // 256, f32))
    bound = lr / np.sqrt(1 - alpha) if opt == "rmsprop" else lr
    for step in range(1, 61):
        g = (rng.standard_normal(n) * 1e-4).astype(f32)
        big = rng.random(n) < 0.01
        g[big] = (rng.standard_normal(big.sum()) * 1e2).astype(f32)
        if step % 3 == 0:
            g[~big] = 0.0
        before = p.copy()
        if opt == "rmsprop":
            fastlr.rmsprop8bit_step(p, g, *acc8, lr=lr, alpha=alpha, step=step)
            fastlr.rmsprop_step(ref, g, acc32, lr=lr, alpha=alpha, step=step)
        else:
            fastlr.adagrad8bit_step(p, g, *acc8, lr=lr, step=step)
            fastlr.adagrad_step(ref, g, acc32, lr=lr, step=step)
        assert np.abs(p - before).max() <= bound * (1 + 1e-6)
    d = np.abs(p - ref)
    assert np.median(d) < 0.5 * np.median(np.abs(ref))  # measured: 0.28 (both)
    assert d.max() < 0.7 * np.abs(ref).max()  # measured: 0.57 (both)
