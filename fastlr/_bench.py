"""``fastlr bench``: fastlr against torch.optim and NumPy, with the bandwidth roofline.

For each optimizer x workload x dtype x thread count, every contender takes optimizer
steps on the *same* tensors, round-robin within each repetition so that drift of the
shared host hits all of them alike:

- ``roofline``: the memory-only kernel (``_C.roofline``) moving the bytes the update
  must move (DESIGN.md: Adam 28 B/el, SGD-momentum / RMSprop / Adagrad 20, centered
  RMSprop with momentum 36, in float32) through the same multi-tensor traversal;
- ``fastlr``: ``fastlr.optim.X``; ``fastlr_np``: the NumPy kernels (``fastlr.adam_step`` …);
- ``forloop`` / ``foreach`` / ``fused``: ``torch.optim.X`` with ``foreach=False`` /
  ``foreach=True`` / ``fused=True`` (where torch has it);
- ``numpy_ref``: the straight NumPy reference (``fastlr._reference``).

All contenders of a cell share one set of state tensors (preset in each optimizer's
``state`` before its first step), so the large workload is allocated once per dtype
and fits in memory; the values drift but stay finite, which is all a timing needs.
Cell results: median seconds per step, spread, GB/s, % of roofline (roofline time /
fastlr time) and speed-ups. The bfloat16 rows also check torch's fused result against
its for-loop (torch 2.13's fused CPU SGD leaves bf16 params unchanged, pytorch#191763)
and flag it instead of claiming a speed-up over a wrong result.

This module imports neither torch nor tqdm until ``main`` runs.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import sys
import time

from ._benchstats import (MAX_WIDTH, Contender, HostMonitor, Ratio, Verdict, format_ratio, measure_cell,
                          trust_summary)
from ._benchstats import interleave as run_round_robin  # noqa: F401  (the name other bench modules use)

# name -> torch class, constructor kwargs, state keys (torch's names, in the order of
# the NumPy API's state arguments), bytes per float32 element, has torch fused,
# has a momentum / beta1 for OneCycleLR(cycle_momentum=True).
LR = 1e-4
OPTIMIZERS = {
    "sgd": dict(label="SGD(m=0.9)", cls="SGD", kw=dict(lr=LR, momentum=0.9),
                states=("momentum_buffer",), bytes=20, fused=True, momentum=True),
    "sgd_nesterov": dict(label="SGD(m=0.9, nesterov)", cls="SGD", kw=dict(lr=LR, momentum=0.9, nesterov=True),
                         states=("momentum_buffer",), bytes=20, fused=True, momentum=True),
    "adam": dict(label="Adam", cls="Adam", kw=dict(lr=LR),
                 states=("exp_avg", "exp_avg_sq"), bytes=28, fused=True, momentum=True),
    "adamw": dict(label="AdamW(wd=0.01)", cls="AdamW", kw=dict(lr=LR, weight_decay=0.01),
                  states=("exp_avg", "exp_avg_sq"), bytes=28, fused=True, momentum=True),
    "rmsprop": dict(label="RMSprop", cls="RMSprop", kw=dict(lr=LR),
                    states=("square_avg",), bytes=20, fused=False, momentum=False),
    "rmsprop_cm": dict(label="RMSprop(centered, m=0.9)", cls="RMSprop", kw=dict(lr=LR, centered=True, momentum=0.9),
                       states=("square_avg", "grad_avg", "momentum_buffer"), bytes=36, fused=False, momentum=True),
    "adagrad": dict(label="Adagrad", cls="Adagrad", kw=dict(lr=LR),
                    states=("sum",), bytes=20, fused=True, momentum=False),
}
BF16_OPTIMIZERS = ("sgd", "adam")
DTYPES = ("float32", "bfloat16")
WORKLOADS = ("large", "medium", "small")
TORCH_IMPLS = ("forloop", "foreach", "fused")
QUICK = dict(optimizers=("sgd", "adam", "rmsprop_cm"), workloads=("medium", "small"), dtypes=("float32",))


# ---------------------------------------------------------------- workloads ---


def gpt2_small_shapes():
    """GPT-2 small (124.44M parameters, 148 tensors), in named_parameters order."""
    d, ff, vocab, ctx = 768, 3072, 50257, 1024
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, ff), (ff,), (ff, d), (d,)]
    return shapes + [(d,), (d,)]


def resnet50_shapes():
    """ResNet-50 (25.56M parameters, 161 tensors: 53 convs, 53 batch norms x 2, fc)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, cin, 1, 1), (width,), (width,), (width, width, 3, 3), (width,), (width,),
                       (4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if b == 0:
                shapes += [(4 * width, cin, 1, 1), (4 * width,), (4 * width,)]
            cin = 4 * width
    return shapes + [(1000, 2048), (1000,)]


def small_shapes():
    """50 x Linear(44, 44): 99,000 parameters in 100 tensors."""
    return [(44, 44), (44,)] * 50


WORKLOAD_SHAPES = {"large": gpt2_small_shapes, "medium": resnet50_shapes, "small": small_shapes}
WORKLOAD_LABELS = {"large": "GPT-2 small", "medium": "ResNet-50", "small": "50 x Linear(44,44)"}


def _numel(shape):
    return math.prod(shape)


# ------------------------------------------------------------------- timing ---


# --------------------------------------------------------------- contenders ---


class Cell:
    """Tensors of one (workload, dtype): params with .grad, plus NumPy views."""

    def __init__(self, torch, workload, dtype_name, seed=0):
        self.torch = torch
        self.workload = workload
        self.dtype_name = dtype_name
        self.dtype = getattr(torch, dtype_name)
        self.shapes = WORKLOAD_SHAPES[workload]()
        gen = torch.Generator().manual_seed(seed)
        self.params = []
        for shape in self.shapes:
            p = torch.nn.Parameter(torch.empty(shape, dtype=self.dtype))
            with torch.no_grad():
                p.normal_(0.0, 0.02, generator=gen)
            p.grad = torch.empty(shape, dtype=self.dtype).normal_(0.0, 1e-2, generator=gen)
            self.params.append(p)
        self.numel = sum(p.numel() for p in self.params)
        self.tensors = len(self.params)

    def new_states(self, keys):
        torch = self.torch
        return {k: [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params] for k in keys}

    def numpy(self, tensors):
        return [t.detach().numpy() for t in tensors]


def _preset_state(opt, params, states, with_step):
    """Points each param's optimizer state at the shared state tensors."""
    torch = sys.modules["torch"]
    for i, p in enumerate(params):
        st = opt.state[p]
        if with_step and "step" not in st:
            st["step"] = torch.tensor(0.0, dtype=torch.float32)
        for k, lst in states.items():
            st[k] = lst[i]


def _uses_shared_state(opt, params, states):
    p = params[0]
    return all(k in opt.state[p] and opt.state[p][k].data_ptr() == lst[0].data_ptr() for k, lst in states.items())


def torch_contender(torch, spec, impl, params, states, schedule=False):
    cls = getattr(torch.optim, spec["cls"])
    kw = dict(spec["kw"])
    if impl == "forloop":
        kw["foreach"] = False
    elif impl == "foreach":
        kw["foreach"] = True
    else:
        kw["fused"] = True
    opt = cls(params, **kw)
    _preset_state(opt, params, states, with_step=spec["cls"] != "SGD")
    if not schedule:
        return Contender(impl, opt.step), opt
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10**7,
                                                cycle_momentum=spec["momentum"])

    def step():
        opt.step()
        sched.step()

    return Contender(impl + "+OneCycleLR", step), opt


