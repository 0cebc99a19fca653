"""fastlr.Lambda / fastlr.Table: per-step Python schedules computed once, looked up in C++."""
import io
import math
import pickle

import numpy as np
import pytest

import fastlr
from fastlr._plot import parse_schedule
from fastlr.schedules import MAX_TABLE_SIZE, Lambda, Table


def hf_cosine_with_warmup(warmup, total, cycles=0.5):
    """transformers' _get_cosine_schedule_with_warmup_lr_lambda, written out."""
    def fn(t):
        if t < warmup:
            return float(t) / float(max(1, warmup))
        progress = float(t - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(cycles) * 2.0 * progress)))
    return fn


def test_table_values_and_hold():
    s = Table([0.3, 0.2, 0.1])
    assert s.values(6).tolist() == [0.3, 0.2, 0.1, 0.1, 0.1, 0.1]
    assert s(0) == 0.3 and s(10**15) == 0.1
    assert s.values([2, 0, 7]).tolist() == [0.1, 0.3, 0.1]
    assert Table(np.arange(4, dtype=np.int32)).values(4).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert Table([0.5])(123) == 0.5


def test_lambda_is_lr_times_fn_then_holds():
    fn = hf_cosine_with_warmup(5, 40)
    s = Lambda(0.1, fn, total_steps=40)
    expected = [0.1 * fn(t) for t in range(40)]
    assert s.values(40).tolist() == expected  # the same products torch's LambdaLR forms
    assert s(40) == s(10**9) == expected[-1]
    assert s.values(45).tolist()[40:] == [expected[-1]] * 5


def test_lambda_matches_torch_lambdalr_over_a_run():
    torch = pytest.importorskip("torch")
    fn = hf_cosine_with_warmup(10, 60)
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
    torch_lrs = []
    for _ in range(60):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert Lambda(0.05, fn, 60).values(60).tolist() == torch_lrs


def test_lambda_and_table_train_like_torch_lambdalr():
    torch = pytest.importorskip("torch")
    fn = hf_cosine_with_warmup(4, 25)

    def run(make):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3)
        x, y = torch.randn(16, 6), torch.randn(16, 3)
        opt, sched = make(model.parameters())
        losses, lrs = [], []
        for _ in range(25):
            lrs.append(opt.param_groups[0]["lr"])
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if sched is not None:
                sched.step()
            losses.append(loss.item())
        return losses, lrs, [p.detach() for p in model.parameters()]

    def torch_run(params):
        opt = torch.optim.AdamW(params, lr=3e-2)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, fn)

    ref = run(torch_run)
    table = Table([3e-2 * fn(t) for t in range(25)])
    for sched in (Lambda(3e-2, fn, 25), table):
        got = run(lambda params: (fastlr.optim.AdamW(params, lr=sched), None))
        assert got[1] == ref[1]  # the lr of every update, to the bit
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-6, atol=0)
        for a, b in zip(got[2], ref[2]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_numpy_kernel_with_a_table_equals_float_lrs():
    lrs = [0.1, 0.02, 0.3, 0.3]
    p1 = np.linspace(-1, 1, 37, dtype=np.float32)
    p2 = p1.copy()
    m1, v1 = np.zeros_like(p1), np.zeros_like(p1)
    m2, v2 = np.zeros_like(p1), np.zeros_like(p1)
    for step in range(1, 5):
        g = np.cos(p1 * step).astype(np.float32)
        fastlr.adam_step(p1, g, m1, v1, step=step, lr=Table(lrs))
        fastlr.adam_step(p2, g.copy(), m2, v2, step=step, lr=lrs[step - 1])
    np.testing.assert_array_equal(p1, p2)


def test_compose_with_warmup_and_sequential():
    t = Table([1.0, 0.5, 0.25])
    w = fastlr.Warmup(t, 2, start_factor=0.0)
    assert w.values(6).tolist() == [0.0, 0.5, 1.0, 0.5, 0.25, 0.25]
    s = fastlr.Sequential([Lambda(2.0, lambda k: 1 / (k + 1), 2), fastlr.Constant(0.1)], [3])
    assert s.values(5).tolist() == [2.0, 1.0, 1.0, 0.1, 0.1]
    assert [s._reference(k) for k in range(5)] == s.values(5).tolist()


def test_value_semantics_pickle_keeps_values_not_function():
    def local_factor(t):  # a local function cannot be pickled by itself
        return 0.9 ** t

    s = Lambda(0.2, local_factor, 50)
    r = pickle.loads(pickle.dumps(s))
    assert r == s and hash(r) == hash(s) and r.values(60).tolist() == s.values(60).tolist()
    assert Lambda(0.2, lambda t: 0.9 ** t, 50) == s
    assert Lambda(0.2, local_factor, 49) != s and Lambda(0.3, local_factor, 50) != s
    t = Table([0.1, -0.0, 0.3])
    assert t == Table((0.1, 0.0, 0.3)) and hash(t) == hash(Table(np.array([0.1, 0.0, 0.3])))
    assert t != Table([0.1, 0.0]) and t != Lambda(1.0, [0.1, 0.0, 0.3], 3)
    assert pickle.loads(pickle.dumps(t)) == t
    with pytest.raises(AttributeError):
        t.table = None
    with pytest.raises(ValueError):
        t.table[0] = 1.0  # read-only


def test_repr_rebuilds_and_plot_parses():
    for s in (Table([0.1, 0.05, 0.01]), Lambda(0.5, lambda t: 1 / (1 + t), 4)):
        assert eval(repr(s), {"Table": Table, "Lambda": Lambda}) == s
        assert parse_schedule(repr(s)) == s
    long = Table(np.full(5000, 0.25))
    assert "(5000 values)" in repr(long) and len(repr(long)) < 100


def test_torch_load_weights_only_restores_them():
    torch = pytest.importorskip("torch")
    w = torch.zeros(2, requires_grad=True)
    opt = fastlr.optim.SGD([w], lr=Lambda(0.1, lambda t: 1.0 / (1 + t), 10), momentum=Table([0.9, 0.8]))
    w.grad = torch.ones(2)
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)  # weights_only=True by default
    assert sd["param_groups"][0]["lr_schedule"] == opt.param_groups[0]["lr_schedule"]
    assert sd["param_groups"][0]["momentum_schedule"] == Table([0.9, 0.8])
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["momentum"] == 0.8


