"""fastlr._benchstats on synthetic samples and a simulated busy host. Nothing here
asserts a duration: fake clocks and fake /proc/stat readings stand in for the host."""
import math

import numpy as np
import pytest

from fastlr import _benchstats as bs


def test_paired_ratio_recovers_a_known_ratio_and_covers_it():
    rng = np.random.default_rng(0)
    base = 1e-3 * (1 + 0.02 * rng.standard_normal(15))
    other = 2.5 * base * (1 + 0.01 * rng.standard_normal(15))
    r = bs.paired_ratio(other, base)
    assert r.n == 15 and abs(r.value - 2.5) < 0.05
    assert r.lo <= 2.5 <= r.hi and r.lo <= r.value <= r.hi
    assert 0 < r.rel_width < 0.05


def test_pairing_cancels_a_drift_shared_by_both_contenders():
    # The host slows down 10x half way; both contenders see it in the same repetition.
    slow = np.repeat([1.0, 10.0], 5)
    base = 1e-3 * slow
    other = 3e-3 * slow
    paired = bs.paired_ratio(other, base)
    assert paired.value == pytest.approx(3.0) and paired.rel_width == pytest.approx(0.0)
    # Unpaired (shuffled) samples of the same run would give a meaningless interval.
    shuffled = bs.paired_ratio(other, base[::-1])
    assert shuffled.rel_width > 1.0


def test_paired_ratio_interval_is_wide_for_noisy_or_few_pairs():
    rng = np.random.default_rng(1)
    base = 1e-3 * np.exp(0.5 * rng.standard_normal(6))
    other = 2e-3 * np.exp(0.5 * rng.standard_normal(6))
    assert bs.paired_ratio(other, base).rel_width > bs.MAX_WIDTH
    one = bs.paired_ratio([2.0], [1.0])
    assert one.value == 2.0 and one.n == 1 and math.isinf(one.rel_width)


def test_paired_ratio_is_deterministic_for_a_seed():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(1, 2, 9), rng.uniform(1, 2, 9)
    assert bs.paired_ratio(a, b, seed=3) == bs.paired_ratio(a, b, seed=3)


def test_paired_ratio_pairs_contenders_by_repetition():
    a, b = bs.Contender("a", None), bs.Contender("b", None)
    a.samples, a.reps = [2.0, 4.0, 8.0], [0, 1, 2]
    b.samples, b.reps = [2.0, 4.0], [1, 2]  # b missed repetition 0
    num, den = bs.pair(a, b)
    assert num.tolist() == [4.0, 8.0] and den.tolist() == [2.0, 4.0]
    assert bs.paired_ratio(a, b).value == 2.0


@pytest.mark.parametrize("num, den, kw, match", [
    ([1.0, 2.0], [1.0], {}, "paired"),
    ([], [], {}, "no pairs"),
    ([1.0, -1.0], [1.0, 1.0], {}, "positive"),
    ([1.0], [1.0], {"level": 1.5}, "level"),
])
def test_paired_ratio_bad_input(num, den, kw, match):
    with pytest.raises(ValueError, match=match):
        bs.paired_ratio(num, den, **kw)


def test_interleave_rotates_order_and_tags_repetitions():
    calls = []
    cs = [bs.Contender(n, lambda n=n: calls.append(n)) for n in "abc"]
    for c in cs:
        c.warm_s, c.inner = 1e-6, 1
    reps = bs.interleave(cs, min_reps=3, max_reps=3, budget_s=0.0)
    assert reps == 3
    assert calls == list("abc") + list("bca") + list("cab")
    assert all(c.reps == [0, 1, 2] for c in cs)


def test_interleave_lets_slow_contenders_stop_at_three():
    cs = [bs.Contender("fast", lambda: None), bs.Contender("slow", lambda: None)]
    cs[0].warm_s, cs[1].warm_s = 1e-6, 1e-4
    bs.interleave(cs, min_reps=6, max_reps=20, budget_s=0.0)
    assert len(cs[0].samples) == 6 and len(cs[1].samples) == 3


def _ratio(value, width):
    return bs.Ratio(value, value / math.sqrt(1 + width), value * math.sqrt(1 + width), 9)


def test_judge_flags_each_condition():
    tight = {"torch": _ratio(2.0, 0.05)}
    quiet = bs.HostState(other_cores=0.05, probe_s=1e-3, drift=0.02, threads=2)
    assert bs.judge(tight, quiet, cores=2).trusted
    busy = bs.HostState(other_cores=1.0, probe_s=1e-3, drift=0.02, threads=2)
    assert bs.judge(tight, busy, cores=2).flags == ("busy",)
    # one thread on two cores leaves one free: a single hog does not contend with it
    assert bs.judge(tight, bs.HostState(1.0, threads=1), cores=2).trusted
    assert bs.judge(tight, bs.HostState(2.0, threads=1), cores=2).flags == ("busy",)
    drifting = bs.HostState(other_cores=0.0, probe_s=3e-3, drift=2.0, threads=2)
    assert bs.judge(tight, drifting, cores=2).flags == ("drifting",)
    v = bs.judge({"torch": _ratio(2.0, 0.5)}, quiet, cores=2)
    assert v.flags == ("wide",) and "50%" in v.detail
    assert bs.judge({"x": bs.Ratio(1.0, 0.0, math.inf, 1)}).flags == ("wide",)