def fastlr_contender(spec, params, states, schedule=False):
    import fastlr.optim as fo

    cls = getattr(fo, spec["cls"])
    kw = dict(spec["kw"])
    if schedule:
        import fastlr

        kw["lr"] = fastlr.OneCycle(max_lr=1e-3, total_steps=10**7)
        if spec["momentum"]:
            mom = fastlr.OneCycleMomentum(total_steps=10**7)
            if spec["cls"] in ("Adam", "AdamW"):
                kw["betas"] = (mom, 0.999)
            else:
                kw["momentum"] = mom
    opt = cls(params, **kw)
    _preset_state(opt, params, states, with_step=spec["cls"] != "SGD")
    return Contender("fastlr+OneCycle" if schedule else "fastlr", opt.step), opt


def numpy_contender(name, module, opt_name, spec, cell, states):
    """fastlr's NumPy kernels or the NumPy reference (same signatures)."""
    P = cell.numpy(cell.params)
    G = cell.numpy([p.grad for p in cell.params])
    S = {k: cell.numpy(v) for k, v in states.items()}
    kw = {k: v for k, v in spec["kw"].items()}
    counter = [0]
    if opt_name in ("sgd", "sgd_nesterov"):
        def step():
            module.sgd_step(P, G, S["momentum_buffer"], **kw)
    elif opt_name in ("adam", "adamw"):
        kw["decoupled_weight_decay"] = opt_name == "adamw"

        def step():
            counter[0] += 1
            module.adam_step(P, G, S["exp_avg"], S["exp_avg_sq"], step=counter[0], **kw)
    elif opt_name == "rmsprop":
        def step():
            module.rmsprop_step(P, G, S["square_avg"], **kw)
    elif opt_name == "rmsprop_cm":
        def step():
            module.rmsprop_step(P, G, S["square_avg"], grad_avgs=S["grad_avg"],
                                momentum_buffers=S["momentum_buffer"], **kw)
    else:
        def step():
            counter[0] += 1
            module.adagrad_step(P, G, S["sum"], step=counter[0], **kw)
    return Contender(name, step)


