"""fastlr.optim with fastlr Schedules: in-kernel lr / momentum / beta1 schedules.

Reference: torch.optim (foreach=False) whose group["lr"] (and momentum / betas[0]) is set
to s(t) by hand before update t, or torch's OneCycleLR(cycle_momentum=True). float64,
rtol = atol = 1e-12 (the schedules themselves equal torch's to ~1 ulp).
"""
import copy
import io
import warnings

import pytest

torch = pytest.importorskip("torch")

import fastlr.optim as fo  # noqa: E402
from fastlr import schedules as S  # noqa: E402

TOL = dict(rtol=1e-12, atol=1e-12)


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64))
            for s in [(4, 3), (7,), (), (1,)]]


def set_grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = 0.5 * p.detach() + torch.randn(p.shape, generator=g, dtype=p.dtype)


def set_momentum(group, key, m):
    if key == "betas":
        group["betas"] = (m, group["betas"][1])
    else:
        group["momentum"] = m


MOMENTUM_KEY = {"SGD": "momentum", "RMSprop": "momentum", "Adam": "betas", "AdamW": "betas"}
BASE = {"SGD": {"momentum": 0.9}, "RMSprop": {"momentum": 0.9, "centered": True},
        "Adam": {}, "AdamW": {}, "Adagrad": {"lr_decay": 0.01}}


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_schedules_match_torch_driven_by_hand(name):
    steps = 30
    lr_s = S.Warmup(S.Cosine(0.05, total_steps=steps), warmup_steps=5)
    mom_s = S.OneCycleMomentum(total_steps=steps) if name in MOMENTUM_KEY else None
    key = MOMENTUM_KEY.get(name)
    kw = dict(BASE[name])
    fkw = dict(kw, lr=lr_s)
    if mom_s is not None:
        if key == "betas":
            fkw["betas"] = (mom_s, 0.999)
        else:
            fkw["momentum"] = mom_s
    fp, tp = make_params(), make_params()
    fopt = getattr(fo, name)(fp, **fkw)
    topt = getattr(torch.optim, name)(tp, foreach=False, **kw)
    g = fopt.param_groups[0]
    assert g["lr_schedule"] is lr_s and g["lr_scale"] == 1.0 and g["schedule_t"] == 0
    for t in range(steps):
        assert g["lr"] == pytest.approx(lr_s(t), rel=1e-15)
        tg = topt.param_groups[0]
        tg["lr"] = lr_s(t)
        if mom_s is not None:
            assert g["momentum_schedule"] is mom_s
            m = g["betas"][0] if key == "betas" else g["momentum"]
            assert m == pytest.approx(mom_s(t), rel=1e-15)
            set_momentum(tg, key, mom_s(t))
        set_grads(fp, t)
        set_grads(tp, t)
        fopt.step()
        topt.step()
        assert g["schedule_t"] == t + 1
    for x, y in zip(fp, tp):
        torch.testing.assert_close(x, y, **TOL)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_one_cycle_matches_torch_one_cycle_lr(name):
    steps, max_lr = 40, 0.05
    fp, tp = make_params(), make_params()
    kw = {"momentum": 0.9} if name == "SGD" else {}
    mom = S.OneCycleMomentum(total_steps=steps)
    fkw = {"momentum": mom} if name == "SGD" else {"betas": (mom, 0.999)}
    fopt = getattr(fo, name)(fp, lr=S.OneCycle(max_lr, total_steps=steps), **fkw)
    topt = getattr(torch.optim, name)(tp, lr=0.01, foreach=False, **kw)
    sched = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=max_lr, total_steps=steps,
                                                cycle_momentum=True)
    key = MOMENTUM_KEY[name]
    for t in range(steps):
        fg, tg = fopt.param_groups[0], topt.param_groups[0]
        assert fg["lr"] == pytest.approx(tg["lr"], rel=1e-13)
        fm = fg["betas"][0] if key == "betas" else fg["momentum"]
        tm = tg["betas"][0] if key == "betas" else tg["momentum"]
        assert fm == pytest.approx(tm, rel=1e-13)
        set_grads(fp, t)
        set_grads(tp, t)
        fopt.step()
        topt.step()
        if t < steps - 1:
            sched.step()
    for x, y in zip(fp, tp):
        torch.testing.assert_close(x, y, **TOL)


