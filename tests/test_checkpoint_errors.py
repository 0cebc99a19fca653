"""Checkpoints: a state_dict with missing or extra keys, wrong shapes, dtypes or values
gives a clear error from ``load_state_dict`` and leaves the optimizer unchanged.

torch.optim itself checks only the number and sizes of the param groups (a wrong shape
loads and fails at the next step, or not at all); fastlr.optim validates everything the
kernels rely on before modifying anything (fastlr/optim/_checkpoint.py). What torch
accepts is still accepted: other float dtypes (cast to the param's), params without
state, an SGD momentum buffer that is None, extra group options.
"""
import copy
import math

import pytest

torch = pytest.importorskip("torch")
optim = pytest.importorskip("fastlr.optim")

import fastlr  # noqa: E402

OPTIMIZERS = {
    "SGD": {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    "Adam": {"lr": 1e-2, "amsgrad": True},
    "AdamW": {"lr": fastlr.Cosine(1e-2, 50)},
    "RMSprop": {"lr": 1e-2, "centered": True, "momentum": 0.5},
    "Adagrad": {"lr": 0.1, "lr_decay": 0.01},
}
STATE_KEY = {"SGD": "momentum_buffer", "Adam": "max_exp_avg_sq", "AdamW": "exp_avg",
             "RMSprop": "grad_avg", "Adagrad": "sum"}


def _make(name, steps=3, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 2))
    groups = [{"params": model[0].parameters()}, {"params": model[1].parameters(), "weight_decay": 0.01}]
    opt = getattr(optim, name)(groups, **OPTIMIZERS[name])
    x = torch.randn(8, 5)
    for _ in range(steps):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return model, opt, x


def _fingerprint(model, opt):
    """Everything a load could change: params, state tensors and values, group options."""
    out = [p.detach().clone() for p in model.parameters()]
    for p, st in opt.state.items():
        out.append(sorted(st))
        out += [v.clone() if torch.is_tensor(v) else v for _, v in sorted(st.items())]
    out += [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    out.append([len(g["params"]) for g in opt.param_groups])
    return out


def _same(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if torch.is_tensor(x):
            if not (torch.is_tensor(y) and x.dtype == y.dtype and x.shape == y.shape
                    and torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))):
                return False
        elif x != y:
            return False
    return True


def _first_state(sd):
    return sd["state"][min(sd["state"])]


class _Replace:
    """Returned by a corruption that replaces the whole state_dict."""

    def __init__(self, value):
        self.value = value


# (id, corruption(sd, name) edits sd in place or returns a _Replace, exception, message regex)
CORRUPTIONS = [
    ("not_a_dict", lambda sd, n: _Replace([sd]), TypeError, "expected a state_dict"),
    ("no_state", lambda sd, n: sd.pop("state"), ValueError, "'state'"),
    ("no_param_groups", lambda sd, n: sd.pop("param_groups"), ValueError, "'param_groups'"),
    ("state_not_dict", lambda sd, n: sd.__setitem__("state", [1]), TypeError, "must be a dict"),
    ("groups_not_list", lambda sd, n: sd.__setitem__("param_groups", 3), TypeError, "must be a list"),
    ("one_group_missing", lambda sd, n: sd["param_groups"].pop(), ValueError, "number of parameter groups"),
    ("param_missing_from_group", lambda sd, n: sd["param_groups"][1]["params"].pop(), ValueError,
     "lists 1 params"),
    ("group_without_lr", lambda sd, n: sd["param_groups"][0].pop("lr"), ValueError, "'lr'"),
    ("group_without_eps_or_momentum",
     lambda sd, n: sd["param_groups"][1].pop("momentum" if n == "SGD" else "eps"), ValueError,
     "has no '(momentum|eps)'"),
    ("state_missing_key", lambda sd, n: _first_state(sd).pop(STATE_KEY[n] if n != "SGD" else "nope", None)
     if n != "SGD" else _first_state(sd).__setitem__("bogus", 1), ValueError, None),
    ("state_missing_step", lambda sd, n: _first_state(sd).pop("step") if n != "SGD"
     else _first_state(sd).__setitem__("step", torch.tensor(1.0)), ValueError, "'step'"),
    ("state_extra_key", lambda sd, n: _first_state(sd).__setitem__("exp_avg_sqq", torch.zeros(1)),
     ValueError, "exp_avg_sqq"),
    ("state_wrong_shape", lambda sd, n: _first_state(sd).__setitem__(
        STATE_KEY[n], torch.zeros(_first_state(sd)[STATE_KEY[n]].numel() + 1)), ValueError, "shape"),
    ("state_transposed", lambda sd, n: _first_state(sd).__setitem__(
        STATE_KEY[n], torch.zeros(4, 5).t() if _first_state(sd)[STATE_KEY[n]].dim() == 2
        else torch.zeros(1, 4)), ValueError, "shape"),
    ("state_int_dtype", lambda sd, n: _first_state(sd).__setitem__(
        STATE_KEY[n], _first_state(sd)[STATE_KEY[n]].to(torch.int32)), TypeError, "dtype"),
    ("state_complex_dtype", lambda sd, n: _first_state(sd).__setitem__(
        STATE_KEY[n], _first_state(sd)[STATE_KEY[n]].to(torch.complex64)), TypeError, "dtype"),
    ("state_not_tensor", lambda sd, n: _first_state(sd).__setitem__(
        STATE_KEY[n], _first_state(sd)[STATE_KEY[n]].tolist()), TypeError, "must be a tensor"),
    ("param_state_not_dict", lambda sd, n: sd["state"].__setitem__(min(sd["state"]), [1, 2]), TypeError,
     "must be a dict"),
    ("unknown_param_id", lambda sd, n: sd["state"].__setitem__(99, {}), ValueError, "99"),
    ("duplicate_param_id", lambda sd, n: sd["param_groups"][1]["params"].__setitem__(
        0, sd["param_groups"][0]["params"][0]), ValueError, "twice"),
    # the kernels write each state tensor through its address
    ("state_expanded", lambda sd, n: _first_state(sd).__setitem__(
        STATE_KEY[n], _first_state(sd)[STATE_KEY[n]].reshape(-1)[:1].expand(_first_state(sd)[STATE_KEY[n]].shape)),
     ValueError, "sharing memory"),
    ("state_sparse", lambda sd, n: _first_state(sd).__setitem__(
        STATE_KEY[n], _first_state(sd)[STATE_KEY[n]].to_sparse()), TypeError, "sparse"),
    # params 0 and 1 are Linear(5, 4)'s weight and bias: the bias state as a view of the weight's
    ("two_states_one_memory", lambda sd, n: sd["state"][1].__setitem__(
        STATE_KEY[n], sd["state"][0][STATE_KEY[n]].reshape(-1)[:4]), ValueError, "shares memory"),
    ("lr_schedule_not_a_schedule", lambda sd, n: sd["param_groups"][0].update(lr_schedule=3, lr_scale=1.0,
                                                                              schedule_t=0),
     TypeError, "lr_schedule"),
    ("schedule_t_not_an_int", lambda sd, n: sd["param_groups"][0].update(schedule_t="a"), ValueError,
     "schedule_t"),
]
STEP_VALUES = [(-1.0, ValueError), (math.nan, ValueError), (math.inf, ValueError), (2.0**60, ValueError),
               (1.5, ValueError), ("3", TypeError), (torch.tensor([1.0, 2.0]), TypeError),
               (torch.tensor(True), TypeError)]


