"""8-bit state for every optimizer: each fused 8-bit NumPy kernel against fastlr's float32
kernel of the same optimizer, per CPU level and thread count, with the bandwidth roofline
of each mode's own bytes.

    python bench/bench_quant8_more.py [--numel 16777216] [--threads 1,2] [--levels avx512,avx2] [--reps 7]

Samples are interleaved (one step of each contender per round, order rotated); medians and
quartiles reported. The roofline is the bandwidth of _C.roofline moving float32 Adam's
28 B/el in the same rounds; each mode's roofline time is its own bytes per element at that
bandwidth. Bytes per element: param 4 read + 4 written (16-bit: 2 + 2; with a master only
2 written, master 4 + 4), grad 4 (or 2), each float32 state 8, each 8-bit state 2 plus
8 B per block of 256 (scale read and written). The workload is 8 tensors of numel/8.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

import fastlr
from fastlr import _C, _quant8

BLOCK = _quant8.BLOCK_SIZE


def _q8(n):
    return np.zeros(n, np.uint8), np.zeros(_quant8.num_blocks(n, BLOCK), np.float32)


def _contenders(sizes):
    """name -> (bytes per element, step function)."""
    rng = np.random.default_rng(0)
    ps = [rng.standard_normal(k).astype(np.float32) for k in sizes]
    gs = [(rng.standard_normal(k) * 1e-3).astype(np.float32) for k in sizes]
    f32 = lambda: [np.zeros(k, np.float32) for k in sizes]  # noqa: E731

    def q8():
        pairs = [_q8(k) for k in sizes]
        return [c for c, _ in pairs], [s for _, s in pairs]

    s8 = 2 + 8 / BLOCK
    out = {}
    keep = [f32(), f32(), f32()]
    a = _C.data_ptrs
    out["roofline fp32 (28 B/el)"] = (28.0, lambda: _C.roofline(0, sizes, a(ps), a(gs), [a(x) for x in keep[:2]]))
    counter = {}

    def stepper(name, fn):
        counter[name] = 0

        def run():
            counter[name] += 1
            fn(counter[name])
        return run

    buf32, buf8 = f32(), q8()
    out["sgd momentum fp32"] = (20.0, stepper("s32", lambda t: fastlr.sgd_step(ps, gs, buf32, lr=1e-4, momentum=0.9, step=t)))
    out["sgd momentum 8bit"] = (12.0 + s8, stepper("s8", lambda t: fastlr.sgd8bit_step(ps, gs, *buf8, lr=1e-4, momentum=0.9, step=t)))
    sq32, sq8 = f32(), q8()
    out["rmsprop fp32"] = (20.0, stepper("r32", lambda t: fastlr.rmsprop_step(ps, gs, sq32, lr=1e-6, step=t)))
    out["rmsprop 8bit"] = (12.0 + s8, stepper("r8", lambda t: fastlr.rmsprop8bit_step(ps, gs, *sq8, lr=1e-6, step=t)))
    acc32, acc8 = f32(), q8()
    out["adagrad fp32"] = (20.0, stepper("a32", lambda t: fastlr.adagrad_step(ps, gs, acc32, lr=1e-6, step=t)))
    out["adagrad 8bit"] = (12.0 + s8, stepper("a8", lambda t: fastlr.adagrad8bit_step(ps, gs, *acc8, lr=1e-6, step=t)))
    m32, v32, m8, v8 = f32(), f32(), q8(), q8()
    out["adamw fp32"] = (28.0, stepper("w32", lambda t: fastlr.adam_step(
        ps, gs, m32, v32, step=t, lr=1e-6, weight_decay=0.01, decoupled_weight_decay=True)))
    out["adamw 8bit"] = (12.0 + 2 * s8, stepper("w8", lambda t: fastlr.adam8bit_step(
        ps, gs, *m8, *v8, step=t, lr=1e-6, weight_decay=0.01, decoupled_weight_decay=True)))
    try:
        import ml_dtypes
    except ImportError:
        return out
    bf = ml_dtypes.bfloat16
    p16 = [p.astype(bf) for p in ps]
    g16 = [g.astype(bf) for g in gs]
    masters = [p.copy() for p in ps]
    mm32, mv32, mm8, mv8 = f32(), f32(), q8(), q8()
    out["adamw bf16+master fp32 state"] = (2 + 2 + 8 + 16.0, stepper("wm32", lambda t: fastlr.adam_step(
        p16, g16, mm32, mv32, step=t, lr=1e-6, weight_decay=0.01, decoupled_weight_decay=True,
        master_params=masters)))
    out["adamw bf16+master 8bit"] = (2 + 2 + 8 + 2 * s8, stepper("wm8", lambda t: fastlr.adam8bit_step(
        p16, g16, *mm8, *mv8, step=t, lr=1e-6, weight_decay=0.01, decoupled_weight_decay=True,
        master_params=masters)))
    return out


def run(sizes, threads, level, reps):
    fastlr.set_num_threads(threads)
    _C.set_cpu_level(level)
    cont = _contenders(sizes)
    n = sum(sizes)
    for _, f in cont.values():
        f()  # warm-up: first touch
    names = list(cont)
    samples = {k: [] for k in names}
    for r in range(reps):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            cont[k][1]()
            samples[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in samples.items()}
    bw = 28.0 * n / med["roofline fp32 (28 B/el)"]
    rows = []
    for k in names[1:]:
        q = statistics.quantiles(samples[k], n=4, method="inclusive")
        nbytes = cont[k][0]
        base = k.replace("8bit", "fp32 state" if "master" in k else "fp32")
        rows.append(dict(contender=k, bytes_per_el=nbytes, ms=med[k] * 1e3, q1_ms=q[0] * 1e3, q3_ms=q[2] * 1e3,
                         ns_per_el=med[k] / n * 1e9, pct_roofline=100.0 * nbytes * n / bw / med[k],
                         vs_fp32=(med[base] / med[k]) if base != k and base in med else None))
    return dict(threads=threads, level=level, numel=n, bandwidth_gbps=bw / 1e9, rows=rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numel", type=int, default=1 << 24)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--levels", default=None, help="default: avx512,avx2 where supported")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    levels = args.levels.split(",") if args.levels else (
        ["avx512", "avx2"] if _C.detected_cpu_level() == "avx512" else [_C.detected_cpu_level()])
    sizes = [args.numel // 8] * 8
    results = []
    for level in levels:
        for t in (int(x) for x in args.threads.split(",")):
            res = run(sizes, t, level, args.reps)
            results.append(res)
            print(f"\n#### {res['numel'] / 1e6:.2f}M elements, {level}, {t} thread(s); "
                  f"roofline bandwidth {res['bandwidth_gbps']:.1f} GB/s")
            print("| contender | B/el | ms (q1-q3) | ns/el | % roofline | fp32 time / this |")
            print("|---|---|---|---|---|---|")
            for r in res["rows"]:
                vs = f"{r['vs_fp32']:.2f}x" if r["vs_fp32"] else ""
                print(f"| {r['contender']} | {r['bytes_per_el']:.2f} | {r['ms']:.1f} ({r['q1_ms']:.1f}-{r['q3_ms']:.1f}) "
                      f"| {r['ns_per_el']:.2f} | {r['pct_roofline']:.0f} % | {vs} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results=results, cpu_level_detected=_C.detected_cpu_level()), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
