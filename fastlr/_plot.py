"""`fastlr plot`: draw schedules to a PNG.

    fastlr plot "OneCycle(max_lr=0.1, total_steps=1000)" "Cosine(lr=0.1, total_steps=1000)" -o lr.png

Expressions are parsed with ``ast`` and built only from schedule constructors with
literal arguments (numbers, strings, True/False/None, lists/tuples, unary minus) and
nested schedule constructors; anything else is refused before anything runs. There is
no ``eval``.
"""
from __future__ import annotations

import ast
import os
import sys

import numpy as np

from . import schedules as _schedules

_MAX_EXPRESSION = 10_000  # characters: keeps ast.parse cheap on hostile input
_MAX_POINTS = 20_000  # points drawn per schedule
_MAX_STEPS = 2**53  # the largest step count a schedule takes

SCHEDULE_CLASSES = {
    name: getattr(_schedules, name)
    for name in _schedules.__all__
    if name not in ("Schedule", "as_schedule")
}


class ExpressionError(ValueError):
    """An expression that is not a schedule constructor with literal arguments."""


def _literal(node, expr):
    if isinstance(node, ast.Constant):
        if node.value is None or isinstance(node.value, (bool, int, float, str)):
            return node.value
        raise ExpressionError(f"unsupported constant {node.value!r} in {expr!r}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        if isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
            v = node.operand.value
            return -v if isinstance(node.op, ast.USub) else v
        raise ExpressionError(f"unary minus/plus applies only to numbers in {expr!r}")
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, expr) for e in node.elts]
    if isinstance(node, ast.Call):
        return _call(node, expr)
    raise ExpressionError(
        f"only numbers, strings, True/False/None, lists and schedule constructors are allowed, "
        f"got {type(node).__name__} at column {getattr(node, 'col_offset', 0) + 1} of {expr!r}"
    )


# Alternative constructors, written Class.method(...)
SCHEDULE_METHODS = {("Cyclic", "momentum"): _schedules.Cyclic.momentum}


def _call(node, expr):
    f = node.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in SCHEDULE_METHODS:
        cls, name = SCHEDULE_METHODS[(f.value.id, f.attr)], f"{f.value.id}.{f.attr}"
    elif isinstance(f, ast.Name) and f.id in SCHEDULE_CLASSES:
        cls, name = SCHEDULE_CLASSES[f.id], f.id
    else:
        what = f.id if isinstance(f, ast.Name) else ast.unparse(f) if isinstance(f, ast.Attribute) else type(f).__name__
        raise ExpressionError(
            f"{what!s} is not a schedule; expected one of {', '.join(SCHEDULE_CLASSES)} or "
            f"{', '.join('.'.join(k) for k in SCHEDULE_METHODS)} (in {expr!r})"
        )
    args = []
    for a in node.args:
        if isinstance(a, ast.Starred):
            raise ExpressionError(f"*args are not allowed in {expr!r}")
        args.append(_literal(a, expr))
    kwargs = {}
    for k in node.keywords:
        if k.arg is None:
            raise ExpressionError(f"**kwargs are not allowed in {expr!r}")
        if k.arg in kwargs:  # Python's compiler refuses this; ast.parse does not
            raise ExpressionError(f"keyword argument {k.arg!r} repeated in {expr!r}")
        kwargs[k.arg] = _literal(k.value, expr)
    try:
        return cls(*args, **kwargs)
    except TypeError as e:
        msg = str(e)  # the constructors' own messages already start with the class name
        raise ExpressionError(msg if msg.startswith(f"{name}:") else f"{name}: {msg}") from None


