"""Defects found by an independent audit of the precision options (issue #12: master_weights,
state_dtype, stochastic_rounding, seed), each test failing on the code before its fix."""
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastlr.numpy as fnp  # noqa: E402
import fastlr.optim as fo  # noqa: E402

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = ml_dtypes.bfloat16


# ------------------------------------------------- options restored by load_state_dict ---
def _sgd_sr_run(seed_saved, seed_resumed, split=None, steps=6):
    """bf16 SGD with stochastic rounding; at `split` the state_dict goes through
    torch.save/load into a new optimizer constructed with `seed_resumed`."""
    p = torch.linspace(-1, 1, 1000).bfloat16()
    opt = fo.SGD([p], lr=1e-3, momentum=0.9, stochastic_rounding=True, seed=seed_saved)
    for s in range(steps):
        if s == split:
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            p = p.detach().clone()
            opt = fo.SGD([p], lr=1e-3, momentum=0.9, stochastic_rounding=True, seed=seed_resumed)
            opt.load_state_dict(torch.load(buf, weights_only=True))
        p.grad = torch.full((1000,), 0.3).bfloat16()
        opt.step()
    return p, opt


@pytest.mark.parametrize("seed", [0, 3])
def test_saved_seed_is_restored_even_when_it_is_the_default(seed):
    """A state_dict of a stochastic-rounding run restores its seed (README: "Saved in the
    state_dict"), also seed 0, which the group leaves out as a default: a checkpoint resumed
    into an optimizer constructed with another seed continues bit for bit. (Was: seed 3
    came back, seed 0 was replaced by the new optimizer's 5.)"""
    ref, _ = _sgd_sr_run(seed, seed)
    got, opt = _sgd_sr_run(seed, 5, split=3)
    assert opt.param_groups[0].get("seed", 0) == seed
    assert torch.equal(got, ref)


@pytest.mark.parametrize("seed", [0, 3])
def test_numpy_twin_restores_the_saved_seed(seed):
    def run(seed_resumed, split=None):
        w = np.linspace(-1, 1, 1000, dtype=np.float32).astype(BF16)
        opt = fnp.SGD([w], lr=1e-3, stochastic_rounding=True, seed=seed)
        for s in range(6):
            if s == split:
                sd = opt.state_dict()
                w = w.copy()
                opt = fnp.SGD([w], lr=1e-3, stochastic_rounding=True, seed=seed_resumed)
                opt.load_state_dict(sd)
            opt.step([np.full(1000, 0.3, BF16)])
        return w, opt

    ref, _ = run(seed)
    got, opt = run(5, split=3)
    assert opt.param_groups[0].get("seed", 0) == seed
    assert np.array_equal(got, ref)


def test_saved_options_are_restored_not_merged_with_the_optimizers():
    """A fastlr dict saved with options restores exactly them: its float32 state (state_dtype
    None with master weights) is not squeezed into the new optimizer's bfloat16."""
    p = torch.randn(50).bfloat16()
    opt = fo.AdamW([p], lr=1e-2, master_weights=True)
    for _ in range(3):
        p.grad = torch.randn(50).bfloat16()
        opt.step()
    sd = opt.state_dict()
    q = p.detach().clone()
    opt2 = fo.AdamW([q], lr=1e-2, master_weights=True, state_dtype=torch.bfloat16)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0].get("state_dtype") is None
    for key in ("exp_avg", "exp_avg_sq", "master_param"):
        assert opt2.state[q][key].dtype == torch.float32
        assert torch.equal(opt2.state[q][key], opt.state[p][key]), key


def test_torch_dict_still_converts_to_the_optimizers_options():
    """(unchanged) a dict without fastlr options, torch.optim's, takes the optimizer's."""
    p = torch.randn(50).bfloat16()
    topt = torch.optim.AdamW([p], lr=1e-2)
    p.grad = torch.randn(50).bfloat16()
    topt.step()
    q = p.detach().clone()
    opt = fo.AdamW([q], lr=1e-2, master_weights=True, state_dtype=torch.bfloat16, stochastic_rounding=True,
                   seed=7)
    opt.load_state_dict(topt.state_dict())
    g = opt.param_groups[0]
    assert (g["master_weights"], g["state_dtype"], g["stochastic_rounding"], g["seed"]) == (
        True, torch.bfloat16, True, 7)
    assert opt.state[q]["exp_avg"].dtype == torch.bfloat16