def roofline_contender(cell, spec, states):
    from . import _C

    code = {"float32": 0, "float64": 1, "bfloat16": 2, "float16": 3}[cell.dtype_name]
    numel = [p.numel() for p in cell.params]
    params = [p.data_ptr() for p in cell.params]
    grads = [p.grad.data_ptr() for p in cell.params]
    st = [[t.data_ptr() for t in states[k]] for k in spec["states"]]

    def step():
        _C.roofline(code, numel, params, grads, st)

    return Contender("roofline", step)


# ----------------------------------------------------------- bf16 checking ---


def check_torch_fused(torch, opt_name, spec, dtype, steps=3):
    """Compares torch's fused result with its for-loop (the reference) on a few mixed-
    size tensors. Returns (ok, detail): ok is False when more than 1 % of the elements
    differ by more than 2 ulp of the dtype (or the fused step leaves params unchanged)."""
    gen = torch.Generator().manual_seed(1)
    sizes = [(44, 44), (44,), (257,), (1000,), (33, 7)]
    p0 = [torch.randn(s, generator=gen).to(dtype) for s in sizes]
    g0 = [torch.randn(s, generator=gen).to(dtype) for s in sizes]
    kw = dict(spec["kw"], lr=1e-2)
    out = {}
    for impl, extra in (("forloop", dict(foreach=False)), ("fused", dict(fused=True))):
        ps = [torch.nn.Parameter(p.clone()) for p in p0]
        for p, g in zip(ps, g0):
            p.grad = g.clone()
        opt = getattr(torch.optim, spec["cls"])(ps, **kw, **extra)
        for _ in range(steps):
            opt.step()
        out[impl] = torch.cat([p.detach().float().reshape(-1) for p in ps])
    ref, fused = out["forloop"], out["fused"]
    start = torch.cat([p.float().reshape(-1) for p in p0])
    ulp = torch.finfo(dtype).eps
    bad = ((fused - ref).abs() > 2 * ulp * ref.abs().clamp_min(1e-6)).float().mean().item()
    moved_ref = (ref != start).float().mean().item()
    moved_fused = (fused != start).float().mean().item()
    ok = bad <= 0.01
    detail = (f"torch fused vs for-loop after {steps} steps: {bad:.1%} of elements differ by > 2 ulp; "
              f"params moved: for-loop {moved_ref:.1%}, fused {moved_fused:.1%}")
    return ok, detail


