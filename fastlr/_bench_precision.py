"""``fastlr bench --precision``: AdamW with fewer bytes per element, against the recipes
users run today and the peers that store low-precision state.

Two cells, each holding one set of params with grads (GPT-2 small by default):

* **bfloat16 params and grads** (mixed-precision training without an fp32 model copy):

  - ``torch recipe``: fp32 master copies stepped by ``torch.optim.AdamW(fused=True)``,
    timed as users run it: ``master.grad.copy_(param.grad)`` (the cast, 2 B read + 4
    written), the fused fp32 step (28 B), ``param.copy_(master)`` (4 + 2): 40 B/el;
  - ``torch fused bf16``: ``torch.optim.AdamW(fused=True)`` on the bf16 params (bf16
    state, rounded to nearest): 14 B/el;
  - fastlr: bf16 params rounded to nearest (14 B), with stochastic rounding (14 B),
    with fp32 master weights (28 B), master weights and bf16 state (20 B);
  - peers, when installed (``pip install torch==2.13.0 ".[peers]"`` in the checkout): torchao's
    ``_AdamW(bf16_stochastic_round=True)`` (14 B), optimi's ``AdamW(kahan_sum=True)``
    (bf16 Kahan compensation, 18 B), bitsandbytes' ``AdamW8bit`` (8-bit block-wise
    state, about 10 B).

* **float32 params and grads**: ``torch.optim.AdamW(fused=True)`` (28 B), fastlr (28 B),
  fastlr with bf16 state rounded to nearest and stochastically (20 B).

Every fastlr mode has its own roofline: the memory-only kernel (``_C.roofline``) moving
the streams of that mode, one pass per element size (a mode that mixes 2- and 4-byte
streams runs the 4-byte ones, then the 2-byte ones). A store-only stream (the bf16 param
written from its master) is moved as a read and a write, which is what a cached store
costs the memory system (the line is read for ownership first); its B/el column counts
the store alone, as the issue's accounting does. % roofline = roofline time / mode time.

All contenders of a cell step round-robin on the same params (their states are shared
where the layouts agree, so GPT-2 small fits in a few GB); ratios are of medians of
these interleaved samples, with the spread of the per-round ratios
(``_bench.Contender``'s samples are taken in the same rounds).
"""
from __future__ import annotations

import gc
import math
import os
import statistics
import sys
import time

from . import _bench
from ._benchstats import Contender, HostMonitor, format_ratio, measure_cell, ratio_verdict, trust_summary

LR = 1e-4
WEIGHT_DECAY = 0.01
DEFAULT_BUDGET = {"large": 10.0, "medium": 3.0, "small": 1.0}

