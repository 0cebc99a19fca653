"""`fastlr demo`: the classic learning-rate experiments on a small problem.

A seeded 3-class "blobs" problem (1,000 points, 2 features, cluster_std 2; half for
training, half for testing) and a 2-50-3 ReLU MLP trained with minibatches of 32:

  (a) lr sensitivity: plain SGD at lr 1e0 ... 1e-7 (the U-shape)
  (b) momentum 0 / 0.5 / 0.9 / 0.99
  (c) time-based decay lr0 / (1 + decay·t), decay 1e-1 ... 1e-4 (fastlr.InverseTime)
  (d) ReduceLROnPlateau on the test loss, patience 2 / 5 / 10 / 15
  (e) Adam / RMSprop / Adagrad at their usual rates
  (f) the LR range test (fastlr.find_lr), then one-cycle training at its suggestion
  (g) schedule-free AdamW (no schedule, no training length) next to AdamW + OneCycle

Each experiment prints a table (final train / test accuracy, first epoch with 90 % test
accuracy) and writes a PNG (accuracy and lr per epoch) to the output folder. Every run is
repeated with torch.optim (torch's LRSchedulers where fastlr uses in-kernel schedules) from
the same initial weights and batches (the schedulefree package for (g), when installed);
the end shows the time spent in the optimizer steps (and scheduler steps) of both.

torch and matplotlib are imported in ``main`` only (the ``torch`` and ``plot`` extras).
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

SEED = 23  # nearest-centre (Bayes) accuracy 0.921 on these blobs: 90 % is reachable, not easily
N_SAMPLES = 1000
CLUSTER_STD = 2.0
BATCH = 32
FULL_EPOCHS = 100
QUICK_EPOCHS = 3


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help=f"a reduced run ({QUICK_EPOCHS} epochs, two settings per experiment) for tests")
    parser.add_argument("--out", default="fastlr-demo", metavar="DIR",
                        help="folder for the PNG plots and tables.txt (default: ./fastlr-demo)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs per run (default {FULL_EPOCHS}, {QUICK_EPOCHS} with --quick)")
    parser.add_argument("--no-compare", action="store_true",
                        help="skip the torch.optim repeat of every run (no timing comparison)")
    from . import _demo_precision

    sub = parser.add_subparsers(dest="experiment", metavar="{precision}",
                                help="another experiment instead of the learning-rate ones")
    _demo_precision.add_arguments(sub.add_parser(
        "precision", help="fp32 master weights, bf16 state and stochastic rounding: loss curves to a PNG",
        description="AdamW with float32, master weights, bf16 state and bf16 params, rounded to nearest "
                    "and stochastically, on a small teacher-student MLP: final losses and precision.png"))


def make_blobs(n_samples=N_SAMPLES, n_features=2, centers=3, cluster_std=CLUSTER_STD, seed=SEED):
    """sklearn.datasets.make_blobs in NumPy: centres uniform in [-10, 10]^d, isotropic
    Gaussian clusters of (nearly) equal size, shuffled. Returns X (float32), y (int64)."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(-10.0, 10.0, size=(centers, n_features))
    sizes = [n_samples // centers + (i < n_samples % centers) for i in range(centers)]
    y = np.repeat(np.arange(centers), sizes)
    X = c[y] + cluster_std * rng.standard_normal((n_samples, n_features))
    perm = rng.permutation(n_samples)
    return X[perm].astype(np.float32), y[perm].astype(np.int64)


# -- run specifications ---------------------------------------------------------------
# A run is a dict: label, opt (class name), lr, kw (constructor kwargs), sched (None,
# ("inverse_time", decay), ("one_cycle",)), plateau (patience or None).


def _experiments(quick):
    def pick(xs):
        return [xs[0], xs[len(xs) // 2]] if quick else xs

    lrs = pick([1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7])
    return [
        ("a", "lr sensitivity, plain SGD", "demo_a_lr_sweep.png",
         [dict(label=f"lr={lr:g}", opt="SGD", lr=lr, kw={}) for lr in lrs]),
        ("b", "momentum (SGD, lr=0.01)", "demo_b_momentum.png",
         [dict(label=f"momentum={m:g}", opt="SGD", lr=0.01, kw=dict(momentum=m))
          for m in pick([0.0, 0.5, 0.9, 0.99])]),
        ("c", "time-based decay lr=0.01/(1+decay*t) (SGD, momentum 0.9)", "demo_c_inverse_time.png",
         [dict(label=f"decay={d:g}", opt="SGD", lr=0.01, kw=dict(momentum=0.9), sched=("inverse_time", d))
          for d in pick([1e-1, 1e-2, 1e-3, 1e-4])]),
        ("d", "ReduceLROnPlateau on test loss, factor 0.1 (SGD lr=0.01, momentum 0.9)", "demo_d_plateau.png",
         [dict(label=f"patience={p}", opt="SGD", lr=0.01, kw=dict(momentum=0.9), plateau=p)
          for p in pick([2, 5, 10, 15])]),
        ("e", "adaptive optimizers at their usual rates", "demo_e_adaptive.png",
         [dict(label="Adam lr=1e-3", opt="Adam", lr=1e-3, kw={}),
          dict(label="RMSprop lr=1e-3", opt="RMSprop", lr=1e-3, kw={}),
          dict(label="Adagrad lr=1e-2", opt="Adagrad", lr=1e-2, kw={})][: 2 if quick else 3]),
        ("g", "schedule-free AdamW (evaluated in eval mode) vs AdamW + OneCycle", "demo_g_schedulefree.png",
         [dict(label="AdamW + OneCycle max_lr=0.01", opt="AdamW", lr=1e-2, kw={}, sched=("one_cycle",)),
          dict(label="AdamW-SF lr=0.01", opt="AdamWScheduleFree", lr=1e-2, kw={}),
          dict(label="AdamW-SF lr=0.003, warmup 5%", opt="AdamWScheduleFree", lr=3e-3,
               kw=dict(warmup_steps="5%")),
          dict(label="AdamW constant lr=0.01", opt="AdamW", lr=1e-2, kw={})][: 2 if quick else 4]),
    ]


# -- training -------------------------------------------------------------------------


class _Problem:
    def __init__(self, torch, epochs):
        X, y = make_blobs()
        half = len(X) // 2
        self.Xtr, self.ytr = torch.from_numpy(X[:half]), torch.from_numpy(y[:half])
        self.Xte, self.yte = torch.from_numpy(X[half:]), torch.from_numpy(y[half:])
        self.epochs = epochs
        rng = np.random.default_rng(SEED + 1)  # one batch order shared by every run
        n = len(self.Xtr)
        self.batches = [
            [torch.from_numpy(np.sort(p[i:i + BATCH])) for i in range(0, n, BATCH)]
            for p in (rng.permutation(n) for _ in range(epochs))
        ]
        self.steps_per_epoch = len(self.batches[0])


def _model(torch):
    torch.manual_seed(SEED)
    return torch.nn.Sequential(torch.nn.Linear(2, 50), torch.nn.ReLU(), torch.nn.Linear(50, 3))


def _make_optimizer(torch, backend, spec, params, total_steps):
    """(optimizer, per-step torch scheduler or None, plateau scheduler or None)."""
    import fastlr
    from fastlr import schedules

    sched = spec.get("sched")
    lr = spec["lr"]
    kw = dict(spec["kw"])
    if kw.get("warmup_steps") == "5%":
        kw["warmup_steps"] = total_steps // 20
    if spec["opt"].endswith("ScheduleFree"):
        if backend == "fastlr":
            import fastlr.optim as fo

            return getattr(fo, spec["opt"])(params, lr=lr, **kw), None, None
        import schedulefree  # run_all compares only when it is installed

        return getattr(schedulefree, spec["opt"])(params, lr=lr, **kw), None, None
    if backend == "fastlr":
        import fastlr.optim as fo

        if sched and sched[0] == "inverse_time":
            lr = schedules.InverseTime(lr, decay=sched[1])
        elif sched and sched[0] == "one_cycle":
            lr = schedules.OneCycle(max_lr=spec["lr"], total_steps=total_steps)
        opt = getattr(fo, spec["opt"])(params, lr=lr, **spec["kw"])
        per_step = None
        plateau_cls = fastlr.ReduceLROnPlateau
    else:
        opt = getattr(torch.optim, spec["opt"])(params, lr=lr, **spec["kw"])
        per_step = None
        if sched and sched[0] == "inverse_time":
            decay = sched[1]
            per_step = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + decay * t))
        elif sched and sched[0] == "one_cycle":
            per_step = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec["lr"], total_steps=total_steps,
                                                           cycle_momentum=False)
        plateau_cls = torch.optim.lr_scheduler.ReduceLROnPlateau
    plateau = None
    if spec.get("plateau") is not None:
        plateau = plateau_cls(opt, mode="min", factor=0.1, patience=spec["plateau"], threshold=1e-7,
                              threshold_mode="abs")
    return opt, per_step, plateau