def test_format_never_prints_an_untrusted_cell_as_a_plain_speedup():
    r = bs.Ratio(3366.82, 10.0, 4000.0, 5)
    busy = bs.Verdict(("busy", "wide"), "x")
    text = bs.format_ratio(r, busy)
    assert text.startswith("? busy+wide") and "3366" not in text
    assert bs.format_ratio(bs.Ratio(2.314, 2.2, 2.45, 9), bs.Verdict()) == "2.31x [2.20, 2.45]"
    assert bs.format_ratio(None) == "-"


def test_trust_summary_counts_flags():
    vs = [bs.Verdict(), bs.Verdict(("busy",)), bs.Verdict(("busy", "wide")), bs.Verdict()]
    assert bs.trust_summary(vs) == "2 of 4 cells trustworthy; 2 marked (busy 2, wide 1)"
    assert bs.trust_summary([bs.Verdict()]) == "1 of 1 cells trustworthy"


class FakeHost:
    """A host whose other processes use `other` cores; drives /proc/stat and the clocks."""

    def __init__(self, monkeypatch, other):
        self.t = 0.0
        self.own = 0.0
        self.other = other
        monkeypatch.setattr(bs.time, "perf_counter", lambda: self.t)
        monkeypatch.setattr(bs.time, "process_time", lambda: self.own)
        monkeypatch.setattr(bs.time, "sleep", self.advance)
        monkeypatch.setattr(bs, "_cpu_busy_s", lambda cpus: self.own + self.other_s)
        self.other_s = 0.0

    def advance(self, dt, own_cores=0.0):
        self.t += dt
        self.own += own_cores * dt
        self.other_s += self.other * dt


def _simulated_cell(monkeypatch, other, contention):
    """Two contenders on two threads; while `other` cores are taken, the baseline's time
    varies by `contention` from repetition to repetition (what a descheduled OpenMP
    thread does) and the probe slows down by the same factor."""
    host = FakeHost(monkeypatch, other)
    rng = np.random.default_rng(0)

    def work(seconds):
        def fn():
            host.advance(seconds * (1 + contention * rng.uniform(0, 50) if other else 1), own_cores=2)
        return fn

    probe = work(1e-4)
    mon = bs.HostMonitor(probe=lambda: probe(), cpus={0, 1}, threads=lambda: 2)
    mon.baseline[2] = 1e-4  # the quiet baseline from the start of the run
    cs = [bs.Contender("fastlr", work(1e-3)), bs.Contender("torch", work(3e-3))]
    return bs.measure_cell(cs, baseline="fastlr", monitor=mon, min_reps=5, max_reps=7, budget_s=0.01,
                           retries=1), mon


def test_measure_cell_on_a_quiet_simulated_host_is_trusted(monkeypatch):
    res, _ = _simulated_cell(monkeypatch, other=0.0, contention=0.0)
    assert res.verdict.trusted and res.attempts == 1
    assert res.ratios["torch"].value == pytest.approx(3.0)
    assert res.host.other_cores == pytest.approx(0.0, abs=1e-9)


def test_measure_cell_marks_a_simulated_busy_host_after_a_retry(monkeypatch):
    res, _ = _simulated_cell(monkeypatch, other=1.0, contention=1.0)
    assert not res.verdict.trusted and res.attempts == 2 and len(res.history) == 1
    assert {"busy", "drifting", "wide"} <= set(res.verdict.flags)
    assert res.host.other_cores == pytest.approx(1.0)
    text = bs.format_ratio(res.ratios["torch"], res.verdict)
    assert text.startswith("? busy") and "x [" not in text
    data = res.to_json()
    assert data["verdict"]["trusted"] is False and data["attempts"] == 2


def test_measure_cell_rejects_an_unknown_baseline():
    with pytest.raises(ValueError, match="baseline"):
        bs.measure_cell([bs.Contender("a", lambda: None)], baseline="b")


def test_host_monitor_reads_proc_stat_and_probes():
    mon = bs.HostMonitor()
    st = mon.check(window_s=0.05)
    assert mon.cores >= 1 and st.probe_s > 0 and st.drift >= 0
    if bs._cpu_busy_s(mon.cpus) is not None:
        assert st.other_cores is not None and 0 <= st.other_cores <= mon.cores + 1


def test_ratio_verdict_keeps_host_flags_and_judges_width_per_ratio():
    """A cell is "wide" when any of its ratios is; each ratio's own verdict keeps the host's
    flags (busy, drifting concern the whole cell) but is "wide" only for its own interval."""
    narrow, wide = _ratio(19.0, 0.03), _ratio(1.1, 0.35)
    quiet = bs.HostState(other_cores=0.05, probe_s=1e-3, drift=0.02, threads=2)
    cell = bs.judge({"peer": narrow, "noisy": wide}, quiet, cores=2)
    assert cell.flags == ("wide",)
    assert bs.ratio_verdict(cell, narrow).trusted
    assert bs.ratio_verdict(cell, wide).flags == ("wide",)
    busy = bs.judge({"peer": narrow, "noisy": wide}, bs.HostState(other_cores=1.5, threads=2), cores=2)
    assert busy.flags == ("busy", "wide")
    assert bs.ratio_verdict(busy, narrow).flags == ("busy",)
    assert bs.ratio_verdict(busy).flags == ("busy",) and bs.ratio_verdict(cell).trusted  # a median time
    assert bs.format_ratio(narrow, bs.ratio_verdict(cell, narrow)).startswith("19.00x [")
