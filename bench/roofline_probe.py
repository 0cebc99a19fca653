"""The roofline probe: fastlr's C++ kernels called directly (no Python wrapper) against
the memory-only roofline kernel with the same streams, interleaved, in GB/s.

    python bench/roofline_probe.py                    # 50M-element arrays, 1 and all threads
    python bench/roofline_probe.py --workload large   # the GPT-2 small tensor list
    python bench/roofline_probe.py --kernel adam --reps 20 --threads 2

Only NumPy and fastlr are needed. Bytes per element as DESIGN.md (float32): Adam 28,
SGD-momentum / RMSprop / Adagrad 20, centered RMSprop with momentum 36.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

import fastlr
from fastlr import _C

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fastlr._bench import WORKLOAD_SHAPES  # noqa: E402

# kernel -> number of state arrays, call(numel, p, g, states)
KERNELS = {
    "sgd": (1, lambda n, p, g, s: _C.sgd(0, n, p, g, s[0], 1e-4, None, 0, 0.9, None, 0.0, False, 0.0, False, False)),
    "sgd_nesterov": (1, lambda n, p, g, s: _C.sgd(0, n, p, g, s[0], 1e-4, None, 0, 0.9, None, 0.0, True, 0.0,
                                                  False, False)),
    "adam": (2, lambda n, p, g, s: _C.adam(0, n, p, g, s[0], s[1], None, 10, 1e-4, None, 0.9, None, 0.999, 1e-8,
                                           0.0, False, False, False)),
    "adamw": (2, lambda n, p, g, s: _C.adam(0, n, p, g, s[0], s[1], None, 10, 1e-4, None, 0.9, None, 0.999, 1e-8,
                                            0.01, True, False, False)),
    "rmsprop": (1, lambda n, p, g, s: _C.rmsprop(0, n, p, g, s[0], None, None, 1e-4, None, 0, 0.99, 1e-8, 0.0, 0.0,
                                                 None, False, False, False, False)),
    "rmsprop_cm": (3, lambda n, p, g, s: _C.rmsprop(0, n, p, g, s[0], s[1], s[2], 1e-4, None, 0, 0.99, 1e-8, 0.0,
                                                    0.9, None, True, True, False, False)),
    "adagrad": (1, lambda n, p, g, s: _C.adagrad(0, n, p, g, s[0], 10, 1e-4, None, 0.0, 0.0, 1e-10, False)),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--elements", type=int, default=50_000_000)
    ap.add_argument("--workload", choices=tuple(WORKLOAD_SHAPES), default=None)
    ap.add_argument("--kernel", default=",".join(KERNELS))
    ap.add_argument("--threads", default=None)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    sizes = ([int(np.prod(s)) for s in WORKLOAD_SHAPES[args.workload]()] if args.workload else [args.elements])
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, os.cpu_count() or 1})
    rng = np.random.default_rng(0)

    def arrays(scale):
        return [(rng.standard_normal(n, dtype=np.float32) * scale) for n in sizes]

    p, g = arrays(0.02), arrays(0.01)
    states = [[np.abs(a) for a in arrays(1e-3)] for _ in range(3)]
    addr = lambda L: [a.ctypes.data for a in L]  # noqa: E731
    P, G, S = addr(p), addr(g), [addr(s) for s in states]
    total = sum(sizes)
    print(f"{len(sizes)} tensors, {total / 1e6:.2f}M elements, cpu_level {_C.cpu_level()}")
    print(f"{'kernel':14s} {'B/el':>4s} {'thr':>3s} {'roofline GB/s':>14s} {'fastlr GB/s':>12s} "
          f"{'% roofline':>10s}  (median of {args.reps}; [min-max] of the ratio)")
    for name in args.kernel.split(","):
        k, call = KERNELS[name]
        nbytes = 4 * (2 * (k + 1) + 1) * total
        for t in threads:
            fastlr.set_num_threads(t)
            roof = lambda: _C.roofline(0, sizes, P, G, S[:k])  # noqa: E731
            kern = lambda: call(sizes, P, G, S)  # noqa: E731
            roof(), kern()
            tr, tk = [], []
            for r in range(args.reps):
                for f, out in ((roof, tr), (kern, tk)) if r % 2 == 0 else ((kern, tk), (roof, tr)):
                    t0 = time.perf_counter()
                    f()
                    out.append(time.perf_counter() - t0)
            ratios = [a / b for a, b in zip(tr, tk)]
            mr, mk = statistics.median(tr), statistics.median(tk)
            print(f"{name:14s} {nbytes // total:4d} {t:3d} {nbytes / mr / 1e9:14.1f} {nbytes / mk / 1e9:12.1f} "
                  f"{100 * mr / mk:9.0f}%  [{100 * min(ratios):.0f}-{100 * max(ratios):.0f}]")


if __name__ == "__main__":
    main()