def _accuracy(torch, model, X, y):
    with torch.no_grad():
        out = model(X)
        loss = float(torch.nn.functional.cross_entropy(out, y))
        return float((out.argmax(1) == y).float().mean()), loss


def _train(torch, problem, backend, spec, model=None):
    """One run; returns dict(train_acc, test_acc, lr (per epoch), opt_time (s))."""
    model = _model(torch) if model is None else model
    total = problem.epochs * problem.steps_per_epoch
    opt, per_step, plateau = _make_optimizer(torch, backend, spec, model.parameters(), total)
    loss_fn = torch.nn.functional.cross_entropy
    train_acc, test_acc, lrs = [], [], []
    opt_time = 0.0
    clock = time.perf_counter
    # schedule-free: params hold y while training and x (the average) in eval mode
    schedule_free = spec["opt"].endswith("ScheduleFree")
    for epoch in range(problem.epochs):
        group = opt.param_groups[0]
        warmup = group.get("warmup_steps", 0) if schedule_free else 0
        # schedule-free warm-up is applied inside step(): show the lr the next step uses
        lrs.append(float(group["lr"]) * (min(1.0, (group["k"] + 1) / warmup) if warmup else 1.0))
        if schedule_free:
            opt.train()
        for idx in problem.batches[epoch]:
            opt.zero_grad()
            loss_fn(model(problem.Xtr[idx]), problem.ytr[idx]).backward()
            t0 = clock()
            opt.step()
            if per_step is not None:
                per_step.step()
            opt_time += clock() - t0
        if schedule_free:
            t0 = clock()
            opt.eval()
            opt_time += clock() - t0
        tr, _ = _accuracy(torch, model, problem.Xtr, problem.ytr)
        te, te_loss = _accuracy(torch, model, problem.Xte, problem.yte)
        train_acc.append(tr)
        test_acc.append(te)
        if plateau is not None:
            t0 = clock()
            plateau.step(te_loss if math.isfinite(te_loss) else math.inf)
            opt_time += clock() - t0
    return dict(label=spec["label"], train_acc=train_acc, test_acc=test_acc, lr=lrs, opt_time=opt_time)


