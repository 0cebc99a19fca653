"""fastlr.optim's schedule-free optimizers against the `schedulefree` package (1.4):
whole trajectories with mode switches, bookkeeping to the bit, state dicts both ways."""
import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sf = pytest.importorskip("schedulefree")

import fastlr  # noqa: E402
from fastlr import _C  # noqa: E402
from fastlr.optim import AdamWScheduleFree, RAdamScheduleFree, SGDScheduleFree  # noqa: E402

from conftest import supported_cpu_levels  # noqa: E402

PAIRS = {
    "sgd": (SGDScheduleFree, sf.SGDScheduleFree),
    "adamw": (AdamWScheduleFree, sf.AdamWScheduleFree),
    "radam": (RAdamScheduleFree, sf.RAdamScheduleFree),
}
# option sets per optimizer: warm-up, weight decay, r, weight_lr_power, betas / momentum
OPTIONS = {
    "sgd": [
        dict(lr=0.5),
        dict(lr=1.0, momentum=0.8, weight_decay=1e-2, warmup_steps=10),
        dict(lr=0.2, r=1.0, weight_lr_power=0.0, warmup_steps=5),
    ],
    "adamw": [
        dict(),
        dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2, warmup_steps=10),
        dict(lr=5e-3, r=2.0, weight_lr_power=1.0, eps=1e-6),
        dict(lr=1e-2, betas=(0.4, 0.9), warmup_steps=3),  # eval's |1 - 1/beta1| >= 0.5
    ],
    "radam": [
        dict(),
        dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=1e-2, silent_sgd_phase=False),
        dict(lr=5e-3, r=1.0, weight_lr_power=0.0),
    ],
}
CASES = [(name, i) for name in OPTIONS for i in range(len(OPTIONS[name]))]
SHAPES = [(0,), (1,), (7,), (3, 5), (33, 17), (1000,)]
STEPS = 50
SWITCHES = {12, 30}  # eval() then train() after these steps


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES]


def _grads(params, step, seed=1):
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    # some params miss some steps (grad None), as in a model with unused branches
    return [None if (i == 2 and step % 7 == 3) else torch.randn(p.shape, generator=g,
                                                                dtype=torch.float64).to(p.dtype)
            for i, p in enumerate(params)]


def _close(a, b, dtype):
    if dtype == torch.float64:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)


def _check_same(ours, theirs, po, pt, dtype):
    for a, b in zip(po, pt):
        _close(a, b, dtype)
    for go, gt in zip(ours.param_groups, theirs.param_groups):
        # bookkeeping is the same double arithmetic: equal to the bit
        for key in ("k", "lr_max", "weight_sum", "scheduled_lr", "train_mode"):
            assert go[key] == gt[key], key
    for a, b in zip(po, pt):
        so, st = ours.state[a], theirs.state[b]
        assert so.keys() == st.keys()
        for key in so:
            _close(so[key], st[key], dtype)


