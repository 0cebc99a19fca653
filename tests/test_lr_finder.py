"""fastlr.find_lr: the sweep, the stop rules, the suggestions and the exact restore."""
import copy
import math
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastlr._lr_finder import LRFinderResult, _valley, find_lr  # noqa: E402
from fastlr.schedules import RangeTest  # noqa: E402

try:
    import fastlr.optim as fastlr_optim

    fastlr_optim.SGD
except (ImportError, AttributeError):  # the drop-in optimizers are optional while being built
    fastlr_optim = None


class Quadratic(torch.nn.Module):
    """loss = a/2 · |w − y|²: gradient descent converges in one step at lr = 1/a and
    diverges above 2/a, so the good lr is known."""

    def __init__(self, d=8):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(1.0, 2.0, d, dtype=torch.float64))

    def forward(self, x):
        return self.w


def quad_loss(a):
    return lambda out, y: 0.5 * a * ((out - y) ** 2).sum()


QUAD_DATA = [(None, torch.zeros(8, dtype=torch.float64))]


def _optimizer_kinds():
    kinds = [("torch", torch.optim.SGD, {}), ("torch", torch.optim.Adam, {})]
    if fastlr_optim is not None:
        kinds += [("fastlr", fastlr_optim.SGD, {}), ("fastlr", fastlr_optim.Adam, {})]
    return kinds


OPTIMIZERS = _optimizer_kinds()
OPT_IDS = [f"{k}-{c.__name__}" for k, c, _ in OPTIMIZERS]


@pytest.mark.parametrize("kind, cls, kw", OPTIMIZERS, ids=OPT_IDS)
@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_lrs_follow_the_schedule_and_are_used(kind, cls, kw, mode):
    # loss = sum(w): grad = 1, so plain SGD moves w by exactly -lr each step; loss_fn sees
    # the weight before every update, which tells us the lr the update really used.
    model = torch.nn.Linear(1, 1, bias=False).double()
    seen = []

    def loss_fn(out, y):
        seen.append(model.weight.detach().clone().item())
        return model.weight.sum()

    opt = cls(model.parameters(), lr=0.5, **kw)
    res = find_lr(model, opt, loss_fn, [(torch.zeros(1, 1, dtype=torch.float64), None)],
                  start_lr=1e-4, end_lr=1e-1, num_steps=20, mode=mode, diverge=1e9)
    expected = RangeTest(1e-4, 1e-1, 20, mode).values(20)
    np.testing.assert_allclose(res.lrs, expected, rtol=1e-15)
    assert np.all(np.diff(res.lrs) > 0)
    if cls.__name__ == "SGD":
        np.testing.assert_allclose(-np.diff(seen), expected[:-1], rtol=1e-9)


def test_smoothing_is_debiased_ema():
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = find_lr(model, opt, quad_loss(1.0), QUAD_DATA, start_lr=1e-6, end_lr=1e-5, num_steps=10, smooth=0.3)
    avg, expected = 0.0, []
    for i, x in enumerate(res.raw_losses):
        avg = 0.7 * avg + 0.3 * x
        expected.append(avg / (1 - 0.7 ** (i + 1)))
    np.testing.assert_allclose(res.losses, expected, rtol=1e-14)
    assert res.losses[0] == pytest.approx(res.raw_losses[0], rel=1e-15)  # debiased: starts at the loss
    res1 = find_lr(model, opt, quad_loss(1.0), QUAD_DATA, start_lr=1e-6, end_lr=1e-5, num_steps=10, smooth=1.0)
    np.testing.assert_array_equal(res1.losses, res1.raw_losses)


@pytest.mark.parametrize("a", [1.0, 100.0])
def test_suggestion_near_the_known_optimum(a):
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = find_lr(model, opt, quad_loss(a), QUAD_DATA, num_steps=100)
    assert res.lrs[0] <= res.suggestion <= res.lrs[-1]
    # GD on this quadratic converges in one step at 1/a and diverges above 2/a: the
    # steepest descent of the sweep lies just below that, within a factor 10.
    assert 0.1 / a <= res.suggestion <= 2.0 / a
    assert 0.01 / a <= res.suggestion_min <= 2.0 / a
    for s in (res.suggestion, res.suggestion_min, res.suggestion_valley):
        assert 1e-7 / 10 <= s <= 10


