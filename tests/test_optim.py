"""fastlr.optim against torch.optim: trajectories, state, state_dict interchange.

Every kwargs set torch's own optim_db lists for SGD/Adam/AdamW/RMSprop/Adagrad on the CPU
(``optim_inputs_func(device="cpu")``) runs 50 steps on a small model — params of shapes
(4, 3), (7,), (), (1,), (2, 3, 5) in two param groups (the second with its own lr), one
param that never has a grad, gradients = 0.5·p + seeded noise — beside torch.optim.X
(foreach=False), float32 and float64. The CUDA-only inputs (capturable, Tensor betas)
also run: fastlr accepts capturable on the CPU, and is compared with torch without it
(torch's capturable path refuses CPU params, which is why optim_db leaves them out).

Tolerances (torch.testing.assert_close, every 10 steps and at the end, params and state):
float64 rtol = atol = 1e-12 (Adam/AdamW with a float32 Tensor lr: 1e-6, because
torch computes lr / bias_correction1 and 1 - lr·weight_decay in the tensor's float32); float32 rtol = atol = 1e-6 (torch's vectorised lerp and
addcdiv round differently in the last bit; 50 steps let that grow to ~1e-7). 16-bit
params: torch steps float32 copies of our 16-bit params and state, its result rounded
to 16 bits must be within 1% (bfloat16) / 0.2% (float16) relative + 1e-3 absolute
(i.e. about one 16-bit ulp) of ours, step by step.
"""
import copy
import io
import re
import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")

import fastlr  # noqa: E402
from conftest import subprocess_kwargs  # noqa: E402
import fastlr.optim as fo  # noqa: E402

try:  # torch's test helpers need expecttest (in our test extra)
    from torch.testing._internal.common_optimizers import optim_db
except ImportError:  # pragma: no cover
    optim_db = None

NAMES = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad")
STEPS = 50
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-6, atol=1e-6)}
SHAPES_G0 = [(4, 3), (7,), (), (1,)]
SHAPES_G1 = [(2, 3, 5), (3,)]  # the last param of group 1 never gets a grad


def _db_cases():
    cases = []
    if optim_db is None:  # pragma: no cover - the same kwargs, kept in conftest
        from conftest import TORCH_CASES

        # (a superset of optim_db's CPU inputs; cases like centered RMSprop with
        # alpha=0.3 cancel in square_avg - grad_avg², so float32 gets rtol 1e-5 there)
        return [pytest.param(n, kw, "conftest", id=f"{n}-conftest-{i}")
                for n, kws in TORCH_CASES.items() for i, kw in enumerate(kws)]
    for info in optim_db:
        name = info.optim_cls.__name__
        if name not in NAMES or not info.optim_cls.__module__.startswith("torch.optim"):
            continue
        cpu = info.optim_inputs_func(device="cpu")
        cpu_descs = {i.desc for i in cpu}
        for inp in cpu:
            cases.append(pytest.param(name, inp.kwargs, False, id=f"{name}-{inp.desc}"))
        for inp in info.optim_inputs_func(device="cuda"):
            if inp.desc not in cpu_descs:  # CUDA-only configs: capturable etc.
                cases.append(pytest.param(name, inp.kwargs, True, id=f"{name}-cuda-config-{inp.desc}"))
    return cases


DB_CASES = _db_cases()


def make_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    g0 = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES_G0]
    g1 = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES_G1]
    return g0, g1


def groups(g0, g1, lr1):
    return [{"params": g0}, {"params": g1, "lr": lr1}]


def set_grads(params, step, skip_last=True):
    g = torch.Generator().manual_seed(1000 + step)
    for i, p in enumerate(params):
        if skip_last and i == len(params) - 1:
            continue
        noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
        p.grad = (0.5 * p.detach() + noise).clone()


def assert_states_equal(fa, ta, pa, pt, tol):
    assert len(fa.state) == len(ta.state)
    for p, q in zip(pa, pt):
        sf, st = fa.state.get(p, {}), ta.state.get(q, {})
        assert sorted(sf) == sorted(st)
        for k in st:
            a, b = sf[k], st[k]
            if isinstance(b, torch.Tensor):
                assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, k
                torch.testing.assert_close(a, b, **tol)
            else:
                assert a == b


