"""Statistics for benchmarks on a shared machine: how much to trust each number.

A speed-up measured while another process holds a core can be off by 1000x. This module
makes every ratio come with the evidence needed to trust it or not:

- :class:`Contender` - one timed function; samples are tagged with the repetition that
  took them so that two contenders' samples can be *paired*;
- :func:`interleave` - round-robin sampling, the order rotated every repetition, so
  that a change of the host hits all contenders of a repetition alike;
- :func:`paired_ratio` - the median of per-repetition time ratios with a bootstrap
  confidence interval over the pairs (:class:`Ratio`);
- :class:`HostMonitor` - CPU time that *other* processes used (``/proc/stat`` minus our
  own CPU time) and a re-timed probe kernel, compared with the run's quiet baseline;
- :func:`judge` - flags a cell ``busy`` (others used cores we needed), ``drifting``
  (the probe slowed down around it) or ``wide`` (the interval is too wide to quote);
- :func:`measure_cell` - all of the above for one cell, re-measured when untrusted;
- :func:`format_ratio` / :func:`trust_summary` - text that never shows an untrusted
  cell as a plain speed-up.

Example (a contender against a baseline)::

    mon = HostMonitor()
    cell = measure_cell([Contender("fast", f), Contender("slow", g)], baseline="fast",
                        monitor=mon, min_reps=5, budget_s=1.0)
    print(format_ratio(cell.ratios["slow"], cell.verdict))   # "2.31x [2.20, 2.45]"

No torch here; NumPy only for the bootstrap.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

# Thresholds of `judge` (the defaults of measure_cell).
BUSY_CORES = 0.25   # others may use this much of the cores we leave free, and no more
MAX_DRIFT = 0.75    # the probe may be this much slower than the run's quiet baseline: on a quiet
                    # host (no other process on our cores) it still varied by up to +62 % (the
                    # memory bus is shared with other guests); a busy core is caught as "busy"
MAX_WIDTH = 0.20    # the CI may span this fraction of the ratio (hi/lo - 1)


# ------------------------------------------------------------------ timing ---


class Contender:
    """One way of doing the work: `fn()` does one unit (e.g. one optimizer step).

    `calibrate` picks `inner`, the calls timed together so that one sample lasts at
    least `target_s`; each `sample()` appends seconds per call to `samples` and the
    repetition index to `reps`."""

    def __init__(self, name, fn, note=None):
        self.name = name
        self.fn = fn
        self.note = note
        self.inner = 1
        self.warm_s = 0.0
        self.samples = []
        self.reps = []

    step = property(lambda self: self.fn)  # the name fastlr._bench used

    def calibrate(self, target_s):
        t0 = time.perf_counter()
        self.fn()  # warm-up: first touch, lazy state, caches
        per = time.perf_counter() - t0
        if per < 0.05:  # a second look for fast calls (the first may include setup)
            t1 = time.perf_counter()
            self.fn()
            per = min(per, time.perf_counter() - t1)
        self.warm_s = per
        self.inner = max(1, min(1000, int(math.ceil(target_s / max(per, 1e-7)))))

    def reset(self):
        self.samples, self.reps = [], []

    def sample(self, rep=None):
        fn, inner = self.fn, self.inner
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        self.samples.append((time.perf_counter() - t0) / inner)
        self.reps.append(len(self.reps) if rep is None else rep)

    def summary(self):
        s = sorted(self.samples)
        # inclusive: quartiles within [min, max] even for two samples
        q = statistics.quantiles(s, n=4, method="inclusive") if len(s) >= 2 else [s[0]] * 3
        return {"median_s": statistics.median(s), "min_s": s[0], "max_s": s[-1],
                "q1_s": q[0], "q3_s": q[2], "samples": len(s), "inner": self.inner,
                **({"note": self.note} if self.note else {})}


def interleave(contenders, *, min_reps, max_reps, budget_s, slow_reps=3):
    """Samples every contender once per repetition, in an order rotated each time,
    until each has `min_reps` samples and `budget_s` is spent (or `max_reps`).

    Contenders over 4x slower than the fastest stop at min(slow_reps, min_reps) samples
    once the budget is spent (they are told apart with fewer; pass slow_reps=min_reps
    when every contender must reach min_reps). Returns the repetitions run."""
    t_start = time.perf_counter()
    fastest = min(c.warm_s * c.inner for c in contenders)
    need = [min_reps if c.warm_s * c.inner <= 4 * fastest else min(slow_reps, min_reps) for c in contenders]
    order = list(range(len(contenders)))
    for r in range(max_reps):
        spent = time.perf_counter() - t_start >= budget_s
        if spent and all(len(c.samples) >= n for c, n in zip(contenders, need)):
            return r
        k = r % len(order)
        for i in order[k:] + order[:k]:
            c = contenders[i]
            if len(c.samples) < need[i] or time.perf_counter() - t_start < budget_s:
                c.sample(r)
    return max_reps


# -------------------------------------------------------------- statistics ---


@dataclass(frozen=True)
class Ratio:
    """`value`: median over repetitions of numerator time / denominator time, with the
    bootstrap interval [lo, hi] at `level` over `n` pairs. > 1: the denominator is faster."""
    value: float
    lo: float
    hi: float
    n: int
    level: float = 0.95

    @property
    def rel_width(self):
        """hi / lo - 1: 0.2 means the interval spans 20 %."""
        return self.hi / self.lo - 1.0 if self.lo > 0 else math.inf

    def to_json(self):
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "pairs": self.n, "level": self.level}


def pair(numerator, denominator):
    """Aligned sample arrays of two Contenders over the repetitions both sampled."""
    a = dict(zip(numerator.reps, numerator.samples))
    b = dict(zip(denominator.reps, denominator.samples))
    common = sorted(a.keys() & b.keys())
    return np.array([a[r] for r in common]), np.array([b[r] for r in common])


def paired_ratio(numerator, denominator, *, level=0.95, n_boot=2000, seed=0):
    """Ratio of paired samples (Contenders, or equal-length sequences of seconds).

    The point estimate is the median of the per-pair ratios (robust to the odd slow
    sample); the interval is the percentile bootstrap of that median, resampling pairs.
    With fewer than 2 pairs the interval is infinite (nothing to judge spread by)."""
    if isinstance(numerator, Contender):
        num, den = pair(numerator, denominator)
    else:
        num, den = np.asarray(numerator, float), np.asarray(denominator, float)
        if num.shape != den.shape or num.ndim != 1:
            raise ValueError(f"numerator and denominator must be paired 1-d samples, got shapes "
                             f"{num.shape} and {den.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if num.size == 0:
        raise ValueError("paired_ratio: no pairs (the contenders share no repetition)")
    if not (np.all(num > 0) and np.all(den > 0)):
        raise ValueError("paired_ratio: samples must be positive seconds")
    r = num / den
    value = float(np.median(r))
    if r.size < 2:
        return Ratio(value, 0.0, math.inf, int(r.size), level)
    rng = np.random.default_rng(seed)
    boot = np.median(r[rng.integers(0, r.size, size=(n_boot, r.size))], axis=1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return Ratio(value, float(lo), float(hi), int(r.size), level)


# ------------------------------------------------------------- host check ---


def _cpu_busy_s(cpus):
    """Seconds the given CPUs spent busy since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    for line in lines:
        name, *vals = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        v = [int(x) for x in vals]
        # user nice system idle iowait irq softirq steal (guest is already in user)
        busy += v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    return busy / hz