def _epochs_to(acc, target=0.9):
    for i, a in enumerate(acc):
        if a >= target:
            return str(i + 1)
    return "-"


def _table(title, runs, epochs, steps_per_epoch):
    w = max(12, *(len(r["label"]) for r in runs))
    lines = [title, f"  {'setting':<{w}}  {'train acc':>9}  {'test acc':>8}  {'epochs to 90% test':>18}"]
    for r in runs:
        lines.append(f"  {r['label']:<{w}}  {r['train_acc'][-1]:>9.3f}  {r['test_acc'][-1]:>8.3f}  "
                     f"{_epochs_to(r['test_acc']):>18}")
    lines.append(f"  ({epochs} epochs of {steps_per_epoch} minibatches)")
    return "\n".join(lines)


def _plot(plt, path, title, runs, sweep_lrs=None):
    ncols = 3 if sweep_lrs is not None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.3), dpi=80)
    epochs = np.arange(1, len(runs[0]["test_acc"]) + 1)
    for r in runs:
        axes[0].plot(epochs, r["test_acc"], lw=1.5, label=r["label"])
        axes[1].plot(epochs, r["lr"], lw=1.5, label=r["label"])
    lowest = min(min(r["test_acc"]) for r in runs)
    axes[0].set(xlabel="epoch", ylabel="test accuracy", title="accuracy",
                ylim=(max(0.0, math.floor(20 * lowest - 0.5) / 20), 1.0))
    axes[0].axhline(0.9, color="0.6", lw=0.8, ls="--")
    axes[1].set(xlabel="epoch", ylabel="learning rate", yscale="log", title="learning rate")
    axes[0].legend(fontsize=7, loc="lower right")
    if sweep_lrs is not None:
        ax = axes[2]
        ax.plot(sweep_lrs, [r["train_acc"][-1] for r in runs], "o-", label="train")
        ax.plot(sweep_lrs, [r["test_acc"][-1] for r in runs], "s-", label="test")
        ax.set(xscale="log", xlabel="learning rate", ylabel="final accuracy", ylim=(0.0, 1.0),
               title="final accuracy vs lr")
        ax.legend(fontsize=7)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.08 if ncols == 2 else 0.06, right=0.98, bottom=0.15, top=0.82, wspace=0.32)
    fig.savefig(path)
    plt.close(fig)