def run_pair(name, kwargs, dtype, *, cuda_config=False, steps=STEPS):
    fkw = dict(kwargs)
    tkw = dict(kwargs)
    if cuda_config is True:
        tkw.pop("capturable", None)
    lr1 = 0.5 * float(fkw.get("lr", fo.__dict__[name]([torch.zeros(1)]).defaults["lr"]))
    f0, f1 = make_params(dtype)
    t0, t1 = make_params(dtype)
    fopt = getattr(fo, name)(groups(f0, f1, lr1), **fkw)
    topt = getattr(torch.optim, name)(groups(t0, t1, lr1), foreach=False, **tkw)
    fp, tp = f0 + f1, t0 + t1
    tol = TOL[dtype]
    if dtype == torch.float64 and name in ("Adam", "AdamW") and isinstance(kwargs.get("lr"), torch.Tensor):
        # torch computes lr / bias_correction1 and 1 - lr * weight_decay as tensor ops in
        # the lr tensor's dtype (float32): its float64 trajectory carries float32 rounding
        tol = TOL[torch.float32]
    if cuda_config == "conftest" and dtype == torch.float32:
        tol = dict(rtol=1e-5, atol=1e-5)
    for step in range(steps):
        set_grads(fp, step)
        set_grads(tp, step)
        fopt.step()
        topt.step()
        if step % 10 == 9 or step == steps - 1:
            for a, b in zip(fp, tp):
                torch.testing.assert_close(a, b, **tol)
    assert_states_equal(fopt, topt, fp, tp, tol)
    return fopt, topt, fp, tp


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,kwargs,cuda_config", DB_CASES)
def test_optim_db_trajectory(name, kwargs, cuda_config, dtype):
    run_pair(name, kwargs, dtype, cuda_config=cuda_config)


def test_optim_db_covers_all_classes():
    assert {c.values[0] for c in DB_CASES} == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_state_layout_and_step_type(name):
    fopt, topt, fp, tp = run_pair(name, {}, torch.float32, steps=3)
    for p in fp:
        s = fopt.state.get(p, {})
        if "step" in s:
            assert s["step"].dtype == torch.float32 and s["step"].dim() == 0
            assert s["step"].device.type == "cpu"
            assert float(s["step"]) == (0.0 if p.grad is None else 3.0)
    fsd, tsd = fopt.state_dict(), topt.state_dict()
    for gf, gt in zip(fsd["param_groups"], tsd["param_groups"]):
        gt["foreach"] = None  # the torch side was built with foreach=False
        assert gf == gt and list(gf) == list(gt)
    assert sorted(fsd["state"]) == sorted(tsd["state"])


# ----------------------------------------------------------- state dict interchange ---

INTERCHANGE = {
    "SGD": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    "Adam": {"amsgrad": True, "weight_decay": 0.1},
    "AdamW": {},
    "RMSprop": {"centered": True, "momentum": 0.5},
    "Adagrad": {"lr_decay": 0.1, "initial_accumulator_value": 0.1},
}


@pytest.mark.parametrize("direction", ["torch_to_fastlr", "fastlr_to_torch"])
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_interchange(name, direction):
    kw = INTERCHANGE[name]
    dtype = torch.float64
    # reference: torch all the way
    r0, r1 = make_params(dtype)
    ref = getattr(torch.optim, name)(groups(r0, r1, 0.01), foreach=False, **kw)
    # first half by one library, second half by the other
    a0, a1 = make_params(dtype)
    first_cls, second_cls = (
        (torch.optim, fo) if direction == "torch_to_fastlr" else (fo, torch.optim)
    )
    extra = lambda mod: {"foreach": False} if mod is torch.optim else {}  # noqa: E731
    a = getattr(first_cls, name)(groups(a0, a1, 0.01), **kw, **extra(first_cls))
    for step in range(30):
        for ps, o in ((r0 + r1, ref), (a0 + a1, a)):
            set_grads(ps, step)
            o.step()
        if step == 14:
            sd = copy.deepcopy(a.state_dict())
            a = getattr(second_cls, name)(groups(a0, a1, 0.01), **kw, **extra(second_cls))
            a.load_state_dict(sd)
    for x, y in zip(a0 + a1, r0 + r1):
        torch.testing.assert_close(x, y, **TOL[dtype])
    assert_states_equal(a, ref, a0 + a1, r0 + r1, TOL[dtype])


