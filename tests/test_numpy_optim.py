"""fastlr.numpy optimizers: trajectories vs torch.optim, param groups, skipped grads,
state_dict round trips (also from torch), schedules, argument validation."""
import pickle

import numpy as np
import pytest

import fastlr.numpy as FN
from fastlr import _reference as ref

from conftest import torch_cases

STEPS = 30


def _data(dtype, sizes=(1, 17, 100), steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(steps)]
    return params, grads


def _compare(ours, theirs, rtol):
    for a, t in zip(ours, theirs):
        t = t.detach().numpy()
        np.testing.assert_allclose(a, t, rtol=rtol, atol=rtol * max(1.0, float(np.abs(t).max(initial=0))))


def _torch_run(torch, name, kw, params, grads, groups=None, skip=None):
    tparams = [torch.from_numpy(p.copy()) for p in params]
    spec = tparams if groups is None else [{**g, "params": [tparams[i] for i in g["params"]]} for g in groups]
    opt = getattr(torch.optim, name)(spec, foreach=False, **kw)
    for k, gs in enumerate(grads):
        for i, (p, g) in enumerate(zip(tparams, gs)):
            p.grad = None if skip and skip(k, i) else torch.from_numpy(g.copy())
        opt.step()
    return tparams, opt


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-6)], ids=["float64", "float32"])
@pytest.mark.parametrize("name,kw", torch_cases())
def test_matches_torch(torch, name, kw, dtype, rtol):
    params, grads = _data(dtype)
    ours = [p.copy() for p in params]
    opt = getattr(FN, name)(ours, **kw)
    for gs in grads:
        opt.step(gs)
    tparams, topt = _torch_run(torch, name, kw, params, grads)
    _compare(ours, tparams, rtol)
    # Same state keys as torch, same values.
    for i, tp in enumerate(tparams):
        assert set(opt.state[i]) == set(topt.state[tp])
        for key, v in topt.state[tp].items():
            if key == "step":
                assert opt.state[i]["step"] == int(v)
            else:
                _compare([opt.state[i][key]], [v], rtol)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_param_groups_and_skipped_grads(torch, name):
    kw = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    params, grads = _data(np.float64, sizes=(5, 7, 9, 11))
    groups = [{"params": [0, 1], "lr": 0.05}, {"params": [2, 3], "weight_decay": 0.1}]
    skip = lambda k, i: (k + i) % 3 == 0  # noqa: E731 - some params miss some steps
    ours = [p.copy() for p in params]
    opt = getattr(FN, name)([{**g, "params": [ours[i] for i in g["params"]]} for g in groups], **kw)
    for k, gs in enumerate(grads):
        opt.step([None if skip(k, i) else g for i, g in enumerate(gs)])
    tparams, _ = _torch_run(torch, name, kw, params, grads, groups=groups, skip=skip)
    _compare(ours, tparams, 1e-12)


@pytest.mark.parametrize("name,kw", [("SGD", {"momentum": 0.9}), ("Adam", {"amsgrad": True}),
                                     ("RMSprop", {"centered": True, "momentum": 0.5}),
                                     ("Adagrad", {"lr_decay": 0.1})])
def test_state_dict_round_trip(name, kw):
    params, grads = _data(np.float32, steps=20)
    a = [p.copy() for p in params]
    opt_a = getattr(FN, name)(a, **kw)
    for gs in grads[:10]:
        opt_a.step(gs)
    sd = pickle.loads(pickle.dumps(opt_a.state_dict()))
    b = [p.copy() for p in a]
    opt_b = getattr(FN, name)(b, lr=123.0)  # hyper-parameters come from the state_dict
    opt_b.load_state_dict(sd)
    assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    for gs in grads[10:]:
        opt_a.step(gs)
        opt_b.step(gs)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # state_dict arrays are copies
    sd = opt_a.state_dict()
    key = next(k for k, v in sd["state"][0].items() if isinstance(v, np.ndarray))
    sd["state"][0][key][...] = 7
    assert not np.all(opt_a.state[0][key] == 7)


@pytest.mark.parametrize("name,kw", [("SGD", {"momentum": 0.9, "nesterov": True}), ("Adam", {"amsgrad": True}),
                                     ("AdamW", {}), ("RMSprop", {"centered": True, "momentum": 0.5}),
                                     ("Adagrad", {"lr_decay": 0.1})])
def test_loads_torch_state_dict(torch, name, kw):
    params, grads = _data(np.float64, steps=20)
    tparams = [torch.from_numpy(p.copy()) for p in params]
    topt = getattr(torch.optim, name)(tparams, foreach=False, **kw)
    for k, gs in enumerate(grads):
        if k == 10:
            ours = [p.detach().numpy().copy() for p in tparams]
            opt = getattr(FN, name)(ours)
            opt.load_state_dict(topt.state_dict())
        if k >= 10:
            opt.step(gs)
        for p, g in zip(tparams, gs):
            p.grad = torch.from_numpy(g.copy())
        topt.step()
    _compare(ours, tparams, 1e-12)


