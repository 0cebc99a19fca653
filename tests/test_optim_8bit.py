"""fastlr.optim.Adam8bit / AdamW8bit: torchao's semantics (against torchao's own step
function, run eagerly), state dicts and their float32 conversions, bad input."""
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastlr  # noqa: E402
from fastlr import _quant8  # noqa: E402
from fastlr.optim import Adam8bit, AdamW8bit, state_dict_to_float32  # noqa: E402

SHAPES = [(64, 128), (4096,), (3, 100), (2048 * 3,)]  # quantized, quantized, 32-bit, quantized


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in SHAPES]


def _grads(step, dtype=torch.float32):
    g = torch.Generator().manual_seed(1000 + step)
    return [(torch.randn(s, generator=g) * 0.1).to(dtype) for s in SHAPES]


def _torchao_eager(cls_name, params, **kw):
    """torchao's optimizer with its per-param function run eagerly (no torch.compile): the
    same arithmetic, without minutes of compiling on the CPU."""
    optim = pytest.importorskip("torchao.optim")
    adam_mod = pytest.importorskip("torchao.optim.adam")
    opt = getattr(optim, cls_name)(params, **kw)
    real_compile = torch.compile

    def step():
        torch.compile = lambda fn, **_: fn
        try:
            opt.step()
        finally:
            torch.compile = real_compile

    assert hasattr(adam_mod, "single_param_adam")
    return opt, step


CASES = [
    ("AdamW8bit", dict(lr=1e-3, weight_decay=0.1)),
    ("Adam8bit", dict(lr=1e-3, weight_decay=0.01)),
    ("AdamW8bit", dict(lr=1e-3, block_size=128)),  # torchao's amsgrad runs only compiled
]


@pytest.mark.parametrize("cls_name,kw", CASES)
def test_matches_torchao(cls_name, kw):
    _compare_with_torchao(cls_name, kw, steps=12)


@pytest.mark.slow
@pytest.mark.parametrize("cls_name,kw", CASES)
def test_matches_torchao_over_100_steps(cls_name, kw):
    _compare_with_torchao(cls_name, kw, steps=100)


def _compare_with_torchao(cls_name, kw, steps):
    ours = _params()
    theirs = _params()
    ref, ref_step = _torchao_eager(cls_name, theirs, **kw)
    opt = getattr(fastlr.optim, cls_name)(ours, **kw)
    for step in range(steps):
        for p, q, g in zip(ours, theirs, _grads(step)):
            p.grad = g.clone()
            q.grad = g.clone()
        opt.step()
        ref_step()
    worst = max((p - q).abs().max().item() for p, q in zip(ours, theirs))
    # torch's lerp contracts into an FMA (ours does not): a moment a last bit apart now and
    # then lands on the other side of a code boundary, and that element's step differs
    assert worst < kw["lr"], worst
    mean = np.mean([(p - q).abs().mean().item() for p, q in zip(ours, theirs)])
    assert mean < kw["lr"] * 1e-3, mean
    # the same state layout decisions: 32-bit state for small or indivisible tensors
    for p, q in zip(ours, theirs):
        assert ("exp_avg_codes" in opt.state[p]) == hasattr(ref.state[q]["exp_avg"], "codes")


def test_bf16_params_and_stochastic_rounding():
    ps = _params(torch.bfloat16)
    opt = AdamW8bit(ps, lr=1e-3, bf16_stochastic_round=True, seed=3)
    qs = _params(torch.bfloat16)
    opt2 = AdamW8bit(qs, lr=1e-3, bf16_stochastic_round=True, seed=3)
    for step in range(3):
        for p, q, g in zip(ps, qs, _grads(step, torch.bfloat16)):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        opt2.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)  # reproducible
    assert ps[0].dtype == torch.bfloat16


def test_state_keys_and_torch_save_round_trip():
    ps = _params()
    opt = AdamW8bit(ps, lr=1e-2)
    for step in range(3):
        for p, g in zip(ps, _grads(step)):
            p.grad = g
        opt.step()
    st = opt.state[ps[0]]
    assert set(st) == {"step", "exp_avg_codes", "exp_avg_scale", "exp_avg_sq_codes", "exp_avg_sq_scale"}
    assert st["exp_avg_codes"].dtype == torch.uint8 and st["exp_avg_scale"].shape == (64 * 128 // 256,)
    assert set(opt.state[ps[2]]) == {"step", "exp_avg", "exp_avg_sq"}
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    qs = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = AdamW8bit(qs, lr=1e-2)
    opt2.load_state_dict(torch.load(buf))
    assert opt2.state[qs[0]]["exp_avg_codes"].dtype == torch.uint8
    for step in range(3, 6):
        for p, q, g in zip(ps, qs, _grads(step)):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        opt2.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)


