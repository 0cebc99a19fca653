"""Audit of the schedule-free optimizers (issue 16) against the `schedulefree` package:
cases the first tests left out (state reset by hand, ...)."""
import collections
import copy

import pytest

torch = pytest.importorskip("torch")
sf = pytest.importorskip("schedulefree")

import fastlr  # noqa: E402
from fastlr.optim import AdamWScheduleFree, RAdamScheduleFree, SGDScheduleFree  # noqa: E402

PAIRS = {
    "sgd": (SGDScheduleFree, sf.SGDScheduleFree, dict(lr=0.5, warmup_steps=2)),
    "adamw": (AdamWScheduleFree, sf.AdamWScheduleFree, dict(lr=1e-2, warmup_steps=2)),
    "radam": (RAdamScheduleFree, sf.RAdamScheduleFree, dict(lr=1e-2, silent_sgd_phase=False)),
}


def _pair(name, shapes=((5, 3), (7,)), **extra):
    ours_cls, theirs_cls, opts = PAIRS[name]
    opts = {**opts, **extra}
    g = torch.Generator().manual_seed(0)
    po = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]
    pt = [p.detach().clone().requires_grad_() for p in po]
    ours, theirs = ours_cls(po, **opts), theirs_cls(pt, **opts)
    ours.train()
    theirs.train()
    return ours, theirs, po, pt


def _step_both(ours, theirs, po, pt, k):
    g = torch.Generator().manual_seed(100 + k)
    for a, b in zip(po, pt):
        grad = torch.randn(a.shape, generator=g, dtype=torch.float64)
        a.grad, b.grad = grad.clone(), grad.clone()
    ours.step()
    theirs.step()


def _assert_same(ours, theirs, po, pt):
    for a, b in zip(po, pt):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert ours.state[a].keys() == theirs.state[b].keys()
        for key in ours.state[a]:
            torch.testing.assert_close(ours.state[a][key], theirs.state[b][key],
                                       rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("how", ["clear", "reassign", "del", "inner_clear", "replace_v"])
@pytest.mark.parametrize("name", ["sgd", "adamw", "radam"])
def test_state_reset_by_hand_is_seen_by_the_next_step(name, how):
    """Resetting the optimizer state between steps (``opt.state.clear()``, a new
    ``defaultdict``, ``del opt.state[p]``, a state tensor replaced) restarts it as in the
    package. Before, the cached plan kept updating the old, detached z (and v): the state
    stayed empty and a later eval() left the params at y."""
    if how == "replace_v" and name == "sgd":
        pytest.skip("SGD keeps no exp_avg_sq")
    ours, theirs, po, pt = _pair(name)
    for k in range(8):
        _step_both(ours, theirs, po, pt, k)
        if k == 3:
            for opt in (ours, theirs):
                p0 = opt.param_groups[0]["params"][0]
                if how == "clear":
                    opt.state.clear()
                elif how == "reassign":
                    opt.state = collections.defaultdict(dict)
                elif how == "del":
                    del opt.state[p0]
                elif how == "inner_clear":
                    opt.state[p0].clear()
                else:
                    opt.state[p0]["exp_avg_sq"] = torch.zeros_like(p0)
    _assert_same(ours, theirs, po, pt)
    ours.eval()
    theirs.eval()
    _assert_same(ours, theirs, po, pt)


def _sf_run_with_plateau(cls, sched, metrics, **kw):
    w = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64))
    opt = cls([w], lr=sched, **kw)
    opt.train()
    plateau = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    used, shown = [], []
    for k, metric in enumerate(metrics):
        w.grad = torch.cos(w.detach() * (k + 1))
        opt.step()
        used.append(opt.param_groups[0]["scheduled_lr"])
        plateau.step(metric)
        shown.append(opt.param_groups[0]["lr"])
    return used, shown, opt


