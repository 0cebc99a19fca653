"""``fastlr bench --schedulefree``: fastlr's fused schedule-free optimizers against the
``schedulefree`` package (its foreach and for-loop paths), with the bandwidth roofline.

Per workload x optimizer x thread count, on the same tensors and state, interleaved and
judged by ``fastlr._benchstats.measure_cell`` (paired ratios with bootstrap intervals, a
cell re-measured once and marked when other processes took its cores):

- ``roofline``: the memory-only kernel moving the bytes the step must move: read y, z,
  g (and v), write y, z (and v): SGD-SF 20 B/el, AdamW-SF / RAdam-SF 28 B/el in float32;
- ``fastlr``: ``fastlr.optim.XScheduleFree.step()``; ``fastlr_np``: the NumPy kernel;
- ``foreach`` / ``forloop``: ``schedulefree.XScheduleFree(foreach=True / False)``.

A ``switch`` row times ``eval()`` followed by ``train()`` (two passes over p and z,
12 B/el each) against the package's and the roofline of two such passes.

The package overwrites the grads with the normalized step each time; the values drift
but stay finite, which is all a timing needs.
"""
from __future__ import annotations

import gc
import sys

from . import _bench
from ._benchstats import (MAX_WIDTH, Contender, HostMonitor, Ratio, Verdict, format_ratio,
                          measure_cell, trust_summary)

SF_OPTIMIZERS = {
    "sgd_sf": dict(label="SGD-SF", cls="SGDScheduleFree", kw=dict(lr=0.1), states=("z",), bytes=20),
    "adamw_sf": dict(label="AdamW-SF(wd=0.01)", cls="AdamWScheduleFree",
                     kw=dict(lr=1e-3, weight_decay=0.01), states=("z", "exp_avg_sq"), bytes=28),
    "radam_sf": dict(label="RAdam-SF", cls="RAdamScheduleFree", kw=dict(lr=1e-3),
                     states=("z", "exp_avg_sq"), bytes=28),
}
QUICK = ("adamw_sf",)
SWITCH_BYTES = 24  # eval() then train(): two passes reading p, z and writing p


def _preset(opt, params, states):
    for i, p in enumerate(params):
        for k, lst in states.items():
            opt.state[p][k] = lst[i]


def _contenders(torch, sf, spec, cell, states, numpy=True):
    import fastlr
    import fastlr.optim as fo

    from . import _C

    params = cell.params
    out = [Contender("roofline", _roofline(_C, cell, spec, states))]
    opt = getattr(fo, spec["cls"])(params, **spec["kw"])
    _preset(opt, params, states)
    opt.train()
    out.append(Contender("fastlr", opt.step))
    P = cell.numpy(params)
    G = cell.numpy([p.grad for p in params])
    S = [cell.numpy(states[k]) for k in spec["states"]]
    fn = {"sgd_sf": fastlr.sgd_schedulefree_step, "adamw_sf": fastlr.adamw_schedulefree_step,
          "radam_sf": fastlr.radam_schedulefree_step}[spec["key"]]
    book = {"step": 0, "lr_max": -1.0, "weight_sum": 0.0}

    def np_step():
        book["step"] += 1
        r = fn(P, G, *S, step=book["step"], lr=spec["kw"]["lr"], lr_max=book["lr_max"],
               weight_sum=book["weight_sum"],
               **{k: v for k, v in spec["kw"].items() if k != "lr"})
        book["lr_max"], book["weight_sum"] = r.lr_max, r.weight_sum

    if numpy:
        out.append(Contender("fastlr_np", np_step))
    opts = [opt]
    if sf is not None:
        for impl, foreach in (("foreach", True), ("forloop", False)):
            o = getattr(sf, spec["cls"])(params, foreach=foreach, **spec["kw"])
            _preset(o, params, states)
            o.train()
            out.append(Contender(impl, o.step))
            opts.append(o)
    return out, opts


def _roofline(_C, cell, spec, states):
    code = {"float32": 0, "float64": 1, "bfloat16": 2, "float16": 3}[cell.dtype_name]
    numel = [p.numel() for p in cell.params]
    params = [p.data_ptr() for p in cell.params]
    grads = [p.grad.data_ptr() for p in cell.params]
    st = [[t.data_ptr() for t in states[k]] for k in spec["states"]]
    return lambda: _C.roofline(code, numel, params, grads, st)