def _check_refused(name, corrupt, exc, match):
    model, opt, x = _make(name)
    twin_model, twin, _ = _make(name)
    sd = copy.deepcopy(opt.state_dict())
    replaced = corrupt(sd, name)
    if isinstance(replaced, _Replace):
        sd = replaced.value
    before = _fingerprint(model, opt)
    with pytest.raises(exc, match=match) as info:
        opt.load_state_dict(sd)
    assert "load_state_dict" in str(info.value)
    assert _same(before, _fingerprint(model, opt)), "a refused load modified the optimizer"
    # and it trains on exactly as an optimizer that never saw the bad state_dict
    for m, o in ((model, opt), (twin_model, twin)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    assert _same(_fingerprint(model, opt), _fingerprint(twin_model, twin))


@pytest.mark.parametrize("case", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_bad_state_dict_is_refused_and_changes_nothing(name, case):
    _, corrupt, exc, match = case
    if case[0] == "state_missing_step" and name == "SGD":
        exc, match = ValueError, "unexpected key 'step'"  # SGD keeps no step
    if case[0] == "state_missing_key" and name == "SGD":
        match = "bogus"
    _check_refused(name, corrupt, exc, match)


@pytest.mark.parametrize("value,exc", STEP_VALUES, ids=[repr(v) for v, _ in STEP_VALUES])
@pytest.mark.parametrize("name", ["Adam", "RMSprop", "Adagrad"])
def test_bad_step_is_refused(name, value, exc):
    _check_refused(name, lambda sd, n: _first_state(sd).__setitem__("step", value), exc, "step")


# ----------------------------------------------------- what torch accepts ---


def _roundtrip(name, edit):
    model, opt, x = _make(name)
    sd = copy.deepcopy(opt.state_dict())
    edit(sd)
    opt.load_state_dict(sd)
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()
    return opt


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_other_float_dtype_is_cast_like_torch(name):
    def to_double(sd):
        for st in sd["state"].values():
            for k, v in st.items():
                if torch.is_tensor(v) and k != "step":
                    st[k] = v.double()

    opt = _roundtrip(name, to_double)
    for st in opt.state.values():
        for k, v in st.items():
            if k != "step":
                assert v.dtype == torch.float32


def test_params_without_state_and_sgd_none_buffer_load():
    def drop_one(sd):
        sd["state"].pop(min(sd["state"]))

    for name in OPTIMIZERS:
        _roundtrip(name, drop_one)
    _roundtrip("SGD", lambda sd: _first_state(sd).__setitem__("momentum_buffer", None))


def test_extra_group_options_load():
    _roundtrip("Adam", lambda sd: sd["param_groups"][0].update(foreach=None, my_tag="x"))


def test_state_dict_from_torch_still_loads():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(7))
    ref = torch.optim.Adam([p], lr=0.1, amsgrad=True, foreach=False)
    p.grad = torch.randn(7)
    ref.step()
    opt = optim.Adam([torch.nn.Parameter(p.detach().clone())], lr=0.1, amsgrad=True)
    opt.load_state_dict(ref.state_dict())
    assert float(opt.state[opt.param_groups[0]["params"][0]]["step"]) == 1.0
