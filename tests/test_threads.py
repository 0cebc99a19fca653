"""Threads: fastlr from several Python threads at once, and beside torch's OpenMP pool.

- The kernels release the GIL and keep no shared mutable state (per-thread scratch in the
  bindings, per-call scalars): two Python threads stepping different arrays or
  optimizers at the same time give bit for bit the results of sequential runs, even
  while a third thread changes the thread count or the CPU level (the split and the
  level never change a result).
- torch and fastlr share one libgomp (torch's wheel bundles its own; whichever is loaded
  first serves both), so one Python thread alternating torch ops and fastlr steps reuses
  one OpenMP worker pool: no oversubscription. Concurrent calls from different Python
  threads each get their own team (as with torch alone).
- fastlr stepping while torch's intra-op pool is busy in another thread never deadlocks.
"""
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastlr
from fastlr import _C

from conftest import supported_cpu_levels

N = 1 << 17  # several OpenMP threads' worth (grain: 32768 elements per thread)
STEPS = 12
JOIN_TIMEOUT = 120


def _run_threads(targets):
    """Starts every target in its own thread; fails (instead of hanging) on a deadlock
    and re-raises the first exception of any thread."""
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
        assert not t.is_alive(), f"a thread did not finish in {JOIN_TIMEOUT} s (deadlock?)"
    if errors:
        raise errors[0]


def _adam_job(seed, dtype=np.float32, sizes=(N, 1, 17, 1000)):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(STEPS)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]

    def run():
        for k in range(STEPS):
            fastlr.adam_step(params, grads[k], m, v, step=k + 1, lr=1e-2, weight_decay=0.01,
                             decoupled_weight_decay=True, amsgrad=False)
        return params + m + v
    return run


