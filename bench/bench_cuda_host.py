"""Host (Python) time of one eager ``fastlr.optim`` step on CUDA params, without a GPU.

    PYTHONPATH=. python bench/bench_cuda_host.py [--workload gpt2-small] [--steps 200] [--reps 7]
                                                  [--profile Adam:float32]

Eager steps on the GPU are host-bound when the Python that validates and gathers the
tensor lists takes longer than the kernels (bench/bench_gpu.py: 148 GPT-2-small tensors,
0.47-0.89 ms of GPU work). This runs the same Python with a test double: CPU tensors are
routed to fastlr/optim/_cuda.py as if they were on the GPU, and ``fastlr._C_cuda`` is
replaced by no-op launches, so the time measured is the host's alone (the launches'
argument conversion in C++ and the kernel launches themselves are not included).
Shapes are the workload's (tensor count and ranks) shrunk to at most 8 per dim: the host
work does not depend on sizes. Per optimizer and dtype: median us per step over `reps`
repetitions of `steps` steps (min-max). Wall-clock on a possibly shared host: compare
rows of one run, or interleaved runs, not runs hours apart.

Instructions per step, independent of the host's load:

    FASTLR_CPU_LEVEL=avx2 valgrind --tool=callgrind --dump-before='os_getppid*' \
        python bench/bench_cuda_host.py --markers --steps 20

calls os.getppid() before and after each row's steps, so callgrind's even-numbered dumps
(callgrind.out.<pid>.2, .4, ...) hold each row's `steps` steps alone, in the printed order.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import OPTIONS, WORKLOADS  # noqa: E402


class _NoLaunch:
    """fastlr._C_cuda's launch functions, doing nothing."""

    max_tensors_per_launch = 1 << 30

    @staticmethod
    def _launch(*args, **kwargs):
        return None

    sgd = adam = rmsprop = adagrad = _launch


def fake_cuda():
    """Routes CPU params through fastlr's CUDA path with no-op launches."""
    import fastlr._cuda as fc
    from fastlr.optim import _base

    fc._C_cuda = _NoLaunch
    fc._DEVICE_TYPE = "cpu"
    fc._stream = lambda index: 0
    _base._CPU = "no CPU params in this run"


def make(torch, fastlr_optim, name, shapes, dtype):
    params = [torch.nn.Parameter(torch.randn(tuple(min(d, 8) for d in s), dtype=dtype))
              for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = getattr(fastlr_optim, name)(params, **OPTIONS[name])
    opt.step()  # state initialisation, outside the timing
    return opt


def time_steps(opt, steps, reps):
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        out.append((time.perf_counter() - t0) / steps * 1e6)
    return statistics.median(out), min(out), max(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="gpt2-small", choices=sorted(WORKLOADS))
    ap.add_argument("--optimizers", default="SGD,Adam,AdamW,RMSprop,Adagrad")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--profile", default=None, help="NAME:DTYPE: cProfile that case instead")
    ap.add_argument("--markers", action="store_true",
                    help="one untimed pass of `steps` steps per row between os.getppid() calls")
    args = ap.parse_args(argv)

    import torch

    import fastlr.optim

    fake_cuda()
    shapes = WORKLOADS[args.workload]()
    if args.profile:
        name, dname = args.profile.split(":")
        opt = make(torch, fastlr.optim, name, shapes, getattr(torch, dname))
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.steps):
            opt.step()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    print(f"{args.workload}: {len(shapes)} tensors, torch {torch.__version__}, "
          f"{args.steps} steps x {1 if args.markers else args.reps} reps")
    print(f"{'optimizer':9} {'dtype':9} " + ("callgrind dump" if args.markers
                                             else f"{'us/step':>8} {'min-max':>15}"))
    n_rows = 0
    for name in args.optimizers.split(","):
        for dname in args.dtypes.split(","):
            opt = make(torch, fastlr.optim, name, shapes, getattr(torch, dname))
            if args.markers:
                for _ in range(3):  # the plan settles (state created, then cached)
                    opt.step()
                os.getppid()
                for _ in range(args.steps):
                    opt.step()
                os.getppid()
                print(f"{name:9} {dname:9} .{2 * n_rows + 2}", flush=True)
                n_rows += 1
                continue
            med, lo, hi = time_steps(opt, args.steps, args.reps)
            print(f"{name:9} {dname:9} {med:8.1f} {lo:7.1f}-{hi:<7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