def test_suggestion_scales_with_curvature():
    sugg = []
    for a in (1.0, 100.0):
        model = Quadratic()
        res = find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), quad_loss(a), QUAD_DATA)
        sugg.append(res.suggestion)
    assert sugg[0] / sugg[1] == pytest.approx(100.0, rel=0.5)


def test_early_stop_on_divergence():
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = find_lr(model, opt, quad_loss(100.0), QUAD_DATA, num_steps=100, diverge=5.0)
    assert res.stop_reason == "diverged"
    assert 3 < len(res.lrs) < 100
    assert res.losses[-1] > 5.0 * res.losses[:-1].min()
    assert np.all(res.losses[1:-1] <= 5.0 * np.minimum.accumulate(res.losses)[:-2])
    assert res.lrs[-1] > 2.0 / 100.0  # it went past the divergence point
    assert len(res.lrs) == len(res.losses) == len(res.raw_losses)


def test_stop_at_nan():
    model = Quadratic()
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        loss = ((out - y) ** 2).sum()
        return loss * math.nan if len(calls) == 7 else loss

    res = find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, QUAD_DATA, num_steps=50)
    assert res.stop_reason == "nan"
    assert len(res.lrs) == 6 and np.all(np.isfinite(res.losses))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 16)
        self.bn = torch.nn.BatchNorm1d(16)
        self.fc2 = torch.nn.Linear(16, 3)
        self.register_buffer("calls", torch.zeros(()), persistent=False)

    def forward(self, x):
        self.calls += 1
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def _snapshot(model, opt):
    params = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    params["calls"] = model.calls.clone()
    grads = {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}
    return params, grads, copy.deepcopy(opt.state_dict()), model.training


def _bits(t):
    t = t.detach().contiguous()
    return t.view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(_bits(a), _bits(b)), "not bit-for-bit"
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b or (a is None and b is None)


@pytest.mark.parametrize("kind, cls, kw", OPTIMIZERS, ids=OPT_IDS)
@pytest.mark.parametrize("trained", [False, True])
def test_everything_restored_bit_for_bit(kind, cls, kw, trained):
    torch.manual_seed(0)
    model = _Net()
    opt = cls([{"params": [model.fc1.weight, model.fc1.bias], "lr": 0.01},
               {"params": list(model.bn.parameters()) + list(model.fc2.parameters()), "lr": 0.003}], **kw)
    x = torch.randn(64, 4)
    y = torch.randint(0, 3, (64,))
    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    if trained:  # optimizer state, BN statistics and grads present before the sweep
        for xb, yb in data:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    before = _snapshot(model, opt)
    weight = model.fc1.weight
    res = find_lr(model, opt, torch.nn.functional.cross_entropy, data, num_steps=30)
    assert len(res.lrs) > 5
    after = _snapshot(model, opt)
    _assert_same(before, after)
    assert model.fc1.weight is weight and not model.training
    # and training afterwards is the same as without the sweep
    torch.manual_seed(0)
    model2 = _Net()
    model2.load_state_dict(model.state_dict())
    opt2 = cls([{"params": [model2.fc1.weight, model2.fc1.bias], "lr": 0.01},
                {"params": list(model2.bn.parameters()) + list(model2.fc2.parameters()), "lr": 0.003}], **kw)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch shares the tensors otherwise
    for m, o in ((model, opt), (model2, opt2)):
        m.train()
        for xb, yb in data:
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(xb), yb).backward()
            o.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_restored_after_an_exception():
    model = Quadratic()
    w0 = model.w.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.25, momentum=0.9)
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return ((out - y) ** 2).sum()

    with pytest.raises(KeyboardInterrupt):
        find_lr(model, opt, loss_fn, QUAD_DATA)
    assert torch.equal(model.w, w0)
    assert opt.param_groups[0]["lr"] == 0.25 and len(opt.state) == 0


def test_data_cycled_and_one_shot_iterators():
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(None, torch.zeros(8, dtype=torch.float64)), (None, torch.ones(8, dtype=torch.float64))]
    res = find_lr(model, opt, quad_loss(1.0), batches, num_steps=12, diverge=1e9)
    assert len(res.lrs) == 12
    res2 = find_lr(model, opt, quad_loss(1.0), iter(batches), num_steps=12, diverge=1e9)
    np.testing.assert_array_equal(res.raw_losses, res2.raw_losses)
    with pytest.raises(ValueError, match="no batches"):
        find_lr(model, opt, quad_loss(1.0), [], num_steps=12)
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        find_lr(model, opt, quad_loss(1.0), [torch.zeros(3)], num_steps=12)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(start_lr=0.0), "start_lr"),
        (dict(start_lr=-1e-3), "start_lr"),
        (dict(end_lr=math.inf), "end_lr"),
        (dict(start_lr=1.0, end_lr=0.1), "end_lr must be > start_lr"),
        (dict(num_steps=1), "num_steps"),
        (dict(mode="cos"), "mode"),
        (dict(smooth=0.0), "smooth"),
        (dict(smooth=1.5), "smooth"),
        (dict(diverge=1.0), "diverge"),
    ],
)
def test_bad_arguments(kw, match):
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=match):
        find_lr(model, opt, quad_loss(1.0), QUAD_DATA, **kw)
    assert opt.param_groups[0]["lr"] == 0.1


