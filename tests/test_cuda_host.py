"""fastlr.optim's cached CUDA launches (fastlr/optim/_cuda.py DeviceStep), without a GPU.

A test double routes CPU params through the CUDA path and records the launches instead
of running them. Every step's recorded arguments (addresses, numels, dtype codes,
scalars, step counters) must equal those of a fresh, fully validating gather of the
current tensors: a cached launch may never pass something stale, whatever changed in
between (`p.data = ...`, state tensors replaced, load_state_dict, add_param_group, grads
of another dtype or shape). Bad input raises what the uncached path raises, before any
launch. The kernels' results on a GPU are tests/test_cuda.py's.
"""
import copy
import inspect
import types
import warnings

import pytest

torch = pytest.importorskip("torch")

import fastlr  # noqa: E402
import fastlr.optim  # noqa: E402
from fastlr import _cuda as fc  # noqa: E402
from fastlr.optim import _base  # noqa: E402
from fastlr.optim import _cuda as oc  # noqa: E402


def _frozen(x):
    return tuple(_frozen(v) for v in x) if isinstance(x, (list, tuple)) else x


_COMMON = ("device", "stream", "steps", "step_dtype", "increment", "grad_scale", "found_inf",
           "lr_schedule", "schedule_step")
_HEAD = ("dtype", "numel", "params", "grads")
# csrc/cuda/bindings.cpp's arguments, in order: a launch must name each exactly once
_BINDINGS = {
    "sgd": _HEAD + ("momentum_buffers", "first", "lr", "momentum", "dampening", "nesterov",
                    "weight_decay", "maximize") + _COMMON + ("momentum_schedule",),
    "adam": _HEAD + ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "lr", "beta1", "beta2", "eps",
                     "weight_decay", "decoupled_weight_decay", "amsgrad", "maximize")
    + _COMMON + ("beta1_schedule",),
    "rmsprop": _HEAD + ("square_avgs", "grad_avgs", "momentum_buffers", "first", "lr", "alpha",
                        "eps", "weight_decay", "momentum", "centered", "maximize")
    + _COMMON + ("momentum_schedule",),
    "adagrad": _HEAD + ("state_sums", "lr", "lr_decay", "weight_decay", "eps", "maximize") + _COMMON,
}


@pytest.fixture
def launches(monkeypatch):
    """The launches made, as (kernel, {argument: value} without the stream);
    .prepared counts the validating gathers (cache misses)."""
    rec = _Launches()

    def kernel(name):
        sig = inspect.Signature([inspect.Parameter(a, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                 for a in _BINDINGS[name]])

        def launch(*args, **kwargs):
            bound = sig.bind(*args, **kwargs).arguments
            del bound["stream"]
            rec.calls.append((name, {k: _frozen(v) for k, v in bound.items()}))
        return launch

    fake = types.SimpleNamespace(**{k: kernel(k) for k in _BINDINGS})
    monkeypatch.setattr(fc, "_C_cuda", fake)
    monkeypatch.setattr(fc, "_DEVICE_TYPE", "cpu")
    monkeypatch.setattr(fc, "_stream", lambda index: 0)
    monkeypatch.setattr(fc, "_encodings", {})
    monkeypatch.setattr(oc, "_counters", type(oc._counters)())
    monkeypatch.setattr(_base, "_CPU", "no CPU params here")
    prepare = fc._prepare

    def counting_prepare(*args, **kwargs):
        rec.prepared += 1
        return prepare(*args, **kwargs)

    monkeypatch.setattr(fc, "_prepare", counting_prepare)
    return rec


class _Launches:
    def __init__(self):
        self.calls = []
        self.prepared = 0

    def take(self):
        out, self.calls = self.calls, []
        return out


def _fresh(opt, launches):
    """The launches a fresh gather of opt's current tensors makes (the uncached path)."""
    launches.take()
    for group in opt.param_groups:
        params, grads, seen = [], [], set()
        for p in group["params"]:
            if p.grad is not None and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
                grads.append(p.grad)
        if params:
            oc.step_group(opt._kind, group, params, grads, [opt.state[p] for p in params],
                          getattr(opt, "grad_scale", None), getattr(opt, "found_inf", None))
    return launches.take()


DTYPES = [torch.float32, torch.bfloat16, torch.float32, torch.float64, torch.float16, torch.float32]
SHAPES = [(5, 3), (7,), (1,), (4, 4), (9,), (0,)]


def _params(dtypes=DTYPES, shapes=SHAPES):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen).to(d).requires_grad_(True) for s, d in zip(shapes, dtypes)]


def _new_grads(params):
    for p in params:
        p.grad = torch.randn_like(p)  # new tensors each step, as after zero_grad(set_to_none=True)


CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
    ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-2, centered=True, momentum=0.5)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01)),
    ("Adam", dict(lr=fastlr.Cosine(1e-2, 20), betas=(fastlr.OneCycleMomentum(20), 0.99))),
    ("SGD", dict(lr=fastlr.Linear(0.1, 0.01, 20), momentum=0.9)),
]


@pytest.mark.parametrize("name,kw", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_cached_launches_equal_a_fresh_gather(launches, name, kw):
    params = _params()
    opt = getattr(fastlr.optim, name)(params, **kw)
    group = opt.param_groups[0]
    for step in range(6):
        _new_grads(params)
        if step == 4 and "lr_schedule" not in group:
            group["lr"] *= 0.5  # as a torch LRScheduler does: read every step
        before = launches.prepared
        opt.step()
        got = launches.take()
        assert {c[0] for c in got} == {opt._kind}
        # one launch per dtype, covering every param once
        assert sorted(c[1]["dtype"] for c in got) == [0, 1, 2, 3]
        assert sum(len(c[1]["params"]) for c in got) == len(params)
        if step >= 3:  # states exist and the plan settled: the cached launches
            assert launches.prepared == before
        if step >= 1:  # (a fresh gather would not see step 0's first-step flags)
            assert got == _fresh(opt, launches)
    if "lr_schedule" not in group:
        assert got[0][1]["lr"] == kw["lr"] * 0.5


def test_launch_addresses_are_the_tensors(launches):
    params = _params([torch.float32] * 3, [(3,), (4, 2), (1,)])
    opt = fastlr.optim.Adam(params, lr=0.1)
    for _ in range(3):
        _new_grads(params)
        launches.take()
        opt.step()
    (kernel, a), = launches.take()
    st = [opt.state[p] for p in params]
    assert kernel == "adam" and a["dtype"] == 0 and a["numel"] == (3, 8, 1)
    assert a["params"] == tuple(p.data_ptr() for p in params)
    assert a["grads"] == tuple(p.grad.data_ptr() for p in params)
    assert a["exp_avgs"] == tuple(s["exp_avg"].data_ptr() for s in st)
    assert a["exp_avg_sqs"] == tuple(s["exp_avg_sq"].data_ptr() for s in st)
    assert a["max_exp_avg_sqs"] is None  # no amsgrad
    assert a["steps"] == tuple(s["step"].data_ptr() for s in st) == a["increment"]
    assert a["lr"] == 0.1 and a["beta1"] == 0.9 and a["lr_schedule"] == a["schedule_step"] == 0


def _adam(launches, **kw):
    params = _params()
    opt = fastlr.optim.Adam(params, lr=1e-2, **kw)
    for _ in range(3):
        _new_grads(params)
        opt.step()
    launches.take()
    return params, opt


def _step_equals_fresh(opt, params, launches, new_grads=True):
    """One step; its launches (checked against a fresh gather) and whether it gathered."""
    if new_grads:
        _new_grads(params)
    before = launches.prepared
    opt.step()
    got = launches.take()
    gathered = launches.prepared > before
    assert got and got == _fresh(opt, launches)
    return got, gathered


@pytest.mark.parametrize("change", [
    "param_data", "param_data_same_dtype_new_shape", "state_tensor", "state_tensor_data",
    "step_tensor", "state_dict_replaced", "load_state_dict", "add_param_group", "fewer_grads",
    "schedule_attached", "same_grads_kept",
])
def test_a_change_is_never_stale(launches, change):
    params, opt = _adam(launches)
    p = params[0]
    st = opt.state[p]
    if change == "param_data":
        p.data = torch.randn_like(p)
    elif change == "param_data_same_dtype_new_shape":
        p.data = torch.randn(11)
        st["exp_avg"], st["exp_avg_sq"] = torch.zeros(11), torch.zeros(11)
    elif change == "state_tensor":
        st["exp_avg"] = torch.zeros_like(p)
    elif change == "state_tensor_data":
        st["exp_avg_sq"].data = torch.ones_like(p)
    elif change == "step_tensor":
        st["step"] = torch.tensor(7.0)
    elif change == "state_dict_replaced":
        opt.state[p] = {k: v.clone() for k, v in st.items()}
    elif change == "load_state_dict":
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    elif change == "add_param_group":
        extra = _params([torch.float32, torch.bfloat16], [(3,), (2, 2)])
        for q in extra:
            q.grad = torch.randn_like(q)
        opt.add_param_group({"params": extra, "lr": 0.5})
        params = params + extra
    elif change == "schedule_attached":  # by hand; the launches now read a device counter
        opt.param_groups[0].update(lr=fastlr.Cosine(1e-2, 10), schedule_t=0)
    elif change == "fewer_grads":
        opt.zero_grad(set_to_none=True)
        for q in params[::2]:
            q.grad = torch.randn_like(q)
    got, gathered = _step_equals_fresh(opt, params, launches,
                                       new_grads=change not in ("fewer_grads", "same_grads_kept"))
    assert gathered == (change != "same_grads_kept")  # nothing changed: the cache
    if change == "add_param_group":
        assert len(got) == 4 + 2 and {c[1]["lr"] for c in got} == {1e-2, 0.5}
    if change == "fewer_grads":
        assert sum(len(c[1]["params"]) for c in got) == 3
    # and the steps after are still right, cached again
    for _ in range(2):
        got, gathered = _step_equals_fresh(opt, params, launches, new_grads=change != "fewer_grads")
    assert not gathered


def test_param_listed_twice_is_launched_once(launches):
    params = _params([torch.float32] * 2, [(3,), (4,)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the duplicate
        opt = fastlr.optim.Adam([params[0], params[1], params[0]], lr=0.1)
    for _ in range(3):
        _new_grads(params)
        opt.step()
        (_, a), = launches.take()
        assert a["params"] == (params[0].data_ptr(), params[1].data_ptr())


def test_sgd_momentum_switched_on_starts_buffers(launches):
    params = _params()
    opt = fastlr.optim.SGD(params, lr=0.1)
    for _ in range(2):
        _new_grads(params)
        opt.step()
    assert all(c[1]["momentum_buffers"] is None for c in launches.take())
    opt.param_groups[0]["momentum"] = 0.9
    _new_grads(params)
    opt.step()
    got = launches.take()
    assert all(c[1]["first"] == (True,) * len(c[1]["params"]) for c in got)
    assert all(c[1]["momentum_buffers"] is not None for c in got)
    for _ in range(2):
        got, _ = _step_equals_fresh(opt, params, launches)
        assert all(not any(c[1]["first"]) for c in got)


@pytest.mark.parametrize("bad,error,match", [
    ("grad_dtype", TypeError, r"grads\[0\] has dtype torch.float64, expected torch.float32"),
    ("grad_shape", ValueError, r"grads\[0\] has shape \(15,\), expected \(5, 3\)"),
    ("param_dtype", TypeError, r"exp_avgs\[0\] has dtype torch.float32, expected torch.float64"),
    ("grad_scale", TypeError, "grad_scale must be a one-element float32 tensor"),
])
def test_bad_input_raises_as_uncached_before_any_launch(launches, bad, error, match):
    params, opt = _adam(launches)
    p = params[0]
    _new_grads(params)
    kwargs = {}
    if bad == "grad_dtype":  # behind autograd's back, as only `.data` can
        p.grad.data = p.grad.data.double()
    elif bad == "grad_shape":
        p.grad.data = p.grad.data.reshape(15)
    elif bad == "param_dtype":
        p.data = p.data.double()
        p.grad = torch.randn_like(p)
    elif bad == "grad_scale":
        kwargs["grad_scale"] = torch.ones((), dtype=torch.float64)
    with pytest.raises(error, match=match):
        opt.step(**kwargs)
    assert launches.take() == []


def test_non_contiguous_grad_goes_to_torch_then_back(launches):
    params, opt = _adam(launches)
    p = params[0]
    _new_grads(params)
    p.grad = torch.randn(3, 5).t()  # autograd accepts it; the kernel walks memory flat
    ref = [q.detach().clone() for q in params]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step()
    assert launches.take() == []  # torch's implementation, which updates every param
    assert all(not torch.equal(q, r) for q, r in zip(params, ref) if q.numel())
    _step_equals_fresh(opt, params, launches)


def test_complex_params_are_gathered_every_step(launches):
    params = [torch.randn(4, dtype=torch.complex64, requires_grad=True),
              torch.randn(3, requires_grad=True)]
    opt = fastlr.optim.Adam(params, lr=0.1)
    for _ in range(3):
        _new_grads(params)
        opt.step()
        (_, a), = launches.take()
        assert a["numel"] == (8, 3)  # the real view's numel
        assert a["grads"] == tuple(q.grad.data_ptr() for q in params)


def test_functional_api_launches_and_refuses(launches):
    params = _params([torch.float32, torch.bfloat16, torch.float32], [(3,), (5,), (2, 2)])
    grads = [torch.randn_like(p) for p in params]
    m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    shared = torch.zeros(())
    fc.adam(params, grads, m, v, steps=shared, lr=0.1, lr_schedule=fastlr.Cosine(1.0, 10),
            schedule_step=torch.zeros(()))
    got = launches.take()
    assert [(c[1]["dtype"], c[1]["numel"]) for c in got] == [(0, (3, 4)), (2, (5,))]
    assert got[0][1]["params"] == (params[0].data_ptr(), params[2].data_ptr())
    assert got[0][1]["steps"] == (shared.data_ptr(),) * 2
    # the shared counter and the schedule counter advance once, before the first launch
    assert len(got[0][1]["increment"]) == 2 and got[1][1]["increment"] is None
    assert got[0][1]["lr_schedule"] != 0 and got[0][1]["schedule_step"] != 0
    with pytest.raises(ValueError, match="exp_avg_sqs: expected 3 tensors, got 2"):
        fc.adam(params, grads, m, v[:2], steps=shared, lr=0.1)
    with pytest.raises(TypeError, match=r"exp_avgs\[1\] has dtype torch.float32, expected torch.bfloat16"):
        fc.adam(params, grads, [torch.zeros(p.shape) for p in params], v, steps=shared, lr=0.1)
    with pytest.raises(TypeError, match="found_inf must be a one-element float32 tensor"):
        fc.adam(params, grads, m, v, steps=shared, lr=0.1, found_inf=torch.zeros(2))
    with pytest.raises(ValueError, match="a schedule needs a device counter"):
        fc.sgd(params, grads, lr=0.1, lr_schedule=fastlr.Cosine(1.0, 10))
    assert launches.take() == []


def test_schedule_counter_goes_with_the_model(launches):
    """The device counter of a scheduled group is held weakly: deleting the model and its
    optimizer frees the params (a strong table of groups kept every model alive)."""
    import gc
    import weakref

    params = [torch.randn(5, requires_grad=True), torch.randn(3, 2, requires_grad=True)]
    opt = fastlr.optim.AdamW(params, lr=fastlr.Cosine(1e-2, 10))
    for _ in range(3):
        _new_grads(params)
        opt.step()
    calls = launches.take()
    assert len(calls) == 3 and calls[0][1]["schedule_step"] == calls[2][1]["schedule_step"] != 0
    assert len(oc._counters) == 1
    alive = weakref.ref(params[0])
    del params, opt, calls
    gc.collect()
    assert alive() is None and len(oc._counters) == 0


def test_fallback_warning_says_why(launches, monkeypatch):
    monkeypatch.setattr(oc, "_warned", set())
    params, opt = _adam(launches)
    _new_grads(params)
    params[0].grad = torch.randn(3, 5).t()
    with pytest.warns(UserWarning, match="do not fit them .*non-contiguous"):
        opt.step()
    monkeypatch.setattr(fc, "_C_cuda", None)
    _new_grads(params)
    with pytest.warns(UserWarning, match="because they are not built"):
        opt.step()


def test_a_new_schedule_counter_is_never_stale(launches):
    """A group whose device counter is made anew (here: the table forgets it) gathers
    again: a cached launch would increment the old counter's freed memory."""
    params = _params()
    opt = fastlr.optim.Adam(params, lr=fastlr.Cosine(1e-2, 10))
    for _ in range(3):
        _new_grads(params)
        opt.step()
    launches.take()
    got, gathered = _step_equals_fresh(opt, params, launches)
    assert not gathered
    old = got[0][1]["schedule_step"]
    oc._counters.clear()
    got, gathered = _step_equals_fresh(opt, params, launches)
    assert gathered and got[0][1]["schedule_step"] != old
    assert got[0][1]["schedule_step"] in got[0][1]["increment"]


def _state_ids(opt):
    return {id(p): {k: id(v) for k, v in s.items()} for p, s in opt.state.items()}


@pytest.mark.parametrize("name,kw", [
    ("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.1)), ("AdamW", dict(lr=0.1)),
    ("RMSprop", dict(lr=0.1, momentum=0.5, centered=True)), ("Adagrad", dict(lr=0.1)),
])
@pytest.mark.parametrize("bad", ["grad_dtype", "grad_scale"])
def test_bad_first_step_leaves_the_state_untouched(launches, name, kw, bad):
    """A refused first step stores nothing: an uninitialised SGD momentum buffer left in
    the state would be read as history by the next step."""
    params = _params()
    opt = getattr(fastlr.optim, name)(params, **kw)
    _new_grads(params)
    kwargs = {}
    if bad == "grad_dtype":
        params[0].grad.data = params[0].grad.data.double()
    else:
        kwargs["grad_scale"] = torch.ones((), dtype=torch.float64)
    before = _state_ids(opt)
    with pytest.raises(TypeError, match="grads\\[0\\] has dtype|grad_scale must be"):
        opt.step(**kwargs)
    assert launches.take() == [] and _state_ids(opt) == before
    _new_grads(params)
    opt.step()
    got = launches.take()
    if name == "SGD":  # the next step is the first: buffers start from the grads
        assert all(c[1]["first"] == (True,) * len(c[1]["params"]) for c in got)
    assert sum(len(c[1]["params"]) for c in got) == len(params)
