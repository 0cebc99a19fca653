"""Non-finite values: NaN/Inf in gradients (and params) behave exactly as torch.optim.

fastlr neither checks for nor masks non-finite values: they propagate through the update
exactly as in torch.optim (foreach=False). Checked here for the NumPy kernels and the
drop-in optimizers, every optimizer and mode: the NaN positions, the infinities and their
signs of every param and state tensor equal torch's after each step, and the finite
values agree to the usual tolerance. With ``torch.amp.GradScaler``, a step whose
gradients hold an inf/NaN (``found_inf``) is skipped: every param, state tensor, step
counter and ``group["lr"]`` is left bit for bit as it was.
"""
import numpy as np
import pytest

import fastlr

from conftest import TORCH_CASES, TORCH_DEFAULT_LR

torch = pytest.importorskip("torch")

STEPS = 4
N = 37  # not a multiple of any vector width


def _grad_patterns(dtype):
    """name -> list of STEPS gradients (numpy), each with a different non-finite layout."""
    rng = np.random.default_rng(0)
    finite = [rng.standard_normal(N).astype(dtype) for _ in range(STEPS)]
    big = np.finfo(dtype).max / 4

    def edit(step, idx, value):
        gs = [g.copy() for g in finite]
        gs[step][idx] = value
        return gs

    all_inf = [g.copy() for g in finite]
    all_inf[1][:] = np.inf
    mixed = [g.copy() for g in finite]
    mixed[0][[0, 5, 36]] = [np.nan, np.inf, -np.inf]
    mixed[2][[1, 6]] = [-np.inf, np.nan]
    return {
        "nan_first_step": edit(0, 3, np.nan),
        "nan_later_step": edit(2, 3, np.nan),
        "pos_inf": edit(1, 7, np.inf),
        "neg_inf": edit(0, 8, -np.inf),
        "all_inf": all_inf,
        "mixed": mixed,
        "overflow_square": edit(1, 9, big),  # finite grad whose square overflows
    }


def _assert_same_nonfinite(ours, theirs, what, rtol):
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(theirs), err_msg=f"{what}: +inf positions")
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs), err_msg=f"{what}: -inf positions")
    fin = np.isfinite(theirs)
    np.testing.assert_allclose(ours[fin], theirs[fin], rtol=rtol, atol=rtol, err_msg=f"{what}: finite values")


TORCH_STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg",
                    "grad_avg", "sum")
RTOL = {np.float32: 2e-5, np.float64: 1e-12}


def _torch_run(name, kwargs, p0, grads, dtype):
    p = torch.nn.Parameter(torch.tensor(p0))
    opt = getattr(torch.optim, name)([p], foreach=False, **kwargs)
    history = []
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        st = {k: v.detach().numpy().copy() for k, v in opt.state[p].items() if k in TORCH_STATE_KEYS}
        history.append((p.detach().numpy().copy(), st))
    return history


# ------------------------------------------------------- drop-in optimizers ---

CASES = [(name, kw) for name, cases in TORCH_CASES.items() for kw in cases]


def _params(patterns):
    """(name, kwargs, dtype, pattern) combinations. Left out: centered RMSprop with a
    square that overflows, where sqrt(inf - inf) is NaN unfused but torch's AVX2 addcmul
    fuses it into an FMA that gives inf (torch's own answer depends on its CPU
    capability; see test_centered_rmsprop_overflow_is_the_unfused_result)."""
    out = []
    for i, (name, kw) in enumerate(CASES):
        for dtype, dname in ((np.float32, "f32"), (np.float64, "f64")):
            for pattern in patterns:
                if pattern == "overflow_square" and kw.get("centered"):
                    continue
                out.append(pytest.param(name, kw, dtype, pattern, id=f"{name}-{i}-{dname}-{pattern}"))
    return out


