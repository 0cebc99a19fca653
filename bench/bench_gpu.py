"""GPU benchmark: fastlr's CUDA kernels vs torch.optim (fused=True, foreach=True) on
GPT-2 shapes, with fastlr's device copy kernel as the bandwidth roofline measured in the
same run.

    PYTHONPATH=. python bench/bench_gpu.py [--workloads gpt2-small,gpt2-large] [--reps 15] [--json out.json]

Per optimizer x workload x implementation: median ms per step (CUDA events around 10
steps, `reps` repetitions, after warm-up), the spread (min-max), GB/s of the bytes an
update must move (Adam 28 B per fp32 element, SGD-momentum / RMSprop / Adagrad 20;
half for bfloat16), that as % of the copy roofline, and the time of torch's fastest
implementation that runs (fused, else foreach) / this time.
Implementations: fastlr.optim.X eager; the same update captured in a CUDA graph and
replayed ("fastlr graph": the kernels alone); torch.optim.X(fused=True) and
(foreach=True), eager.
"""
from __future__ import annotations

import argparse
import json
import statistics

BYTES = {"Adam": 28, "AdamW": 28, "SGD": 20, "RMSprop": 20, "Adagrad": 20}
OPTIONS = {
    "Adam": dict(lr=1e-3),
    "AdamW": dict(lr=1e-3, weight_decay=0.01),
    "SGD": dict(lr=1e-2, momentum=0.9),
    "RMSprop": dict(lr=1e-3),
    "Adagrad": dict(lr=1e-2),
}


def gpt2_shapes(d, layers, vocab=50257, ctx=1024):
    """The parameter shapes of GPT-2 (tied embeddings): 12 tensors per layer + 4."""
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,),
                   (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


WORKLOADS = {
    "gpt2-small": lambda: gpt2_shapes(768, 12),    # 124,439,808 params, 148 tensors
    "gpt2-medium": lambda: gpt2_shapes(1024, 24),  # 354,823,168 params, 292 tensors
    "gpt2-large": lambda: gpt2_shapes(1280, 36),   # 774,030,080 params, 436 tensors
}


def time_ms(torch, fn, reps, inner=10, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) / inner)
    return statistics.median(out), min(out), max(out)


def roofline(torch, fc, reps):
    """GB/s of a 1 GiB device-to-device copy (bytes read + written): fastlr's copy
    kernel and torch's copy_, the larger of the two is the roofline."""
    n = 1 << 28
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    gb = 2 * n * 4 / 1e9
    ours = time_ms(torch, lambda: fc.copy_(dst, src), reps)[0]
    theirs = time_ms(torch, lambda: dst.copy_(src), reps)[0]
    del src, dst
    return gb / (ours / 1e3), gb / (theirs / 1e3)


def graph_of(torch, fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def bench_one(torch, fastlr_optim, name, params, dtype, reps, roof):
    numel = sum(p.numel() for p in params)
    gb = BYTES[name] * numel * (torch.finfo(dtype).bits / 32) / 1e9
    rows = []

    def make(kind):
        kw = dict(OPTIONS[name])
        if kind == "fastlr":
            return getattr(fastlr_optim, name)(params, **kw)
        return getattr(torch.optim, name)(params, **kw, **{kind: True})

    for impl in ("fastlr", "fastlr graph", "fused", "foreach"):
        kind = "fastlr" if impl.startswith("fastlr") else impl
        opt = fn = None
        try:
            opt = make(kind)
            opt.step()  # state initialisation outside the timing
            fn = graph_of(torch, opt.step) if impl == "fastlr graph" else opt.step
            med, lo, hi = time_ms(torch, fn, reps)
        except (RuntimeError, TypeError, ValueError) as e:
            rows.append(dict(impl=impl, error=str(e).splitlines()[0][:80]))
            continue
        finally:
            opt = fn = None
            torch.cuda.empty_cache()
        rows.append(dict(impl=impl, ms=med, ms_min=lo, ms_max=hi, gbs=gb / (med / 1e3),
                         pct_roofline=100 * gb / (med / 1e3) / roof))
    # The baseline is torch's fastest implementation that runs (RMSprop has no fused CUDA
    # kernel and Adagrad's is CPU-only, so theirs is foreach).
    torch_ms = [r["ms"] for r in rows if r["impl"] in ("fused", "foreach") and "ms" in r]
    for r in rows:
        if torch_ms and "ms" in r:
            r["torch_over_this"] = min(torch_ms) / r["ms"]
    return rows


def main(argv=None):
    import torch

    import fastlr
    import fastlr._cuda as fc
    import fastlr.optim

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="gpt2-small,gpt2-large")
    ap.add_argument("--optimizers", default="Adam,AdamW,SGD,RMSprop,Adagrad")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not fc.available():
        print("fastlr's CUDA kernels are not available (no GPU, or built without FASTLR_CUDA=1)")
        return 1

    props = torch.cuda.get_device_properties(0)
    ours, theirs = roofline(torch, fc, args.reps)
    roof = max(ours, theirs)
    info = dict(device=props.name, sms=props.multi_processor_count, torch=torch.__version__,
                fastlr=fastlr.__version__, copy_fastlr_gbs=ours, copy_torch_gbs=theirs,
                roofline_gbs=roof)
    print(json.dumps(info))
    print(f"{'workload':12} {'dtype':9} {'optimizer':8} {'impl':13} {'ms':>8} {'min-max':>15} "
          f"{'GB/s':>7} {'%roof':>6} {'torch/this':>10}")
    results = []
    for wl in args.workloads.split(","):
        shapes = WORKLOADS[wl]()
        for dname in args.dtypes.split(","):
            dtype = getattr(torch, dname)
            params = [torch.nn.Parameter(torch.randn(s, device="cuda", dtype=dtype) * 0.02)
                      for s in shapes]
            for p in params:
                p.grad = torch.randn_like(p) * 1e-3
            for name in args.optimizers.split(","):
                for r in bench_one(torch, fastlr.optim, name, params, dtype, args.reps, roof):
                    r.update(workload=wl, dtype=dname, optimizer=name, tensors=len(shapes),
                             numel=sum(p.numel() for p in params))
                    results.append(r)
                    if "error" in r:
                        print(f"{wl:12} {dname:9} {name:8} {r['impl']:13} {r['error']}")
                        continue
                    print(f"{wl:12} {dname:9} {name:8} {r['impl']:13} {r['ms']:8.3f} "
                          f"{r['ms_min']:7.3f}-{r['ms_max']:<7.3f} {r['gbs']:7.0f} "
                          f"{r['pct_roofline']:6.1f} {r.get('torch_over_this', float('nan')):10.2f}",
                          flush=True)
            del params
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(info=info, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
