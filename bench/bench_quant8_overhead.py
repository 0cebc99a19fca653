"""Per-step Python overhead of the 8-bit paths: µs per step with the kernel calls replaced
by no-ops (what the Python layer costs alone), next to the step with the kernels, on two
workloads: GPT-2-small's 148 tensors (bench_gpu.gpt2_shapes) and a small model of 50
tensors of 1-64 K elements.

    python bench/bench_quant8_overhead.py [--reps 200] [--workloads small,gpt2-small] [--json out.json]
    python bench/bench_quant8_overhead.py --callgrind [--workloads small] [--steps 20]

Samples are interleaved (one step of each contender per round, order rotated); medians
and quartiles of µs per step. "python" replaces fastlr._C's update kernels by functions
that return at once, so it measures gathering, validation, caching and the call's
argument lists; "total" (small model only: GPT-2's step is ~0.25 s of kernel) runs the
kernels at 1 thread. Times are this thread's CPU time by default (--clock thread: the
host is shared, and its load would otherwise be in the numbers; it still shows as cache
misses); --clock wall for perf_counter.

``--callgrind`` counts instead the instructions of the Python layer per step (kernels
stubbed, AVX2 level: valgrind has no AVX-512), which do not depend on the host's load: it
runs itself under ``valgrind --tool=callgrind`` and brackets each contender's steps with
callgrind client requests (a small C helper, built with the C compiler and valgrind's
headers).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import fastlr
import fastlr.numpy as fnp
from fastlr import _C, _quant8

_KERNELS = ("adam", "adam8", "sgd8", "rmsprop8", "adagrad8")


def gpt2_small_shapes(d=768, layers=12, vocab=50257, ctx=1024):
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,),
                   (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


def small_shapes(n=50):
    """50 tensors of 1 K-64 K elements (log-uniform, fixed seed): most hold 8-bit state."""
    rng = np.random.default_rng(0)
    return [(int(k),) for k in np.exp(rng.uniform(np.log(1024), np.log(65536), n)).astype(int)]


WORKLOADS = {"small": small_shapes, "gpt2-small": gpt2_small_shapes}


@contextlib.contextmanager
def stubbed_kernels():
    """fastlr._C's update kernels as no-ops (same return shape)."""
    saved = {k: getattr(_C, k) for k in _KERNELS}
    for k in _KERNELS:
        setattr(_C, k, (lambda *a, **kw: 0.0) if k == "adagrad8" else (lambda *a, **kw: (0.0, 0.0)))
    try:
        yield
    finally:
        for k, f in saved.items():
            setattr(_C, k, f)


def torch_contenders(params):
    """Optimizers over the same params (each keeps its own state)."""
    def make(factory):
        return factory(params).step

    o = fastlr.optim
    return {
        "AdamW8bit": make(lambda ps: o.AdamW8bit(ps, lr=1e-3)),
        "AdamW8bit(variant=fastlr)": make(lambda ps: o.AdamW8bit(ps, lr=1e-3, variant="fastlr")),
        "Adam(8bit)": make(lambda ps: o.Adam(ps, lr=1e-3, state_dtype="8bit")),
        "AdamW(8bit)": make(lambda ps: o.AdamW(ps, lr=1e-3, state_dtype="8bit")),
        "SGD(momentum, 8bit)": make(lambda ps: o.SGD(ps, lr=1e-2, momentum=0.9, state_dtype="8bit")),
        "RMSprop(8bit)": make(lambda ps: o.RMSprop(ps, lr=1e-3, state_dtype="8bit")),
        "Adagrad(8bit)": make(lambda ps: o.Adagrad(ps, lr=1e-2, state_dtype="8bit")),
        "AdamW (fp32 state, reference)": make(lambda ps: o.AdamW(ps, lr=1e-3)),
    }


def numpy_contenders(params):
    ps = [p.detach().numpy().reshape(-1) for p in params]
    gs = [p.grad.numpy().reshape(-1) for p in params]
    sizes = [p.size for p in ps]
    state, state2 = ([[np.zeros(k, np.uint8) for k in sizes],
                      [np.zeros(_quant8.num_blocks(k, 256), np.float32) for k in sizes]] for _ in range(2))
    counter = [0]

    def adam8bit_step():
        counter[0] += 1
        fastlr.adam8bit_step(ps, gs, *state, *state2, step=counter[0], lr=1e-3)

    one = np.zeros(65536, np.float32), np.full(65536, 1e-3, np.float32)
    one_state = np.zeros(65536, np.uint8), np.zeros(256, np.float32), np.zeros(65536, np.uint8), np.zeros(256, np.float32)
    counter1 = [0]

    def adam8bit_step_one():
        counter1[0] += 1
        fastlr.adam8bit_step(*one, *one_state, step=counter1[0], lr=1e-3)

    np_opt = fnp.AdamW(ps, lr=1e-3, state_dtype="8bit")
    return {
        "fastlr.adam8bit_step (list)": adam8bit_step,
        "fastlr.adam8bit_step (1 x 65536)": adam8bit_step_one,
        "fastlr.numpy.AdamW(8bit)": lambda: np_opt.step(gs),
    }