def test_lr_schedule_matches_torch_scheduler(torch):
    S = pytest.importorskip("fastlr.schedules")
    if not hasattr(S, "StepDecay"):
        pytest.skip("fastlr.schedules has no StepDecay yet")
    params, grads = _data(np.float64, steps=12)
    ours = [p.copy() for p in params]
    opt = FN.SGD(ours, lr=S.StepDecay(0.1, step_size=3, gamma=0.5), momentum=0.9)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["lr_scale"] == 1.0
    tparams = [torch.from_numpy(p.copy()) for p in params]
    topt = torch.optim.SGD(tparams, lr=0.1, momentum=0.9, foreach=False)
    sched = torch.optim.lr_scheduler.StepLR(topt, step_size=3, gamma=0.5)
    for gs in grads:
        opt.step(gs)
        for p, g in zip(tparams, gs):
            p.grad = torch.from_numpy(g.copy())
        topt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-15)
    _compare(ours, tparams, 1e-12)
    assert opt.param_groups[0]["schedule_t"] == 12
    # the schedule and its position survive a state_dict round trip
    opt2 = FN.SGD([p.copy() for p in ours], momentum=0.9)
    opt2.load_state_dict(pickle.loads(pickle.dumps(opt.state_dict())))
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_beta1_schedule():
    S = pytest.importorskip("fastlr.schedules")
    if not hasattr(S, "StepDecay"):
        pytest.skip("fastlr.schedules has no StepDecay yet")
    sched = S.StepDecay(0.9, step_size=2, gamma=0.5)
    params, grads = _data(np.float32, steps=5)
    a, b = [p.copy() for p in params], [p.copy() for p in params]
    opt = FN.Adam(a, betas=(sched, 0.99))
    m, v = [np.zeros_like(x) for x in b], [np.zeros_like(x) for x in b]
    for k, gs in enumerate(grads):
        assert opt.param_groups[0]["betas"][0] == sched(k)
        opt.step(gs)
        ref.adam_step(b, gs, m, v, step=k + 1, lr=1e-3, beta1=sched(k), beta2=0.99)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_flags(name):
    p = np.zeros(3)
    cls = getattr(FN, name)
    cls([p], foreach=True)
    if name != "RMSprop":
        cls([p], fused=True)
    with pytest.raises(NotImplementedError):
        cls([p], differentiable=True)


@pytest.mark.parametrize("name,kw,exc", [
    ("SGD", {"lr": -1.0}, ValueError), ("SGD", {"momentum": -0.1}, ValueError),
    ("SGD", {"nesterov": True}, ValueError), ("SGD", {"momentum": 0.9, "nesterov": True, "dampening": 0.1}, ValueError),
    ("SGD", {"lr": float("nan")}, ValueError), ("SGD", {"lr": "0.1"}, TypeError), ("SGD", {"nesterov": 1}, TypeError),
    ("Adam", {"betas": (1.0, 0.9)}, ValueError), ("Adam", {"betas": (0.9, -0.1)}, ValueError),
    ("Adam", {"betas": 0.9}, TypeError), ("Adam", {"eps": -1e-8}, ValueError), ("AdamW", {"weight_decay": -1.0}, ValueError),
    ("Adam", {"amsgrad": None}, TypeError),
    ("RMSprop", {"alpha": -0.1}, ValueError), ("RMSprop", {"momentum": -0.1}, ValueError),
    ("Adagrad", {"lr_decay": -0.1}, ValueError), ("Adagrad", {"initial_accumulator_value": -1.0}, ValueError),
])
def test_constructor_validation(name, kw, exc):
    with pytest.raises(exc):
        getattr(FN, name)([np.zeros(3)], **kw)


def test_bad_params_and_grads():
    with pytest.raises(ValueError, match="empty"):
        FN.SGD([])
    with pytest.raises(TypeError, match=r"params\[1\]"):
        FN.SGD([np.zeros(2), [1.0]])
    with pytest.raises(TypeError, match="dtype"):
        FN.SGD([np.zeros(2, np.int32)])
    with pytest.raises(ValueError, match="contiguous"):
        FN.SGD([np.zeros((4, 4))[:, 0]])
    ro = np.zeros(3)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        FN.SGD([ro])
    p = np.zeros(4)
    with pytest.raises(ValueError, match="more than once"):
        FN.SGD([p, p])
    with pytest.raises(ValueError, match="more than once"):
        FN.SGD([p, p[1:]])
    a, b = np.ones(3), np.ones(5)
    opt = FN.Adam([a, b], lr=0.1)
    for grads, exc, match in [([np.ones(3)], ValueError, "2 entries|1 entries"),
                              ([np.ones(3), np.ones(4)], ValueError, r"grads\[1\]"),
                              ([np.ones(3), np.ones(5, np.float32)], TypeError, r"grads\[1\]"),
                              ([np.ones(3), "x"], TypeError, r"grads\[1\]"), (3.0, TypeError, "grads")]:
        with pytest.raises(exc, match=match):
            opt.step(grads)
    np.testing.assert_array_equal(a, 1.0)
    np.testing.assert_array_equal(b, 1.0)
    assert opt.state[0] == {} and opt.state[1] == {}
    opt.param_groups[0]["lr"] = -1.0  # edited by hand: validated before any update
    with pytest.raises(ValueError, match="learning rate"):
        opt.step([np.ones(3), np.ones(5)])
    np.testing.assert_array_equal(a, 1.0)
    opt.param_groups[0]["lr"] = 0.1
    opt.step([np.ones(3), None])  # non-contiguous grads are fine: they are only read
    opt.step([np.ones(6)[::2], None])
    assert opt.state[0]["step"] == 2 and opt.state[1] == {}