# name -> (label, param dtype, bytes per element as counted by the issue, fastlr kwargs)
# fastlr kwargs None: not a fastlr contender.
FASTLR_MODES = {
    "bfloat16": [
        ("fastlr bf16", "bf16 params + state, round to nearest", 14, {}),
        ("fastlr bf16 SR", "bf16 params + state, stochastic rounding", 14, dict(stochastic_rounding=True)),
        ("fastlr master", "bf16 params, fp32 master + state", 28, dict(master_weights=True)),
        ("fastlr master+bf16 state", "bf16 params, fp32 master, bf16 state", 20,
         dict(master_weights=True, state_dtype="bfloat16")),
        ("fastlr master+8-bit state", "bf16 params, fp32 master, 8-bit state", 16,
         dict(master_weights=True, state_dtype="8bit")),
    ],
    "float32": [
        ("fastlr fp32", "fp32 params + state", 28, {}),
        ("fastlr bf16 state", "fp32 params, bf16 state (nearest)", 20, dict(state_dtype="bfloat16")),
        ("fastlr bf16 state SR", "fp32 params, bf16 state (stochastic)", 20,
         dict(state_dtype="bfloat16", stochastic_rounding=True)),
        ("fastlr 8-bit state", "fp32 params, 8-bit state (fastlr encoding)", 16, dict(state_dtype="8bit")),
        ("fastlr AdamW8bit", "fastlr.optim.AdamW8bit (torchao's semantics)", 16, dict(torchao_class=True)),
    ],
}
# What each fastlr mode's memory-only kernel moves: (element size, read-write arrays,
# read-only array) per pass; see the module docstring.
ROOF_PASSES = {
    "fastlr bf16": [(2, ("param", "exp_avg", "exp_avg_sq"), "grad")],
    "fastlr bf16 SR": [(2, ("param", "exp_avg", "exp_avg_sq"), "grad")],
    "fastlr master": [(4, ("master", "exp_avg32", "exp_avg_sq32"), None), (2, ("param",), "grad")],
    "fastlr master+bf16 state": [(4, ("master",), None), (2, ("param", "exp_avg", "exp_avg_sq"), "grad")],
    "fastlr fp32": [(4, ("param", "exp_avg", "exp_avg_sq"), "grad")],
    "fastlr bf16 state": [(4, ("param",), "grad"), (2, ("exp_avg", "exp_avg_sq"), None)],
    "fastlr bf16 state SR": [(4, ("param",), "grad"), (2, ("exp_avg", "exp_avg_sq"), None)],
    # 1-byte codes are moved as 2-byte elements, half as many (block scales: 8 B per 256
    # elements, left out)
    "fastlr 8-bit state": [(4, ("param",), "grad"), (1, ("exp_avg8", "exp_avg_sq8"), None)],
    "fastlr AdamW8bit": [(4, ("param",), "grad"), (1, ("exp_avg8", "exp_avg_sq8"), None)],
    "fastlr master+8-bit state": [(4, ("master",), None), (2, ("param",), "grad"),
                                  (1, ("exp_avg8", "exp_avg_sq8"), None)],
}
# torch and the peers: name -> (label, bytes per element)
OTHERS = {
    "bfloat16": {
        "torch recipe": ("bf16 params: grad.float(), torch fused fp32 AdamW on the master, copy back", 40),
        "torch fused bf16": ("torch.optim.AdamW(fused=True) on bf16 params (nearest)", 14),
        "torchao bf16 SR": ("torchao _AdamW(bf16_stochastic_round=True)", 14),
        "optimi Kahan": ("optimi AdamW(kahan_sum=True), bf16 params", 18),
        "bnb 8-bit": ("bitsandbytes AdamW8bit, bf16 params", 10),
    },
    "float32": {
        "torch fused fp32": ("torch.optim.AdamW(fused=True)", 28),
        "torchao AdamW8bit": ("torchao.optim.AdamW8bit (steady state; its first step compiles)", 16),
        "bnb AdamW8bit": ("bitsandbytes AdamW8bit, fp32 params", 16),
    },
}
PEERS = ("torchao bf16 SR", "optimi Kahan", "bnb 8-bit", "torchao AdamW8bit", "bnb AdamW8bit")
# The comparisons the issue sets targets for: (cell, mode, reference, target ratio).
TARGETS = [
    ("bfloat16", "fastlr master", "torch recipe", 1.35),
    ("bfloat16", "fastlr master+bf16 state", "torch recipe", 1.8),
    ("float32", "fastlr bf16 state", "torch fused fp32", 1.3),
    ("bfloat16", "fastlr bf16 SR", "torch fused bf16", 1.0),
    ("bfloat16", "fastlr bf16 SR", "torchao bf16 SR", 10.0),
    ("bfloat16", "fastlr bf16 SR", "optimi Kahan", 3.0),
    ("float32", "fastlr 8-bit state", "torch fused fp32", 1.6),
    ("bfloat16", "fastlr master+8-bit state", "torch recipe", 2.2),
    ("float32", "fastlr 8-bit state", "torchao AdamW8bit", 30.0),
    ("float32", "fastlr 8-bit state", "bnb AdamW8bit", 30.0),
    ("float32", "fastlr AdamW8bit", "torchao AdamW8bit", 30.0),
]
# issue 12: the stochastic-rounding modes 85 %, the others 90 %; issue 13: 8-bit 85 %
ROOF_TARGET = {"fastlr bf16 SR": 85.0, "fastlr bf16 state SR": 85.0, "fastlr 8-bit state": 85.0,
               "fastlr AdamW8bit": 85.0, "fastlr master+8-bit state": 85.0}