# --------------------------------------------------------------------- main ---


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def csv(choices):
        def parse(text):
            items = [x.strip() for x in text.split(",") if x.strip()]
            bad = [x for x in items if x not in choices]
            if bad or not items:
                raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma-separated)")
            return tuple(items)
        return parse

    def threads(text):
        try:
            items = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            items = ()
        if not items or min(items) < 1:
            raise argparse.ArgumentTypeError("comma-separated positive integers, e.g. 1,2")
        return items

    parser.add_argument("--quick", action="store_true",
                        help="a subset of under a minute on a quiet host (SGD, Adam, centered RMSprop; medium and "
                             "small; all cores; float32)")
    parser.add_argument("--optimizer", type=csv(tuple(OPTIMIZERS)), default=None,
                        help="comma-separated subset of: " + ", ".join(OPTIMIZERS))
    parser.add_argument("--workload", type=csv(WORKLOADS), default=None,
                        help="comma-separated subset of: large (GPT-2 small), medium (ResNet-50), small (50 Linear)")
    parser.add_argument("--dtype", type=csv(DTYPES), default=None,
                        help="float32 and/or bfloat16 (bfloat16 runs SGD and Adam)")
    parser.add_argument("--threads", type=threads, default=None,
                        help="comma-separated thread counts (default: 1 and all cores; --quick: all cores)")
    parser.add_argument("--no-schedule", action="store_true",
                        help="skip the in-kernel schedule case (OneCycle, small workload)")
    parser.add_argument("--no-numpy", action="store_true", help="skip the NumPy contenders")
    def positive(text):
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"a positive integer, got {text!r}")
        return value

    parser.add_argument("--reps", type=positive, default=None,
                        help="minimum samples per contender (default 5; --quick 3; without --reps, "
                             "contenders over 4x slower than the fastest may stop at 3 once the time "
                             "budget is spent)")
    parser.add_argument("--schedulefree", action="store_true",
                        help="run the schedule-free rows instead: fastlr.optim.*ScheduleFree against "
                             "the schedulefree package (foreach, for-loop) and the roofline")
    parser.add_argument("--json", metavar="PATH", default=None, help="write all results as JSON to PATH")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from . import _bench_precision

    _bench_precision.add_arguments(parser)


def usable_cores():
    """The CPUs this process may run on: its affinity (taskset, a container's cpuset), which
    is what "all cores" means for the default thread counts; os.cpu_count() counts the
    machine's, and running that many threads on fewer CPUs measures the OS scheduler."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity API (macOS)
        return os.cpu_count() or 1


def default_threads(quick):
    """Thread counts when --threads is not given: all usable cores with --quick, else 1 and all."""
    ncpu = usable_cores()
    return (ncpu,) if quick else tuple(sorted({1, ncpu}))


def machine_info(torch, threads):
    import numpy as np

    import fastlr
    from . import _C

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": usable_cores(),  # the CPUs the run may use (its affinity)
        "cpu_count": os.cpu_count(),  # the machine's
        "cpu_level": _C.cpu_level(),
        "cpu_level_detected": _C.detected_cpu_level(),
        "threads": list(threads),
        "fastlr": fastlr.__version__,
        "compiler": _C.compiler,
        "openmp": _C.openmp,
        "cuda_built": fastlr.build_info()["cuda"],
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # libgomp's wait policy decides how long an idle worker takes to join the next
        # parallel region; torch's per-tensor regions are sensitive to it (see README).
        "env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS",
                                           "FASTLR_CPU_LEVEL") if k in os.environ},
    }


def _fmt_ms(s):
    if s is None:
        return "-"
    ms = s * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def _summarize(res, cell):
    """Derived numbers of one cell (in place): speed-ups are the paired ratios of
    `cell` (a _benchstats.CellResult), with their intervals and the cell's verdict."""
    c = res["contenders"]
    med = {k: v["median_s"] for k, v in c.items()}
    ratios = cell.ratios
    nbytes = res["bytes_per_element"] * res["numel"]
    fl = next((k for k in ("fastlr", "fastlr+OneCycle") if k in med), None)
    res["fastlr_key"] = fl
    if "roofline" in med:
        res["roofline_gbps"] = nbytes / med["roofline"] / 1e9
        if fl:
            res["fastlr_pct_roofline"] = 100.0 * ratios["roofline"].value
    if fl:
        res["fastlr_gbps"] = nbytes / med[fl] / 1e9
    torch_keys = [k for k in med if k.split("+")[0] in TORCH_IMPLS]
    if res.get("torch_fused_correct") is False:
        torch_keys = [k for k in torch_keys if not k.startswith("fused")]
    if torch_keys:
        best = min(torch_keys, key=lambda k: med[k])
        res["torch_best"] = best
        if fl:
            res["speedup_vs_torch_best"] = ratios[best].value
            res["speedup_vs_torch_best_ci"] = [ratios[best].lo, ratios[best].hi]
            fused = [k for k in torch_keys if k.startswith("fused")]
            if fused:
                res["speedup_vs_torch_fused"] = ratios[fused[0]].value
    if "numpy" in ratios:
        res["numpy_speedup"] = ratios["numpy"].value
    res["trusted"] = cell.verdict.trusted
    res["flags"] = list(cell.verdict.flags)
    res["stats"] = cell.to_json()