@pytest.mark.parametrize("name", NAMES)
def test_torch_save_round_trip(name):
    fopt, _, fp, _ = run_pair(name, INTERCHANGE[name], torch.float64, steps=5)
    buf = io.BytesIO()
    torch.save(fopt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)  # weights_only=True by default
    f0, f1 = make_params(torch.float64)
    other = getattr(fo, name)(groups(f0, f1, 0.5), **INTERCHANGE[name])
    other.load_state_dict(sd)
    with torch.no_grad():
        for x, y in zip(f0 + f1, fp):
            x.copy_(y)
    for step in range(5, 10):
        set_grads(fp, step)
        set_grads(f0 + f1, step)
        fopt.step()
        other.step()
    for x, y in zip(f0 + f1, fp):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_pickle_whole_optimizer():
    fopt, _, fp, _ = run_pair("Adam", {}, torch.float64, steps=3)
    buf = io.BytesIO()
    torch.save(fopt, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is fo.Adam
    assert loaded.state_dict()["param_groups"] == fopt.state_dict()["param_groups"]


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_old_pickle_state_is_upgraded_as_torch_does(name):
    """An optimizer pickled by an older torch: group keys it lacks get torch's defaults,
    a plain-number step becomes torch's step tensor."""
    upgraded = []
    for cls in (getattr(torch.optim, name), getattr(fo, name)):
        p = torch.nn.Parameter(torch.ones(3))
        opt = cls([p], lr=0.1, **({"momentum": 0.9} if name == "SGD" else {}))
        p.grad = torch.ones(3)
        opt.step()
        state = opt.__getstate__()
        for g in state["param_groups"]:
            for key in ("maximize", "foreach", "differentiable", "fused", "capturable", "amsgrad",
                        "decoupled_weight_decay", "nesterov", "centered", "momentum"):
                g.pop(key, None)
        s = state["state"][p]
        if "step" in s:
            s["step"] = 1.0
        opt.__setstate__(state)
        upgraded.append((opt.param_groups[0], opt.state[p].get("step")))
    (want, want_step), (got, got_step) = upgraded
    assert {k: got[k] for k in want if k != "params"} == {k: v for k, v in want.items() if k != "params"}
    if want_step is not None:
        assert torch.is_tensor(got_step) and float(got_step) == float(want_step) == 1.0
        assert (got_step.dtype, got_step.device) == (want_step.dtype, want_step.device)


# ------------------------------------------------------------ torch LR schedulers ---


def _train(opt, params, steps, scheduler=None):
    for step in range(steps):
        set_grads(params, step)
        opt.step()
        if scheduler is not None:
            scheduler.step()


@pytest.mark.parametrize(
    "name,kw", [("SGD", {"momentum": 0.9}), ("Adam", {}), ("RMSprop", {"momentum": 0.5})]
)
@pytest.mark.parametrize("sched", ["StepLR", "OneCycleLR"])
def test_torch_lr_scheduler_drives_fastlr(name, kw, sched):
    def make(mod):
        p0, p1 = make_params(torch.float64)
        extra = {"foreach": False} if mod is torch.optim else {}
        opt = getattr(mod, name)(groups(p0, p1, 0.01), lr=0.02, **kw, **extra)
        if sched == "StepLR":
            s = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
        else:
            s = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.05, 0.02], total_steps=40)
        return opt, s, p0 + p1

    fopt, fs, fp = make(fo)
    topt, ts, tp = make(torch.optim)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "scheduler.step() before optimizer.step()" etc.
        _train(fopt, fp, 40, fs)
    _train(topt, tp, 40, ts)
    for x, y in zip(fp, tp):
        torch.testing.assert_close(x, y, **TOL[torch.float64])
    for gf, gt in zip(fopt.param_groups, topt.param_groups):
        assert gf["lr"] == gt["lr"]


# --------------------------------------------------------------------- GradScaler ---


@pytest.mark.parametrize("name", NAMES)
def test_grad_scaler(name):
    def make(mod):
        p0, p1 = make_params(torch.float32)
        extra = {"foreach": False} if mod is torch.optim else {}
        opt = getattr(mod, name)(groups(p0, p1, 0.01), **extra)
        sc = torch.amp.GradScaler("cpu", init_scale=1024.0)
        sc.scale(torch.ones(()))  # creates the scale tensor
        return opt, p0 + p1, sc

    fopt, fp, fsc = make(fo)
    topt, tp, tsc = make(torch.optim)
    for step in range(12):
        for opt, ps, sc in ((fopt, fp, fsc), (topt, tp, tsc)):
            set_grads(ps, step)
            unscaled = [None if p.grad is None else p.grad.clone() for p in ps]
            for p in ps:
                if p.grad is not None:
                    p.grad.mul_(sc.get_scale())
            if step in (4, 9):
                ps[1].grad[0] = float("inf")
            before = [p.detach().clone() for p in ps]
            state_before = copy.deepcopy(opt.state_dict())
            sc.step(opt)
            sc.update()
            if step not in (4, 9):  # the grads are left unscaled, as torch leaves them
                for u, p in zip(unscaled, ps):
                    assert u is None or torch.equal(p.grad, u)
            if step in (4, 9):  # skipped: nothing moved
                for b, p in zip(before, ps):
                    assert torch.equal(b, p)
                after = opt.state_dict()
                for k, v in state_before["state"].items():
                    for kk, vv in v.items():
                        assert torch.equal(vv, after["state"][k][kk])
        for x, y in zip(fp, tp):
            torch.testing.assert_close(x, y, **TOL[torch.float32])
    assert fsc.get_scale() == tsc.get_scale()