def _run(ours, theirs, po, pt, steps, start=0, switches=SWITCHES):
    dtype = po[0].dtype
    for k in range(start, start + steps):
        grads = _grads(po, k)
        for p, q, g in zip(po, pt, grads):
            p.grad = None if g is None else g.clone()
            q.grad = None if g is None else g.clone()  # the package overwrites its grads
        ours.step()
        theirs.step()
        for p, g in zip(po, grads):  # fastlr only reads them
            if g is not None:
                assert torch.equal(p.grad, g)
        if k in switches:
            ours.eval()
            theirs.eval()
            _check_same(ours, theirs, po, pt, dtype)
            ours.train()
            theirs.train()
    _check_same(ours, theirs, po, pt, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,i", CASES)
@pytest.mark.parametrize("foreach", [False, True])
def test_trajectory_matches_package(name, i, dtype, foreach):
    ours_cls, theirs_cls = PAIRS[name]
    opts = OPTIONS[name][i]
    po = [p.requires_grad_() for p in _params(dtype)]
    pt = [p.detach().clone().requires_grad_() for p in po]
    ours = ours_cls(po, **opts)
    theirs = theirs_cls(pt, foreach=foreach, **opts)
    ours.train()
    theirs.train()
    _run(ours, theirs, po, pt, STEPS)
    ours.eval()
    theirs.eval()
    _check_same(ours, theirs, po, pt, dtype)


@pytest.mark.parametrize("name", ["sgd", "adamw", "radam"])
def test_state_dicts_interchange_both_ways(name):
    ours_cls, theirs_cls = PAIRS[name]
    opts = OPTIONS[name][1]
    dtype = torch.float64
    for first, second in ((ours_cls, theirs_cls), (theirs_cls, ours_cls)):
        pa = [p.requires_grad_() for p in _params(dtype)]
        a = first(pa, **opts)
        a.train()
        for k in range(15):
            for p, g in zip(pa, _grads(pa, k)):
                p.grad = g
            a.step()
        a.eval()  # the package's advice: checkpoints in eval mode
        buf = io.BytesIO()
        torch.save({"params": [p.detach() for p in pa], "opt": a.state_dict()}, buf)
        buf.seek(0)
        ckpt = torch.load(buf)
        pb = [p.clone().requires_grad_() for p in ckpt["params"]]
        b = second(pb, **opts)
        b.load_state_dict(ckpt["opt"])
        pc = [p.clone().requires_grad_() for p in ckpt["params"]]
        c = first(pc, **opts)
        c.load_state_dict(copy.deepcopy(ckpt["opt"]))
        b.train()
        c.train()
        ours, theirs, po, pt = (c, b, pc, pb) if first is ours_cls else (b, c, pb, pc)
        _run(ours, theirs, po, pt, 20, start=15, switches={25})


@pytest.mark.parametrize("level", supported_cpu_levels())
@pytest.mark.parametrize("name", ["sgd", "adamw", "radam"])
def test_cpu_levels_and_threads_bit_identical(name, level):
    """No FMA contraction: every CPU level and thread split gives the same bits."""
    ours_cls, _ = PAIRS[name]
    before_level, before_threads = _C.cpu_level(), _C.get_num_threads()
    results = []
    try:
        for lv, threads in (("baseline", 1), (level, 2)):
            _C.set_cpu_level(lv)
            fastlr.set_num_threads(threads)
            ps = [torch.randn(300_001, generator=torch.Generator().manual_seed(3)),
                  torch.randn(17, generator=torch.Generator().manual_seed(4))]
            opt = ours_cls(ps, weight_decay=0.1)
            opt.train()
            for k in range(6):
                for p in ps:
                    p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(k))
                opt.step()
            opt.eval()
            results.append([p.clone() for p in ps] + [t.clone() for p in ps for t in opt.state[p].values()])
    finally:
        _C.set_cpu_level(before_level)
        fastlr.set_num_threads(before_threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["sgd", "adamw", "radam"])
def test_low_precision_rounds_once_per_store(name, dtype):
    """16-bit params compute in float32 and round each stored value once: the result is
    the float32 trajectory rounded, up to the rounding of earlier steps."""
    ours_cls, _ = PAIRS[name]
    p16 = [p.to(dtype).requires_grad_() for p in _params(torch.float32)]
    p32 = [p.detach().float().requires_grad_() for p in p16]
    o16, o32 = ours_cls(p16), ours_cls(p32)
    o16.train()
    o32.train()
    for k in range(10):
        grads = _grads(p32, k)
        for a, b, g in zip(p16, p32, grads):
            a.grad = None if g is None else g.to(dtype)
            b.grad = None if g is None else g.to(dtype).float()
        o16.step()
        o32.step()
    o16.eval()
    o32.eval()
    tol = 3e-2 if dtype == torch.bfloat16 else 4e-3
    for a, b in zip(p16, p32):
        assert a.dtype == dtype and o16.state[a]["z"].dtype == dtype
        torch.testing.assert_close(a.float(), b, rtol=tol, atol=tol)


