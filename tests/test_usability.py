"""First-contact details: errors that name the argument, CLI forms a user writes, hints."""
import argparse
import re

import numpy as np
import pytest

import fastlr
from fastlr import _plot


def test_schedule_call_names_t():
    s = fastlr.Cosine(0.1, 10)
    with pytest.raises(TypeError, match=r"^t must be an integer \(the count of completed updates\).*float64 1\.5"):
        s(1.5)
    with pytest.raises(TypeError, match="^t must be an integer"):
        s(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="t must be >= 0"):
        s(np.array([1, -1]))
    assert s(np.array([0, 10])).tolist() == [0.1, 0.0]
    with pytest.raises(TypeError, match="steps must be integers"):  # values() keeps its own word
        s.values(np.array([1.5]))


def test_plot_accepts_cyclic_momentum():
    s = _plot.parse_schedule("Cyclic.momentum(0.85, 0.95, 100)")
    assert s == fastlr.Cyclic.momentum(0.85, 0.95, 100)
    with pytest.raises(_plot.ExpressionError, match=r"Cyclic\.cosine is not a schedule; .*Cyclic\.momentum"):
        _plot.parse_schedule("Cyclic.cosine(0.85, 0.95, 100)")
    with pytest.raises(_plot.ExpressionError, match=r"^Cyclic\.momentum: "):
        _plot.parse_schedule("Cyclic.momentum(0.85, 0.95, 100, bogus=1)")


def test_overlay_legend_sits_outside_the_axes(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = {}
    close = plt.close

    def keep(fig):  # measure the figure before fastlr plot closes it
        fig.canvas.draw()
        ax = fig.axes[0]
        seen["legend"] = ax.get_legend().get_window_extent()
        seen["axes"] = ax.get_window_extent()
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    args = argparse.Namespace(
        expressions=["OneCycle(max_lr=0.1, total_steps=100)", "OneCycleMomentum(total_steps=100)"],
        output=str(tmp_path / "o.png"), steps=None, logy=False, title=None, figsize=None, dpi=None)
    assert _plot.main(args) == 0
    legend, axes = seen["legend"], seen["axes"]
    assert legend.y1 <= axes.y0  # entirely below the plotting area


def test_adam_betas_errors_name_the_entry(torch):
    import fastlr.optim

    p = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(TypeError, match=r"betas\[1\] must be a float or a Tensor, got Constant: only betas\[0\]"):
        fastlr.optim.Adam(p, betas=(0.9, fastlr.Constant(0.5)))
    with pytest.raises(TypeError, match=r"betas\[0\] must be a float or a Tensor, got str"):
        fastlr.optim.AdamW(p, betas=("0.9", 0.999))
    opt = fastlr.optim.Adam(p, betas=(fastlr.Constant(0.5), np.float64(0.9)))
    assert opt.param_groups[0]["betas"][0] == 0.5


def test_fused_and_foreach_together_raise_as_torch(torch):
    import fastlr.optim

    p = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(RuntimeError) as theirs:
        torch.optim.Adam(p, fused=True, foreach=True)
    with pytest.raises(RuntimeError) as ours:
        fastlr.optim.Adam(p, fused=True, foreach=True)
    assert str(ours.value) == str(theirs.value)
    fastlr.optim.Adam(p, fused=True)  # either alone is accepted
    fastlr.optim.Adam(p, foreach=True)


def test_install_hints_point_at_the_checkout():
    import inspect

    from fastlr import _bench, _demo, _lr_finder

    for mod in (_plot, _bench, _demo, _lr_finder):
        src = inspect.getsource(mod)
        assert not re.search(r"fastlr\[", src), mod.__name__
    assert 'pip install ".[plot]"' in inspect.getsource(_plot)