def _sgd_job(seed, dtype=np.float64, n_tensors=100):
    """Many small tensors: a different list length than the Adam job (per-thread scratch)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 700, n_tensors)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(STEPS)]
    bufs = [np.zeros_like(p) for p in params]

    def run():
        for k in range(STEPS):
            fastlr.sgd_step(params, grads[k], bufs, lr=0.05, momentum=0.9, nesterov=True, step=k + 1)
        return params + bufs
    return run


def _digest(arrays):
    return [a.tobytes() for a in arrays]


def test_two_threads_equal_sequential_runs():
    seq = [_digest(_adam_job(1)()), _digest(_sgd_job(2)()), _digest(_adam_job(3, np.float16)())]
    jobs = [_adam_job(1), _sgd_job(2), _adam_job(3, np.float16)]
    results = [None] * len(jobs)

    def make(i):
        def target():
            results[i] = _digest(jobs[i]())
        return target

    _run_threads([make(i) for i in range(len(jobs))])
    assert results == seq


def test_same_kernel_many_threads_small_and_large():
    """Six threads hammering the kernels with different list lengths."""
    jobs = [(_adam_job if k % 2 else _sgd_job)(10 + k) for k in range(6)]
    expected = [_digest((_adam_job if k % 2 else _sgd_job)(10 + k)()) for k in range(6)]
    results = [None] * 6

    def make(i):
        def target():
            results[i] = _digest(jobs[i]())
        return target

    _run_threads([make(i) for i in range(6)])
    assert results == expected


def test_changing_threads_and_level_while_stepping(num_threads):
    """set_num_threads / set_cpu_level from another thread mid-run: results unchanged."""
    expected = _digest(_adam_job(5)())
    job = _adam_job(5)
    result = []
    done = threading.Event()
    levels = supported_cpu_levels()
    before_level = _C.cpu_level()

    def stepper():
        try:
            result.append(_digest(job()))
        finally:
            done.set()

    def flipper():
        k = 0
        while not done.is_set():
            fastlr.set_num_threads(1 + k % 3)
            _C.set_cpu_level(levels[k % len(levels)])
            k += 1

    try:
        _run_threads([stepper, flipper])
    finally:
        _C.set_cpu_level(before_level)
    assert result[0] == expected


def test_torch_optimizers_in_two_threads():
    torch = pytest.importorskip("torch")
    optim = pytest.importorskip("fastlr.optim")

    def job(seed, cls, kw):
        g = torch.Generator().manual_seed(seed)
        params = [torch.nn.Parameter(torch.randn(n, generator=g)) for n in (N, 3, 1000)]
        grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(STEPS)]
        opt = cls(params, **kw)

        def run():
            for k in range(STEPS):
                for p, gr in zip(params, grads[k]):
                    p.grad = gr
                opt.step()
            out = [p.detach().numpy().tobytes() for p in params]
            for p in params:
                out += [v.numpy().tobytes() for v in opt.state[p].values()]
            return out
        return run

    specs = [(1, optim.Adam, {"lr": 1e-2, "amsgrad": True}),
             (2, optim.SGD, {"lr": 0.1, "momentum": 0.9, "lr": fastlr.Cosine(0.1, STEPS)}),
             (3, optim.RMSprop, {"lr": 1e-3, "centered": True, "momentum": 0.5})]
    expected = [job(*s)() for s in specs]
    runs = [job(*s) for s in specs]
    results = [None] * len(specs)

    def make(i):
        def target():
            results[i] = runs[i]()
        return target

    _run_threads([make(i) for i in range(len(specs))])
    assert results == expected


def test_fastlr_while_torch_pool_is_busy():
    """torch's intra-op OpenMP pool busy in one thread, fastlr stepping in another and in
    the main thread: no deadlock, correct results."""
    torch = pytest.importorskip("torch")
    expected = _digest(_adam_job(7)())
    job = _adam_job(7)
    stop = threading.Event()
    result = []

    def torch_worker():
        a = torch.randn(256, 256)
        x = torch.randn(1 << 20)
        while not stop.is_set():
            (a @ a).sum()
            (x * 2 + 1).sum()

    def fastlr_worker():
        try:
            result.append(_digest(job()))
        finally:
            stop.set()

    _run_threads([torch_worker, fastlr_worker])
    assert result[0] == expected


def test_torch_and_fastlr_share_one_openmp_runtime(tmp_path):
    """In a fresh process: one libgomp is mapped whichever is imported first, and one
    thread alternating torch ops and fastlr steps adds no second worker pool."""
    pytest.importorskip("torch")
    if not sys.platform.startswith("linux") or not _C.openmp:
        pytest.skip("needs Linux /proc and an OpenMP build")
    script = textwrap.dedent("""
        import os, sys, json
        import numpy as np
        if sys.argv[1] == "torch":
            import torch, fastlr
        else:
            import fastlr, torch
        def tasks():
            return len(os.listdir("/proc/self/task"))
        torch.set_num_threads(2)
        fastlr.set_num_threads(2)
        x = torch.randn(1 << 22)
        p = np.ones(1 << 22, np.float32)
        g = np.ones_like(p)
        float((x * 2).sum())
        after_torch = tasks()
        for _ in range(5):
            fastlr.sgd_step(p, g, lr=0.1)
            float((x * 2).sum())
        libs = sorted({l.split()[-1] for l in open("/proc/self/maps")
                       if "libgomp" in l or "libiomp" in l or "libomp" in l})
        print(json.dumps({"libs": libs, "after_torch": after_torch, "after_both": tasks()}))
    """)
    path = tmp_path / "omp_probe.py"
    path.write_text(script)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    procs = [subprocess.Popen([sys.executable, str(path), first], stdout=subprocess.PIPE, text=True,
                              env=env) for first in ("torch", "fastlr")]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        info = json.loads(out.strip().splitlines()[-1])
        assert len(info["libs"]) == 1, info  # a single OpenMP runtime serves both
        assert info["after_both"] == info["after_torch"], info  # no second pool