def test_mixed_dtypes_layouts_and_devices_in_one_group():
    """float32 and float64 in one group (one call each), a transposed param (walked flat)
    and a strided view (the torch path) agree with the package."""
    base = torch.randn(8, 6, dtype=torch.float64)
    po = [torch.randn(10, 3).requires_grad_(), torch.randn(50, dtype=torch.float64).requires_grad_(),
          torch.randn(6, 4).t().requires_grad_(), base[:, ::2].requires_grad_()]
    pt = [p.detach().clone().requires_grad_() if p.is_contiguous() else
          p.detach().clone(memory_format=torch.preserve_format).requires_grad_() for p in po]
    pt[3] = base.clone()[:, ::2].requires_grad_()
    ours, theirs = AdamWScheduleFree(po, weight_decay=0.1, warmup_steps=4), \
        sf.AdamWScheduleFree(pt, weight_decay=0.1, warmup_steps=4, foreach=False)
    ours.train()
    theirs.train()
    for k in range(20):
        for p, q in zip(po, pt):
            g = torch.randn(p.shape, generator=torch.Generator().manual_seed(k), dtype=p.dtype)
            p.grad = g.clone()
            q.grad = g.clone()
        ours.step()
        theirs.step()
    ours.eval()
    theirs.eval()
    for p, q in zip(po, pt):
        _close(p, q, p.dtype)


def test_schedule_as_lr_matches_package_with_lr_set_per_step():
    sched = fastlr.Cosine(1e-2, total_steps=30, min_lr=1e-3)
    po = [p.requires_grad_() for p in _params(torch.float64)]
    pt = [p.detach().clone().requires_grad_() for p in po]
    ours = AdamWScheduleFree(po, lr=sched, warmup_steps=5)
    theirs = sf.AdamWScheduleFree(pt, lr=sched(0), warmup_steps=5, foreach=False)
    assert ours.param_groups[0]["lr"] == sched(0)
    ours.train()
    theirs.train()
    for k in range(35):
        theirs.param_groups[0]["lr"] = sched(k)
        for p, q, g in zip(po, pt, _grads(po, k)):
            p.grad = None if g is None else g.clone()
            q.grad = None if g is None else g.clone()
        ours.step()
        theirs.step()
        assert ours.param_groups[0]["lr"] == sched(k + 1)
    for key in ("lr_max", "weight_sum", "scheduled_lr", "k"):
        assert ours.param_groups[0][key] == theirs.param_groups[0][key]
    for p, q in zip(po, pt):
        _close(p, q, torch.float64)


@pytest.mark.parametrize("name", ["sgd", "adamw", "radam"])
def test_step_in_eval_mode_raises(name):
    ours_cls, _ = PAIRS[name]
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.ones(3)
    opt = ours_cls([p])
    with pytest.raises(RuntimeError, match="not in train mode"):
        opt.step()  # a new optimizer is in eval mode, as the package's
    opt.train()
    opt.step()
    opt.eval()
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match="not in train mode"):
        opt.step()
    assert torch.equal(p.detach(), before)


