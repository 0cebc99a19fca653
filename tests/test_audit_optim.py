"""Audit of fastlr.optim's drop-in classes: resetting the state by hand as torch users do."""
import collections

import pytest

torch = pytest.importorskip("torch")

import fastlr.optim  # noqa: E402


@pytest.mark.parametrize("name,kw", [
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("Adam", dict(lr=0.1)),
    ("AdamW", dict(lr=0.1, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True)),
    ("Adagrad", dict(lr=0.1)),
])
def test_state_reassigned_to_a_plain_defaultdict_restarts_as_in_torch(name, kw):
    """``opt.state = collections.defaultdict(dict)`` (a common way to reset an optimizer)
    used to raise AttributeError ('defaultdict' object has no attribute 'version') at the
    next step; torch restarts the state there."""
    g = torch.Generator().manual_seed(0)
    po = [torch.randn(5, 3, generator=g, dtype=torch.float64).requires_grad_()]
    pt = [po[0].detach().clone().requires_grad_()]
    ours, theirs = getattr(fastlr.optim, name)(po, **kw), getattr(torch.optim, name)(pt, **kw)
    for k in range(6):
        grad = torch.randn(5, 3, generator=g, dtype=torch.float64)
        po[0].grad, pt[0].grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
        if k == 2:
            ours.state = collections.defaultdict(dict)
            theirs.state = collections.defaultdict(dict)
    torch.testing.assert_close(po[0], pt[0], rtol=1e-12, atol=1e-12)
    (so,), (st,) = ours.state.values(), theirs.state.values()
    assert so.keys() == st.keys()
    for key in so:
        torch.testing.assert_close(so[key], st[key], rtol=1e-12, atol=1e-12)