def cell_ratios(names):
    """The paired ratios a cell is judged by: each torch contender and the roofline
    over fastlr (speed-up, share of roofline), the NumPy reference over fastlr's NumPy
    kernels."""
    fl = next((k for k in ("fastlr", "fastlr+OneCycle") if k in names), None)
    ratios = {}
    if fl:
        ratios.update({k: (k, fl) for k in names if k.split("+")[0] in TORCH_IMPLS})
        if "roofline" in names:
            ratios["roofline"] = ("roofline", fl)
    if "numpy_ref" in names and "fastlr_np" in names:
        ratios["numpy"] = ("numpy_ref", "fastlr_np")
    return ratios


def format_table(results, meta):
    """Markdown tables, one per (case, dtype, workload, threads) group. A cell whose
    verdict is not trusted shows '?', its flags and only the interval of its ratios."""
    lines = []
    groups = {}
    for r in results:
        key = (r["schedule"] or "", r["dtype"], r["workload"], r["threads"])
        groups.setdefault(key, []).append(r)
    order = {w: i for i, w in enumerate(WORKLOADS)}
    for key in sorted(groups, key=lambda k: (k[0], DTYPES.index(k[1]), order[k[2]], k[3])):
        sched, dtype, workload, thr = key
        rows = groups[key]
        r0 = rows[0]
        title = (f"### {workload} ({WORKLOAD_LABELS[workload]}, {r0['numel'] / 1e6:.2f}M params, "
                 f"{r0['tensors']} tensors), {dtype}, {thr} thread{'s' if thr > 1 else ''}")
        if sched:
            title += ", with OneCycle: fastlr in-kernel schedule vs torch step + OneCycleLR.step()"
        lines += ["", title, ""]
        suffix = "+OneCycleLR" if sched else ""
        if sched:
            head = ["optimizer", "fastlr+OneCycle ms", "forloop", "foreach", "fused", "speed-up vs best torch [95% CI]"]
        else:
            head = ["optimizer", "B/el", "roofline ms (GB/s)", "fastlr ms", "% roofline", "forloop", "foreach",
                    "fused", "speed-up vs best torch [95% CI]"]
            numpy_cols = any("numpy_ref" in r["contenders"] or "fastlr_np" in r["contenders"] for r in rows)
            if numpy_cols:
                head += ["fastlr NumPy ms", "NumPy ref ms", "NumPy speed-up"]
        head.append("trust")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|")
        for r in sorted(rows, key=lambda r: list(OPTIMIZERS).index(r["optimizer"])):
            c = r["contenders"]
            verdict = Verdict(tuple(r.get("flags", ())))
            ratios = r.get("stats", {}).get("ratios", {})

            def ms(k):
                v = c.get(k)
                return _fmt_ms(v["median_s"]) if v else "-"

            def ratio(key, digits=2):
                j = ratios.get(key)
                return format_ratio(Ratio(j["value"], j["lo"], j["hi"], j["pairs"]), verdict, digits, flags=False) if j else "-"

            fused = ms("fused" + suffix)
            if c.get("fused" + suffix) is None and not OPTIMIZERS[r["optimizer"]]["fused"]:
                fused = "n/a"
            if r.get("torch_fused_correct") is False:
                fused += " WRONG†"
            best = r.get("torch_best")
            sp_txt = f"{ratio(best)} ({best.split('+')[0]})" if best and best in ratios else "-"
            trust = "ok" if verdict.trusted else "+".join(verdict.flags)
            if sched:
                cells = [r["label"], ms("fastlr+OneCycle"), ms("forloop" + suffix), ms("foreach" + suffix), fused,
                         sp_txt]
            else:
                roof = c.get("roofline")
                roof_txt = f"{_fmt_ms(roof['median_s'])} ({r['roofline_gbps']:.1f})" if roof else "-"
                pct = r.get("fastlr_pct_roofline")
                pct_txt = "-" if not pct else f"{pct:.0f}%" if verdict.trusted else "?"
                cells = [r["label"], str(r["bytes_per_element"]), roof_txt, ms("fastlr"),
                         pct_txt, ms("forloop"), ms("foreach"), fused, sp_txt]
                if numpy_cols:
                    cells += [ms("fastlr_np"), ms("numpy_ref"), ratio("numpy", 1)]
            lines.append("| " + " | ".join(cells + [trust]) + " |")
    notes = sorted({r["fused_check"] for r in results if r.get("torch_fused_correct") is False})
    if notes:
        lines += ["", "† torch fused result is wrong for this dtype (pytorch#191763); excluded from the speed-up. "
                  + "; ".join(notes)]
    lines += ["", f"Medians of interleaved samples; speed-ups: median of paired per-repetition ratios with a "
              f"95% bootstrap interval. trust: ok, or busy (other processes took cores the cell needed), "
              f"drifting (the probe kernel slowed down around the cell), wide (interval over "
              f"{MAX_WIDTH:.0%}); a marked cell shows '?' and its interval, never a plain speed-up. "
              f"CPU: {meta['cpu']} ({meta['cores']} cores, fastlr cpu_level "
              f"{meta['cpu_level']}); torch {meta['torch']}; numpy {meta['numpy']}; fastlr {meta['fastlr']}; "
              f"{meta['date']}; environment: "
              + (", ".join(f"{k}={v}" for k, v in meta["env"].items()) or "OMP_WAIT_POLICY unset")
              + ". % roofline = roofline time / fastlr time."]
    host = meta.get("host")
    if host:
        lines += ["", f"Host: other processes used {host['other_cores_start']:.2f} of {meta['cores']} cores before "
                  f"the run, up to {host['other_cores_max']:.2f} during it; {meta['wall_s']:.0f} s in all "
                  f"({host['retries']} cells re-measured)."]
    lines += ["", trust_summary(Verdict(tuple(r.get("flags", ()))) for r in results) + "."]
    return "\n".join(lines).lstrip("\n")