def test_external_lr_writer_warns_once_and_schedule_wins():
    s = S.Exponential(0.1, gamma=0.9)
    p = make_params()
    opt = fo.SGD(p, lr=s)
    opt.param_groups[0]["lr"] = 123.0  # e.g. a torch LRScheduler
    set_grads(p, 0)
    before = [x.detach().clone() for x in p]
    with pytest.warns(UserWarning, match="Schedule wins"):
        opt.step()
    for b, x in zip(before, p):  # the update used s(0), not 123
        torch.testing.assert_close(x.detach(), b - 0.1 * x.grad, **TOL)
    assert opt.param_groups[0]["lr"] == pytest.approx(s(1), rel=1e-15)
    opt.param_groups[0]["lr"] = 7.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(s(2), rel=1e-15)


def test_lr_scale_multiplies_the_schedule():
    s = S.StepDecay(0.1, step_size=2, gamma=0.5)
    p = make_params()
    opt = fo.SGD(p, lr=s)
    opt.param_groups[0]["lr_scale"] = 0.25  # what ReduceLROnPlateau does
    set_grads(p, 0)
    before = [x.detach().clone() for x in p]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    for b, x in zip(before, p):
        torch.testing.assert_close(x.detach(), b - 0.025 * x.grad, **TOL)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25 * s(1), rel=1e-15)


def test_schedule_state_survives_state_dict_and_torch_save():
    s = S.OneCycle(0.1, total_steps=20)
    p = make_params()
    opt = fo.Adam(p, lr=s, betas=(S.OneCycleMomentum(20), 0.99))
    for t in range(7):
        set_grads(p, t)
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)  # weights_only: Schedules are registered safe globals
    q = [torch.nn.Parameter(x.detach().clone()) for x in p]
    other = fo.Adam(q, lr=1.0)
    other.load_state_dict(sd)
    g = other.param_groups[0]
    assert g["schedule_t"] == 7 and g["lr_schedule"] == s
    assert g["lr"] == pytest.approx(s(7), rel=1e-15)
    for t in range(7, 12):
        set_grads(p, t)
        set_grads(q, t)
        opt.step()
        other.step()
    for x, y in zip(p, q):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_scheduled_state_dict_loads_into_torch():
    s = S.Cosine(0.05, total_steps=10)
    p, q = make_params(), make_params()
    fopt = fo.SGD(p, lr=s, momentum=0.9)
    for t in range(4):
        set_grads(p, t)
        fopt.step()
    topt = torch.optim.SGD(q, lr=1.0, momentum=0.9, foreach=False)
    topt.load_state_dict(copy.deepcopy(fopt.state_dict()))
    assert topt.param_groups[0]["lr"] == pytest.approx(s(4), rel=1e-15)
    set_grads(q, 4)
    topt.step()  # extra keys are ignored by torch


def test_add_param_group_with_schedule_and_inherited_default():
    s = S.Linear(0.1, 0.01, total_steps=10)
    p = make_params()
    opt = fo.RMSprop(p[:2], lr=s)
    opt.add_param_group({"params": [p[2]]})  # inherits the default Schedule
    opt.add_param_group({"params": [p[3]], "lr": S.Constant(0.003)})
    assert opt.param_groups[1]["lr_schedule"] is s
    assert opt.param_groups[2]["lr"] == pytest.approx(0.003)
    for t in range(3):
        set_grads(p, t)
        opt.step()
    assert [g["schedule_t"] for g in opt.param_groups] == [3, 3, 3]
    assert opt.param_groups[1]["lr"] == pytest.approx(s(3), rel=1e-15)


def test_schedule_with_grad_scaler_skip_and_float_lr_untouched():
    p = make_params()
    opt = fo.Adam(p, lr=0.01)
    assert "schedule_t" not in opt.param_groups[0] and "lr_schedule" not in opt.param_groups[0]
    set_grads(p, 0)
    opt.step()
    assert opt.param_groups[0]["lr"] == 0.01