def test_grad_scaler_skip_keeps_schedule_position():
    sched = _schedules().OneCycle(0.1, total_steps=20)
    p0, p1 = make_params(torch.float32)
    opt = fo.SGD(groups(p0, p1, 0.01), lr=sched, momentum=0.9)
    sc = torch.amp.GradScaler("cpu", init_scale=8.0)
    sc.scale(torch.ones(()))
    for step in range(6):
        set_grads(p0 + p1, step)
        if step == 3:
            p0[0].grad[0, 0] = float("nan")
        t_before = opt.param_groups[0]["schedule_t"]
        sc.step(opt)
        sc.update()
        expect = t_before if step == 3 else t_before + 1
        assert opt.param_groups[0]["schedule_t"] == expect
    assert opt.param_groups[0]["schedule_t"] == 5
    assert opt.param_groups[0]["lr"] == pytest.approx(sched(5), rel=1e-15)


# -------------------------------------------------------------------------- errors ---


def _error_cases():
    cases = []
    if optim_db is None:  # pragma: no cover
        return [pytest.param(None, None, marks=pytest.mark.skip(reason="needs expecttest"))]
    for info in optim_db:
        name = info.optim_cls.__name__
        if name not in NAMES or not info.optim_cls.__module__.startswith("torch.optim"):
            continue
        for i, err in enumerate(info.optim_error_inputs_func(device="cpu", dtype=torch.float32)):
            cases.append(pytest.param(name, err, id=f"{name}-{err.optimizer_error_input.desc}"))
    return cases


@pytest.mark.parametrize("name,err", _error_cases())
def test_optim_db_error_inputs(name, err):
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum

    inp = err.optimizer_error_input
    params = inp.params if inp.params is not None else [torch.nn.Parameter(torch.randn(2))]
    cls = getattr(fo, name)
    if err.error_on == OptimizerErrorEnum.STEP_ERROR:  # pragma: no cover - none for these on CPU
        opt = cls(params, **inp.kwargs)
        with pytest.raises(err.error_type, match=err.error_regex):
            opt.step()
    elif issubclass(err.error_type, Warning):
        with pytest.warns(err.error_type, match=err.error_regex):
            cls(params, **inp.kwargs)
    else:
        with pytest.raises(err.error_type, match=err.error_regex):
            cls(params, **inp.kwargs)


@pytest.mark.parametrize(
    "name,kw,msg",
    [
        ("SGD", {"lr": -0.1}, "Invalid learning rate: -0.1"),
        ("Adam", {"betas": (0.9, 1.0)}, "Invalid beta parameter at index 1: 1.0"),
        ("AdamW", {"betas": (-0.1, 0.9)}, "Invalid beta parameter at index 0: -0.1"),
        ("RMSprop", {"alpha": -1.0}, "Invalid alpha value: -1.0"),
        ("Adagrad", {"eps": -1.0}, "Invalid epsilon value: -1.0"),
        ("SGD", {"nesterov": True}, "Nesterov momentum requires a momentum and zero dampening"),
    ],
)
def test_bad_hyperparameters_raise_like_torch(name, kw, msg):
    p = [torch.nn.Parameter(torch.randn(2))]
    with pytest.raises(ValueError, match=re.escape(msg)):
        getattr(torch.optim, name)(p, **kw)
    with pytest.raises(ValueError, match=re.escape(msg)):
        getattr(fo, name)(p, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_differentiable_not_implemented(name):
    with pytest.raises(NotImplementedError):
        getattr(fo, name)([torch.nn.Parameter(torch.randn(2))], differentiable=True)
    with pytest.raises(ValueError, match="Invalid learning rate"):  # torch's checks come first
        getattr(fo, name)([torch.nn.Parameter(torch.randn(2))], lr=-1.0, differentiable=True)
    opt = getattr(fo, name)([torch.nn.Parameter(torch.randn(2))])
    with pytest.raises(NotImplementedError):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "differentiable": True})
    assert len(opt.param_groups) == 1  # the refused group is not left behind


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_beta1_schedule_range_checked_like_torch(name):
    from fastlr.schedules import Constant, Cyclic, OneCycleMomentum

    p = [torch.nn.Parameter(torch.randn(2))]
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0: 1.5"):
        getattr(fo, name)(p, betas=(Constant(1.5), 0.999))
    opt = getattr(fo, name)(p, betas=(OneCycleMomentum(100), 0.999))
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "betas": (Cyclic(0.9, 1.0, 5), 0.99)})
    assert len(opt.param_groups) == 1