def measure(contenders, reps, stub, clock):
    names = list(contenders)
    samples = {n: [] for n in names}
    ctx = stubbed_kernels() if stub else contextlib.nullcontext()
    with ctx:
        for fn in contenders.values():  # first steps build state and plans
            fn()
            fn()
        for r in range(reps):
            order = names[r % len(names):] + names[: r % len(names)]
            for n in order:
                t0 = clock()
                contenders[n]()
                samples[n].append((clock() - t0) * 1e6)
    out = {}
    for n, xs in samples.items():
        q = statistics.quantiles(xs, n=4)
        out[n] = {"median_us": statistics.median(xs), "q1_us": q[0], "q3_us": q[2]}
    return out


_CG_HELPER = r"""
#include <valgrind/callgrind.h>
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cg_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
"""


def callgrind(workloads, steps):
    """Instructions per step of each contender's Python layer (kernels stubbed)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = os.path.join(tmp, "cg.c"), os.path.join(tmp, "libcg.so")
        with open(src, "w") as f:
            f.write(_CG_HELPER)
        subprocess.run([os.environ.get("CC", "cc"), "-O1", "-shared", "-fPIC", "-o", lib, src], check=True)
        results = {}
        for w in workloads:
            # one thread everywhere: idle worker threads spinning would count too
            env = dict(os.environ, FASTLR_CPU_LEVEL="avx2", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                       OPENBLAS_NUM_THREADS="1")
            subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + os.path.join(tmp, "out.%p"),
                            sys.executable, __file__, "--inner-callgrind", lib, "--workloads", w,
                            "--steps", str(steps)], check=True, env=env, stderr=subprocess.DEVNULL)
            n = len(WORKLOADS[w]())
            print(f"\n{w} ({n} tensors): instructions per step of the Python layer (callgrind, kernels stubbed)")
            for path in sorted(glob.glob(os.path.join(tmp, "out.*.*")), key=lambda x: int(x.rsplit(".", 1)[1])):
                text = open(path).read()
                name = re.search(r"^desc: Trigger: Client Request: (.*)$", text, re.M).group(1)
                ir = int(re.search(r"^summary: (\d+)", text, re.M).group(1)) / steps
                results[f"{w}/{name}"] = ir
                print(f"  {name:34s} {ir / 1e3:10.1f} K  {ir / (1 if '1 x' in name else n) / 1e3:8.2f} K/tensor")
                os.remove(path)
    return results


def _inner_callgrind(lib_path, workload, steps):
    lib = ctypes.CDLL(lib_path)
    _C.set_num_threads(1)
    torch.set_num_threads(1)
    params = [torch.zeros(s, requires_grad=True) for s in WORKLOADS[workload]()]
    for p in params:
        p.grad = torch.full(p.shape, 1e-3)
    contenders = {**torch_contenders(params), **numpy_contenders(params)}
    with stubbed_kernels():
        for name, fn in contenders.items():
            for _ in range(3):  # state, plans
                fn()
            lib.cg_zero()
            for _ in range(steps):
                fn()
            lib.cg_dump(name.encode())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--workloads", default="small,gpt2-small")
    ap.add_argument("--clock", choices=("thread", "wall"), default="thread",
                    help="thread: this thread's CPU time (what the step costs, less the host's load); "
                         "wall: perf_counter")
    ap.add_argument("--callgrind", action="store_true", help="count instructions instead (see above)")
    ap.add_argument("--steps", type=int, default=20, help="steps per contender under --callgrind")
    ap.add_argument("--inner-callgrind", help=argparse.SUPPRESS)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.inner_callgrind:
        return _inner_callgrind(args.inner_callgrind, args.workloads, args.steps)
    if args.callgrind:
        results = callgrind(args.workloads.split(","), args.steps)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        return 0
    _C.set_num_threads(1)
    torch.set_num_threads(1)
    results = {}
    for w in args.workloads.split(","):
        shapes = WORKLOADS[w]()
        n = len(shapes)
        params = [torch.zeros(s, requires_grad=True) for s in shapes]
        for p in params:
            p.grad = torch.full(p.shape, 1e-3)
        runs = [("python", True)] + ([("total", False)] if w == "small" else [])
        for label, stub in runs:
            contenders = {**torch_contenders(params), **numpy_contenders(params)}
            clock = time.thread_time if args.clock == "thread" else time.perf_counter
            res = measure(contenders, args.reps if stub else max(args.reps // 4, 20), stub, clock)
            results[f"{w}/{label}"] = res
            print(f"\n{w} ({n} tensors, {sum(int(np.prod(s)) for s in shapes):,} elements), {label}:"
                  f" µs/step median [q1, q3]{'  (µs/tensor)' if stub else ''}")
            for name, r in res.items():
                per = f"  {r['median_us'] / (1 if '1 x' in name else n):7.2f}" if stub else ""
                print(f"  {name:34s} {r['median_us']:10.1f} [{r['q1_us']:.1f}, {r['q3_us']:.1f}]{per}")
            del contenders
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