def add_arguments(parser) -> None:
    """Options of ``fastlr bench`` that only the precision run reads."""
    parser.add_argument("--precision", action="store_true",
                        help="the precision modes (fp32 master weights, bf16 state, stochastic rounding) of AdamW "
                             "against the torch recipes and the peers (torchao, optimi, bitsandbytes), on GPT-2 small "
                             "by default")
    parser.add_argument("--no-peers", action="store_true",
                        help="with --precision: skip torchao, optimi and bitsandbytes (slow: up to seconds a step)")


# ------------------------------------------------------------------ support ---


def fastlr_supports(torch, kwargs):
    """Whether this build's fastlr.optim.AdamW takes these precision options."""
    try:
        import fastlr.optim as fo
    except ImportError:
        return False
    if not kwargs:
        return True
    if kwargs.get("torchao_class"):
        return hasattr(fo, "AdamW8bit")
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    try:
        fo.AdamW([p], lr=LR, **_resolve(torch, kwargs))
    except (TypeError, ValueError, NotImplementedError):
        return False
    return True


def _resolve(torch, kwargs):
    """The bench's spelling of the options (dtype names) as fastlr.optim takes them."""
    return {k: (getattr(torch, v) if k == "state_dtype" and v != "8bit" else v) for k, v in kwargs.items()}


def _peer_factory(torch, name):
    """(constructor taking a param list, state keys it keeps per param) or None when the
    package is missing or refuses CPU tensors."""
    try:
        if name == "torchao bf16 SR":
            from torchao.optim import _AdamW

            return lambda ps: _AdamW(ps, lr=LR, weight_decay=WEIGHT_DECAY, bf16_stochastic_round=True)
        if name == "optimi Kahan":
            import optimi

            return lambda ps: optimi.AdamW(ps, lr=LR, weight_decay=WEIGHT_DECAY, kahan_sum=True, foreach=True)
        if name in ("bnb 8-bit", "bnb AdamW8bit"):
            import bitsandbytes as bnb

            return lambda ps: bnb.optim.AdamW8bit(ps, lr=LR, weight_decay=WEIGHT_DECAY)
        if name == "torchao AdamW8bit":
            from torchao.optim import AdamW8bit

            return lambda ps: AdamW8bit(ps, lr=LR, weight_decay=WEIGHT_DECAY)
    except Exception:  # an import that fails for any reason (missing, broken CPU backend)
        return None
    raise KeyError(name)


# ----------------------------------------------------------------- the cells ---


class PrecisionCell:
    """Params of one workload in one dtype, with grads, and the pools of state tensors
    that contenders with the same layout share."""

    def __init__(self, torch, workload, dtype_name, seed=0):
        self.torch = torch
        self.dtype_name = dtype_name
        self.base = _bench.Cell(torch, workload, dtype_name, seed=seed)
        self.params = self.base.params
        self.numel = self.base.numel
        self.tensors = self.base.tensors
        self._pools = {}

    def pool(self, key, dtype):
        """A list of zero tensors (one per param) in `dtype`, made once per (key, dtype);
        key "master" starts as the params' values."""
        torch = self.torch
        k = (key, dtype)
        if k not in self._pools:
            if key == "master":
                self._pools[k] = [p.detach().to(dtype).clone() for p in self.params]
            else:
                self._pools[k] = [torch.zeros(p.shape, dtype=dtype) for p in self.params]
        return self._pools[k]

    def arrays(self, role, size):
        """The tensors a roofline pass moves for `role`, by element size."""
        torch = self.torch
        low, f32 = self.base.dtype, torch.float32
        if role == "param":
            return self.params
        if role == "grad":
            return [p.grad for p in self.params]
        if role == "master":
            return self.pool("master", f32)
        if size == 1:
            return self.pool(role, torch.uint8)
        if role.endswith("32"):
            return self.pool(role[:-2], f32)
        return self.pool(role, torch.bfloat16 if size == 2 else f32 if low == f32 else low)