def test_size_limit():
    assert MAX_TABLE_SIZE == 2**20
    big = Table(np.linspace(1.0, 0.0, MAX_TABLE_SIZE))
    assert big(MAX_TABLE_SIZE - 1) == 0.0 and big(MAX_TABLE_SIZE * 4) == 0.0
    with pytest.raises(ValueError, match=r"values has 1048577 entries.*2\*\*20"):
        Table(np.zeros(MAX_TABLE_SIZE + 1))
    calls = []
    with pytest.raises(ValueError, match=r"total_steps must be <= MAX_TABLE_SIZE"):
        Lambda(0.1, calls.append, MAX_TABLE_SIZE + 1)
    assert calls == []  # refused before fn is called


@pytest.mark.parametrize("values, exc, match", [
    ([], ValueError, "must not be empty"),
    ([0.1, -0.2], ValueError, r"values\[1\] must be finite and >= 0"),
    ([0.1, float("nan")], ValueError, r"values\[1\]"),
    ([0.1, float("inf")], ValueError, r"values\[1\]"),
    ([[0.1], [0.2]], TypeError, "1-d"),
    ("0.1", TypeError, "sequence of numbers"),
    (0.1, TypeError, "sequence of numbers"),
    ([True, False], TypeError, "real numbers"),
    ([0.1, "a"], TypeError, "real numbers"),
])
def test_table_bad_values(values, exc, match):
    with pytest.raises(exc, match=match):
        Table(values)


def test_lambda_bad_arguments():
    with pytest.raises(ValueError, match=r"fn\(3\) must be >= 0"):
        Lambda(0.1, lambda t: 1.0 - t / 3 - 1e-9 * (t == 3), 5)
    with pytest.raises(ValueError, match=r"fn\(0\) must be finite"):
        Lambda(0.1, lambda t: float("nan"), 5)
    with pytest.raises(TypeError, match=r"fn\(0\) must be a real number"):
        Lambda(0.1, lambda t: "x", 5)
    with pytest.raises(TypeError, match="fn must be a function of t or a sequence"):
        Lambda(0.1, 0.5, 5)
    with pytest.raises(ValueError, match="3 entries, got 2"):
        Lambda(0.1, [1.0, 0.5], 3)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        Lambda(-0.1, lambda t: 1.0, 3)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        Lambda(0.1, lambda t: 1.0, 0)
    with pytest.raises(TypeError, match="total_steps must be an int"):
        Lambda(0.1, lambda t: 1.0, 3.0)


def test_lambda_takes_numpy_and_tensor_factors():
    assert Lambda(2.0, lambda t: np.float32(0.5), 2).values(2).tolist() == [1.0, 1.0]
    torch = pytest.importorskip("torch")
    assert Lambda(2.0, lambda t: torch.tensor(0.25, dtype=torch.float64), 2)(0) == 0.5
