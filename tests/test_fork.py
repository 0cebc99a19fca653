"""fork safety: fastlr used in a parent, then in a forked child (DataLoader workers).

GNU OpenMP keeps no pthread_atfork handlers: a child forked after the parent ran a
parallel region waits forever for the parent's worker threads on its first parallel
region. fastlr registers its own handler, and a forked child runs every kernel on the
calling thread (``fastlr.get_num_threads()`` reports 1 there). Every child here runs
under a timeout so that a regression fails instead of hanging the suite.
"""
import hashlib
import multiprocessing as mp
import os
import sys

import numpy as np
import pytest

import fastlr

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or "fork" not in mp.get_all_start_methods(),
    reason="needs the 'fork' start method",
)

TIMEOUT = 60  # seconds; a hang is the failure mode
N = 1 << 18  # large enough for several threads (the grain is 32768 elements per thread)


@pytest.fixture
def two_threads():
    before = fastlr.get_num_threads()
    fastlr.set_num_threads(max(2, before))
    yield
    fastlr.set_num_threads(before)


def _sgd_once(n=N):
    p = np.ones(n, np.float32)
    g = np.full(n, 0.5, np.float32)
    fastlr.sgd_step(p, g, lr=0.5)
    return p


def _adam_once(n=N):
    p = np.linspace(-1, 1, n, dtype=np.float32)
    g = np.cos(p)
    m, v = np.zeros_like(p), np.zeros_like(p)
    fastlr.adam_step(p, g, m, v, step=1, lr=1e-2)
    return p


def _child(queue, use_torch):
    try:
        if use_torch:
            import torch

            # torch's own ops hang in a forked child after the parent used its pool,
            # unless the child first goes single-threaded, as DataLoader workers do.
            torch.set_num_threads(1)
            x = torch.ones(1 << 20)
            float((x * 2).sum())
        p = _sgd_once()
        q = _adam_once()
        queue.put(("ok", float(p[-1]), float(q[0]), fastlr.get_num_threads()))
    except BaseException as e:  # report, never hang the parent on an empty queue
        queue.put(("error", repr(e), None, None))


def _run_child(use_torch=False):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, use_torch))
    proc.start()
    proc.join(TIMEOUT)
    if proc.is_alive():
        proc.kill()
        proc.join()
        pytest.fail(f"forked child hung for {TIMEOUT} s using fastlr")
    assert proc.exitcode == 0, f"child exit code {proc.exitcode}"
    status, *rest = queue.get(timeout=10)
    assert status == "ok", rest[0]
    return rest


def test_child_after_parent_used_openmp(two_threads):
    _sgd_once()  # the parent starts its OpenMP team
    _adam_once()
    p_last, q_first, child_threads = _run_child()
    assert p_last == pytest.approx(1 - 0.5 * 0.5)
    assert q_first == pytest.approx(float(_adam_once()[0]), abs=0)
    assert child_threads == 1  # forked children run single-threaded
    # the parent keeps its threads and still works
    assert fastlr.get_num_threads() >= 2
    assert _sgd_once()[-1] == pytest.approx(0.75)


def test_child_results_equal_parent(two_threads):
    expected = _adam_once()
    ctx = mp.get_context("fork")
    queue = ctx.Queue()

    def child():
        # a digest: a large payload would block the child's exit on the queue's pipe
        queue.put(hashlib.sha256(_adam_once().tobytes()).hexdigest())

    proc = ctx.Process(target=child)
    proc.start()
    proc.join(TIMEOUT)
    if proc.is_alive():
        proc.kill()
        pytest.fail("forked child hung")
    # one thread or many: the split never changes the result (no FP contraction)
    assert queue.get(timeout=10) == hashlib.sha256(expected.tobytes()).hexdigest()


def test_child_after_parent_used_torch_openmp(two_threads):
    torch = pytest.importorskip("torch")
    x = torch.ones(1 << 22)
    float((x * 2).sum())  # torch's pool in the parent (same libgomp as fastlr's)
    _sgd_once()
    p_last, _, _ = _run_child(use_torch=True)
    assert p_last == pytest.approx(0.75)


def test_nested_forks(two_threads):
    """A grandchild (fork inside a forked child) works too."""
    _sgd_once()
    ctx = mp.get_context("fork")
    queue = ctx.Queue()

    def grandchild():
        queue.put(float(_sgd_once()[-1]))

    def child():
        _sgd_once()
        proc = ctx.Process(target=grandchild)
        proc.start()
        proc.join(TIMEOUT)
        os._exit(0 if proc.exitcode == 0 else 1)

    proc = ctx.Process(target=child)
    proc.start()
    proc.join(2 * TIMEOUT)
    if proc.is_alive():
        proc.kill()
        pytest.fail("nested fork hung")
    assert proc.exitcode == 0
    assert queue.get(timeout=10) == pytest.approx(0.75)


class _FastlrDataset:
    """Each item runs a multi-threaded-sized fastlr kernel inside a DataLoader worker."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return float(_sgd_once()[-1]) + i


def test_dataloader_workers(two_threads):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    _sgd_once()
    float((torch.ones(1 << 22) * 2).sum())
    loader = DataLoader(_FastlrDataset(), batch_size=None, num_workers=2,
                        multiprocessing_context="fork", timeout=TIMEOUT)
    assert sorted(loader) == pytest.approx([0.75, 1.75, 2.75, 3.75])