@dataclass
class HostSnapshot:
    wall: float
    busy_s: float | None
    own_s: float


@dataclass
class HostState:
    """What the host did during a window: `other_cores` is the CPU time of other
    processes on our CPUs per second of wall time (1.0: one core held); `probe_s` the
    probe's time after the window and `drift` its excess over the run's baseline."""
    other_cores: float | None
    probe_s: float | None = None
    drift: float | None = None
    threads: int = 1

    def to_json(self):
        return {"other_cores": self.other_cores, "probe_s": self.probe_s, "drift": self.drift,
                "threads": self.threads}


def default_probe(threads=None):
    """A ~1 ms memory pass through fastlr's roofline kernel over 64 tensors (one
    parallel region at the current thread count): it slows down when a core it needs
    is taken, or the memory bus is shared. 48 MiB, beyond the caches: a cached 12 MiB
    probe took 0.1 ms, where waking the threads alone swung it by 2x on a quiet host."""
    from . import _C

    arrays = [np.ones(65_536, np.float32) for _ in range(3 * 64)]
    ptrs = [a.ctypes.data for a in arrays]
    sizes = [65_536] * 64

    def probe():
        _C.roofline(0, sizes, ptrs[:64], ptrs[64:128], [ptrs[128:]])

    probe.arrays = arrays  # keep the buffers alive with the closure
    return probe