def _switch_contenders(torch, sf, cell, states):
    """eval() + train() of fastlr and of the package, and two p/z roofline passes."""
    import fastlr.optim as fo

    from . import _C

    code = {"float32": 0, "float64": 1, "bfloat16": 2, "float16": 3}[cell.dtype_name]
    numel = [p.numel() for p in cell.params]
    p_addrs = [p.data_ptr() for p in cell.params]
    z_addrs = [t.data_ptr() for t in states["z"]]

    def roof():
        _C.roofline(code, numel, p_addrs, z_addrs, [])
        _C.roofline(code, numel, p_addrs, z_addrs, [])

    out = [Contender("roofline", roof)]
    makers = [("fastlr", fo.AdamWScheduleFree)]
    if sf is not None:  # the package switches param by param, foreach or not
        makers += [("forloop", sf.AdamWScheduleFree)]
    for name, cls in makers:
        opt = cls(cell.params)
        _preset(opt, cell.params, {"z": states["z"], "exp_avg_sq": states["exp_avg_sq"]})
        opt.train()

        def both(opt=opt):
            opt.eval()
            opt.train()

        out.append(Contender(name, both))
    return out


def run(args, torch, threads, quick, min_reps, max_reps, bar=None):
    """Returns the result rows (the same fields as fastlr bench's, plus "package")."""
    import fastlr

    try:
        import schedulefree as sf
    except ImportError:
        sf = None
        print("fastlr bench: note: the schedulefree package is not installed "
              "(pip install schedulefree): no package columns", file=sys.stderr)
    workloads = args.workload or (("medium", "small") if quick else _bench.WORKLOADS)
    names = QUICK if quick else tuple(SF_OPTIMIZERS)
    budget = {"large": 8.0, "medium": 3.0, "small": 1.5}
    if quick:
        budget = {k: v / 4 for k, v in budget.items()}
    target_s = 0.002 if quick else 0.004
    results = []
    saved = (torch.get_num_threads(), fastlr.get_num_threads())
    monitor = HostMonitor()
    for thr in threads:  # the quiet baseline of the probe, per thread count
        fastlr.set_num_threads(thr)
        monitor.check(window_s=0.5 / len(threads))
    try:
        for workload in workloads:
            cell = _bench.Cell(torch, workload, "float32")
            for name in names + ("switch",):
                spec = dict(SF_OPTIMIZERS.get(name, SF_OPTIMIZERS["adamw_sf"]), key=name)
                states = cell.new_states(spec["states"])
                if name == "switch":
                    cs, opts = _switch_contenders(torch, sf, cell, states), []
                    label, nbytes = "eval()+train()", SWITCH_BYTES
                else:
                    cs, opts = _contenders(torch, sf, spec, cell, states, numpy=not args.no_numpy)
                    label, nbytes = spec["label"], spec["bytes"]
                for thr in threads:
                    torch.set_num_threads(thr)
                    fastlr.set_num_threads(thr)
                    if bar is not None:
                        bar.set_postfix_str(f"{workload} {name} {thr} thr")
                    present = {c.name for c in cs}
                    measured = measure_cell(
                        cs, baseline="fastlr",
                        ratios={k: (k, "fastlr") for k in ("roofline", "foreach", "forloop") if k in present},
                        monitor=monitor, min_reps=min_reps, max_reps=max_reps,
                        budget_s=budget[workload], target_sample_s=target_s, retries=1,
                        slow_reps=_bench.slow_reps(args, min_reps))
                    res = {"optimizer": name, "label": label, "workload": workload,
                           "dtype": "float32", "threads": thr, "schedule": None,
                           "numel": cell.numel, "tensors": cell.tensors,
                           "bytes_per_element": nbytes,
                           "package": _package_version() if sf else None,
                           "contenders": {c.name: c.summary() for c in cs}}
                    _summarize(res, measured)
                    results.append(res)
                    if bar is not None:
                        bar.update(1)
                del cs, opts, states
                gc.collect()
            del cell
            gc.collect()
    finally:
        torch.set_num_threads(saved[0])
        fastlr.set_num_threads(saved[1])
    return results