def test_bad_argument_types():
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="model"):
        find_lr(object(), opt, quad_loss(1.0), QUAD_DATA)
    with pytest.raises(TypeError, match="optimizer"):
        find_lr(model, object(), quad_loss(1.0), QUAD_DATA)
    with pytest.raises(TypeError, match="num_steps"):
        find_lr(model, opt, quad_loss(1.0), QUAD_DATA, num_steps=10.0)


def test_valley_matches_fastai():
    def fastai_valley(losses):  # fastai/callback/schedule.py, verbatim logic
        n = len(losses)
        max_start, max_end = 0, 0
        lds = [1] * n
        for i in range(1, n):
            for j in range(0, i):
                if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                    lds[i] = lds[j] + 1
                if lds[max_end] < lds[i]:
                    max_end = i
                    max_start = max_end - lds[max_end]
        sections = (max_end - max_start) / 3
        return max_start + int(sections) + int(sections / 2)

    rng = np.random.default_rng(0)
    for n in (2, 5, 30, 90):
        for _ in range(20):
            losses = np.cumsum(rng.standard_normal(n))
            assert _valley(losses) == min(max(fastai_valley(list(losses)), 0), n - 1)


def test_suggestion_rule_on_a_known_curve():
    lrs = np.logspace(-6, 0, 61)
    x = np.log10(lrs)
    losses = 1.0 / (1.0 + np.exp(3.0 * (x + 3.0)))  # steepest at lr = 1e-3
    res = LRFinderResult(lrs, losses, losses, 61, "completed")
    assert res.suggestion == pytest.approx(1e-3, rel=1e-9)
    assert res.suggestion_min == pytest.approx(lrs[61 - 6] / 10)  # window ends 5 points early


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = find_lr(model, opt, quad_loss(10.0), QUAD_DATA)
    path = tmp_path / "lr.png"
    assert res.plot(path) is None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = res.plot()
    assert ax.get_xscale() == "log"
    import matplotlib.pyplot as plt

    plt.close(ax.figure)
    assert "suggestion" in repr(res)


def test_plot_without_matplotlib_says_how_to_install_it(monkeypatch):
    model = Quadratic()
    res = find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), quad_loss(10.0), QUAD_DATA, num_steps=5)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an environment without it raises
    with pytest.raises(ModuleNotFoundError, match=r'pip install matplotlib \(or, in the fastlr checkout'):
        res.plot()


@pytest.mark.skipif(fastlr_optim is None, reason="fastlr.optim not built")
def test_fastlr_scheduled_group_restored():
    from fastlr.schedules import Cosine

    model = Quadratic()
    sched = Cosine(lr=0.1, total_steps=50)
    opt = fastlr_optim.SGD(model.parameters(), lr=sched, momentum=0.9)
    for _ in range(7):
        opt.zero_grad()
        quad_loss(1.0)(model(None), QUAD_DATA[0][1]).backward()
        opt.step()
    opt.param_groups[0]["lr_scale"] = 0.5  # as a plateau reduction leaves it
    opt.param_groups[0]["lr"] = 0.5 * sched(7)
    group_before = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    w_before = model.w.detach().clone()
    res = find_lr(model, opt, quad_loss(1.0), QUAD_DATA, num_steps=20)
    assert len(res.lrs) > 3
    group_after = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    assert group_after == group_before  # lr_schedule, lr_scale, schedule_t, lr
    assert torch.equal(model.w, w_before)
    opt.zero_grad()
    quad_loss(1.0)(model(None), QUAD_DATA[0][1]).backward()
    opt.step()  # continues the cosine at t = 7 with scale 0.5
    assert opt.param_groups[0]["schedule_t"] == 8
    assert opt.param_groups[0]["lr"] == 0.5 * sched(8)