def test_float32_conversions():
    ps = _params()
    opt = AdamW8bit(ps, lr=1e-2, weight_decay=0.0)
    for step in range(5):
        for p, g in zip(ps, _grads(step)):
            p.grad = g
        opt.step()
    sd32 = state_dict_to_float32(opt.state_dict())
    assert sd32["state"][0]["exp_avg"].dtype == torch.float32
    assert "block_size" not in sd32["param_groups"][0]
    # torch.optim continues from it
    qs = [p.detach().clone().requires_grad_() for p in ps]
    tor = torch.optim.AdamW(qs, lr=1e-2, weight_decay=0.0)
    tor.load_state_dict(sd32)
    # and an 8-bit optimizer loading the float32 state re-quantizes to the same codes
    rs = [p.detach().clone().requires_grad_() for p in ps]
    back = AdamW8bit(rs, lr=1e-2, weight_decay=0.0)
    back.load_state_dict(tor.state_dict())
    for key in ("exp_avg_codes", "exp_avg_sq_codes"):
        a, b = opt.state[ps[0]][key], back.state[rs[0]][key]
        assert (a != b).float().mean() < 1e-3
    for step in range(5, 8):
        for p, q, g in zip(ps, qs, _grads(step)):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        tor.step()
    # the 8-bit optimizer keeps quantizing; torch.optim continues in float32 from its state
    worst = max((p - q).abs().max().item() for p, q in zip(ps, qs))
    assert worst < 1e-2


def test_loads_torchao_state_dict():
    theirs = _params()
    ref, ref_step = _torchao_eager("AdamW8bit", theirs, lr=1e-2)
    for step in range(3):
        for q, g in zip(theirs, _grads(step)):
            q.grad = g
        ref_step()
    ours = [q.detach().clone().requires_grad_() for q in theirs]
    opt = AdamW8bit(ours, lr=1e-2)
    opt.load_state_dict(ref.state_dict())
    st, rst = opt.state[ours[0]], ref.state[theirs[0]]
    assert torch.equal(st["exp_avg_codes"], rst["exp_avg"].codes)
    assert torch.equal(st["exp_avg_sq_scale"], rst["exp_avg_sq"].scale)


def test_bad_input():
    p = torch.zeros(4096, requires_grad=True)
    with pytest.raises(ValueError, match="block_size"):
        AdamW8bit([p], block_size=0)
    with pytest.raises(ValueError, match="learning rate"):
        AdamW8bit([p], lr=-1.0)
    with pytest.raises(ValueError, match="beta"):
        Adam8bit([p], betas=(1.0, 0.9))
    q = torch.zeros(4096, dtype=torch.float64, requires_grad=True)
    q.grad = torch.ones_like(q)
    opt = AdamW8bit([q])
    with pytest.raises(TypeError, match="float64"):
        opt.step()
    assert not q.any()