def _package_version():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("schedulefree")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown version"


def cells(args, quick, threads):
    """How many result rows run() produces (for the progress bar)."""
    workloads = args.workload or (("medium", "small") if quick else _bench.WORKLOADS)
    return len(workloads) * (len(QUICK if quick else SF_OPTIMIZERS) + 1) * len(threads)


def _summarize(res, cell):
    """Derived numbers (in place) from the paired ratios of `cell` (a CellResult)."""
    c = res["contenders"]
    med = {k: v["median_s"] for k, v in c.items()}
    nbytes = res["bytes_per_element"] * res["numel"]
    ratios = cell.ratios
    if "roofline" in med:
        res["roofline_gbps"] = nbytes / med["roofline"] / 1e9
        res["fastlr_pct_roofline"] = 100.0 * ratios["roofline"].value
    res["fastlr_gbps"] = nbytes / med["fastlr"] / 1e9
    pkg = [k for k in ("foreach", "forloop") if k in med]
    if pkg:
        best = min(pkg, key=lambda k: med[k])
        res["package_best"] = best
        res["speedup_vs_package_best"] = ratios[best].value
        res["speedup_vs_package_best_ci"] = [ratios[best].lo, ratios[best].hi]
    res["trusted"] = cell.verdict.trusted
    res["flags"] = list(cell.verdict.flags)
    res["stats"] = cell.to_json()


def format_table(results, meta):
    lines = []
    groups = {}
    for r in results:
        groups.setdefault((r["workload"], r["threads"]), []).append(r)
    order = {w: i for i, w in enumerate(_bench.WORKLOADS)}
    for workload, thr in sorted(groups, key=lambda k: (order[k[0]], k[1])):
        rows = groups[(workload, thr)]
        r0 = rows[0]
        lines += ["", f"### schedule-free, {workload} ({_bench.WORKLOAD_LABELS[workload]}, "
                      f"{r0['numel'] / 1e6:.2f}M params, {r0['tensors']} tensors), float32, "
                      f"{thr} thread{'s' if thr > 1 else ''}", ""]
        head = ["optimizer", "B/el", "roofline ms (GB/s)", "fastlr ms", "% roofline",
                "package foreach", "package for-loop", "speed-up vs package best [95% CI]",
                "fastlr NumPy ms", "trust"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|")
        for r in rows:
            c = r["contenders"]
            verdict = Verdict(tuple(r.get("flags", ())))
            ratios = r.get("stats", {}).get("ratios", {})

            def ms(k):
                v = c.get(k)
                return _bench._fmt_ms(v["median_s"]) if v else "-"

            best = r.get("package_best")
            j = ratios.get(best) if best else None
            sp = (format_ratio(Ratio(j["value"], j["lo"], j["hi"], j["pairs"]), verdict, 1, flags=False)
                  + f" ({best})") if j else "-"
            pct = r.get("fastlr_pct_roofline")
            lines.append("| " + " | ".join([
                r["label"], str(r["bytes_per_element"]),
                f"{ms('roofline')} ({r['roofline_gbps']:.1f})" if "roofline" in c else "-",
                ms("fastlr"), "-" if not pct else f"{pct:.0f}%" if verdict.trusted else "?",
                ms("foreach"), ms("forloop"), sp, ms("fastlr_np"),
                "ok" if verdict.trusted else "+".join(verdict.flags)]) + " |")
    pkg = next((r["package"] for r in results if r.get("package")), None)
    lines += ["", f"Medians of interleaved samples; speed-ups: median of paired per-repetition ratios "
                  f"with a 95% bootstrap interval; trust: ok, or busy / drifting / wide (interval over "
                  f"{MAX_WIDTH:.0%}), shown as '?' and the interval. schedulefree {pkg or 'not installed'}; "
                  f"CPU: {meta['cpu']} ({meta['cores']} cores, fastlr cpu_level {meta['cpu_level']}); "
                  f"torch {meta['torch']}; {meta['date']}. % roofline = roofline time / fastlr time; the "
                  "eval()+train() row is two passes over p and z (fastlr) against the package's "
                  "per-param lerps.", "",
              trust_summary(Verdict(tuple(r.get("flags", ()))) for r in results) + "."]
    return "\n".join(lines).lstrip("\n")