# Seconds one cell takes on a quiet 2-core host (Zen 5 VM, ~40 GB/s), per workload, with
# the default budgets: the full run's large cells overrun their budget (5 repetitions of
# ~1.5 s), its small cells stop at max_reps before it; --quick's medium cells need their 3
# repetitions of ~1 s. The full plan adds up to ~4 min, what its last run on an idle host
# took (3 min 57 s); a busy host takes longer, and the tqdm bar shows the actual pace.
CELL_S = {"large": 8.5, "medium": 3.5, "small": 0.8}
QUICK_CELL_S = {"large": 10.0, "medium": 4.0, "small": 0.4}
ALLOC_S = {"large": 3.0, "medium": 0.6, "small": 0.05}


def expected_duration_s(plan, threads, quick):
    """The run's duration on a quiet host, before any re-measuring."""
    per_cell = QUICK_CELL_S if quick else CELL_S
    total = sum(len(threads) * per_cell[w] for _, w, _, _ in plan)
    return total + sum(ALLOC_S[w] for _, w in {(d, w) for d, w, _, _ in plan})


def _fmt_duration(seconds):
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def slow_reps(args, min_reps):
    """--reps is a minimum for every contender; by default slow ones may stop at 3."""
    return min_reps if args.reps else 3


def _finite(obj):
    """`obj` with every non-finite float as None: an interval from fewer than 2 pairs is
    [0, inf], and json.dump would write `Infinity`, which JSON parsers other than
    Python's reject."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path, data):
    """Writes the results as standard JSON (non-finite numbers as null)."""
    with open(path, "w") as f:
        json.dump(_finite(data), f, indent=1, allow_nan=False)


def _check_json_path(path):
    """Fails before a run of minutes when its results could not be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        print(f"fastlr bench: error: cannot write --json {path!r} (a folder, or its folder is "
              "missing or read-only)", file=sys.stderr)
        return False
    return True