def parse_schedule(expr):
    """Build the schedule an expression such as ``"OneCycle(max_lr=0.1, total_steps=1000)"``
    describes, without evaluating any code. ``repr(s)`` of every schedule parses back to
    an equal schedule. Raises ExpressionError (a ValueError) for anything else; argument
    errors of the constructors propagate as ValueError.
    """
    if not isinstance(expr, str):
        raise TypeError(f"expression must be a str, got {type(expr).__name__}")
    if len(expr) > _MAX_EXPRESSION:
        raise ExpressionError(f"expression longer than {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"not a valid expression: {expr!r} ({e.msg})") from None
    except (MemoryError, RecursionError):  # the parser's limits, e.g. 3000 unary minuses
        raise ExpressionError(f"expression nested too deeply: {expr[:60]!r}...") from None
    if not isinstance(tree.body, ast.Call):
        raise ExpressionError(f"expected a schedule constructor such as 'Cosine(lr=0.1, total_steps=100)', got {expr!r}")
    try:
        return _call(tree.body, expr)
    except RecursionError:
        raise ExpressionError(f"expression nested too deeply: {expr[:60]!r}...") from None


def add_arguments(parser):
    """Add the `plot` arguments to an argparse (sub)parser."""
    parser.add_argument(
        "expressions", nargs="+", metavar="EXPR",
        help='schedule expression, e.g. "OneCycle(max_lr=0.1, total_steps=1000)"; several overlay',
    )
    parser.add_argument("-o", "--output", default="schedule.png", help="PNG path (default: schedule.png)")
    parser.add_argument("--steps", type=int, default=None,
                        help="number of steps to draw (default: enough to show every schedule)")
    parser.add_argument("--figsize", default=None, metavar="W,H", help="figure size in inches (default 7,4.5)")
    parser.add_argument("--dpi", type=int, default=None, help="resolution (default 100)")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--logy", action="store_true", help="logarithmic y axis")


def _fail(msg):
    print(f"fastlr plot: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _output_path(output):
    """The file savefig will write (matplotlib appends .png to a name without a suffix),
    checked before any work: its folder must exist and it must not be a folder."""
    path = output if os.path.splitext(output)[1] else output + ".png"
    if os.path.isdir(output) or os.path.isdir(path):
        _fail(f"--output {output!r} is a folder; give a file name such as lr.png")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        _fail(f"--output: folder {folder!r} does not exist")
    return path


def _sample_steps(steps):
    """The steps drawn: all of them, or _MAX_POINTS spread evenly over [0, steps) (a plot
    is a few thousand pixels wide; a schedule may run for 2**53 steps)."""
    if steps <= _MAX_POINTS:
        return np.arange(steps, dtype=np.int64)
    return np.unique(np.linspace(0, steps - 1, _MAX_POINTS).round().astype(np.int64))


def main(args):
    """Run `fastlr plot` for parsed argparse ``args`` (expressions, output, steps, ...).
    Returns 0; exits with status 2 on a bad expression or option, without matplotlib, or
    when the file cannot be written."""
    try:
        scheds = [parse_schedule(e) for e in args.expressions]
    except (ValueError, TypeError) as e:
        _fail(str(e))
    steps = getattr(args, "steps", None)
    if steps is None:
        steps = max(s._horizon() for s in scheds)
    if not 1 <= steps <= _MAX_STEPS:
        _fail(f"--steps must be in [1, 2**53], got {steps}")
    figsize = (7.0, 4.5)
    if getattr(args, "figsize", None):
        try:
            w, h = (float(x) for x in args.figsize.split(","))
        except ValueError:
            _fail(f"--figsize must be W,H in inches, got {args.figsize!r}")
        if not (0.5 <= w <= 50 and 0.5 <= h <= 50):  # also refuses nan and inf
            _fail(f"--figsize: width and height must be in [0.5, 50] inches, got {args.figsize!r}")
        figsize = (w, h)
    dpi = getattr(args, "dpi", None)
    dpi = 100 if dpi is None else dpi
    if not 10 <= dpi <= 1000:
        _fail(f"--dpi must be in [10, 1000], got {dpi}")
    output = _output_path(args.output)
    try:
        import matplotlib
    except ImportError:
        _fail('fastlr plot needs matplotlib: pip install matplotlib (or, in the fastlr checkout, pip install ".[plot]")')
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    small = figsize[0] < 4
    ts = _sample_steps(steps)
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    ax_m = None
    lines = []
    for i, (expr, s) in enumerate(zip(args.expressions, scheds)):
        y = s.values(ts)
        label = expr if len(expr) <= 80 else expr[:77] + "..."
        target = ax
        if s._momentum and len(scheds) > 1 and not all(x._momentum for x in scheds):
            if ax_m is None:
                ax_m = ax.twinx()
                ax_m.set_ylabel("momentum / beta1")
            target = ax_m
        style = "--" if target is ax_m else "-"
        marker = "o" if ts.size == 1 else None  # one point draws no line
        (line,) = target.plot(ts, y, style, marker=marker, color=f"C{i}", lw=1.2 if small else 1.6,
                              label=label)
        lines.append(line)
    all_m = all(s._momentum for s in scheds)
    ax.set_xlabel("step t (completed updates)")
    ax.set_ylabel("momentum / beta1" if all_m else "learning rate")
    if getattr(args, "logy", False):
        ax.set_yscale("log")
    title = getattr(args, "title", None)
    if title is None:
        title = type(scheds[0]).__name__ if len(scheds) == 1 else "learning-rate schedules"
    ax.set_title(title, fontsize=9 if small else None)
    ax.grid(alpha=0.3)
    if small:  # thumbnails: a single schedule needs no legend, overlays still do
        for a in (ax, ax_m) if ax_m is not None else (ax,):
            a.tick_params(labelsize=6)
            a.yaxis.label.set_size(7)
        ax.xaxis.label.set_size(7)
    if not small or len(lines) > 1:
        # below the axes, never over a curve (loc="best" still hides the ends of some)
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=6 if small else 8, loc="upper center",
                  bbox_to_anchor=(0.5, -0.2 if small else -0.13), ncol=1, frameon=False)
    fig.tight_layout()
    try:
        fig.savefig(output, dpi=dpi)
    except (OSError, ValueError) as e:  # unwritable file, unknown format
        _fail(f"cannot write {output!r}: {e}")
    finally:
        plt.close(fig)
    print(f"wrote {output}")
    return 0