def test_nesterov_with_a_zero_momentum_schedule_raises_like_torch():
    from fastlr.schedules import Constant

    with pytest.raises(ValueError, match="Nesterov"):
        fo.SGD([torch.nn.Parameter(torch.randn(2))], lr=0.1, momentum=Constant(0.0), nesterov=True)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop"])
def test_sparse_grad_raises_like_torch(name):
    msgs = []
    for mod in (torch.optim, fo):
        p = torch.nn.Parameter(torch.randn(5, 2))
        p.grad = torch.randn(5, 2).to_sparse()
        with pytest.raises(RuntimeError) as e:
            getattr(mod, name)([p]).step()
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]


@pytest.mark.parametrize("name,kw", [("SGD", {"lr": 0.1}), ("SGD", {"lr": 0.1, "momentum": 0.9}),
                                     ("Adagrad", {"lr": 0.1})])
def test_sparse_grad_like_torch(name, kw):
    results = []
    for mod in (torch.optim, fo):
        emb = torch.nn.Embedding(10, 3, sparse=True)
        dense = torch.nn.Parameter(torch.ones(3))
        with torch.no_grad():
            emb.weight.copy_(torch.arange(30.0).reshape(10, 3) / 30)
        opt = getattr(mod, name)([emb.weight, dense], **kw)
        for step in range(4):
            opt.zero_grad()
            loss = (emb(torch.tensor([step, 2, 7])) * dense).sum()
            loss.backward()
            opt.step()
        results.append((emb.weight.detach().clone(), dense.detach().clone()))
        results[-1] += (sorted(opt.state_dict()["state"]),)  # SGD without momentum: no state
    for a, b in zip(*results):
        if isinstance(a, list):
            assert a == b
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_mismatched_state_shape_raises():
    p = torch.nn.Parameter(torch.randn(3))
    opt = fo.Adam([p])
    p.grad = torch.randn(3)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = torch.zeros(4)
    opt2 = fo.Adam([p])
    with pytest.raises(ValueError, match="exp_avg"):  # refused at load (test_checkpoint_errors.py)
        opt2.load_state_dict(sd)
    opt2.step()
    opt2.state[p]["exp_avg"] = torch.zeros(4)  # replaced by hand: caught at the step
    with pytest.raises(RuntimeError, match="exp_avg"):
        opt2.step()
    topt = torch.optim.Adam([p], foreach=False)
    topt.load_state_dict(sd)
    with pytest.raises(RuntimeError):
        topt.step()


def test_unsupported_dtype_raises():
    p = torch.zeros(3, dtype=torch.int32)
    p.grad = torch.zeros(3, dtype=torch.int32)
    with pytest.raises(TypeError, match="int32"):
        fo.SGD([p], lr=0.1).step()


# ------------------------------------------------------- layouts, dtypes, complex ---