@pytest.mark.parametrize("name,kwargs,dtype,pattern", _params(list(_grad_patterns(np.float32))))
def test_optim_propagates_like_torch(name, kwargs, dtype, pattern):
    optim = pytest.importorskip("fastlr.optim")
    grads = _grad_patterns(dtype)[pattern]
    p0 = np.random.default_rng(1).standard_normal(N).astype(dtype)
    p0[11] = np.nan  # a NaN param stays NaN (and poisons nothing else)
    p0[12] = np.inf
    expected = _torch_run(name, kwargs, p0, grads, dtype)
    p = torch.nn.Parameter(torch.tensor(p0))
    opt = getattr(optim, name)([p], **kwargs)
    for k, g in enumerate(grads):
        p.grad = torch.tensor(g)
        opt.step()
        want_p, want_state = expected[k]
        _assert_same_nonfinite(p.detach().numpy(), want_p, f"step {k + 1} param", RTOL[dtype])
        for key, want in want_state.items():
            _assert_same_nonfinite(opt.state[p][key].numpy(), want, f"step {k + 1} {key}", RTOL[dtype])


# ------------------------------------------------------------ NumPy kernels ---


def _kernel_call(name, kwargs, dtype):
    """torch kwargs -> (kernel, kernel kwargs, state names -> torch keys, initial sum)."""
    kw = dict(kwargs)
    lr = float(kw.pop("lr", TORCH_DEFAULT_LR[name]))
    if name == "SGD":
        roles = {"momentum_buffers": "momentum_buffer"} if kw.get("momentum") else {}
        return fastlr.sgd_step, {"lr": lr, **kw}, roles, 0.0
    if name in ("Adam", "AdamW"):
        b1, b2 = kw.pop("betas", (0.9, 0.999))
        if name == "AdamW":
            kw.setdefault("weight_decay", 1e-2)
            kw["decoupled_weight_decay"] = True
        roles = {"exp_avgs": "exp_avg", "exp_avg_sqs": "exp_avg_sq"}
        if kw.get("amsgrad"):
            roles["max_exp_avg_sqs"] = "max_exp_avg_sq"
        return fastlr.adam_step, {"lr": lr, "beta1": b1, "beta2": b2, **kw}, roles, 0.0
    if name == "RMSprop":
        roles = {"square_avgs": "square_avg"}
        if kw.get("centered"):
            roles["grad_avgs"] = "grad_avg"
        if kw.get("momentum"):
            roles["momentum_buffers"] = "momentum_buffer"
        return fastlr.rmsprop_step, {"lr": lr, **kw}, roles, 0.0
    init = kw.pop("initial_accumulator_value", 0.0)
    return fastlr.adagrad_step, {"lr": lr, **kw}, {"state_sums": "sum"}, init


@pytest.mark.parametrize("name,kwargs,dtype,pattern",
                         _params(["nan_first_step", "mixed", "all_inf", "overflow_square"]))
def test_numpy_kernels_propagate_like_torch(name, kwargs, dtype, pattern):
    grads = _grad_patterns(dtype)[pattern]
    p0 = np.random.default_rng(1).standard_normal(N).astype(dtype)
    p0[11] = np.nan
    expected = _torch_run(name, kwargs, p0, grads, dtype)
    kernel, kw, roles, init = _kernel_call(name, kwargs, dtype)
    p = p0.copy()
    states = {r: np.full(N, init if r == "state_sums" else 0.0, dtype) for r in roles}
    for k, g in enumerate(grads):
        kernel(p, g.copy(), **states, step=k + 1, **kw)
        want_p, want_state = expected[k]
        _assert_same_nonfinite(p, want_p, f"step {k + 1} param", RTOL[dtype])
        for role, key in roles.items():
            _assert_same_nonfinite(states[role], want_state[key], f"step {k + 1} {key}", RTOL[dtype])


