"""fastlr.ReduceLROnPlateau against torch.optim.lr_scheduler.ReduceLROnPlateau."""
import itertools
import math
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastlr._plateau import ReduceLROnPlateau  # noqa: E402
from fastlr.schedules import Constant, Cosine  # noqa: E402


def _metrics(kind, n, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    if kind == "decreasing":  # improving, then noisy plateaus
        m = 2.0 * np.exp(-t / 15.0) + 0.3 + 0.05 * rng.standard_normal(n)
    elif kind == "flat":
        m = 1.0 + 0.01 * rng.standard_normal(n)
    elif kind == "walk":
        m = 5.0 + np.cumsum(0.1 * rng.standard_normal(n))
    elif kind == "steps":  # exact ties: equal values are never an improvement
        m = np.repeat(rng.integers(1, 5, size=n // 4 + 1), 4)[:n].astype(float)
    else:
        raise AssertionError(kind)
    return [float(v) for v in m]


def _optimizers(lrs=(1.0, 0.3), tensor_lr=False):
    ps = [torch.nn.Parameter(torch.zeros(2)) for _ in lrs]
    groups = [{"params": [p], "lr": torch.tensor(lr) if tensor_lr else lr} for p, lr in zip(ps, lrs)]
    return torch.optim.SGD(groups, lr=0.1)


def _lrs(opt):
    return [float(g["lr"]) for g in opt.param_groups]


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode", ["rel", "abs"])
@pytest.mark.parametrize("kind", ["decreasing", "flat", "walk", "steps"])
def test_matches_torch_every_step(mode, threshold_mode, kind):
    configs = itertools.product(
        [0, 1, 3],  # patience
        [0, 2],  # cooldown
        [0, [0.05, 0.001]],  # min_lr
        [1e-4, 0.05],  # threshold
    )
    total_reductions = 0
    for k, (patience, cooldown, min_lr, threshold) in enumerate(configs):
        factor = (0.5, 0.1)[k % 2]
        metrics = _metrics(kind, 80, seed=k)
        if mode == "max":
            metrics = [-m for m in metrics]
        kw = dict(mode=mode, factor=factor, patience=patience, threshold=threshold,
                  threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr)
        o1, o2 = _optimizers(), _optimizers()
        ours = ReduceLROnPlateau(o1, **kw)
        ref = torch.optim.lr_scheduler.ReduceLROnPlateau(o2, **kw)
        assert ours.get_last_lr() == ref.get_last_lr()
        n_reductions = 0
        for i, m in enumerate(metrics):
            before = _lrs(o1)
            ours.step(m)
            ref.step(m)
            n_reductions += _lrs(o1) != before
            assert _lrs(o1) == _lrs(o2), (kw, i)
            assert ours.get_last_lr() == ref.get_last_lr()
            assert (ours.best, ours.num_bad_epochs, ours.cooldown_counter, ours.last_epoch) == (
                ref.best, ref.num_bad_epochs, ref.cooldown_counter, ref.last_epoch)
        total_reductions += n_reductions
    assert total_reductions > 0  # the sequences exercise reductions, cooldowns and floors


def test_flat_metric_timing():
    # REFERENCE §2.7 [verified]: torch reduces at epoch patience+1, then every patience+cooldown+1.
    opt = _optimizers(lrs=(1.0,))
    s = ReduceLROnPlateau(opt, factor=0.5, patience=2, cooldown=1)
    seen = []
    for epoch in range(1, 13):
        s.step(1.0)
        seen.append(s.get_last_lr()[0])
    reductions = [e for e in range(1, 12) if seen[e] != seen[e - 1]]
    assert seen[0] == 1.0 and seen[3] == 0.5  # first at epoch 4 (index 3)
    assert [r + 1 for r in reductions] == [4, 8, 12]  # then every patience + cooldown + 1 = 4


def test_tensor_lr_filled_in_place():
    o1, o2 = _optimizers(tensor_lr=True), _optimizers(tensor_lr=True)
    lr_tensors = [g["lr"] for g in o1.param_groups]
    ours = ReduceLROnPlateau(o1, patience=0, factor=0.5)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(o2, patience=0, factor=0.5)
    for m in [3.0, 4.0, 5.0, 1.0, 2.0]:
        ours.step(torch.tensor(m))
        ref.step(torch.tensor(m))
        assert _lrs(o1) == _lrs(o2)
    assert all(g["lr"] is t for g, t in zip(o1.param_groups, lr_tensors))
    assert _lrs(o1) == pytest.approx([0.125, 0.3 * 0.125], rel=1e-6)  # float32 tensors


def test_state_dict_round_trip_and_torch_interchange():
    metrics = _metrics("walk", 60, seed=3)
    kw = dict(factor=0.5, patience=2, cooldown=1, min_lr=0.01, threshold=0.01)
    o1 = _optimizers()
    a = ReduceLROnPlateau(o1, **kw)
    for m in metrics[:30]:
        a.step(m)
    sd = pickle.loads(pickle.dumps(a.state_dict()))
    assert "optimizer" not in sd

    o2 = _optimizers(lrs=_lrs(o1))
    b = ReduceLROnPlateau(o2, mode="max", factor=0.9)  # everything comes from the state dict
    b.load_state_dict(sd)
    o3 = _optimizers(lrs=_lrs(o1))
    c = torch.optim.lr_scheduler.ReduceLROnPlateau(o3)
    c.load_state_dict(sd)  # ours loads into torch's ...
    o4 = _optimizers(lrs=_lrs(o1))
    d = ReduceLROnPlateau(o4)
    d.load_state_dict(c.state_dict())  # ... and torch's into ours
    assert set(a.state_dict()) == set(c.state_dict())
    for m in metrics[30:]:
        for s in (a, b, c, d):
            s.step(m)
        assert _lrs(o1) == _lrs(o2) == _lrs(o3) == _lrs(o4)
        assert a.state_dict() == b.state_dict()


class _ScheduledGroups:
    """The fastlr.optim contract in miniature: lr in use = lr_scale * s(t), t counted in
    group["schedule_t"], and group["lr"] shows the value of the next update."""

    def __init__(self, schedules, with_t=True):
        self.param_groups = [{"params": [], "lr_schedule": s, "lr_scale": 1.0, "lr": s(0)} for s in schedules]
        self.with_t = with_t
        self.t = 0
        if with_t:
            for g in self.param_groups:
                g["schedule_t"] = 0

    def step(self):
        self.t += 1
        for g in self.param_groups:
            if self.with_t:
                g["schedule_t"] += 1
            g["lr"] = g["lr_scale"] * g["lr_schedule"](self.t)


@pytest.mark.parametrize("with_t", [True, False])
def test_schedule_attached_scales_it(with_t):
    cos = Cosine(lr=1.0, total_steps=100, min_lr=0.0)
    opt = _ScheduledGroups([cos, Constant(0.5)], with_t)
    s = ReduceLROnPlateau(opt, factor=0.5, patience=1)
    scales = []
    for epoch in range(6):
        for _ in range(5):
            opt.step()
        s.step(1.0)  # flat: reductions at epochs 2 and 4 (0-based)
        scales.append(opt.param_groups[0]["lr_scale"])
        for g in opt.param_groups:  # lr refreshed to scale * s(t), the schedule untouched
            expected = g["lr_scale"] * g["lr_schedule"](opt.t)
            assert g["lr"] == (expected if with_t else pytest.approx(expected, rel=1e-15))
            assert g["lr_schedule"] in (cos, Constant(0.5))
    assert scales == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert opt.param_groups[1]["lr_scale"] == 0.25
    assert s.get_last_lr() == [g["lr"] for g in opt.param_groups]


def test_schedule_attached_min_lr_floor():
    opt = _ScheduledGroups([Constant(1.0)])
    s = ReduceLROnPlateau(opt, factor=0.1, patience=0, min_lr=0.05)
    for _ in range(4):
        s.step(1.0)
    # 1.0 -> 0.1 -> floor 0.05 (scale 0.05) -> unchanged (0.05 - 0.05 <= eps)
    assert opt.param_groups[0]["lr_scale"] == pytest.approx(0.05, rel=1e-15)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05, rel=1e-15)
    # the floor applies to the lr in use now, s(t) * scale; a schedule already below
    # min_lr is left alone (a reduction never raises the scale)
    opt = _ScheduledGroups([Cosine(lr=1.0, total_steps=10)])
    s = ReduceLROnPlateau(opt, factor=0.5, patience=0, min_lr=0.3)
    opt.t = 8
    opt.step()  # t = 9: s = 0.0245 < min_lr
    s.step(1.0)
    s.step(1.0)
    assert opt.param_groups[0]["lr_scale"] == 1.0


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(factor=1.0), "factor"),
        (dict(factor=-0.1), "factor"),
        (dict(mode="mean"), "mode"),
        (dict(threshold_mode="x"), "threshold_mode"),
        (dict(patience=-1), "patience"),
        (dict(cooldown=-1), "cooldown"),
        (dict(min_lr=-1.0), "min_lr"),
        (dict(min_lr=[0.0]), "min_lrs"),
        (dict(threshold=-1e-4), "threshold"),
        (dict(eps=-1.0), "eps"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        ReduceLROnPlateau(_optimizers(), **kw)


def test_not_an_optimizer():
    with pytest.raises(TypeError, match="not an Optimizer"):
        ReduceLROnPlateau(object())
    with pytest.raises(TypeError, match="patience"):
        ReduceLROnPlateau(_optimizers(), patience=1.5)


def test_nan_metric_is_never_better():
    opt = _optimizers(lrs=(1.0,))
    s = ReduceLROnPlateau(opt, patience=0, factor=0.5)
    s.step(1.0)
    s.step(math.nan)
    assert s.get_last_lr() == [0.5]


def _fastlr_optim():
    try:
        import fastlr.optim as fo

        return fo if hasattr(fo, "SGD") else None
    except ImportError:
        return None


@pytest.mark.skipif(_fastlr_optim() is None, reason="fastlr.optim not built")
def test_with_fastlr_sgd_and_cosine_schedule():
    import warnings

    fo = _fastlr_optim()
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    cos = Cosine(lr=0.2, total_steps=40, min_lr=0.01)
    opt = fo.SGD([w], lr=cos)
    s = ReduceLROnPlateau(opt, factor=0.5, patience=1, min_lr=0.02)
    scale = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the optimizer must not see a foreign lr write
        for t in range(40):
            w.grad = torch.ones(3, dtype=torch.float64)
            before = w.detach().clone()
            opt.step()
            used = float((before - w.detach())[0])  # grad 1: the step is the lr used
            assert used == pytest.approx(scale * cos(t), rel=1e-12)
            if t % 4 == 3:
                s.step(1.0)  # flat metric, patience 1: reductions at calls 3, 5, 7, ...
                calls = t // 4 + 1
                lr_now = scale * cos(t + 1)
                expected = scale
                if calls >= 3 and calls % 2 == 1:
                    new_lr = max(lr_now * 0.5, 0.02)
                    if lr_now - new_lr > 1e-8:
                        expected = scale * 0.5 if new_lr == lr_now * 0.5 else scale * (new_lr / lr_now)
                new = opt.param_groups[0]["lr_scale"]
                assert new == pytest.approx(expected, rel=1e-15)
                assert opt.param_groups[0]["lr"] == new * cos(t + 1)
                assert opt.param_groups[0]["lr"] >= 0.02 or new == scale
                scale = new
    assert scale <= 0.25 and opt.param_groups[0]["lr_schedule"] == cos


@pytest.mark.skipif(_fastlr_optim() is None, reason="fastlr.optim not built")
def test_with_fastlr_sgd_float_lr_matches_torch():
    fo = _fastlr_optim()
    torch.manual_seed(0)
    w0 = torch.randn(5, dtype=torch.float64)
    runs = []
    for optim_mod, sched_cls in ((fo, ReduceLROnPlateau), (torch.optim, torch.optim.lr_scheduler.ReduceLROnPlateau)):
        w = torch.nn.Parameter(w0.clone())
        opt = optim_mod.SGD([w], lr=0.3, momentum=0.5)
        s = sched_cls(opt, factor=0.3, patience=2, threshold=0.05)
        lrs = []
        for _ in range(30):
            opt.zero_grad()
            loss = (w ** 2).sum()
            loss.backward()
            opt.step()
            s.step(loss.item() + 1.0)
            lrs.append(opt.param_groups[0]["lr"])
        runs.append((lrs, w.detach().clone()))
    assert runs[0][0] == runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-14, atol=1e-300)


def test_step_with_epoch_sets_last_epoch_as_torch():
    ours, theirs = _optimizers(), _optimizers()
    a = ReduceLROnPlateau(ours, patience=1)
    b = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, patience=1)
    for epoch, m in zip([5, 6, 9, 10], [1.0, 2.0, 2.0, 2.0]):
        with pytest.warns(UserWarning, match="epoch"):
            a.step(m, epoch)
        with pytest.warns(UserWarning, match="epoch"):
            b.step(m, epoch)
        assert a.last_epoch == b.last_epoch == epoch
        assert _lrs(ours) == _lrs(theirs)