def _layout_params(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(6, 8, generator=g, dtype=dtype)
    return [
        torch.randn(5, 4, generator=g, dtype=dtype).t().detach().requires_grad_(),  # transposed
        base[:, ::2].detach().requires_grad_(),  # gaps: not dense
        torch.randn(2, 3, 4, 5, generator=g, dtype=dtype)
        .contiguous(memory_format=torch.channels_last).requires_grad_(),
        torch.randn(9, generator=g, dtype=dtype)[::3].detach().requires_grad_(),
        torch.randn(7, generator=g, dtype=dtype).requires_grad_(),
    ]


@pytest.mark.parametrize("name,kw", [("SGD", {"momentum": 0.9}), ("Adam", {"amsgrad": True}),
                                     ("RMSprop", {"centered": True, "momentum": 0.3}),
                                     ("Adagrad", {})])
@pytest.mark.parametrize("dense_only", [False, True], ids=["with-gaps", "dense-only"])
def test_non_contiguous_params(name, kw, dense_only):
    """dense-only: every param is walked flat in the kernel's one-call path (no param with
    gaps sends the group through temporaries), so grads laid out unlike their param must
    still be matched element by element."""
    keep = [0, 2, 4] if dense_only else [0, 1, 2, 3, 4]
    fp = [_layout_params(torch.float64, 3)[i] for i in keep]
    tp = [_layout_params(torch.float64, 3)[i] for i in keep]
    fopt = getattr(fo, name)(fp, lr=0.01, **kw)
    topt = getattr(torch.optim, name)(tp, lr=0.01, foreach=False, **kw)
    for step in range(15):
        for ps in (fp, tp):
            g = torch.Generator().manual_seed(step)
            for i, p in enumerate(ps):
                grad = torch.randn(p.shape, generator=g, dtype=p.dtype)  # contiguous
                if step % 2 and p.dim() == 2:
                    grad = grad.t().contiguous().t()  # transposed, like the transposed param
                p.grad = grad
        fopt.step()
        topt.step()
    for x, y in zip(fp, tp):
        assert x.stride() == y.stride()
        torch.testing.assert_close(x, y, **TOL[torch.float64])
    assert_states_equal(fopt, topt, fp, tp, TOL[torch.float64])


@pytest.mark.parametrize("name,kw", [("SGD", {"momentum": 0.9, "weight_decay": 0.1}),
                                     ("Adam", {"weight_decay": 0.1}), ("AdamW", {"amsgrad": True}),
                                     ("RMSprop", {"centered": True, "momentum": 0.3}),
                                     ("Adagrad", {"weight_decay": 0.1})])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_params(name, kw, dtype):
    def make():
        g = torch.Generator().manual_seed(5)
        return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in [(3, 2), (4,)]] + [
            torch.nn.Parameter(torch.randn(3, generator=g))
        ]

    fp, tp = make(), make()
    fopt = getattr(fo, name)(fp, lr=0.01, **kw)
    topt = getattr(torch.optim, name)(tp, lr=0.01, foreach=False, **kw)
    for step in range(20):
        for ps in (fp, tp):
            g = torch.Generator().manual_seed(step)
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        fopt.step()
        topt.step()
    for x, y in zip(fp, tp):
        torch.testing.assert_close(x, y, **TOL[torch.float64 if x.dtype == torch.complex128 else torch.float32])
    assert_states_equal(fopt, topt, fp, tp, TOL[torch.float32])


@pytest.mark.parametrize("name,kw", [("SGD", {"momentum": 0.9, "weight_decay": 0.1}),
                                     ("Adam", {"weight_decay": 0.1, "eps": 1e-3}),
                                     ("AdamW", {"amsgrad": True, "eps": 1e-3}),
                                     ("RMSprop", {"centered": True, "momentum": 0.3, "eps": 1e-3}),
                                     ("Adagrad", {"weight_decay": 0.1, "eps": 1e-3})])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_low_precision_vs_float32_torch(name, kw, dtype):
    """Each step: torch updates float32 copies of our 16-bit params/state; rounded to 16
    bits its result must be about one 16-bit ulp from ours."""
    tol = dict(rtol=1e-2, atol=1e-3) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=1e-3)
    g = torch.Generator().manual_seed(0)
    fp = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in [(8, 5), (3,), ()]]
    tp = [torch.nn.Parameter(p.detach().float().clone()) for p in fp]
    fopt = getattr(fo, name)(fp, lr=0.01, **kw)
    topt = getattr(torch.optim, name)(tp, lr=0.01, foreach=False, **kw)
    for step in range(10):
        g = torch.Generator().manual_seed(step)
        for p, q in zip(fp, tp):
            grad = torch.randn(p.shape, generator=g).to(dtype)
            p.grad = grad
            q.grad = grad.float()
        if step > 0:  # feed torch our 16-bit state
            with torch.no_grad():
                for p, q in zip(fp, tp):
                    q.copy_(p)
                    for k, v in fopt.state[p].items():
                        topt.state[q][k].copy_(v)
        fopt.step()
        topt.step()
        for p, q in zip(fp, tp):
            assert p.dtype == dtype
            torch.testing.assert_close(p.float(), q.to(dtype).float(), **tol)
    for p in fp:
        for k, v in fopt.state[p].items():
            if k != "step":
                assert v.dtype == dtype


def test_mixed_dtypes_in_one_group():
    def make():
        g = torch.Generator().manual_seed(1)
        return [torch.nn.Parameter(torch.randn(4, generator=g, dtype=d))
                for d in (torch.float32, torch.float64, torch.float32, torch.float64)]

    fp, tp = make(), make()
    fopt = fo.Adam(fp, lr=0.01)
    topt = torch.optim.Adam(tp, lr=0.01, foreach=False)
    for step in range(10):
        set_grads(fp, step, skip_last=False)
        set_grads(tp, step, skip_last=False)
        fopt.step()
        topt.step()
    for x, y in zip(fp, tp):
        torch.testing.assert_close(x, y, **TOL[x.dtype])


