"""Audit of the schedule-free optimizers (issue 16) against the `schedulefree` package:
cases the first tests left out (state reset by hand, ...)."""
import collections

import pytest

torch = pytest.importorskip("torch")
sf = pytest.importorskip("schedulefree")

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
