"""CUDA kernels (fastlr._C_cuda, fastlr/_cuda.py) and fastlr.optim on CUDA params.

Parity with torch.optim on the GPU for every optim_db configuration of the five
optimizers; every dtype, tail and alignment against fastlr's CPU kernels; CUDA-graph
capture and replay of 100 steps with a OneCycle schedule equal to eager stepping;
GradScaler's grad_scale / found_inf in the kernel; schedules evaluated on the device.
Skipped without a CUDA device or without the extension (FASTLR_CUDA=1 build).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastlr  # noqa: E402
from fastlr import _cuda as fc  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not fc.available(), reason="needs a CUDA device and FASTLR_CUDA=1 build"),
]

NAMES = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]
SHAPES = [(0,), (1,), (3,), (7, 5), (1031,), (70001,), (64, 33)]
DEV = "cuda"


def _optim_db_inputs():
    if not fc.available():  # importing optim_db costs seconds; the tests skip anyway
        return [pytest.param("SGD", {}, id="optim_db")]
    try:
        from torch.testing._internal.common_optimizers import optim_db
    except ImportError:  # torch's test helpers need expecttest: use the same kinds of configs
        return [pytest.param(n, kw, id=f"{n}-{i}") for i, (n, kw) in enumerate(_FALLBACK_DB)]

    out = []
    for info in optim_db:
        name = info.optim_cls.__name__
        if name not in NAMES:
            continue
        for inp in info.optim_inputs_func(device=DEV, dtype=torch.float32):
            kw = dict(inp.kwargs)
            if kw.get("differentiable"):
                continue
            out.append(pytest.param(name, kw, id=f"{name}-{inp.desc}"))
    return out


# optim_db's configurations (torch 2.11), for when torch.testing._internal cannot import.
_FALLBACK_DB = [
    ("SGD", {}), ("SGD", dict(lr=0.01)), ("SGD", dict(lr=torch.tensor(0.001))),
    ("SGD", dict(momentum=0.9)), ("SGD", dict(momentum=0.9, dampening=0.5)),
    ("SGD", dict(momentum=0.9, weight_decay=0.1)),
    ("SGD", dict(momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("SGD", dict(weight_decay=0.1, maximize=True)),
    ("Adam", {}), ("Adam", dict(lr=0.01)), ("Adam", dict(lr=torch.tensor(0.001))),
    ("Adam", dict(weight_decay=0.1)), ("Adam", dict(weight_decay=0.1, maximize=True)),
    ("Adam", dict(amsgrad=True)), ("Adam", dict(weight_decay=0.1, amsgrad=True, capturable=True)),
    ("Adam", dict(betas=(torch.tensor(0.9), torch.tensor(0.99)))),
    ("Adam", dict(weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", {}), ("AdamW", dict(lr=0.01)), ("AdamW", dict(weight_decay=0.1, maximize=True)),
    ("AdamW", dict(amsgrad=True, weight_decay=0.1)),
    ("RMSprop", {}), ("RMSprop", dict(lr=0.01)), ("RMSprop", dict(weight_decay=0.1)),
    ("RMSprop", dict(weight_decay=0.1, centered=True)),
    ("RMSprop", dict(weight_decay=0.1, centered=True, momentum=0.1)),
    ("RMSprop", dict(weight_decay=0.1, centered=True, momentum=0.1, maximize=True)),
    ("RMSprop", dict(weight_decay=0.1, momentum=0.1, capturable=True)),
    ("Adagrad", {}), ("Adagrad", dict(lr=0.01)), ("Adagrad", dict(weight_decay=0.1)),
    ("Adagrad", dict(weight_decay=0.1, maximize=True)), ("Adagrad", dict(lr=0.1, lr_decay=0.5)),
    ("Adagrad", dict(initial_accumulator_value=0.1, weight_decay=0.1)),
]


def _params(dtype, device, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).to(device) for s in shapes]


def _grads(params, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]
            for _ in range(steps)]


def _run(opt_cls, params, grads_seq, **kw):
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    opt = opt_cls(ps, **kw)
    for gs in grads_seq:
        for p, g in zip(ps, gs):
            p.grad = g.to(p.device)
        opt.step()
    return ps, opt


# --------------------------------------------------------- parity with torch ---

@pytest.mark.parametrize("name,kw", _optim_db_inputs())
def test_optim_db_parity_with_torch_on_cuda(name, kw):
    import fastlr.optim

    params = _params(torch.float32, DEV)
    grads = _grads(params, 6)
    try:
        ref, _ = _run(getattr(torch.optim, name), params, grads, **kw)
    except (RuntimeError, ValueError, TypeError) as e:  # a torch-side unsupported combination
        pytest.skip(f"torch.optim.{name} rejects {kw}: {e}")
    got, opt = _run(getattr(fastlr.optim, name), params, grads, **kw)
    # torch's CUDA kernels contract grad + weight_decay * param into an FMA, fastlr does
    # not (it matches its CPU path, test below): where that sum nearly cancels, RMSprop's
    # g / sqrt(v) amplifies the last-bit difference (seen: 1 element of 70001, 1e-4).
    loose = name == "RMSprop" and kw.get("weight_decay", 0) != 0
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=2e-4 if loose else 2e-5, atol=2e-4 if loose else 2e-6)
    for p in got:  # torch's fused/capturable layout
        st = opt.state[p]
        if "step" in st:
            assert st["step"].device.type == "cuda" and st["step"].dtype == torch.float32
            assert float(st["step"]) == 6


# ------------------------------------------ every dtype / tail vs the CPU path ---

CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
    ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-2, centered=True, momentum=0.9, weight_decay=0.1)),
    ("RMSprop", dict(lr=1e-2, momentum=0.5, maximize=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, maximize=True)),
]
TOL = {torch.float32: 1e-6, torch.float64: 1e-13, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("name,kw", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_cuda_matches_cpu_kernels(name, kw, dtype):
    import fastlr.optim

    cls = getattr(fastlr.optim, name)
    params = _params(dtype, "cpu", seed=3)
    grads = _grads(params, 5, seed=4)
    cpu, _ = _run(cls, params, grads, **kw)
    gpu, _ = _run(cls, [p.to(DEV) for p in params], grads, **kw)
    for c, g in zip(cpu, gpu):
        torch.testing.assert_close(g.cpu().double(), c.double(), rtol=TOL[dtype], atol=TOL[dtype])


def test_unaligned_and_mixed_dtypes_in_one_call():
    # storage offsets of 1 element: the scalar path; several dtypes: one launch each
    base = [torch.randn(1001, device=DEV)[1:], torch.randn(50, device=DEV, dtype=torch.float64),
            torch.randn(4099, device=DEV, dtype=torch.bfloat16)[3:]]
    params = [b.clone() if i == 1 else b for i, b in enumerate(base)]
    grads = [torch.randn_like(p) for p in params]
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    steps = [torch.zeros((), device=DEV) for _ in params]
    ref = [p.detach().cpu().clone() for p in params]
    fc.adam(params, grads, exp_avgs, exp_avg_sqs, steps=steps, lr=0.1)
    for s in steps:
        assert float(s) == 1.0
    for p, r in zip(params, ref):
        # Adam's first step moves every element by lr (up to eps and bf16 rounding)
        d = (p.cpu().double() - r.double()).abs()
        assert torch.all((d - 0.1).abs() < 0.02)


# ------------------------------------------------------------ graph capture ---

def _adam_state(params):
    return ([torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params],
            [torch.zeros((), device=DEV) for _ in params])


def test_graph_capture_onecycle_equals_eager_and_torch():
    sched = fastlr.OneCycle(0.05, total_steps=110)
    params0 = _params(torch.float32, DEV, seed=5, shapes=[(300,), (17, 9), (1,)])
    grads = _grads(params0, 103, seed=6)

    def step(ps, gs, m, v, st):
        fc.adam(ps, gs, m, v, steps=st, lr=1.0, lr_schedule=sched, weight_decay=0.01,
                decoupled_weight_decay=True)

    # eager
    pe = [p.clone() for p in params0]
    me, ve, se = _adam_state(pe)
    for gs in grads:
        step(pe, [g.to(DEV) for g in gs], me, ve, se)

    # graph: 3 eager warm-up steps, capture one, replay 100 times
    pg = [p.clone() for p in params0]
    mg, vg, sg = _adam_state(pg)
    static_g = [torch.zeros_like(p) for p in pg]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for gs in grads[:3]:
            for d, g in zip(static_g, gs):
                d.copy_(g)
            step(pg, static_g, mg, vg, sg)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(pg, static_g, mg, vg, sg)
    for gs in grads[3:]:
        for d, g in zip(static_g, gs):
            d.copy_(g)
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(pe, pg):
        assert torch.equal(a, b)
    assert float(sg[0]) == 103

    # torch.optim.AdamW + OneCycleLR (a host-side scheduler) on the same trajectory
    pt = [p.clone().requires_grad_(True) for p in params0]
    opt = torch.optim.AdamW(pt, lr=0.05, weight_decay=0.01, foreach=False)
    lrs = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=110, cycle_momentum=False)
    for gs in grads:
        for p, g in zip(pt, gs):
            p.grad = g.to(DEV)
        opt.step()
        lrs.step()
    for a, b in zip(pe, pt):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


def test_optim_step_capture_with_schedule_equals_eager():
    import fastlr.optim

    params0 = _params(torch.float32, DEV, seed=7, shapes=[(257,), (8, 8)])
    grads = _grads(params0, 103, seed=8)

    def make():
        ps = [p.clone().requires_grad_(True) for p in params0]
        return ps, fastlr.optim.Adam(ps, lr=fastlr.OneCycle(0.05, total_steps=110),
                                     betas=(fastlr.OneCycleMomentum(110), 0.99))

    pe, oe = make()
    for gs in grads:
        for p, g in zip(pe, gs):
            p.grad = g.to(DEV)
        oe.step()

    pg, og = make()
    for p in pg:
        p.grad = torch.zeros_like(p)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for gs in grads[:3]:
            for p, g in zip(pg, gs):
                p.grad.copy_(g)
            og.step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        og.step()
    for gs in grads[3:]:
        for p, g in zip(pg, gs):
            p.grad.copy_(g)
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(pe, pg):
        assert torch.equal(a, b)


# --------------------------------------------------------------- GradScaler ---

def test_found_inf_skips_everything_and_grad_scale_unscales():
    params = _params(torch.float32, DEV, seed=9, shapes=[(1000,), (33,)])
    grads = [torch.randn_like(p) for p in params]
    m, v, st = _adam_state(params)
    counter = torch.zeros((), device=DEV)
    before = [t.clone() for t in params + m + v + st] + [counter.clone()]
    fc.adam(params, grads, m, v, steps=st, lr=0.1, lr_schedule=fastlr.Cosine(1.0, 10),
            schedule_step=counter, grad_scale=torch.full((1,), 4.0, device=DEV),
            found_inf=torch.ones((1,), device=DEV))
    for a, b in zip(before, params + m + v + st + [counter]):
        assert torch.equal(a, b)
    # not skipped: grads * 4 with grad_scale 4 is the unscaled step
    ref = [p.clone() for p in params]
    rm, rv, rs = _adam_state(ref)
    fc.adam(ref, grads, rm, rv, steps=rs, lr=0.1)
    fc.adam(params, [g * 4 for g in grads], m, v, steps=st, lr=0.1,
            grad_scale=torch.full((1,), 4.0, device=DEV), found_inf=torch.zeros((1,), device=DEV))
    for a, b in zip(params, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float(st[0]) == 1.0


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "Adagrad"])
def test_gradscaler_with_fastlr_optim(name):
    import fastlr.optim

    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4).to(DEV)
    ref_model = torch.nn.Linear(16, 4).to(DEV)
    ref_model.load_state_dict(model.state_dict())
    kw = dict(lr=0.01, momentum=0.9) if name in ("SGD", "RMSprop") else dict(lr=0.01)
    opt = getattr(fastlr.optim, name)(model.parameters(), **kw)
    ref = getattr(torch.optim, name)(ref_model.parameters(), **kw)
    sc, rsc = torch.amp.GradScaler("cuda", init_scale=1024.0), torch.amp.GradScaler("cuda", init_scale=1024.0)
    x = torch.randn(8, 16, device=DEV)
    for i in range(4):
        for mdl, o, s in ((model, opt, sc), (ref_model, ref, rsc)):
            o.zero_grad()
            loss = mdl(x).square().mean() * (float("inf") if i == 1 else 1.0)
            s.scale(loss).backward()
            s.step(o)
            s.update()
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- schedules ---

@pytest.mark.parametrize("sched", [
    fastlr.Constant(0.1), fastlr.StepDecay(0.1, 7), fastlr.MultiStep(0.1, [3, 9, 9]),
    fastlr.Exponential(0.1, 0.97), fastlr.InverseTime(0.1, 0.5, 3, True), fastlr.Polynomial(0.1, 40),
    fastlr.Linear(0.1, 0.01, 30), fastlr.Cosine(0.1, 50, 0.001), fastlr.CosineRestarts(0.1, 10, 2),
    fastlr.Cyclic(0.01, 0.1, 5, mode="exp_range", gamma=0.99), fastlr.OneCycle(0.1, 100),
    fastlr.OneCycleMomentum(100, three_phase=True), fastlr.Warmup(fastlr.Cosine(0.1, 50), 10),
    fastlr.InverseSqrt(0.1, 10), fastlr.Sequential([fastlr.Constant(0.1), fastlr.Cosine(0.1, 20)], [5]),
    fastlr.RangeTest(1e-6, 1.0, 50),
], ids=repr)
def test_device_schedule_equals_host(sched):
    t = np.arange(0, 200)
    host = sched.values(t)
    dev = fc.schedule_values(sched, torch.from_numpy(t).to(DEV)).cpu().numpy()
    np.testing.assert_allclose(dev, host, rtol=1e-12, atol=0)


def test_copy_probe():
    src = torch.randn(1 << 20, device=DEV)
    dst = torch.empty_like(src)
    fc.copy_(dst, src)
    assert torch.equal(dst, src)


def test_whole_training_step_capture_equals_eager():
    """The README's recipe: forward, backward and fastlr.optim step in one CUDA graph."""
    import fastlr.optim

    torch.manual_seed(0)
    data = [(torch.randn(32, 20, device=DEV), torch.randn(32, 3, device=DEV)) for _ in range(40)]

    def make():
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3)).to(DEV)
        opt = fastlr.optim.AdamW(model.parameters(), lr=fastlr.OneCycle(1e-2, total_steps=50),
                                 weight_decay=0.01)
        return model, opt

    def step(model, opt, x, y):
        opt.zero_grad(set_to_none=False)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    me, oe = make()
    for x, y in data:
        step(me, oe, x, y)

    mg, og = make()
    sx, sy = data[0][0].clone(), data[0][1].clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for x, y in data[:3]:
            sx.copy_(x)
            sy.copy_(y)
            step(mg, og, sx, sy)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(mg, og, sx, sy)
    for x, y in data[3:]:
        sx.copy_(x)
        sy.copy_(y)
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(me.parameters(), mg.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