@pytest.mark.parametrize("name", ["Adam", "Adagrad", "RMSprop", "SGD"])
def test_intermittent_grads(name):
    """Params that miss steps have smaller step counts: bias corrections per param."""
    fp = make_params(torch.float64)[0]
    tp = make_params(torch.float64)[0]
    kw = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    fopt = getattr(fo, name)(fp, lr=0.01, **kw)
    topt = getattr(torch.optim, name)(tp, lr=0.01, foreach=False, **kw)
    for step in range(12):
        for ps in (fp, tp):
            set_grads(ps, step, skip_last=False)
            if step % 3 == 1:
                ps[0].grad = None
            if step % 4 == 2:
                ps[2].grad = None
        fopt.step()
        topt.step()
    for x, y in zip(fp, tp):
        torch.testing.assert_close(x, y, **TOL[torch.float64])
    assert_states_equal(fopt, topt, fp, tp, TOL[torch.float64])


def test_param_data_swapped_and_state_replaced():
    fp = make_params(torch.float64)[0]
    tp = make_params(torch.float64)[0]
    fopt, topt = fo.Adam(fp, lr=0.01), torch.optim.Adam(tp, lr=0.01, foreach=False)
    for step in range(6):
        if step == 3:
            for ps in (fp, tp):
                ps[0].data = ps[0].data.clone() * 2  # new storage
            for opt, ps in ((fopt, fp), (topt, tp)):
                opt.state[ps[1]]["exp_avg"] = opt.state[ps[1]]["exp_avg"].clone() + 1
                opt.state[ps[2]] = {k: v.clone() for k, v in opt.state[ps[2]].items()}
        set_grads(fp, step)
        set_grads(tp, step)
        fopt.step()
        topt.step()
    for x, y in zip(fp, tp):
        torch.testing.assert_close(x, y, **TOL[torch.float64])


def test_closure_zero_grad_and_hooks():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = fo.SGD([w], lr=0.1)
    calls = []
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(5.0)
    torch.testing.assert_close(w.detach(), torch.tensor([0.8, -1.6]))
    assert calls == ["post"]
    opt.zero_grad()
    assert w.grad is None


def test_add_param_group():
    fp, extra = make_params(torch.float64)
    tp, textra = make_params(torch.float64)
    fopt, topt = fo.RMSprop(fp, lr=0.01), torch.optim.RMSprop(tp, lr=0.01, foreach=False)
    for step in range(8):
        if step == 3:
            fopt.add_param_group({"params": extra, "lr": 0.003, "momentum": 0.5})
            topt.add_param_group({"params": textra, "lr": 0.003, "momentum": 0.5})
        set_grads(fp + extra, step)
        set_grads(tp + textra, step)
        fopt.step()
        topt.step()
    for x, y in zip(fp + extra, tp + textra):
        torch.testing.assert_close(x, y, **TOL[torch.float64])


# ------------------------------------------------------------------ import rules ---


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          **subprocess_kwargs())


def test_import_fastlr_does_not_import_torch():
    r = _run("import sys, fastlr; from fastlr import *; assert 'torch' not in sys.modules, 'torch imported'\n"
             "assert fastlr.optim.Adam.__module__ == 'fastlr.optim.adam'  # loaded on first use")
    assert r.returncode == 0, r.stderr


def test_import_optim_without_torch_says_how_to_install():
    r = _run("import sys; sys.modules['torch'] = None\nimport fastlr.optim")
    assert r.returncode != 0
    assert 'pip install torch (or, in the fastlr checkout, pip install ".[torch]")' in r.stderr


# ---------------------------------------------------------------------- schedules ---


def _schedules():
    from fastlr import schedules

    return schedules


