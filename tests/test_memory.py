"""Memory: no growth over 10,000 steps and no per-step temporaries.

- RSS, Python objects (gc), tracemalloc'd memory and the refcounts of every param, grad,
  state tensor, group and schedule are stable over 10,000 steps of the NumPy kernels and
  of fastlr.optim, after a warm-up.
- Allocation counting (an LD_PRELOAD malloc counter compiled here, glibc only): a direct
  ``fastlr._C`` call with 60 tensors makes one malloc — pybind11's argument vector —
  none from fastlr's C++; the NumPy wrapper allocates only small Python lists of
  addresses; fastlr.optim makes the same number of small allocations per step for 3 or
  60 params (torch's metadata; the plan is cached). Nothing anywhere near a param's size:
  no temporary arrays.
"""
import gc
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tracemalloc

import numpy as np
import pytest

import fastlr

STEPS = 10_000
MiB = 1 << 20
# RSS moves in one-off steps, not per step: NumPy's __array_interface__ churns CPython's
# interned-string table, whose same-size re-allocation (~400 KiB) now and then lands on
# fresh heap pages (measured: one jump of <= 3 MiB, then flat over 400,000 calls). A
# leak is caught precisely by tracemalloc, gc and the malloc counter's not-freed count.
RSS_SLACK = 4 * MiB