def test_eval_train_round_trip_and_idempotence():
    p = torch.randn(1000, requires_grad=True)
    opt = SGDScheduleFree([p], lr=0.1)
    opt.train()
    for k in range(5):
        p.grad = torch.randn(1000, generator=torch.Generator().manual_seed(k))
        opt.step()
    y = p.detach().clone()
    opt.eval()
    x = p.detach().clone()
    opt.eval()  # already in eval mode: nothing moves
    assert torch.equal(p.detach(), x)
    z = opt.state[p]["z"]
    # y = (1 - momentum)·z + momentum·x, the relation eval() inverts
    torch.testing.assert_close(0.1 * z + 0.9 * x, y, rtol=1e-5, atol=1e-6)
    opt.train()
    torch.testing.assert_close(p.detach(), y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-1.0), "learning rate"),
    (dict(lr=float("nan")), "learning rate"),
    (dict(betas=(0.0, 0.999)), "beta parameter at index 0"),
    (dict(betas=(0.9, 1.0)), "beta parameter at index 1"),
    (dict(betas=(0.9,)), "betas must be a pair"),
    (dict(eps=-1e-8), "epsilon"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(warmup_steps=2.5), "warmup_steps"),
    (dict(r=-1.0), "r"),
    (dict(weight_lr_power=float("inf")), "weight_lr_power"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        AdamWScheduleFree([torch.zeros(2, requires_grad=True)], **kwargs)


def test_bad_momentum_and_type_errors():
    with pytest.raises(ValueError, match="Momentum must be between 0 and 1"):
        SGDScheduleFree([torch.zeros(2, requires_grad=True)], momentum=1.0)
    with pytest.raises(TypeError, match="learning rate"):
        SGDScheduleFree([torch.zeros(2, requires_grad=True)], lr="0.1")
    with pytest.raises(ValueError, match="1-element"):
        SGDScheduleFree([torch.zeros(2, requires_grad=True)], lr=torch.ones(2))


def test_bad_grad_raises_before_anything_changes():
    a, b = torch.randn(4, requires_grad=True), torch.randn(5, requires_grad=True)
    opt = AdamWScheduleFree([{"params": [a]}, {"params": [b]}])
    opt.train()
    a.grad = torch.ones(4)
    b.grad = torch.ones(5)
    opt.step()
    snapshot = [a.detach().clone(), b.detach().clone()] + [
        t.clone() for p in (a, b) for t in opt.state[p].values()]
    groups = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    b.grad = torch.ones(5).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    after = [a.detach(), b.detach()] + [t for p in (a, b) for t in opt.state[p].values()]
    assert all(torch.equal(x, y) for x, y in zip(snapshot, after))
    assert groups == [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    b.grad = None
    with pytest.raises(TypeError, match="complex"):
        c = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
        opt.add_param_group({"params": [c]})
        c.grad = torch.ones(2, dtype=torch.complex64)
        opt.step()
    assert torch.equal(a.detach(), snapshot[0])


def test_param_group_added_after_train_follows_the_mode():
    a, b = torch.randn(4, requires_grad=True), torch.randn(3, requires_grad=True)
    opt = SGDScheduleFree([a], lr=0.1)
    opt.train()
    opt.add_param_group({"params": [b]})
    assert opt.param_groups[1]["train_mode"] is True
    for k in range(3):
        a.grad, b.grad = torch.ones(4), torch.ones(3)
        opt.step()
    y = b.detach().clone()
    opt.eval()
    assert not torch.equal(b.detach(), y)  # the new group was switched to x too


def test_closure_and_no_grad_params():
    p = torch.randn(5, requires_grad=True)
    q = torch.randn(5, requires_grad=True)
    opt = RAdamScheduleFree([p, q], silent_sgd_phase=False)
    opt.train()

    def closure():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() > 0
    assert "z" in opt.state[p] and q not in opt.state  # q had no grad: no state, as the package
    assert opt.param_groups[0]["k"] == 1


# ------------------------------------------------------------------ NumPy face ---

NUMPY_CLASSES = {
    "sgd": fastlr.numpy.SGDScheduleFree,
    "adamw": fastlr.numpy.AdamWScheduleFree,
    "radam": fastlr.numpy.RAdamScheduleFree,
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,i", CASES)
def test_numpy_class_matches_package(name, i, dtype):
    opts = OPTIONS[name][i]
    pt = [p.requires_grad_() for p in _params(dtype)]
    arrays = [p.detach().numpy().copy() for p in pt]
    ours = NUMPY_CLASSES[name](arrays, **opts)
    theirs = PAIRS[name][1](pt, foreach=False, **opts)
    ours.train()
    theirs.train()
    for k in range(STEPS):
        grads = _grads(pt, k)
        for q, g in zip(pt, grads):
            q.grad = g
        ours.step([None if g is None else g.numpy().copy() for g in grads])
        theirs.step()
        if k in SWITCHES:
            ours.eval()
            theirs.eval()
            for a, q in zip(arrays, pt):
                _close(torch.from_numpy(a), q.detach(), dtype)
            ours.train()
            theirs.train()
    ours.eval()
    theirs.eval()
    for a, q in zip(arrays, pt):
        _close(torch.from_numpy(a), q.detach(), dtype)
    for key in ("k", "lr_max", "weight_sum", "scheduled_lr"):
        assert ours.param_groups[0][key] == theirs.param_groups[0][key]
    # the package's state dict loads here and the next steps agree
    fresh = NUMPY_CLASSES[name]([a.copy() for a in arrays], **opts)
    fresh.load_state_dict(theirs.state_dict())
    for s in range(len(arrays)):
        assert fresh.state[s].keys() == ours.state[s].keys()
        for key in fresh.state[s]:
            _close(torch.from_numpy(fresh.state[s][key]), torch.from_numpy(ours.state[s][key]), dtype)
    assert fresh.param_groups[0]["k"] == STEPS and fresh.param_groups[0]["train_mode"] is False


def test_numpy_kernels_equal_torch_path_bit_for_bit():
    """fastlr.adamw_schedulefree_step and fastlr.optim run the same C++ kernel."""
    ps = [torch.randn(s, dtype=torch.float32) for s in SHAPES]
    opt = AdamWScheduleFree(ps, lr=1e-2, weight_decay=0.1, warmup_steps=3)
    ys = [p.numpy().copy() for p in ps]
    zs = [y.copy() for y in ys]
    vs = [np.zeros_like(y) for y in ys]
    lr_max, weight_sum = -1.0, 0.0
    opt.train()
    for step in range(1, 8):
        gs = [torch.randn(p.shape, generator=torch.Generator().manual_seed(step)) for p in ps]
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
        out = fastlr.adamw_schedulefree_step(ys, [g.numpy() for g in gs], zs, vs, step=step, lr=1e-2,
                                             weight_decay=0.1, warmup_steps=3, lr_max=lr_max,
                                             weight_sum=weight_sum)
        lr_max, weight_sum = out.lr_max, out.weight_sum
        assert (out.scheduled_lr, lr_max, weight_sum) == tuple(
            opt.param_groups[0][k] for k in ("scheduled_lr", "lr_max", "weight_sum"))
    opt.eval()
    fastlr.schedulefree_eval(ys, zs, beta1=0.9)
    for p, y, z, v in zip(ps, ys, zs, vs):
        np.testing.assert_array_equal(p.numpy(), y)
        np.testing.assert_array_equal(opt.state[p]["z"].numpy(), z)
        np.testing.assert_array_equal(opt.state[p]["exp_avg_sq"].numpy(), v)


@pytest.mark.parametrize("call,match", [
    (lambda y, g, z, v: fastlr.adamw_schedulefree_step(y, g, z, v.astype(np.float64), step=1, lr=0.1),
     "exp_avg_sqs"),
    (lambda y, g, z, v: fastlr.adamw_schedulefree_step(y, g, z, None, step=1, lr=0.1), "exp_avg_sqs"),
    (lambda y, g, z, v: fastlr.adamw_schedulefree_step(y, g, z, v, step=0, lr=0.1), "step"),
    (lambda y, g, z, v: fastlr.adamw_schedulefree_step(y, g, z, v, step=1, lr=0.1, beta1=0.0), "beta1"),
    (lambda y, g, z, v: fastlr.radam_schedulefree_step(y, g, z, v, step=1, lr=0.1, beta2=1.0), "beta2"),
    (lambda y, g, z, v: fastlr.sgd_schedulefree_step(y, g, z[:3], step=1, lr=0.1), "zs"),
    (lambda y, g, z, v: fastlr.sgd_schedulefree_step(y, g, y, step=1, lr=0.1), "twice"),
    (lambda y, g, z, v: fastlr.sgd_schedulefree_step(y, g, z, step=1, lr=-0.1), "lr"),
    (lambda y, g, z, v: fastlr.sgd_schedulefree_step(y, g, z, step=1, lr=0.1, warmup_steps=1.5),
     "warmup_steps"),
    (lambda y, g, z, v: fastlr.schedulefree_eval(y, z[::2], beta1=0.9), "zs"),
    (lambda y, g, z, v: fastlr.schedulefree_train(y, z, beta1=1.0), "beta1"),
])
def test_numpy_bad_input_raises_before_anything_changes(call, match):
    y = np.linspace(-1, 1, 6, dtype=np.float32)
    g, z, v = np.ones_like(y), y[::-1].copy(), np.full_like(y, 0.5)
    before = [a.copy() for a in (y, g, z, v)]
    with pytest.raises((ValueError, TypeError), match=match):
        call(y, g, z, v)
    for a, b in zip((y, g, z, v), before):
        np.testing.assert_array_equal(a, b)


def test_numpy_class_step_in_eval_mode_and_bad_grads():
    w = np.zeros(4, np.float32)
    opt = fastlr.numpy.AdamWScheduleFree([w])
    with pytest.raises(RuntimeError, match="not in train mode"):
        opt.step([np.ones(4, np.float32)])
    opt.train()
    with pytest.raises(ValueError, match="grads\\[0\\]"):
        opt.step([np.ones(5, np.float32)])
    assert not opt.state and opt.param_groups[0]["k"] == 0
    with pytest.raises(ValueError, match="beta"):
        fastlr.numpy.AdamWScheduleFree([w], betas=(0.9, 1.5))


def test_bench_schedulefree_rows(tmp_path, capsys):
    pytest.importorskip("tqdm")
    import json

    from fastlr import cli

    out = tmp_path / "sf.json"
    argv = ["bench", "--schedulefree", "--quick", "--workload", "small", "--threads", "1", "--reps", "1",
            "--no-progress", "--json", str(out)]
    assert cli.main(argv) == 0
    data = json.loads(out.read_text())
    rows = {r["optimizer"]: r for r in data["results"]}
    assert set(rows) == {"adamw_sf", "switch"} and data["meta"]["suite"] == "schedulefree"
    step = rows["adamw_sf"]
    assert step["bytes_per_element"] == 28 and step["package"] == sf_version()
    assert set(step["contenders"]) == {"roofline", "fastlr", "fastlr_np", "foreach", "forloop"}
    assert step["speedup_vs_package_best"] > 0 and step["roofline_gbps"] > 0
    assert set(rows["switch"]["contenders"]) == {"roofline", "fastlr", "forloop"}
    text = capsys.readouterr().out
    assert "| AdamW-SF(wd=0.01) | 28 |" in text and "| eval()+train() | 24 |" in text


def sf_version():
    from importlib.metadata import version

    return version("schedulefree")


# ------------------------------------------------------------ precision options ---


def _steps(opts_and_params, n, switch_at=(4,)):
    """Same grads (rounded to the first param list's dtype) for every optimizer."""
    for k in range(n):
        for opt, ps in opts_and_params:
            for i, p in enumerate(ps):
                g = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * k + i))
                p.grad = g.to(opts_and_params[0][1][0].dtype).to(p.dtype)
            opt.step()
            if k in switch_at:
                opt.eval()
                opt.train()


@pytest.mark.parametrize("name", ["sgd", "adamw", "radam"])
def test_master_weights_follow_the_float32_trajectory_bit_for_bit(name):
    cls = PAIRS[name][0]
    opts = dict(OPTIONS[name][1])
    p16 = [p.to(torch.bfloat16).requires_grad_() for p in _params(torch.float32)]
    p32 = [p.detach().float().requires_grad_() for p in p16]
    o16 = cls(p16, master_weights=True, **opts)
    o32 = cls(p32, **opts)
    o16.train()
    o32.train()
    _steps([(o16, p16), (o32, p32)], 12)
    o16.eval()
    o32.eval()
    for a, b in zip(p16, p32):
        st, ref = o16.state[a], o32.state[b]
        assert st["master_param"].dtype == torch.float32 and st["z"].dtype == torch.float32
        assert torch.equal(st["master_param"], b.detach())
        assert torch.equal(a.detach(), b.detach().bfloat16())
        for key in ref:
            assert torch.equal(st[key], ref[key]), key
    assert o16.param_groups[0]["master_weights"] is True
    # a state dict with masters loads into a new optimizer and the runs stay identical
    q16 = [p.detach().clone().requires_grad_() for p in p16]
    o = cls(q16, master_weights=True, **opts)
    o.load_state_dict(copy.deepcopy(o16.state_dict()))  # torch's loading shares same-dtype tensors
    assert o.state[q16[1]]["master_param"].dtype == torch.float32
    o.train()
    o16.train()
    _steps([(o16, p16), (o, q16)], 5)
    for a, b in zip(p16, q16):
        assert torch.equal(a, b) and torch.equal(o16.state[a]["master_param"], o.state[b]["master_param"])


def test_state_dtype_bfloat16_rounds_state_to_nearest_each_step():
    ps = [p.requires_grad_() for p in _params(torch.float32)]
    ref_ps = [p.detach().clone().requires_grad_() for p in ps]
    opt = AdamWScheduleFree(ps, lr=1e-2, state_dtype=torch.bfloat16, warmup_steps=3)
    ref = AdamWScheduleFree(ref_ps, lr=1e-2, warmup_steps=3)
    for p in ref_ps:  # the reference stores its state rounded to bfloat16 by hand
        ref.state[p]["z"] = p.detach().bfloat16().float()
        ref.state[p]["exp_avg_sq"] = torch.zeros_like(p)
    opt.train()
    ref.train()
    for k in range(10):
        for a, b in zip(ps, ref_ps):
            a.grad = b.grad = torch.randn(a.shape, generator=torch.Generator().manual_seed(k))
        opt.step()
        ref.step()
        for p in ref_ps:
            for key in ("z", "exp_avg_sq"):
                ref.state[p][key].copy_(ref.state[p][key].bfloat16())
    for a, b in zip(ps, ref_ps):
        assert opt.state[a]["z"].dtype == torch.bfloat16
        assert torch.equal(a, b)
        for key in ("z", "exp_avg_sq"):
            assert torch.equal(opt.state[a][key].float(), ref.state[b][key])


def test_stochastic_rounding_is_refused_for_now():
    with pytest.raises(NotImplementedError, match="stochastic_rounding"):
        SGDScheduleFree([torch.zeros(2, dtype=torch.bfloat16, requires_grad=True)],
                        stochastic_rounding=True)


def test_precision_options_are_validated():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(TypeError, match="state_dtype"):
        AdamWScheduleFree([p], state_dtype=torch.int8)
    with pytest.raises(TypeError, match="master_weights"):
        SGDScheduleFree([p], master_weights=1)
    opt = RAdamScheduleFree([p])
    assert "master_weights" not in opt.param_groups[0]  # defaults keep the package's groups


def test_refused_param_group_and_state_dict_change_nothing():
    a = torch.zeros(3, requires_grad=True)
    opt = AdamWScheduleFree([a])
    with pytest.raises(ValueError, match="beta parameter at index 0"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "betas": (0.0, 0.9)})
    assert len(opt.param_groups) == 1
    sd = opt.state_dict()
    sd["param_groups"][0]["weight_decay"] = -1.0
    with pytest.raises(ValueError, match="weight_decay"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["weight_decay"] == 0


def test_readme_blocks_run(tmp_path, monkeypatch):
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Schedule-free optimizers"):]
    section = section[:section.index("\n### ", 10)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "checkpoint.pt").exists()