class HostMonitor:
    """Watches the host between and during cells.

    `cpus`: the CPUs we run on (default: our affinity). `probe`: a fast callable whose
    time tracks the host's state (default: :func:`default_probe`); `threads()` returns
    the thread count it runs at (the baseline is kept per count)."""

    def __init__(self, probe=None, cpus=None, threads=None, probe_calls=9, settle_s=0.15):
        self.cpus = set(cpus) if cpus is not None else set(os.sched_getaffinity(0)) \
            if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        self.probe = probe if probe is not None else default_probe()
        self.threads = threads or _fastlr_threads
        self.probe_calls = probe_calls
        self.settle_s = settle_s
        self.baseline = {}  # thread count -> quietest probe time seen

    @property
    def cores(self):
        return len(self.cpus)

    def snapshot(self):
        return HostSnapshot(time.perf_counter(), _cpu_busy_s(self.cpus), time.process_time())

    def time_probe(self):
        """Median of `probe_calls` probe calls (a median: under contention the fastest
        call can still fit in a quiet time slice); updates the quiet baseline.

        First a pause and warm-up calls: right after a torch contender, torch's own
        OpenMP threads still spin for tens of ms and made the probe 2-3x slower on a
        quiet host (every cell was marked 'drifting'); that is the benchmark's own
        doing, not the host's."""
        time.sleep(self.settle_s)
        for _ in range(3):
            self.probe()
        ts = []
        for _ in range(self.probe_calls):
            t0 = time.perf_counter()
            self.probe()
            ts.append(time.perf_counter() - t0)
        t = statistics.median(ts)
        thr = self.threads()
        self.baseline[thr] = min(t, self.baseline.get(thr, math.inf))
        return t

    def state(self, since, probe=True):
        """HostState of the window from snapshot `since` to now."""
        now = self.snapshot()
        other = None
        if since.busy_s is not None and now.busy_s is not None and now.wall > since.wall:
            other = max(0.0, ((now.busy_s - since.busy_s) - (now.own_s - since.own_s)) / (now.wall - since.wall))
        st = HostState(other, threads=self.threads())
        if probe:
            st.probe_s = self.time_probe()
            st.drift = st.probe_s / self.baseline[st.threads] - 1.0
        return st

    def check(self, window_s=0.5):
        """A look at the host before a run: load over `window_s` of sleep, and the probe."""
        since = self.snapshot()
        time.sleep(window_s)
        st = self.state(since, probe=False)
        st.probe_s = self.time_probe()
        st.drift = st.probe_s / self.baseline[st.threads] - 1.0
        return st


def _fastlr_threads():
    from . import _C

    return _C.get_num_threads()


# -------------------------------------------------------------------- judge ---


@dataclass(frozen=True)
class Verdict:
    """`flags`: a subset of ("busy", "drifting", "wide"); trusted when empty."""
    flags: tuple = ()
    detail: str = ""

    @property
    def trusted(self):
        return not self.flags

    def to_json(self):
        return {"trusted": self.trusted, "flags": list(self.flags), "detail": self.detail}


def judge(ratios, host=None, *, cores=None, busy_cores=BUSY_CORES, max_drift=MAX_DRIFT, max_width=MAX_WIDTH):
    """Verdict of one cell from its ratios (dict or list of Ratio) and the HostState of
    its window.

    busy: other processes used more than `busy_cores` beyond the cores the cell left
    free (cores - host.threads); drifting: the probe after the cell was over
    `max_drift` slower than the quiet baseline; wide: some ratio's interval spans more
    than `max_width` (hi/lo - 1)."""
    flags, why = [], []
    if host is not None:
        cores = cores or os.cpu_count() or 1
        free = max(0, cores - host.threads)
        if host.other_cores is not None and host.other_cores > free + busy_cores:
            flags.append("busy")
            why.append(f"other processes used {host.other_cores:.2f} of {cores} cores ({host.threads} needed)")
        if host.drift is not None and host.drift > max_drift:
            flags.append("drifting")
            why.append(f"probe {host.drift:+.0%} vs the quiet baseline")
    rs = list(ratios.values()) if isinstance(ratios, dict) else list(ratios)
    widest = max((r.rel_width for r in rs), default=0.0)
    if widest > max_width:
        flags.append("wide")
        why.append(f"interval spans {widest:.0%}" if math.isfinite(widest) else "too few pairs for an interval")
    return Verdict(tuple(flags), "; ".join(why))


def ratio_verdict(cell, ratio=None, max_width=MAX_WIDTH):
    """One ratio's verdict in a cell judged `cell`: the host's flags (busy, drifting) concern
    every ratio of the cell, "wide" only the ratios whose own interval is wide, so one
    noisy pair of contenders does not hide the cell's narrow ratios. Without a ratio (a
    median time): the host's flags only."""
    flags = [f for f in cell.flags if f != "wide"]
    if ratio is not None and ratio.rel_width > max_width:
        flags.append("wide")
    return Verdict(tuple(flags), cell.detail)