def _rss():
    """Current resident set size in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return None


def _numpy_problem(seed=0, big=4096):
    rng = np.random.default_rng(seed)
    sizes = [big, 1, 17, 1000, 333]
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [rng.standard_normal(n).astype(np.float32) * 1e-3 for n in sizes]
    state = {k: [np.zeros_like(p) for p in params] for k in ("m", "v", "b", "sq", "ga", "s")}
    return params, grads, state


def _numpy_step(params, grads, state, k):
    fastlr.adam_step(params, grads, state["m"], state["v"], step=k, lr=1e-4, amsgrad=False)
    fastlr.sgd_step(params, grads, state["b"], lr=fastlr.Cosine(1e-4, 1000), momentum=0.9, step=k)
    fastlr.rmsprop_step(params, grads, state["sq"], grad_avgs=state["ga"], centered=True, lr=1e-5, step=k)
    fastlr.adagrad_step(params, grads, state["s"], step=k, lr=1e-5)


def test_numpy_kernels_no_growth():
    params, grads, state = _numpy_problem()
    tracked = params + grads + [a for v in state.values() for a in v]
    refs = [sys.getrefcount(a) for a in tracked]
    for k in range(1, 201):  # warm-up: thread pool, scratch vectors, caches
        _numpy_step(params, grads, state, k)
    gc.collect()
    objects, rss = len(gc.get_objects()), _rss()
    for k in range(201, 201 + STEPS // 4):  # four kernels per iteration: 10,000 calls
        _numpy_step(params, grads, state, k)
    gc.collect()
    assert [sys.getrefcount(a) for a in tracked] == refs
    assert len(gc.get_objects()) - objects < 50
    if rss is not None:  # see RSS_SLACK
        assert _rss() - rss < RSS_SLACK, f"RSS grew by {(_rss() - rss) / MiB:.2f} MiB"

    # tracemalloc sees NumPy's data buffers: no temporary the size of a param, no leak.
    big, bgrads, bstate = _numpy_problem(big=1 << 20)  # a 4 MiB param
    tracemalloc.start()
    try:
        for k in range(1, 11):
            _numpy_step(big, bgrads, bstate, k)
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        for k in range(11, 36):
            _numpy_step(big, bgrads, bstate, k)
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < 256 * 1024, f"traced memory grew by {end - start} bytes over 100 calls"
    assert peak - start < 4 * MiB, f"a step allocated {peak - start} bytes (largest param: 4 MiB)"


def _optim_problem(torch, optim, name, kw, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(n, generator=g)) for n in (4096, 1, 17, 1000, 333)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return params, getattr(optim, name)(params, **kw)


OPTIM_CASES = [
    ("Adam", {"lr": fastlr.OneCycle(1e-3, total_steps=20_000), "amsgrad": True}, STEPS),
    ("AdamW", {"lr": 1e-4}, 2_000),
    ("SGD", {"lr": 1e-4, "momentum": fastlr.Cosine(0.9, 1000), "nesterov": True}, 2_000),
    ("RMSprop", {"lr": 1e-5, "centered": True, "momentum": 0.5}, 2_000),
    ("Adagrad", {"lr": 1e-4, "lr_decay": 1e-3}, 2_000),
]


@pytest.mark.parametrize("name,kw,steps", OPTIM_CASES, ids=[c[0] for c in OPTIM_CASES])
def test_optim_no_growth(name, kw, steps):
    torch = pytest.importorskip("torch")
    optim = pytest.importorskip("fastlr.optim")
    params, opt = _optim_problem(torch, optim, name, kw)
    for _ in range(200):
        opt.step()
    tensors = params + [p.grad for p in params] + [
        v for p in params for v in opt.state[p].values() if torch.is_tensor(v)]
    others = [opt, opt.param_groups[0], opt.state] + [v for v in kw.values() if isinstance(v, fastlr.Schedule)]
    refs = [sys.getrefcount(t) for t in tensors + others]
    n_state = [len(opt.state[p]) for p in params]
    gc.collect()
    objects, rss = len(gc.get_objects()), _rss()
    for _ in range(steps):
        opt.step()
    gc.collect()
    assert [sys.getrefcount(t) for t in tensors + others] == refs
    assert [len(opt.state[p]) for p in params] == n_state
    assert len(gc.get_objects()) - objects < 50
    if rss is not None:  # see RSS_SLACK
        assert _rss() - rss < RSS_SLACK, f"RSS grew by {(_rss() - rss) / MiB:.2f} MiB over {steps} steps"
    if "step" in opt.state[params[0]]:
        assert float(opt.state[params[0]]["step"]) == 200 + steps


# ------------------------------------------------------- allocation counter ---

_COUNTER_C = r"""
#include <errno.h>
#include <stddef.h>
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);
static volatile int enabled;
static long calls, live, largest;  /* allocations, allocations minus frees, largest size */
static void note(size_t n) {
  if (!enabled) return;
  __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&live, 1, __ATOMIC_RELAXED);
  long m = __atomic_load_n(&largest, __ATOMIC_RELAXED);
  while ((long)n > m &&
         !__atomic_compare_exchange_n(&largest, &m, (long)n, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
}
void *malloc(size_t n) { note(n); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { note(a * b); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) {
  if (p == NULL) note(n);
  else if (enabled) __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
  return __libc_realloc(p, n);
}
void free(void *p) {
  if (p != NULL && enabled) __atomic_sub_fetch(&live, 1, __ATOMIC_RELAXED);
  __libc_free(p);
}
void *memalign(size_t al, size_t n) { note(n); return __libc_memalign(al, n); }
void *aligned_alloc(size_t al, size_t n) { note(n); return __libc_memalign(al, n); }
int posix_memalign(void **out, size_t al, size_t n) {
  note(n);
  void *p = __libc_memalign(al, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
void alloc_counter_start(void) { calls = 0; live = 0; largest = 0; enabled = 1; }
void alloc_counter_stop(long *out) { enabled = 0; out[0] = calls; out[1] = largest; out[2] = live; }
"""

_PROBE = textwrap.dedent("""
    import ctypes, json, sys
    import numpy as np
    import fastlr
    from fastlr import _C

    lib = ctypes.CDLL(None)
    out = (ctypes.c_long * 3)()

    def count(fn, steps=300):
        for _ in range(30):
            fn()
        lib.alloc_counter_start()
        for _ in range(steps):
            fn()
        lib.alloc_counter_stop(out)
        return {"per_step": out[0] / steps, "largest": out[1], "not_freed": out[2]}

    res = {}
    BIG = 1 << 18  # a 1 MiB float32 param: a temporary of it would be >= 1 MiB
    sizes = [BIG] + [17 * i + 1 for i in range(59)]
    ps = [np.ones(n, np.float32) for n in sizes]
    gs = [np.full(n, 1e-3, np.float32) for n in sizes]
    ms = [np.zeros_like(p) for p in ps]
    vs = [np.zeros_like(p) for p in ps]
    addr = lambda xs: [x.__array_interface__["data"][0] for x in xs]
    numel = [p.size for p in ps]
    a_p, a_g, a_m, a_v = addr(ps), addr(gs), addr(ms), addr(vs)
    res["direct_C_60_tensors"] = count(lambda: _C.adam(0, numel, a_p, a_g, a_m, a_v, None, 5.0, 1e-4,
                                                       None, 0.9, None, 0.999, 1e-8, 0.0, False, False, False))
    k = [0]
    def adam():
        k[0] += 1
        fastlr.adam_step(ps[:3], gs[:3], ms[:3], vs[:3], step=k[0], lr=1e-4)
    res["numpy_3_tensors"] = count(adam)
    if sys.argv[1] == "1":
        import torch
        import fastlr.optim as fo
        for n in (3, 60):
            params = [torch.nn.Parameter(torch.ones(s)) for s in sizes[:n]]
            for p in params:
                p.grad = torch.full_like(p, 1e-3)
            for name, kw in [("Adam", {"amsgrad": True}), ("SGD", {"momentum": 0.9}),
                             ("AdamW", {"lr": fastlr.OneCycle(1e-3, 100000)}),
                             ("RMSprop", {"centered": True, "momentum": 0.5}), ("Adagrad", {})]:
                opt = getattr(fo, name)(params, **kw)
                res[f"optim_{name}_{n}_params"] = count(opt.step, steps=100)
    print(json.dumps(res))
""")


def _compiler():
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module")
def alloc_counts(tmp_path_factory):
    import platform

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("the malloc counter needs glibc")
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler for the malloc counter")
    d = tmp_path_factory.mktemp("alloc")
    (d / "counter.c").write_text(_COUNTER_C)
    (d / "probe.py").write_text(_PROBE)
    subprocess.run([cc, "-O2", "-shared", "-fPIC", str(d / "counter.c"), "-o", str(d / "counter.so")],
                   check=True, capture_output=True)
    try:
        import torch  # noqa: F401

        with_torch = "1"
    except ImportError:
        with_torch = "0"
    env = dict(os.environ, LD_PRELOAD=str(d / "counter.so"), PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, str(d / "probe.py"), with_torch], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_kernel_core_allocates_nothing(alloc_counts):
    """One malloc per call: pybind11's argument vector (8 bytes per argument)."""
    direct = alloc_counts["direct_C_60_tensors"]
    assert direct["per_step"] <= 1.0, direct
    assert direct["largest"] <= 256, direct
    assert direct["not_freed"] <= 2, direct  # 300 calls: a leak per call would show 300


def test_numpy_wrapper_makes_no_temporaries(alloc_counts):
    res = alloc_counts["numpy_3_tensors"]
    assert res["largest"] < 1 * MiB, res  # the largest param is 1 MiB
    assert res["per_step"] <= 2.0, res  # plus CPython's occasional interned-string table resize
    assert res["not_freed"] <= 2, res


def test_optim_allocations_do_not_scale_with_params(alloc_counts):
    if not any(k.startswith("optim_") for k in alloc_counts):
        pytest.skip("torch is not installed")
    for name in ("Adam", "SGD", "AdamW", "RMSprop", "Adagrad"):
        few, many = alloc_counts[f"optim_{name}_3_params"], alloc_counts[f"optim_{name}_60_params"]
        assert many["per_step"] <= few["per_step"] + 1, (name, few, many)
        assert max(few["largest"], many["largest"]) < 64 * 1024, (name, few, many)
        assert max(few["not_freed"], many["not_freed"]) <= 2, (name, few, many)