def test_centered_rmsprop_overflow_is_the_unfused_result():
    """square_avg = inf and grad_avg**2 = inf: sqrt(inf - inf) = NaN, as torch computes it
    without FMA (ATEN_CPU_CAPABILITY=default) and as the NumPy reference does; fastlr
    never contracts into FMAs, so every CPU level gives this same answer."""
    from fastlr import _reference as ref

    big = np.float32(np.finfo(np.float32).max / 4)
    arrays = []
    for module in (fastlr, ref):
        p, sq, ga = np.float32([0.5]), np.float32([0.25]), np.float32([0.0])
        module.rmsprop_step(p, np.float32([1.0]), sq, grad_avgs=ga, centered=True, lr=0.01, step=1)
        module.rmsprop_step(p, np.array([big]), sq, grad_avgs=ga, centered=True, lr=0.01, step=2)
        arrays.append((p, sq, ga))
    (p, sq, ga), (rp, rsq, rga) = arrays
    assert np.isnan(p[0]) and np.isnan(rp[0]) and np.isposinf(sq[0]) and np.isposinf(rsq[0])
    assert ga[0] == rga[0]


def test_nan_stays_local():
    """A NaN gradient element poisons only its own element, in every thread's range."""
    n = 1 << 17  # several threads' ranges
    p = np.ones(n, np.float32)
    g = np.full(n, 0.5, np.float32)
    g[[0, n // 2, n - 1]] = np.nan
    m, v = np.zeros_like(p), np.zeros_like(p)
    fastlr.adam_step(p, g, m, v, step=1, lr=0.1)
    bad = np.isnan(p)
    assert bad.sum() == 3 and bad[[0, n // 2, n - 1]].all()
    assert np.isnan(m).sum() == 3 and np.isnan(v).sum() == 3


# --------------------------------------------------------------- GradScaler ---


def _snapshot(opt):
    tensors = []
    for group in opt.param_groups:
        for p in group["params"]:
            tensors.append(p.detach().clone())
            for v in opt.state[p].values():
                if torch.is_tensor(v):
                    tensors.append(v.clone())
    lrs = [(g["lr"], g.get("momentum"), g.get("betas")) for g in opt.param_groups]
    return tensors, lrs


def _same(a, b):
    ta, la = a
    tb, lb = b
    return la == lb and len(ta) == len(tb) and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.view(torch.uint8) if x.dim() else
                                                                 x.reshape(1).view(torch.uint8),
                                                                 y.view(torch.uint8) if y.dim() else
                                                                 y.reshape(1).view(torch.uint8))
        for x, y in zip(ta, tb))


@pytest.mark.parametrize("name,kwargs", [
    ("SGD", {"lr": 0.1, "momentum": 0.9}), ("Adam", {"lr": 1e-2, "amsgrad": True}),
    ("AdamW", {"lr": 1e-2}), ("RMSprop", {"lr": 1e-2, "centered": True, "momentum": 0.5}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01}),
])
@pytest.mark.parametrize("scheduled", [False, True])
def test_grad_scaler_found_inf_skips_step(name, kwargs, scheduled):
    optim = pytest.importorskip("fastlr.optim")
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    ref_model = torch.nn.Linear(8, 3)
    ref_model.load_state_dict(model.state_dict())
    kw = dict(kwargs)
    if scheduled:
        kw["lr"] = fastlr.Exponential(kw["lr"], gamma=0.5)
    opt = getattr(optim, name)(model.parameters(), **kw)
    ref = getattr(torch.optim, name)(ref_model.parameters(), foreach=False, **kwargs)
    ref_sched = torch.optim.lr_scheduler.ExponentialLR(ref, gamma=0.5) if scheduled else None
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    ref_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    x = torch.randn(16, 8)

    def train_step(m, o, s, poison):
        o.zero_grad()
        loss = m(x).square().mean()
        s.scale(loss).backward()
        if poison is not None:
            m.weight.grad[0, 0] = poison
        s.step(o)
        s.update()

    for k, poison in enumerate([None, float("inf"), None, float("nan"), float("-inf"), None]):
        before = _snapshot(opt)
        train_step(model, opt, scaler, poison)
        train_step(ref_model, ref, ref_scaler, poison)
        if ref_sched is not None and poison is None:
            ref_sched.step()  # torch's scheduler must skip too; fastlr's t only counts real steps
        if poison is not None:
            assert _same(before, _snapshot(opt)), f"step {k}: a skipped step modified the optimizer"
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert scaler.get_scale() == ref_scaler.get_scale()
    for p in model.parameters():
        assert torch.isfinite(p).all()