def test_readme_blocks_run():
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("### 8-bit optimizer state", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 4  # AdamW8bit, adam8bit_step, state_dtype="8bit", the other optimizers' kernels
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_variant_fastlr_matches_numpy_kernel():
    ps = _params()
    opt = AdamW8bit(ps, lr=1e-2, variant="fastlr")
    ref = [p.detach().clone().numpy() for p in ps]
    st = [(np.zeros(r.size, np.uint8), np.zeros(_quant8.num_blocks(r.size, 256), np.float32),
           np.zeros(r.size, np.uint8), np.zeros(_quant8.num_blocks(r.size, 256), np.float32)) for r in ref]
    small = {2: (np.zeros(300, np.float32), np.zeros(300, np.float32))}
    for step in range(1, 4):
        gs = _grads(step)
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        for i, (r, g) in enumerate(zip(ref, gs)):
            if i in small:
                fastlr.adam_step(r.reshape(-1), g.numpy().reshape(-1), *small[i], step=step, lr=1e-2,
                                 weight_decay=0.01, decoupled_weight_decay=True)
            else:
                fastlr.adam8bit_step(r.reshape(-1), g.numpy().reshape(-1), *st[i], step=step, lr=1e-2,
                                     weight_decay=0.01, decoupled_weight_decay=True)
    for p, r in zip(ps, ref):
        np.testing.assert_array_equal(p.detach().numpy(), r)
    assert "exp_avg_codes" in opt.state[ps[0]] and "exp_avg" in opt.state[ps[2]]


@pytest.mark.parametrize("variant", ["torchao", "fastlr"])
def test_cached_steps_notice_changes(variant):
    """Steps after the first reuse the group's call layout (one plan per group); replaced
    state, a missing grad, a swapped param, amsgrad or the lr changed take the general path
    and its checks: the trajectory equals one that always takes the general path."""
    a, b = _params(), _params()
    oa = AdamW8bit(a, lr=1e-2, variant=variant)
    ob = AdamW8bit(b, lr=1e-2, variant=variant)

    def both(step, skip=()):
        for i, (x, y, g) in enumerate(zip(a, b, _grads(step))):
            x.grad = None if i in skip else g
            y.grad = None if i in skip else g.clone()
        oa.step()
        ob._fastlr_plans.clear()  # ob always takes the general path
        ob.step()

    for step in range(1, 4):
        both(step)
    assert oa._fastlr_plans  # a plan is cached
    for o, ps in ((oa, a), (ob, b)):
        o.state[ps[0]]["exp_avg_scale"] = o.state[ps[0]]["exp_avg_scale"].clone()  # replaced
        o.state[ps[2]]["exp_avg"] = o.state[ps[2]]["exp_avg"].clone()  # (32-bit state)
    both(4)
    for o, ps in ((oa, a), (ob, b)):
        ps[3].data = ps[3].data.clone()  # the param's memory moved
        o.param_groups[0]["lr"] = 5e-3
    both(5)
    both(6, skip=(1,))  # a param without a grad: its step count lags behind
    both(7)
    for o in (oa, ob):
        o.param_groups[0]["amsgrad"] = True  # new roles: created by the general path's check
    with pytest.raises(RuntimeError, match="max_exp_avg_sq"):
        both(8)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
        assert oa.state[x].keys() == ob.state[y].keys()
        for key in oa.state[x]:
            assert torch.equal(oa.state[x][key], ob.state[y][key]), key
    assert [float(oa.state[p]["step"]) for p in a] == [7.0, 6.0, 7.0, 7.0]


def test_bad_state_raises_before_anything_is_modified():
    """A state that does not fit its param is refused before any param or step count of
    the group is written, on the first step and on cached ones."""
    ps = _params()
    opt = AdamW8bit(ps, lr=1e-2)
    for step in (1, 2, 3):
        for p, g in zip(ps, _grads(step)):
            p.grad = g
        opt.step()
    before = [p.detach().clone() for p in ps]
    steps = [float(opt.state[p]["step"]) for p in ps]
    opt.state[ps[3]]["exp_avg_sq_scale"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"exp_avg_sq_codes.*params\[3\]"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, before))
    assert [float(opt.state[p]["step"]) for p in ps] == steps


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_and_pickles_keep_the_options(how):
    """copy.deepcopy and pickle keep block_size, variant and seed: the copy (with its own
    copies of the params) steps as the original does."""
    import copy
    import pickle

    ps = _params(torch.bfloat16)
    opt = AdamW8bit(ps, lr=1e-2, block_size=128, variant="fastlr", seed=7, bf16_stochastic_round=True)
    for p, g in zip(ps, _grads(1, torch.bfloat16)):
        p.grad = g
    opt.step()
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert (twin.block_size, twin._encoding, twin.seed, twin.bf16_stochastic_round) == (128, "sqrt", 7, True)
    twin_ps = [p for g in twin.param_groups for p in g["params"]]
    for a, b, g in zip(ps, twin_ps, _grads(2, torch.bfloat16)):
        a.grad, b.grad = g, g.clone()
    opt.step()
    twin.step()
    for a, b in zip(ps, twin_ps):
        assert a is not b and torch.equal(a, b)


def test_param_listed_twice_is_updated_once():
    """As fastlr.optim's optimizers: a param listed twice (torch warns) is updated once
    per step, never twice in one fused call."""
    a, b = _params(), _params()
    with pytest.warns(UserWarning, match="duplicate"):
        oa = AdamW8bit(a + a[:1], lr=1e-2)
    ob = AdamW8bit(b, lr=1e-2)
    for step in (1, 2, 3):
        for x, y, g in zip(a, b, _grads(step)):
            x.grad, y.grad = g, g.clone()
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert float(oa.state[a[0]]["step"]) == 3.0