def test_numpy_twin_converts_a_torch_dict_to_each_groups_own_options():
    """fastlr.numpy loads a torch.optim dict into the options of each of its groups (a group
    dict's override included), as fastlr.optim does. (Was: the constructor's, so a group
    with its own master_weights=True lost it.)"""
    w1 = np.linspace(-1, 1, 10, dtype=np.float32).astype(BF16)
    w2 = w1.copy()
    t1 = torch.from_numpy(w1.astype(np.float32)).bfloat16()
    t2 = t1.clone()
    topt = torch.optim.Adam([{"params": [t1]}, {"params": [t2]}], lr=1e-2)
    t1.grad = torch.ones(10).bfloat16()
    t2.grad = torch.ones(10).bfloat16()
    topt.step()
    sd = topt.state_dict()
    nopt = fnp.Adam([{"params": [w1]}, {"params": [w2], "master_weights": True, "state_dtype": "bfloat16"}],
                    lr=1e-2)
    nopt.load_state_dict(sd)
    topt_face = fo.Adam([{"params": [t1.clone()]},
                         {"params": [t2.clone()], "master_weights": True, "state_dtype": torch.bfloat16}], lr=1e-2)
    topt_face.load_state_dict(sd)
    for k in (0, 1):
        for key in ("master_weights", "state_dtype"):
            mine = nopt.param_groups[k].get(key)
            theirs = topt_face.param_groups[k].get(key)
            assert mine == (str(theirs).replace("torch.", "") if key == "state_dtype" and theirs else theirs), key
    assert nopt.param_groups[1]["master_weights"] is True
    assert nopt.state[1]["exp_avg"].dtype == BF16
    nopt.step([np.ones(10, BF16), np.ones(10, BF16)])
    assert nopt.state[1]["master_param"].dtype == np.float32


# ------------------------------------------------------------- to_torch_state_dict ---
def test_to_torch_state_dict_refuses_bad_8bit_state_before_writing_any_param():
    """Bad input is refused before anything changes: a corrupt 8-bit entry of a later param
    raises a ValueError naming it, and no param has received its master yet. (Was: the
    master of params[0] was copied, then NumPy's broadcast error, naming nothing.)"""
    import copy

    ps = [torch.randn(5000).bfloat16(), torch.randn(5000).bfloat16()]
    opt = fo.AdamW(ps, lr=1e-2, master_weights=True, state_dtype="8bit")
    for _ in range(2):
        for p in ps:
            p.grad = torch.randn(5000).bfloat16()
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][1]["exp_avg_scale"] = sd["state"][1]["exp_avg_scale"][:3].clone()
    targets = [torch.zeros(5000), torch.zeros(5000)]
    with pytest.raises(ValueError, match=r"exp_avg_scale"):
        fo.to_torch_state_dict(sd, params=targets)
    assert not any(t.any() for t in targets)
    # the good dict converts, and the masters land in the params
    out = fo.to_torch_state_dict(opt.state_dict(), params=targets)
    for p, t in zip(ps, targets):
        assert torch.equal(t, opt.state[p]["master_param"])
    assert out["state"][1]["exp_avg"].dtype == torch.float32


@pytest.mark.parametrize("options", [{}, dict(master_weights=True, state_dtype="bfloat16")])
def test_numpy_twin_state_dict_goes_back_to_torch_optim(options):
    """README ("fastlr.numpy"): a torch.optim.Adam state_dict loads into fastlr.numpy.Adam
    "and back". A NumPy-face dict holds arrays and an int step, which torch.optim's
    load_state_dict cannot use; to_torch_state_dict turns it into torch's layout, as it
    does for fastlr.optim's dicts (bfloat16 state as float32, each master into its param).
    (Was: arrays passed through; torch.optim failed in load_state_dict.)"""
    dtype = BF16 if options else np.float32
    w = np.linspace(-1, 1, 40, dtype=np.float32).astype(dtype)
    nopt = fnp.Adam([w], lr=1e-2, **options)
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(40).astype(np.float32) for _ in range(6)]
    for g in grads[:3]:
        nopt.step([g.astype(dtype)])
    p = torch.zeros(40)  # torch's recipe: float32 params (the masters go into them)
    sd = fo.to_torch_state_dict(nopt.state_dict(), params=[p] if options else None)
    if not options:
        p.copy_(torch.from_numpy(w))
    else:
        assert torch.equal(p, torch.from_numpy(nopt.state[0]["master_param"]))
    assert torch.is_tensor(sd["state"][0]["step"]) and float(sd["state"][0]["step"]) == 3
    assert all(v.dtype == torch.float32 for v in sd["state"][0].values())
    topt = torch.optim.Adam([p], lr=1e-2, foreach=False)
    topt.load_state_dict(sd)
    for g in grads[3:]:
        nopt.step([g.astype(dtype)])
        p.grad = torch.from_numpy(g.astype(dtype).astype(np.float32))
        topt.step()
    if options:  # bf16 state rounds where torch's float32 state does not
        torch.testing.assert_close(p, torch.from_numpy(nopt.state[0]["master_param"]), rtol=1e-2, atol=1e-3)
    else:
        torch.testing.assert_close(p, torch.from_numpy(w), rtol=1e-6, atol=1e-7)