def main(args) -> int:
    if getattr(args, "precision", False):
        from . import _bench_precision

        return _bench_precision.main(args)
    # options the chosen run would not read: refused, not silently dropped
    if getattr(args, "schedulefree", False):
        ignored = [flag for flag, value in (("--optimizer", args.optimizer), ("--dtype", args.dtype),
                                            ("--no-schedule", args.no_schedule),
                                            ("--no-peers", getattr(args, "no_peers", False))) if value]
        if ignored:
            print(f"fastlr bench --schedulefree: error: {', '.join(ignored)} do(es) not apply: the schedule-free "
                  "run is SGD-SF, AdamW-SF and RAdam-SF (--quick: AdamW-SF) on float32 params", file=sys.stderr)
            return 2
    elif getattr(args, "no_peers", False):
        print("fastlr bench: error: --no-peers applies to --precision only", file=sys.stderr)
        return 2
    if args.json and not _check_json_path(args.json):
        return 2
    try:
        import torch
    except ImportError:
        print('fastlr bench: error: the benchmark compares against torch.optim; install it with '
              'pip install torch tqdm (or, in the fastlr checkout, pip install torch ".[bench]")', file=sys.stderr)
        return 2

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    import fastlr

    try:
        import fastlr.optim as _fo  # noqa: F401

        have_optim = all(hasattr(_fo, OPTIMIZERS[o]["cls"]) for o in OPTIMIZERS)
    except ImportError:
        have_optim = False
    try:
        from . import _reference as reference
    except ImportError:
        reference = None

    quick = args.quick
    optimizers = args.optimizer or (QUICK["optimizers"] if quick else tuple(OPTIMIZERS))
    workloads = args.workload or (QUICK["workloads"] if quick else WORKLOADS)
    dtypes = args.dtype or (QUICK["dtypes"] if quick else DTYPES)
    ncpu = usable_cores()
    threads = args.threads or default_threads(quick)
    if max(threads) > ncpu:
        print(f"fastlr bench: warning: {max(threads)} threads on {ncpu} usable cores oversubscribes "
              "them; those rows measure the OS scheduler as much as the kernels", file=sys.stderr)
    min_reps = args.reps or (3 if quick else 5)
    max_reps = max(min_reps, 7 if quick else 15)
    budget = {"large": 8.0, "medium": 3.0, "small": 1.5}
    if quick:
        budget = {k: v / 4 for k, v in budget.items()}
    target_sample_s = 0.002 if quick else 0.004

    if getattr(args, "schedulefree", False):
        return _main_schedulefree(args, torch, tqdm, threads, quick, min_reps, max_reps)

    # Plan: cells grouped by (dtype, workload) so the tensors are allocated once.
    plan = []
    for dtype in dtypes:
        for workload in workloads:
            for opt in optimizers:
                if dtype == "bfloat16" and opt not in BF16_OPTIMIZERS:
                    continue
                plan.append((dtype, workload, opt, None))
                if dtype == "float32" and workload == "small" and not args.no_schedule:
                    plan.append((dtype, workload, opt, "onecycle"))
    if not plan:
        print("fastlr bench: nothing to run for these filters", file=sys.stderr)
        return 2
    meta = machine_info(torch, threads)
    meta.update(quick=quick, min_reps=min_reps, max_reps=max_reps, lr=LR,
                fastlr_optim=have_optim, numpy_reference=reference is not None,
                sizes={w: {"params": sum(_numel(s) for s in WORKLOAD_SHAPES[w]()),
                           "tensors": len(WORKLOAD_SHAPES[w]())} for w in workloads})
    notes = []
    if not have_optim:
        notes.append("fastlr.optim is not available: no 'fastlr' column")
    if reference is None:
        notes.append("fastlr._reference is not available: no NumPy reference column")

    saved = (torch.get_num_threads(), fastlr.get_num_threads())
    t_begin = time.perf_counter()
    expected = expected_duration_s(plan, threads, quick)
    retry_cap = 0.15 * expected  # re-measuring unstable cells may add at most this
    print(f"fastlr bench: {len(plan) * len(threads)} cells, about {_fmt_duration(expected)} on a quiet host "
          f"(re-measuring unstable cells may add up to {_fmt_duration(retry_cap)})", file=sys.stderr)
    monitor = HostMonitor()
    host_start = []
    for thr in threads:  # the quiet baseline of the probe, per thread count
        fastlr.set_num_threads(thr)
        host_start.append(monitor.check(window_s=0.5 / len(threads)))
    busy_start = max(h.other_cores or 0.0 for h in host_start)
    if busy_start > 0.25:
        print(f"fastlr bench: warning: other processes are using {busy_start:.2f} of {monitor.cores} cores; "
              "cells that need those cores will be re-measured and marked 'busy'", file=sys.stderr)
    host = {"other_cores_start": busy_start, "other_cores_max": busy_start, "retries": 0, "retry_s": 0.0}
    results = []
    total = len(plan) * len(threads)
    bar = None
    if tqdm is not None and not args.no_progress:
        bar = tqdm(total=total, desc="fastlr bench", unit="cell", file=sys.stderr, dynamic_ncols=True)
    fused_checks = {}
    try:
        cell = None
        for dtype, workload, opt_name, sched in plan:
            if cell is None or (cell.workload, cell.dtype_name) != (workload, dtype):
                cell = None
                gc.collect()
                cell = Cell(torch, workload, dtype)
            spec = OPTIMIZERS[opt_name]
            states = cell.new_states(spec["states"])
            if dtype != "float32" and spec["fused"] and (opt_name, dtype) not in fused_checks:
                fused_checks[(opt_name, dtype)] = check_torch_fused(torch, opt_name, spec, cell.dtype)
            contenders, opts = [], []
            if sched is None:
                contenders.append(roofline_contender(cell, spec, states))
            if have_optim:
                c, o = fastlr_contender(spec, cell.params, states, schedule=sched is not None)
                contenders.append(c)
                opts.append(o)
            for impl in TORCH_IMPLS:
                if impl == "fused" and not spec["fused"]:
                    continue
                c, o = torch_contender(torch, spec, impl, cell.params, states, schedule=sched is not None)
                contenders.append(c)
                opts.append(o)
            use_numpy = sched is None and dtype == "float32" and not args.no_numpy
            for thr in threads:
                torch.set_num_threads(thr)
                fastlr.set_num_threads(thr)
                if bar is not None:
                    bar.set_postfix_str(f"{workload} {dtype} {opt_name}{'+OneCycle' if sched else ''} {thr} thr")
                cs = list(contenders)
                if use_numpy:
                    cs.append(numpy_contender("fastlr_np", fastlr, opt_name, spec, cell, states))
                    # The reference is single-threaded: measured once, at the largest count.
                    if reference is not None and thr == max(threads):
                        cs.append(numpy_contender("numpy_ref", reference, opt_name, spec, cell, states))
                names = [c.name for c in cs]
                t_cell = time.perf_counter()
                measured = measure_cell(
                    cs, baseline=names[0], ratios=cell_ratios(names), monitor=monitor, min_reps=min_reps,
                    max_reps=max_reps, budget_s=budget[workload], target_sample_s=target_sample_s,
                    retries=1 if host["retry_s"] < retry_cap else 0, slow_reps=slow_reps(args, min_reps))
                if measured.attempts > 1:
                    host["retries"] += 1
                    host["retry_s"] += (time.perf_counter() - t_cell) * (1 - 1 / measured.attempts)
                if measured.host and measured.host.other_cores is not None:
                    host["other_cores_max"] = max(host["other_cores_max"], measured.host.other_cores)
                res = {
                    "optimizer": opt_name, "label": spec["label"], "workload": workload, "dtype": dtype,
                    "threads": thr, "schedule": sched, "numel": cell.numel, "tensors": cell.tensors,
                    "bytes_per_element": spec["bytes"] * cell.params[0].element_size() // 4,
                    "contenders": {c.name: c.summary() for c in cs},
                }
                if opts and have_optim:
                    res["fastlr_shared_state"] = _uses_shared_state(opts[0], cell.params, states)
                if (opt_name, dtype) in fused_checks:
                    res["torch_fused_correct"], res["fused_check"] = fused_checks[(opt_name, dtype)]
                if not all(bool(torch.isfinite(p.detach()).all()) for p in cell.params):
                    res["warning"] = "params became non-finite"
                _summarize(res, measured)
                results.append(res)
                if bar is not None:
                    bar.update(1)
            del contenders, opts, states
            gc.collect()
    finally:
        if bar is not None:
            bar.close()
        torch.set_num_threads(saved[0])
        fastlr.set_num_threads(saved[1])
    meta["host"] = host
    meta["expected_s"] = round(expected, 1)
    meta["wall_s"] = round(time.perf_counter() - t_begin, 1)
    meta["notes"] = notes
    table = format_table(results, meta)
    print(table)
    for n in notes:
        print("note: " + n)
    if args.json:
        write_json(args.json, {"meta": meta, "results": results})
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _main_schedulefree(args, torch, tqdm, threads, quick, min_reps, max_reps):
    from . import _bench_schedulefree as sfb

    meta = machine_info(torch, threads)
    meta.update(quick=quick, min_reps=min_reps, max_reps=max_reps, suite="schedulefree")
    bar = None
    if tqdm is not None and not args.no_progress:
        bar = tqdm(total=sfb.cells(args, quick, threads), desc="fastlr bench --schedulefree",
                   unit="cell", file=sys.stderr, dynamic_ncols=True)
    t_begin = time.perf_counter()
    try:
        results = sfb.run(args, torch, threads, quick, min_reps, max_reps, bar)
    finally:
        if bar is not None:
            bar.close()
    meta["wall_s"] = round(time.perf_counter() - t_begin, 1)
    print(sfb.format_table(results, meta))
    if args.json:
        write_json(args.json, {"meta": meta, "results": results})
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
