"""Huge tensors: indexing is 64-bit end to end, 8-bit state included (opt-in:
``pytest -m slow tests/test_huge.py``).

A single 16-bit tensor of more than 2**31 elements, and a list whose total passes 2**31
while each tensor stays below it (the multi-tensor offsets), update correctly at their
first element, around 2**31 and at their last element, and everywhere else (checked in
chunks). To stay around 4-8 GiB the gradient is the param itself (the update reads both
before writing, so aliasing grads with params is safe). Each test skips when the machine
does not have the memory available. Run alone: it needs up to 8 GiB.
"""
import numpy as np
import pytest

import fastlr
from fastlr import _quant8
from fastlr import _reference as ref

from conftest import bfloat16_dtype

pytestmark = pytest.mark.slow

BIG = 2**31 + 33  # past the int32 range, and not a multiple of any vector width
GiB = 1 << 30
CHUNK = 1 << 26


def _available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return None


def _need(nbytes):
    avail = _available_bytes()
    if avail is not None and avail < nbytes + 2 * GiB:
        pytest.skip(f"needs {(nbytes + 2 * GiB) / GiB:.1f} GiB free, {avail / GiB:.1f} GiB available")


def _fill(n, dtype, specials):
    """An array of ones with distinct values at a few indices (around 2**31 and the end)."""
    a = np.empty(n, dtype)
    for lo in range(0, n, CHUNK):
        a[lo:lo + CHUNK] = 1
    for i, v in specials.items():
        a[i] = v
    return a


def _specials(n):
    return {0: 2.0, 2**31 - 1: 4.0, 2**31: -8.0, 2**31 + 1: 16.0, n - 17: -0.25, n - 1: 3.0}


def _expected(kernel, dtype, values, **kw):
    """The reference applied to small arrays holding the same values (grad aliases param)."""
    p = np.array(values, dtype=np.float32).astype(dtype)
    states = [np.zeros_like(p) for _ in range(kw.pop("n_states"))]
    getattr(ref, kernel)(p, p.copy(), *states, **kw)
    return p


def _check(a, specials, one_becomes, got_specials):
    for i, want in zip(specials, got_specials):
        assert a[i] == want, f"element {i}: {a[i]} != {want}"
    skip = set(specials)
    for lo in range(0, a.size, CHUNK):
        chunk = a[lo:lo + CHUNK]
        bad = np.flatnonzero(chunk != one_becomes)
        bad = [lo + int(i) for i in bad if lo + int(i) not in skip]
        assert not bad, f"elements {bad[:5]} not updated"


def test_single_float16_tensor_past_2_31():
    _need(BIG * 2)
    specials = _specials(BIG)
    p = _fill(BIG, np.float16, specials)
    fastlr.sgd_step(p, p, lr=0.5)  # p -= 0.5 * p
    want = _expected("sgd_step", np.float16, [1.0] + list(specials.values()), lr=0.5, n_states=0)
    _check(p, specials, want[0], want[1:])


def test_single_bfloat16_tensor_past_2_31_adagrad():
    bf16 = bfloat16_dtype()
    if bf16 is None:
        pytest.skip("ml_dtypes is not installed")
    _need(BIG * 4)
    specials = _specials(BIG)
    p = _fill(BIG, bf16, specials)
    s = np.zeros(BIG, bf16)
    fastlr.adagrad_step(p, p, s, step=1, lr=0.5)
    want = _expected("adagrad_step", bf16, [1.0] + list(specials.values()), step=1, lr=0.5, n_states=1)
    _check(p, specials, want[0], want[1:])
    assert s[BIG - 1] == 9.0 and s[2**31] == 64.0  # the accumulator too, at the far end


def test_tensor_list_whose_total_passes_2_31():
    """Three tensors of 2**30 + 5 elements: offsets past 2**31, each tensor below it."""
    n = 2**30 + 5
    _need(3 * n * 2)
    tensors = [_fill(n, np.float16, {0: 2.0, n - 1: 4.0}) for _ in range(3)]
    fastlr.sgd_step(tensors, tensors, lr=0.25)
    for t in tensors:
        assert t[0] == 1.5 and t[n - 1] == 3.0 and t[n - 2] == 0.75
        assert t[n // 2] == 0.75


def test_8bit_adam_state_past_2_31():
    """adam8bit_step on one bfloat16 tensor of more than 2**31 elements (its 8-bit codes
    too): the blocks holding the special values, around 2**31 and the partial last one,
    end exactly as the same blocks updated alone (blocks are independent), every other
    block as a block of ones."""
    bf16 = bfloat16_dtype()
    if bf16 is None:
        pytest.skip("ml_dtypes is not installed")
    _need(BIG * 4)
    block = _quant8.BLOCK_SIZE
    specials = _specials(BIG)
    p = _fill(BIG, bf16, specials)
    nb = _quant8.num_blocks(BIG, block)
    mc, vc = np.zeros(BIG, np.uint8), np.zeros(BIG, np.uint8)
    ms, vs = np.zeros(nb, np.float32), np.zeros(nb, np.float32)
    special_blocks = sorted({i // block for i in specials})
    assert special_blocks[-1] == nb - 1 and BIG % block != 0  # the last block is partial

    def run(p, mc, ms, vc, vs):
        for step in (1, 2):  # the grad is the param itself (weight decay 0 reads it first)
            fastlr.adam8bit_step(p, p, mc, ms, vc, vs, step=step, lr=0.01)

    def alone(values):
        q = np.array(values)
        state = [np.zeros(q.size, np.uint8), np.zeros(1, np.float32), np.zeros(q.size, np.uint8),
                 np.zeros(1, np.float32)]
        run(q, *state)
        return q, state

    wants = {b: alone(p[b * block:(b + 1) * block]) for b in special_blocks}
    ones, (one_mc, one_ms, one_vc, one_vs) = alone(np.ones(block, bf16))
    run(p, mc, ms, vc, vs)
    for b, (q, (qmc, qms, qvc, qvs)) in wants.items():
        s = slice(b * block, (b + 1) * block)
        assert np.array_equal(p[s], q) and np.array_equal(mc[s], qmc) and np.array_equal(vc[s], qvc), b
        assert ms[b] == qms[0] and vs[b] == qvs[0], b
    skip = set(special_blocks)
    for lo in range(0, BIG - BIG % block, CHUNK):
        hi = min(lo + CHUNK, BIG - BIG % block)
        k = (hi - lo) // block
        j = lo // block
        differs = ((p[lo:hi].reshape(k, block) != ones).any(axis=1)
                   | (mc[lo:hi].reshape(k, block) != one_mc).any(axis=1)
                   | (vc[lo:hi].reshape(k, block) != one_vc).any(axis=1)
                   | (ms[j:j + k] != one_ms[0]) | (vs[j:j + k] != one_vs[0]))
        bad = [j + int(i) for i in np.flatnonzero(differs)]
        bad = [b for b in bad if b not in skip]
        assert not bad, f"blocks {bad[:5]} not updated as a block of ones"