def _preset(opt, params, pools):
    """Points each param's state at the shared tensors (before the first step)."""
    torch = sys.modules["torch"]
    for i, p in enumerate(params):
        st = opt.state[p]
        st.setdefault("step", torch.tensor(0.0, dtype=torch.float32))
        for k, lst in pools.items():
            st[k] = lst[i]


def roofline_contender(cell, name):
    from . import _C

    calls = []
    for size, rw, ro in ROOF_PASSES[name]:
        code = 0 if size == 4 else 2
        numel = [p.numel() // (2 if size == 1 else 1) for p in cell.params]
        arrays = [cell.arrays(r, size) for r in rw]
        # A pass with no read-only stream reads its first array twice (the second read
        # hits the cache): the roofline kernel always has a grads role.
        grads = cell.arrays(ro, size) if ro else arrays[0]
        for lst in [*arrays, grads]:
            assert all(t.element_size() == size for t in lst), (name, size)
        calls.append((code, numel, [t.data_ptr() for t in arrays[0]], [t.data_ptr() for t in grads],
                      [[t.data_ptr() for t in lst] for lst in arrays[1:]]))

    def step():
        for code, numel, p, g, s in calls:
            _C.roofline(code, numel, p, g, s)

    return Contender("roof " + name, step)


def fastlr_contender(torch, cell, name, kwargs):
    import fastlr.optim as fo

    if kwargs.get("torchao_class"):
        opt = fo.AdamW8bit(cell.params, lr=LR, weight_decay=WEIGHT_DECAY)
        return Contender(name, opt.step), opt
    kw = _resolve(torch, kwargs)
    opt = fo.AdamW(cell.params, lr=LR, weight_decay=WEIGHT_DECAY, **kw)
    if kw.get("state_dtype") == "8bit":  # codes and scales: its own state, made on the first step
        return Contender(name, opt.step), opt
    state_dtype = kw.get("state_dtype") or (torch.float32 if kw.get("master_weights") else cell.base.dtype)
    pools = {k: cell.pool(k, state_dtype) for k in ("exp_avg", "exp_avg_sq")}
    if kw.get("master_weights"):
        pools["master_param"] = cell.pool("master", torch.float32)
    _preset(opt, cell.params, pools)
    return Contender(name, opt.step), opt


def recipe_contender(torch, cell):
    """bf16 params with fp32 masters, stepped as users do it with torch alone."""
    masters = cell.pool("master", torch.float32)
    grads32 = cell.pool("grad32", torch.float32)
    for m, g in zip(masters, grads32):
        m.grad = g
    opt = torch.optim.AdamW(masters, lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    _preset(opt, masters, {k: cell.pool(k, torch.float32) for k in ("exp_avg", "exp_avg_sq")})
    params = cell.params

    def step():
        with torch.no_grad():
            for p, m in zip(params, masters):
                m.grad.copy_(p.grad)
            opt.step()
            for p, m in zip(params, masters):
                p.copy_(m)

    return Contender("torch recipe", step), opt


def torch_fused_contender(torch, cell, name):
    opt = torch.optim.AdamW(cell.params, lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    _preset(opt, cell.params, {k: cell.pool(k, cell.base.dtype) for k in ("exp_avg", "exp_avg_sq")})
    return Contender(name, opt.step), opt


def peer_contender(torch, cell, name, factory):
    opt = factory(cell.params)
    if name == "torchao bf16 SR":  # same layout as torch's (bf16 exp_avg, exp_avg_sq): share it
        _preset(opt, cell.params, {k: cell.pool(k, cell.base.dtype) for k in ("exp_avg", "exp_avg_sq")})
    return Contender(name, opt.step), opt


# ------------------------------------------------------------------ summary ---


def cell_ratios(names):
    """measure_cell's ratios: each mode against its roofline (roofline time / mode time)
    and each target's reference over its mode (the speed-up)."""
    ratios = {"roof " + n: ("roof " + n, n) for n in names if "roof " + n in names}
    for cell, mode, ref, _ in TARGETS:
        if mode in names and ref in names:
            ratios[f"{mode} vs {ref}"] = (ref, mode)
    return ratios


def summarize(cell_name, measured, numel, labels, nbytes, threads):
    """Rows of one (cell, threads) from a _benchstats.CellResult: median ms, GB/s,
    % roofline and the target ratios, each with its interval and its verdict (ratio_verdict)."""
    by = {c.name: c for c in measured.contenders}
    verdict = measured.verdict
    host = ratio_verdict(verdict)  # a median time has no interval: the host's flags only
    rows = []
    for name, c in by.items():
        if name.startswith("roof "):
            continue
        med = statistics.median(c.samples)
        row = {"cell": cell_name, "mode": name, "label": labels[name], "bytes_per_element": nbytes[name],
               "threads": threads, "numel": numel, **c.summary(), "gbps": nbytes[name] * numel / med / 1e9,
               "trusted": host.trusted, "flags": list(host.flags)}
        r = measured.ratios.get("roof " + name)
        if r is not None:
            v = ratio_verdict(verdict, r)
            row["trusted"], row["flags"] = v.trusted, list(v.flags)
            roof_med = statistics.median(by["roof " + name].samples)
            row["roofline_median_s"] = roof_med
            row["roofline_gbps"] = nbytes[name] * numel / roof_med / 1e9
            row["pct_roofline"] = 100.0 * r.value
            row["pct_roofline_ci"] = [100.0 * r.lo, 100.0 * r.hi]
        rows.append(row)
    ratios = []
    for cell, mode, ref, target in TARGETS:
        r = measured.ratios.get(f"{mode} vs {ref}")
        if cell != cell_name or r is None:
            continue
        v = ratio_verdict(verdict, r)
        ratios.append({"cell": cell, "mode": mode, "reference": ref, "threads": threads, "target": target,
                       "ratio": r.value, "ci": [r.lo, r.hi], "trusted": v.trusted,
                       "flags": list(v.flags), "text": format_ratio(r, v), "met": r.value >= target})
    return rows, ratios


def _roof_target_text(row):
    """'fastlr master 2 thr 93% (met)'; an untrusted share is its interval behind '?', as
    in the tables, never a plain number with a verdict."""
    met = row["pct_roofline"] >= ROOF_TARGET.get(row["mode"], 90.0)
    head = f"{row['mode']} {row['threads']} thr "
    if row.get("trusted", True):
        return head + f"{row['pct_roofline']:.0f}% ({'met' if met else 'not met'})"
    lo, hi = row.get("pct_roofline_ci", (0.0, math.inf))
    return head + f"? ({lo:.0f}-{hi:.0f}%) ({'+'.join(row.get('flags', ())) or 'untrusted'})"


def format_tables(rows, ratios, meta):
    lines = []
    groups = sorted({(r["workload"], r["cell"], r["threads"]) for r in rows},
                    key=lambda k: (_bench.WORKLOADS.index(k[0]), k[1] != "bfloat16", k[2]))
    for workload, cell, thr in groups:
        sel = [r for r in rows if (r["workload"], r["cell"], r["threads"]) == (workload, cell, thr)]
        title = ("bf16 params and grads" if cell == "bfloat16" else "fp32 params and grads")
        lines += ["", f"### AdamW, {title}, {_bench.WORKLOAD_LABELS[workload]} ({sel[0]['numel'] / 1e6:.2f}M "
                  f"params), {thr} thread{'s' if thr > 1 else ''}", "",
                  "| mode | B/el | ms/step (IQR) | GB/s | roofline ms | % roofline |", "|---|---:|---:|---:|---:|---:|"]
        for r in sorted(sel, key=lambda r: r["median_s"]):
            roof = r.get("roofline_median_s")
            pct = r.get("pct_roofline")
            ms = _bench._fmt_ms
            lines.append(f"| {r['mode']} | {r['bytes_per_element']} | {ms(r['median_s'])} "
                         f"({ms(r['q1_s'])}-{ms(r['q3_s'])}) | {r['gbps']:.1f} | {ms(roof)} | "
                         f"{'-' if pct is None else f'{pct:.0f}%'}{'' if r['trusted'] else ' ?'} |")
    if ratios:
        lines += ["", "### Targets (median of paired per-repetition ratios [95 % bootstrap interval])", "",
                  "| threads | mode | vs | speed-up | target | met |", "|---:|---|---|---:|---:|:---:|"]
        for r in ratios:
            met = ("yes" if r["met"] else "no") + ("" if r["trusted"] else " (untrusted)")
            lines.append(f"| {r['threads']} | {r['mode']} | {r['reference']} | {r['text']} | {r['target']:g}x | {met} |")
    roof_rows = [r for r in rows if "pct_roofline" in r]
    if roof_rows:
        lines += ["", "Roofline targets: " + "; ".join(
            _roof_target_text(r) for r in roof_rows if r["mode"] != "fastlr bf16" and r["mode"] != "fastlr fp32")]
    lines += ["", f"Medians of interleaved samples; CPU: {meta['cpu']} ({meta['cores']} cores, fastlr cpu_level "
              f"{meta['cpu_level']}); torch {meta['torch']}; " + "; ".join(f"{k} {v}" for k, v in meta["peers"].items())
              + f"; {meta['date']}; load average before the run {meta['loadavg']}."]
    lines.append(meta["trust"] + "; '?': the host was busy or drifting during that cell, or that ratio's "
                 "interval was wide (see the JSON): not to be quoted.")
    if meta.get("first_step_s"):
        lines.append("Peers' first step (excluded from the medians; torchao compiles there): " + "; ".join(
            f"{k} {v:.1f} s" for k, v in meta["first_step_s"].items()) + ".")
    if meta.get("missing"):
        lines.append("Not measured: " + "; ".join(meta["missing"]) + ".")
    return "\n".join(lines).lstrip("\n")


def _peer_versions():
    from importlib import metadata

    out = {}
    for dist in ("torchao", "torch-optimi", "bitsandbytes"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------- main ---


def main(args) -> int:
    ignored = [flag for flag, value in (("--optimizer", args.optimizer), ("--dtype", args.dtype),
                                        ("--no-schedule", args.no_schedule), ("--no-numpy", args.no_numpy),
                                        ("--schedulefree", getattr(args, "schedulefree", False))) if value]
    if ignored:
        print(f"fastlr bench --precision: error: {', '.join(ignored)} do(es) not apply: the precision run is "
              "AdamW on bf16 and fp32 params", file=sys.stderr)
        return 2
    if args.json and not _bench._check_json_path(args.json):
        return 2
    try:
        import torch
    except ImportError:
        print('fastlr bench --precision: error: needs torch; pip install torch tqdm (or, in the fastlr checkout, '
              'pip install torch ".[bench]")', file=sys.stderr)
        return 2
    import fastlr

    workloads = args.workload or (("medium",) if args.quick else ("large",))
    threads = args.threads or _bench.default_threads(args.quick)
    min_reps = args.reps or (3 if args.quick else 5)
    max_reps = max(min_reps, 7 if args.quick else 15)
    peers = () if args.no_peers else PEERS
    meta = _bench.machine_info(torch, threads)
    meta.update(peers=_peer_versions(), min_reps=min_reps, workloads=list(workloads), lr=LR,
                weight_decay=WEIGHT_DECAY, loadavg=" ".join(f"{x:.2f}" for x in os.getloadavg()))
    missing = []
    first_steps = {}  # peers' first step (torchao compiles there), reported apart
    saved = (torch.get_num_threads(), fastlr.get_num_threads())
    rows, ratios, verdicts = [], [], []
    monitor = HostMonitor()
    monitor.check()
    t_begin = time.perf_counter()
    try:
        for workload in workloads:
            for cell_name in ("bfloat16", "float32"):
                cell = PrecisionCell(torch, workload, cell_name)
                contenders, labels, nbytes, keep = [], {}, {}, []
                for name, label, b, kw in FASTLR_MODES[cell_name]:
                    if not fastlr_supports(torch, kw):
                        missing.append(f"{name} (this fastlr.optim.AdamW does not take {sorted(kw)})")
                        continue
                    c, o = fastlr_contender(torch, cell, name, kw)
                    contenders += [roofline_contender(cell, name), c]
                    keep.append(o)
                    labels[name], nbytes[name] = label, b
                for name, (label, b) in OTHERS[cell_name].items():
                    if name == "torch recipe":
                        c, o = recipe_contender(torch, cell)
                    elif name.startswith("torch fused"):
                        c, o = torch_fused_contender(torch, cell, name)
                    else:
                        if name not in peers:
                            continue
                        factory = _peer_factory(torch, name)
                        if factory is None:
                            missing.append(f"{name} (not installed: pip install torch==2.13.0 \".[peers]\" in the fastlr checkout)")
                            continue
                        try:
                            c, o = peer_contender(torch, cell, name, factory)
                            t0 = time.perf_counter()
                            c.step()  # a peer that refuses CPU tensors fails here, not mid-run
                            first_steps[name] = round(time.perf_counter() - t0, 2)
                        except Exception as exc:  # noqa: BLE001 - report any refusal and go on
                            missing.append(f"{name} ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
                            continue
                    contenders.append(c)
                    keep.append(o)
                    labels[name], nbytes[name] = label, b
                for thr in threads:
                    torch.set_num_threads(thr)
                    fastlr.set_num_threads(thr)
                    names = [c.name for c in contenders]
                    measured = measure_cell(contenders, baseline=names[0], ratios=cell_ratios(names),
                                            monitor=monitor, min_reps=min_reps, max_reps=max_reps,
                                            budget_s=DEFAULT_BUDGET[workload] / (4 if args.quick else 1),
                                            target_sample_s=0.004, retries=0 if workload == "large" else 1,
                                            slow_reps=_bench.slow_reps(args, min_reps))
                    verdicts.append(measured.verdict)
                    r, q = summarize(cell_name, measured, cell.numel, labels, nbytes, thr)
                    for row in r:
                        row["workload"] = workload
                    rows += r
                    ratios += q
                    if not args.no_progress:
                        print(f"fastlr bench --precision: {workload} {cell_name} {thr} thread(s) done "
                              f"({time.perf_counter() - t_begin:.0f} s)", file=sys.stderr)
                del contenders, keep, cell
                gc.collect()
    finally:
        torch.set_num_threads(saved[0])
        fastlr.set_num_threads(saved[1])
    meta["wall_s"] = round(time.perf_counter() - t_begin, 1)
    meta["missing"] = sorted(set(missing))
    meta["first_step_s"] = first_steps
    meta["trust"] = (trust_summary(verdicts) + f"; {sum(r['trusted'] for r in ratios)} of {len(ratios)} "
                     "target ratios trustworthy")
    print(format_tables(rows, ratios, meta))
    if args.json:
        _bench.write_json(args.json, {"meta": meta, "rows": rows, "targets": ratios})
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