# --------------------------------------------------------------------------- CUDA ---


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_params_match_torch(name):
    """GPU params: fastlr's CUDA kernels when built, else torch's fused (RMSprop,
    Adagrad: foreach) code with a one-time warning; either way torch's results."""
    kw = INTERCHANGE[name]
    tkw = {"foreach": True} if name in ("RMSprop", "Adagrad") else {"fused": True}

    def make():
        g = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(s, generator=g).cuda()) for s in [(4, 3), (7,), (1,)]]

    fp, tp = make(), make()
    sched = _schedules().Cosine(0.01, total_steps=20)
    fopt = getattr(fo, name)(fp, lr=sched, **kw)
    topt = getattr(torch.optim, name)(tp, lr=0.01, **kw, **tkw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the one-time fallback warning
        for step in range(10):
            topt.param_groups[0]["lr"] = sched(step)
            for ps in (fp, tp):
                g = torch.Generator().manual_seed(step)
                for p in ps:
                    p.grad = torch.randn(p.shape, generator=g).cuda()
            fopt.step()
            topt.step()
    for x, y in zip(fp, tp):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


# ------------------------------------------------- what the cached plan must notice ---


@pytest.mark.parametrize("name", NAMES)
def test_grad_unlike_its_param_raises_instead_of_reading_past_it(name):
    p = torch.nn.Parameter(torch.zeros(1000))
    opt = getattr(fo, name)([p], lr=0.1)
    p.grad = torch.ones(1000)
    opt.step()
    p.grad.data = torch.ones(10)  # the same grad object, now smaller
    with pytest.raises(RuntimeError, match="grad of params"):
        opt.step()
    p.grad = torch.ones(1000)
    p.data = torch.zeros(200_000)  # the param grew (a vocabulary resize), its grad did not
    with pytest.raises(RuntimeError, match="grad of params"):
        opt.step()


@pytest.mark.parametrize("name", ["Adam", "RMSprop", "Adagrad", "SGD"])
def test_state_whose_storage_moved_is_followed(name):
    """share_memory_() (A3C's shared optimizers) and `t.data = t.data.clone()` (state moved
    between devices) keep the state tensor object but give it new memory."""
    kw = {"momentum": 0.9} if name == "SGD" else {}
    p = torch.nn.Parameter(torch.randn(300, dtype=torch.float64))
    q = torch.nn.Parameter(p.detach().clone())
    fopt = getattr(fo, name)([p], lr=0.01, **kw)
    topt = getattr(torch.optim, name)([q], lr=0.01, foreach=False, **kw)
    for step in range(6):
        g = torch.randn(300, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
        p.grad, q.grad = g.clone(), g.clone()
        fopt.step()
        topt.step()
        for v in fopt.state[p].values():
            if torch.is_tensor(v) and v.dim():
                if step == 1:
                    v.share_memory_()
                elif step == 3:
                    v.data = v.data.clone()
    torch.testing.assert_close(p, q, **TOL[torch.float64])


@pytest.mark.parametrize("name", NAMES)
def test_lazily_conjugated_complex_grads(name):
    p = torch.nn.Parameter(torch.randn(6, dtype=torch.complex128))
    q = torch.nn.Parameter(p.detach().clone())
    fopt = getattr(fo, name)([p], lr=0.1)
    topt = getattr(torch.optim, name)([q], lr=0.1, foreach=False)
    for step in range(4):
        g = torch.randn(6, dtype=torch.complex128, generator=torch.Generator().manual_seed(step))
        p.grad = g.conj() if step % 2 else torch._neg_view(g)  # lazy: memory holds g
        assert p.grad.is_conj() or p.grad.is_neg()
        q.grad = p.grad.resolve_conj().resolve_neg()
        fopt.step()
        topt.step()
    torch.testing.assert_close(p, q, **TOL[torch.float64])


def test_step_bumps_the_params_version_for_autograd():
    w = torch.nn.Parameter(torch.randn(3))
    x = torch.randn(3, requires_grad=True)
    opt = fo.SGD([w], lr=0.1)
    w.grad = torch.ones(3)
    out = (w * x).sum()  # saves w for backward
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


@pytest.mark.parametrize("name", NAMES)
def test_a_param_listed_twice_in_a_group_is_updated_once(name):
    """torch warns (optim_db's error input) and updates such a param twice per step; fastlr
    warns the same and updates it once: one kernel call never writes memory twice."""
    p = torch.nn.Parameter(torch.randn(5000, dtype=torch.float64))
    q = torch.nn.Parameter(p.detach().clone())
    with pytest.warns(UserWarning, match="duplicate"):
        fopt = getattr(fo, name)([p, p], lr=0.01)
    topt = getattr(torch.optim, name)([q], lr=0.01, foreach=False)
    for step in range(3):
        g = torch.randn(5000, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        p.grad, q.grad = g.clone(), g.clone()
        fopt.step()
        topt.step()
    torch.testing.assert_close(p, q, **TOL[torch.float64])


@pytest.mark.parametrize("name,flag", [("SGD", "maximize"), ("Adam", "amsgrad"), ("RMSprop", "centered"),
                                       ("Adagrad", "maximize")])
def test_truthy_flags_work_as_in_torch(name, flag):
    p, q = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    fopt = getattr(fo, name)([p], lr=0.1, **{flag: (0.9, 0.99)})
    topt = getattr(torch.optim, name)([q], lr=0.1, foreach=False, **{flag: True})
    for _ in range(3):
        p.grad, q.grad = torch.full((4,), 0.5), torch.full((4,), 0.5)
        fopt.step()
        topt.step()
    torch.testing.assert_close(p, q)