def _range_test(torch, problem, backend, num_steps):
    import fastlr

    model = _model(torch)
    spec = dict(label="", opt="SGD", lr=0.01, kw=dict(momentum=0.9))
    optim_mod = __import__("fastlr.optim", fromlist=["SGD"]) if backend == "fastlr" else torch.optim
    opt = optim_mod.SGD(model.parameters(), lr=spec["lr"], **spec["kw"])
    data = [(problem.Xtr[idx], problem.ytr[idx]) for idx in problem.batches[0]]
    return fastlr.find_lr(model, opt, torch.nn.functional.cross_entropy, data, start_lr=1e-5, end_lr=10.0,
                          num_steps=num_steps)


def main(args):
    if getattr(args, "experiment", None) == "precision":
        from . import _demo_precision

        return _demo_precision.main(args)
    try:
        import matplotlib
        import torch

        import fastlr.optim  # noqa: F401
    except ImportError as exc:
        print(f"fastlr demo: error: needs torch and matplotlib (pip install torch matplotlib, or in the fastlr "
              f"checkout pip install \".[torch,plot]\"): {exc}",
              file=sys.stderr)
        return 2
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quick = bool(args.quick)
    epochs = args.epochs if args.epochs is not None else (QUICK_EPOCHS if quick else FULL_EPOCHS)
    if epochs < 1:
        print(f"fastlr demo: error: --epochs must be >= 1, got {epochs}", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:  # a file in the way, a read-only place
        print(f"fastlr demo: error: cannot use --out {args.out!r} as the output folder: {e}", file=sys.stderr)
        return 2
    compare = not args.no_compare
    try:
        import schedulefree  # noqa: F401 - the reference of experiment (g)

        has_schedulefree = True
    except ImportError:
        has_schedulefree = False
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-50-3 MLP: threads cost more than they give
    wall0 = time.perf_counter()
    try:
        problem = _Problem(torch, epochs)
        print(f"fastlr demo: blobs ({N_SAMPLES} points, 2 features, cluster_std {CLUSTER_STD:g}, seed {SEED}), "
              f"2-50-3 ReLU MLP, batch {BATCH}, {epochs} epochs, train/test {len(problem.Xtr)}/{len(problem.Xte)}")
        out_tables, timing = [], []

        def emit(text):
            print(text, flush=True)
            out_tables.append(text)

        def run_all(specs):
            """Trains each spec with fastlr (and torch.optim when comparing); returns the
            fastlr runs, both optimizer-step times and the largest final-accuracy gap."""
            runs, t_ours, t_ref, diff = [], 0.0, 0.0, 0.0
            for spec in specs:
                ours = _train(torch, problem, "fastlr", spec)
                runs.append(ours)
                t_ours += ours["opt_time"]
                if compare and not (spec["opt"].endswith("ScheduleFree") and not has_schedulefree):
                    ref = _train(torch, problem, "torch", spec)
                    t_ref += ref["opt_time"]
                    diff = max(diff, abs(ours["test_acc"][-1] - ref["test_acc"][-1]))
            return runs, t_ours, t_ref, diff

        def experiment(key, title, png, specs):
            runs, t_ours, t_ref, diff = run_all(specs)
            emit(_table(f"\n({key}) {title}", runs, epochs, problem.steps_per_epoch))
            timing.append((key, title, len(specs), t_ours, t_ref, diff))
            _plot(plt, os.path.join(args.out, png), f"({key}) {title}", runs,
                  sweep_lrs=[s["lr"] for s in specs] if key == "a" else None)

        experiments = _experiments(quick)
        for exp in experiments[:-1]:
            experiment(*exp)

        # (f) range test, then one cycle at its suggestion
        res = _range_test(torch, problem, "fastlr", 30 if quick else 100)
        res.plot(os.path.join(args.out, "demo_f_range_test.png"))
        # one-cycle's max_lr: min/10 (fastai's rule for fit_one_cycle) and, to compare, the
        # steepest-descent suggestion; the baseline is a constant lr of min/10
        lr_min, lr_steep = res.suggestion_min, res.suggestion
        specs = [dict(label=f"one-cycle max_lr={lr_min:.3g} (min/10)", opt="SGD", lr=lr_min,
                      kw=dict(momentum=0.9), sched=("one_cycle",)),
                 dict(label=f"one-cycle max_lr={lr_steep:.3g} (steepest)", opt="SGD", lr=lr_steep,
                      kw=dict(momentum=0.9), sched=("one_cycle",)),
                 dict(label=f"constant lr={lr_min:.3g}", opt="SGD", lr=lr_min, kw=dict(momentum=0.9))]
        if quick:
            specs = specs[:2]
        runs, t_ours, t_ref, diff = run_all(specs)
        title = "LR range test (SGD, momentum 0.9), then one-cycle at its suggestions"
        emit(f"\n(f) {title}\n  range test: {len(res.lrs)} steps ({res.stop_reason}), suggestion (steepest) "
             f"{res.suggestion:.3g}, min/10 {res.suggestion_min:.3g}, valley {res.suggestion_valley:.3g}")
        emit(_table("", runs, epochs, problem.steps_per_epoch).lstrip("\n"))
        timing.append(("f", title, len(specs), t_ours, t_ref, diff))
        _plot(plt, os.path.join(args.out, "demo_f_one_cycle.png"), f"(f) {title}", runs)
        experiment(*experiments[-1])  # (g) schedule-free

        if compare:
            lines = ["\noptimizer-step time (optimizer.step + per-step scheduler.step + plateau.step), "
                     "fastlr.optim vs torch.optim:",
                     f"  {'exp':<4} {'runs':>4}  {'fastlr ms':>10}  {'torch ms':>10}  {'speed-up':>8}  "
                     f"{'max |d test acc|':>16}"]
            tot_o = tot_r = 0.0
            for key, _, n, t_o, t_r, diff in timing:
                tot_o += t_o
                tot_r += t_r
                lines.append(f"  ({key}) {n:>5}  {1e3 * t_o:>10.1f}  {1e3 * t_r:>10.1f}  {t_r / t_o:>7.2f}x  "
                             f"{diff:>16.3f}")
            lines.append(f"  {'all':<4} {'':>4}  {1e3 * tot_o:>10.1f}  {1e3 * tot_r:>10.1f}  {tot_r / tot_o:>7.2f}x")
            emit("\n".join(lines))
        wall = time.perf_counter() - wall0
        emit(f"\nwall time {wall:.1f} s; plots and tables.txt in {os.path.abspath(args.out)}")
        with open(os.path.join(args.out, "tables.txt"), "w") as f:
            f.write("\n".join(out_tables).lstrip("\n") + "\n")
    finally:
        torch.set_num_threads(threads)
    return 0