def test_bad_state_dict_changes_nothing():
    p = np.ones(4)
    opt = FN.Adam([p], amsgrad=True)
    opt.step([np.ones(4)])
    good = opt.state_dict()
    before = pickle.dumps(opt.state_dict())
    bad = [
        ({"state": {}}, TypeError),
        ({**good, "param_groups": []}, ValueError),
        ({**good, "param_groups": [{**good["param_groups"][0], "params": [0, 1]}]}, ValueError),
        ({**good, "state": {0: {**good["state"][0], "exp_avg": np.ones(5)}}}, ValueError),
        ({**good, "state": {0: {k: v for k, v in good["state"][0].items() if k != "max_exp_avg_sq"}}}, ValueError),
        ({**good, "state": {0: {**good["state"][0], "step": -1}}}, ValueError),
        ({**good, "state": {7: good["state"][0]}}, ValueError),
        ({**good, "param_groups": [{**good["param_groups"][0], "lr": -1.0}]}, ValueError),
    ]
    for sd, exc in bad:
        with pytest.raises(exc):
            opt.load_state_dict(sd)
        assert pickle.dumps(opt.state_dict()) == before


def test_a_later_bad_param_changes_nothing():
    """Every param is re-checked before the first group is updated: no group is updated and
    no state is created when a later one is rejected (torch's first-step momentum init
    still happens on the next good step)."""
    a, b = np.ones(3), np.ones(3)
    opt = FN.SGD([{"params": [a]}, {"params": [b]}], lr=0.1, momentum=0.9, dampening=0.5)
    b.setflags(write=False)
    with pytest.raises(ValueError, match=r"params\[1\] is read-only"):
        opt.step([np.ones(3), np.ones(3)])
    np.testing.assert_array_equal(a, 1.0)
    assert opt.state[0] == {}
    b.setflags(write=True)
    opt.step([np.ones(3), np.ones(3)])
    np.testing.assert_array_equal(a, 0.9)  # buf = g on the first update, as torch


def test_big_endian_params_are_rejected():
    with pytest.raises(TypeError, match="byte order"):
        FN.Adam([np.ones(3, ">f4")])


def test_grad_overlapping_a_param_is_read_as_before_the_step():
    buf = np.arange(10.0)
    p, g = buf[1:9], buf[0:8]
    expected = p - 0.1 * g
    FN.SGD([p], lr=0.1).step([g])
    np.testing.assert_array_equal(p, expected)


def test_loads_torch_state_dict_with_tensor_lr(torch):
    t = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    topt = torch.optim.Adam([t], lr=torch.tensor(0.01), betas=(torch.tensor(0.8), torch.tensor(0.99)))
    t.grad = torch.ones(2, dtype=torch.float64)
    topt.step()
    p = t.detach().numpy().copy()
    opt = FN.Adam([p])
    opt.load_state_dict(topt.state_dict())
    assert opt.param_groups[0]["lr"] == float(torch.tensor(0.01))
    assert opt.param_groups[0]["betas"] == (float(torch.tensor(0.8)), float(torch.tensor(0.99)))
    opt.step([np.ones(2)])
    topt.step()
    np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-6)


def test_load_state_dict_refuses_bad_steps_and_unknown_keys():
    p = np.ones(3)
    opt = FN.Adam([p])
    opt.step([np.ones(3)])
    good = opt.state_dict()
    before = pickle.dumps(good)
    for step, exc in ((2**53 + 2, ValueError), (1e300, ValueError), ("5", TypeError), (True, TypeError),
                      (1.5, ValueError)):
        bad = {**good, "state": {0: {**good["state"][0], "step": step}}}
        with pytest.raises(exc, match="step"):
            opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="unexpected key 'foo'"):
        opt.load_state_dict({**good, "state": {0: {**good["state"][0], "foo": np.ones(3)}}})
    sgd = FN.SGD([np.ones(3)], momentum=0.9)
    with pytest.raises(ValueError, match="unexpected key"):
        sgd.load_state_dict({"state": good["state"], "param_groups": sgd.state_dict()["param_groups"]})
    assert pickle.dumps(opt.state_dict()) == before


def test_adamw_grad_that_is_its_param_changes_nothing():
    a, b = np.ones(3), np.ones(3)
    opt = FN.AdamW([{"params": [a]}, {"params": [b]}])
    with pytest.raises(ValueError, match=r"grads\[1\] is the memory of params\[1\]"):
        opt.step([np.ones(3), b])
    np.testing.assert_array_equal(a, 1.0)
    assert opt.state[0] == {}
