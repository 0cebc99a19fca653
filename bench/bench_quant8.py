"""8-bit AdamW on GPT-2-small shapes: fastlr's fused 8-bit step against torch's fused
float32 AdamW, fastlr's float32 AdamW and (with --peers) torchao's and bitsandbytes'
AdamW8bit, per CPU
level and thread count, with the bandwidth roofline of each mode's own bytes.

    python bench/bench_quant8.py [--threads 1,2] [--levels avx512,avx2] [--reps 7] [--peers]

Samples are interleaved (one step of each contender per round, order rotated), medians
and quartiles reported. The roofline is the bandwidth of _C.roofline moving float32 Adam's
28 B/el (params rw, grads r, two states rw) in the same rounds; each mode's roofline time
is its own bytes per element at that bandwidth. 8-bit AdamW with float32 params moves
16 B/el (params 8, grads 4, codes 2 x 2) plus 2 x 8 B per 256-element block of scales.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import fastlr
import fastlr.optim
from fastlr import _C, _quant8
from fastlr._bench import gpt2_small_shapes

BYTES = {"fp32": 28.0, "8bit": 16.0 + 16.0 / 256}


def _contenders(params, peers):
    n = sum(p.numel() for p in params)
    out = {}
    states32 = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    numel = [p.numel() for p in params]
    addrs = ([p.data_ptr() for p in params], [p.grad.data_ptr() for p in params],
             [[t.data_ptr() for t in s] for s in states32])
    # the lambda keeps states32 alive: the kernel only sees their addresses
    out["roofline fp32 (28 B/el)"] = lambda keep=states32: _C.roofline(0, numel, addrs[0], addrs[1], addrs[2])
    tor = torch.optim.AdamW(params, lr=1e-4, fused=True)
    out["torch fused fp32"] = tor.step
    f32 = fastlr.optim.AdamW(params, lr=1e-4)
    out["fastlr fp32"] = f32.step
    q8 = fastlr.optim.AdamW8bit(params, lr=1e-4)
    out["fastlr AdamW8bit"] = q8.step
    # the fastlr encoding (sqrt(v), torch.optim's arithmetic) through the NumPy face
    ps = [p.detach().numpy().reshape(-1) for p in params]
    gs = [p.grad.numpy().reshape(-1) for p in params]
    mc = [torch.zeros(k, dtype=torch.uint8).numpy() for k in numel]
    vc = [torch.zeros(k, dtype=torch.uint8).numpy() for k in numel]
    ms = [torch.zeros(_quant8.num_blocks(k, 256)).numpy() for k in numel]
    vs = [torch.zeros(_quant8.num_blocks(k, 256)).numpy() for k in numel]
    counter = [0]

    def sqrt_step():
        counter[0] += 1
        fastlr.adam8bit_step(ps, gs, mc, ms, vc, vs, step=counter[0], lr=1e-4, weight_decay=0.01,
                             decoupled_weight_decay=True)

    out["fastlr 8bit (sqrt)"] = sqrt_step
    if peers:
        try:
            import torchao.optim as tao

            ao = tao.AdamW8bit(params, lr=1e-4)
            t0 = time.perf_counter()
            ao.step()
            print(f"torchao AdamW8bit first step (compiling): {time.perf_counter() - t0:.1f} s", flush=True)
            out["torchao AdamW8bit"] = ao.step
        except Exception as e:  # noqa: BLE001 - a peer that does not run is reported, not fatal
            print(f"torchao AdamW8bit: not measured ({type(e).__name__}: {e})", flush=True)
        try:
            import bitsandbytes as bnb

            bo = bnb.optim.AdamW8bit(params, lr=1e-4)
            t0 = time.perf_counter()
            bo.step()
            print(f"bitsandbytes AdamW8bit first step: {time.perf_counter() - t0:.1f} s", flush=True)
            out["bitsandbytes AdamW8bit"] = bo.step
        except Exception as e:  # noqa: BLE001
            print(f"bitsandbytes AdamW8bit: not measured ({type(e).__name__}: {e})", flush=True)
    return out, n


def run(threads, level, reps, peers):
    fastlr.set_num_threads(threads)
    torch.set_num_threads(threads)
    _C.set_cpu_level(level)
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) * 0.02 for s in gpt2_small_shapes()]
    for p in params:
        p.requires_grad_()
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    cont, n = _contenders(params, peers)
    for f in cont.values():  # warm-up: state allocation, first touch
        f()
    samples = {k: [] for k in cont}
    names = list(cont)
    slow = {k for k in names if k.startswith(("torchao", "bitsandbytes"))}
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            if k in slow and len(samples[k]) >= 3:
                continue
            t0 = time.perf_counter()
            cont[k]()
            samples[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in samples.items()}
    bw = BYTES["fp32"] * n / med["roofline fp32 (28 B/el)"]
    rows = []
    for k, v in samples.items():
        if k.startswith("roofline"):
            continue
        q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
        nbytes = BYTES["8bit"] if "8bit" in k else BYTES["fp32"]
        rows.append(dict(contender=k, ms=med[k] * 1e3, q1_ms=q[0] * 1e3, q3_ms=q[2] * 1e3,
                         ns_per_el=med[k] / n * 1e9, bytes_per_el=nbytes,
                         pct_roofline=100.0 * nbytes * n / bw / med[k],
                         vs_torch_fused=med["torch fused fp32"] / med[k], samples=len(v)))
    return dict(threads=threads, level=level, numel=n, bandwidth_gbps=bw / 1e9, rows=rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--levels", default=None, help="default: avx512,avx2 where supported")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--peers", action="store_true", help="also torchao's AdamW8bit (compiles ~1 min)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    levels = args.levels.split(",") if args.levels else (
        ["avx512", "avx2"] if _C.detected_cpu_level() == "avx512" else [_C.detected_cpu_level()])
    results = []
    for level in levels:
        for t in (int(x) for x in args.threads.split(",")):
            res = run(t, level, args.reps, args.peers and level == levels[0])
            results.append(res)
            print(f"\n#### GPT-2 small ({res['numel'] / 1e6:.2f}M params), AdamW, {level}, {t} thread(s); "
                  f"roofline bandwidth {res['bandwidth_gbps']:.1f} GB/s")
            print("| contender | B/el | ms (q1-q3) | ns/el | % roofline | vs torch fused fp32 |")
            print("|---|---|---|---|---|---|")
            for r in res["rows"]:
                print(f"| {r['contender']} | {r['bytes_per_el']:.2f} | {r['ms']:.1f} ({r['q1_ms']:.1f}-{r['q3_ms']:.1f}) "
                      f"| {r['ns_per_el']:.3f} | {r['pct_roofline']:.0f} % | {r['vs_torch_fused']:.2f}x |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results=results, cpu_level_detected=_C.detected_cpu_level(),
                           torch=torch.__version__), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