@pytest.mark.parametrize("name", ["sgd", "adamw", "radam"])
def test_plateau_cuts_a_schedule_free_schedule(name):
    """fastlr.ReduceLROnPlateau on a schedule-free optimizer whose lr is a Schedule: the
    lr in use is lr_scale·s(k), as for fastlr.optim's other classes. Before, the plateau
    set lr_scale and showed the cut lr in group["lr"], but the step ignored lr_scale and
    rewrote group["lr"] = s(k + 1): every reduction was silently lost."""
    ours_cls = PAIRS[name][0]
    sched = fastlr.Cosine(0.1, 50)
    kw = {"silent_sgd_phase": False} if name == "radam" else {}
    metrics = [1.0, 2.0, 0.5, 0.6, 0.7, 0.4, 0.4]  # no improvement after steps 1, 3, 4, 6
    used, shown, opt = _sf_run_with_plateau(ours_cls, sched, metrics, **kw)
    scale = [1.0, 0.5, 0.5, 0.25, 0.125, 0.125, 0.0625]  # lr_scale after each plateau step
    for k in range(len(metrics)):
        assert shown[k] == scale[k] * sched(k + 1), k  # the lr the next update uses
    # the package with group["lr"] set to the same values before each step
    w = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64))
    theirs = PAIRS[name][1]([w], lr=sched(0), **kw)
    theirs.train()
    ref_used = []
    for k in range(len(metrics)):
        theirs.param_groups[0]["lr"] = sched(0) if k == 0 else scale[k - 1] * sched(k)
        w.grad = torch.cos(w.detach() * (k + 1))
        theirs.step()
        ref_used.append(theirs.param_groups[0]["scheduled_lr"])
    assert used == ref_used
    p = opt.param_groups[0]["params"][0]
    torch.testing.assert_close(p, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree"])
def test_plateau_cuts_a_numpy_schedule_free_schedule_as_the_torch_face(name):
    """The same on fastlr.numpy's twins (they ignored lr_scale too); both faces agree."""
    np = pytest.importorskip("numpy")
    import fastlr.numpy as fnp

    sched = fastlr.Cosine(0.1, 50)
    kw = {"silent_sgd_phase": False} if name == "RAdamScheduleFree" else {}
    metrics = [1.0, 2.0, 0.5, 0.6, 0.7, 0.4, 0.4]
    used, shown, opt = _sf_run_with_plateau(getattr(fastlr.optim, name), sched, metrics, **kw)
    w = torch.linspace(-1, 1, 6, dtype=torch.float64).numpy().copy()  # the same start
    nopt = getattr(fnp, name)([w], lr=sched, **kw)
    nopt.train()
    plateau = fastlr.ReduceLROnPlateau(nopt, factor=0.5, patience=0)
    for k, metric in enumerate(metrics):
        nopt.step([torch.cos(torch.from_numpy(w) * (k + 1)).numpy()])  # the same grads
        assert nopt.param_groups[0]["scheduled_lr"] == used[k], k
        plateau.step(metric)
        assert nopt.param_groups[0]["lr"] == shown[k], k
    np.testing.assert_array_equal(w, opt.param_groups[0]["params"][0].detach().numpy())


@pytest.mark.parametrize("name", ["sgd", "adamw", "radam"])
def test_export_of_a_scheduled_schedule_free_state_dict_continues_the_schedule(name):
    """to_torch_state_dict / torch_lr_scheduler on a schedule-free optimizer with a
    Schedule lr: the package continues at lr_scale·s(k + j), the values fastlr uses. Before,
    both read fastlr.optim's schedule_t, which these groups lack: the export restarted the
    schedule at s(0). And after a plateau cut group['lr'] is lr_scale·s(k) to the bit,
    the value the step uses (it was new_scale·(old_lr/scale), an ulp off at times)."""
    ours_cls, theirs_cls, _ = PAIRS[name]
    sched = fastlr.Cosine(0.1, 50)
    kw = {"silent_sgd_phase": False} if name == "radam" else {}
    w = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64))
    ours = ours_cls([w], lr=sched, **kw)
    ours.train()
    plateau = fastlr.ReduceLROnPlateau(ours, factor=0.7, patience=0, eps=0.0)
    for k in range(10):
        w.grad = torch.cos(w.detach() * (k + 1))
        ours.step()
        plateau.step(float(k))  # worse each time: a cut after every step but the first
        group = ours.param_groups[0]
        assert group["lr"] == group.get("lr_scale", 1.0) * sched(k + 1), k
    sd = copy.deepcopy(ours.state_dict())  # as from a file: no tensor shared with ours
    exported = fastlr.optim.to_torch_state_dict(sd)
    scale = ours.param_groups[0]["lr_scale"]
    assert exported["param_groups"][0]["lr"] == scale * sched(10)
    v = torch.nn.Parameter(w.detach().clone())
    theirs = theirs_cls([v], lr=1.0, **kw)
    theirs.load_state_dict(exported)
    lr_sched = fastlr.optim.torch_lr_scheduler(theirs, sd)
    for k in range(10, 15):
        g = torch.cos(w.detach() * (k + 1))
        w.grad, v.grad = g.clone(), g.clone()
        assert theirs.param_groups[0]["lr"] == ours.param_groups[0]["lr"], k
        ours.step()
        theirs.step()
        lr_sched.step()
        assert theirs.param_groups[0]["scheduled_lr"] == ours.param_groups[0]["scheduled_lr"], k
    torch.testing.assert_close(w, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["sgd", "adamw", "radam"])
def test_torch_scheduler_on_a_scheduled_schedule_free_optimizer_warns_once(name):
    """A torch LRScheduler writing group["lr"] of a schedule-free optimizer whose lr is a
    Schedule: the Schedule wins with one warning, as with fastlr.optim's other classes
    (README, "Schedules in frameworks"). Before, the written value was ignored silently;
    the plateau and a hand-set lr_scale (the documented ways) still do not warn."""
    import warnings

    ours_cls = PAIRS[name][0]
    sched = fastlr.Cosine(0.1, 50)
    kw = {"silent_sgd_phase": False} if name == "radam" else {}

    def run(attach):
        w = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64))
        opt = ours_cls([w], lr=sched, **kw)
        opt.train()
        lr_sched = attach(opt)
        used = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for k in range(6):
                w.grad = torch.cos(w.detach() * (k + 1))
                opt.step()
                used.append(opt.param_groups[0]["scheduled_lr"])
                if lr_sched is not None:
                    lr_sched.step()
        return used, [str(c.message) for c in caught if "Schedule wins" in str(c.message)]

    plain, none = run(lambda opt: None)
    assert none == []
    used, caught = run(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5))
    assert used == plain
    assert len(caught) == 1 and ours_cls.__name__ in caught[0]

    class HandScale:
        def __init__(self, opt):
            self.opt = opt

        def step(self):
            self.opt.param_groups[0]["lr_scale"] = 0.5

    scaled, caught = run(HandScale)
    assert caught == [] and scaled[1:] == [0.5 * u for u in plain[1:]]