# ------------------------------------------------------------- one cell ---


@dataclass
class CellResult:
    contenders: list
    ratios: dict            # key -> Ratio (by default: contender name -> its time / the baseline's)
    verdict: Verdict
    host: HostState | None
    attempts: int = 1
    history: list = field(default_factory=list)  # the verdicts of earlier attempts

    def to_json(self):
        return {"ratios": {k: r.to_json() for k, r in self.ratios.items()},
                "verdict": self.verdict.to_json(), "host": self.host.to_json() if self.host else None,
                "attempts": self.attempts, "earlier": [v.to_json() for v in self.history]}


def _rank(res):
    """Lower is better: trusted first, then fewer flags, then the narrower interval."""
    widest = max((r.rel_width for r in res.ratios.values()), default=0.0)
    return (len(res.verdict.flags), widest)


def measure_cell(contenders, *, baseline, ratios=None, monitor=None, min_reps=5, max_reps=15, budget_s=1.0,
                 target_sample_s=0.002, retries=1, settle_s=0.5, calibrate=True, slow_reps=3, **judge_kw):
    """Calibrates, interleaves and judges one cell; re-measures an untrusted one up to
    `retries` times (after `settle_s` of sleep) and keeps the best attempt.

    `baseline`: the name of the contender every ratio divides by (the speed-up of the
    baseline over each other contender), unless `ratios` maps keys to (numerator name,
    denominator name) pairs. All ratios are judged. The contenders keep the kept
    attempt's samples. `slow_reps`: see :func:`interleave`."""
    by_name = {c.name: c for c in contenders}
    if ratios is None:
        ratios = {c.name: (c.name, baseline) for c in contenders if c.name != baseline}
    for name in [baseline] + [n for nd in ratios.values() for n in nd]:
        if name not in by_name:
            raise ValueError(f"contender {name!r} (baseline or ratios) is not among {list(by_name)}")
    if calibrate:
        for c in contenders:
            c.calibrate(target_sample_s)
    best, history, kept = None, [], None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(settle_s)
        for c in contenders:
            c.reset()
        since = monitor.snapshot() if monitor else None
        interleave(contenders, min_reps=min_reps, max_reps=max_reps, budget_s=budget_s, slow_reps=slow_reps)
        host = monitor.state(since) if monitor else None
        rs = {k: paired_ratio(by_name[n], by_name[d]) for k, (n, d) in ratios.items()}
        res = CellResult(contenders, rs, judge(rs, host, cores=monitor.cores if monitor else None, **judge_kw),
                         host, attempt + 1)
        if best is None or _rank(res) < _rank(best):
            if best is not None:
                history.append(best.verdict)
            best, kept = res, [(list(c.samples), list(c.reps)) for c in contenders]
        else:
            history.append(res.verdict)
        if best.verdict.trusted:
            break
    for c, (s, r) in zip(contenders, kept):
        c.samples, c.reps = s, r
    best.attempts, best.history = attempt + 1, history
    return best


# --------------------------------------------------------------- format ---


def _num(x):
    if not math.isfinite(x):
        return "inf"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def format_ratio(ratio, verdict=None, digits=2, flags=True):
    """'2.31x [2.20, 2.45]' for a trusted ratio; an untrusted one shows only its
    interval behind '?' (and its flags unless `flags=False`): '? busy (0.90-3.40x)',
    never a plain number."""
    if ratio is None:
        return "-"
    if verdict is None or verdict.trusted:
        if not math.isfinite(ratio.hi):
            return f"{ratio.value:.{digits}f}x [n={ratio.n}]"
        return f"{ratio.value:.{digits}f}x [{ratio.lo:.{digits}f}, {ratio.hi:.{digits}f}]"
    tag = "? " + "+".join(verdict.flags) + " " if flags else "? "
    return f"{tag}({_num(ratio.lo)}-{_num(ratio.hi)}x)"


def trust_summary(verdicts):
    """'13 of 15 cells trustworthy; 2 marked (busy 2, wide 1)'."""
    verdicts = list(verdicts)
    bad = [v for v in verdicts if not v.trusted]
    line = f"{len(verdicts) - len(bad)} of {len(verdicts)} cells trustworthy"
    if bad:
        counts = {}
        for v in bad:
            for f in v.flags:
                counts[f] = counts.get(f, 0) + 1
        line += f"; {len(bad)} marked (" + ", ".join(f"{k} {n}" for k, n in counts.items()) + ")"
    return line
