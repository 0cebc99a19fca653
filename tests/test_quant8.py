"""Block-wise 8-bit state: the maps, the vectorized nearest-code search (exact against the
reference search), the fused kernels against a NumPy float32 reference that quantizes
exactly as specified, torchao's semantics, heavy-tailed gradients, state dicts, bad input."""
import numpy as np
import pytest

import fastlr
from conftest import supported_cpu_levels
from fastlr import _C, _quant8

LEVELS = list(supported_cpu_levels())
LEVEL_ID = {"baseline": 0, "avx2": 1, "avx512": 2}


# ------------------------------------------------------------------ maps ---


@pytest.mark.parametrize("signed", [True, False])
def test_maps_shape(signed):
    m = _quant8.SIGNED_MAP if signed else _quant8.UNSIGNED_MAP
    assert m.dtype == np.float32 and m.shape == (256,)
    assert np.all(np.diff(m) > 0) and m[-1] == 1.0 and 0.0 in m
    assert (m[0] < -0.99) if signed else (m[0] == 0.0)


@pytest.mark.parametrize("signed", [True, False])
def test_maps_equal_torchao(signed):
    qu = pytest.importorskip("torchao.optim.quant_utils")
    ref = np.array(qu.create_dynamic_map(signed=signed), dtype=np.float32)
    np.testing.assert_array_equal(ref, _quant8.SIGNED_MAP if signed else _quant8.UNSIGNED_MAP)


@pytest.mark.parametrize("signed", [True, False])
def test_maps_equal_bitsandbytes(signed):
    F = pytest.importorskip("bitsandbytes.functional")
    ref = F.create_dynamic_map(signed=signed).float().numpy()
    np.testing.assert_array_equal(ref, _quant8.SIGNED_MAP if signed else _quant8.UNSIGNED_MAP)


# -------------------------------------------------------- nearest code ---


def _special_inputs(qmap):
    """Every map value and midpoint with their float neighbours, and special values."""
    pts = np.concatenate([qmap, (qmap[:-1] + qmap[1:]) / np.float32(2)]).astype(np.float32)
    bits = pts.view(np.int32)[:, None] + np.arange(-3, 4, dtype=np.int32)[None, :]
    near = bits.reshape(-1).view(np.float32)
    special = np.array([0.0, -0.0, 1.0, -1.0, 1.5, -1.5, 2.0, -3e38, 3e38, np.inf, -np.inf, np.nan, -np.nan,
                        1e-45, -1e-45, 1.17549435e-38, -1.17549435e-38, 1e-30, -1e-30, 2 ** -26, -(2 ** -26)],
                       dtype=np.float32)
    rng = np.random.default_rng(0)
    rand = np.concatenate([rng.uniform(-1, 1, 20000), rng.standard_normal(20000) ** 7,
                           rng.uniform(-1, 1, 20000) ** 11]).astype(np.float32)
    return np.concatenate([near, -near, special, rand]).astype(np.float32)


@pytest.mark.parametrize("signed", [True, False])
def test_reference_search_matches_numpy_reference(signed):
    qmap = _quant8.SIGNED_MAP if signed else _quant8.UNSIGNED_MAP
    x = _special_inputs(qmap)
    np.testing.assert_array_equal(_C.quant8_codes(x, signed, -1), _quant8.reference_codes(x, qmap))


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("level", LEVELS)
def test_vectorized_search_exact_on_special_values(signed, level):
    qmap = _quant8.SIGNED_MAP if signed else _quant8.UNSIGNED_MAP
    x = _special_inputs(qmap)
    ref = _quant8.reference_codes(x, qmap)
    for n in (len(x), 7, 8, 15, 16, 17, 33, 63, 64, 65, 80, 127, 129):  # vector tails (VBMI: 64 at a time)
        np.testing.assert_array_equal(_C.quant8_codes(x[:n], signed, LEVEL_ID[level]), ref[:n])


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("level", LEVELS)
def test_vectorized_search_exact_on_every_float_of_slabs(signed, level):
    # every float32 in a few binades, both signs (tools/check_quant8_exact.py does all of [-1, 1])
    for lo in (0x3F000000, 0x3D800000, 0x34800000, 0x00000000):  # [0.5, 1), [1/16, 1/8), ~1e-7, subnormals
        for sign in (0, 0x80000000):
            start = sign | lo
            assert _C.quant8_check(signed, LEVEL_ID[level], start, start + (1 << 23)) == 0


# ------------------------------------------------- quantize round trips ---


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("block", [256, 64, 100])
def test_quantize_round_trip(signed, block):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(1000) * np.exp(rng.uniform(-10, 5, 1000))).astype(np.float32)
    if not signed:
        x = np.abs(x)
    x[:block] = 0.0  # a block of zeros
    codes, scales = _quant8.quantize(x, block, signed)
    assert scales.shape == (-(-1000 // block),) and scales[0] == np.float32(1e-12)
    y = _quant8.dequantize(codes, scales, block, signed)
    np.testing.assert_array_equal(y[:block], 0.0)
    qmap = _quant8.SIGNED_MAP if signed else _quant8.UNSIGNED_MAP
    # nearest code: the error is at most half the gap around x/scale, times the scale
    s = np.repeat(scales, block)[:1000]
    gaps = np.max(np.diff(qmap))
    assert np.all(np.abs(y - x) <= gaps / 2 * s * 1.001)
    if not signed:  # the block maximum maps to code 255 (1.0): dequantized values re-quantize to themselves
        np.testing.assert_array_equal(_quant8.quantize(y, block, signed)[0][block:], codes[block:])


# --------------------------------------------- NumPy float32 reference ---


def _lerp(a, b, w):
    w = np.float32(w)
    return a + w * (b - a) if w < 0.5 else b - (b - a) * (np.float32(1) - w)


def _ref_step(p, g, st, step, lr, b1, b2, eps, wd, decoupled, amsgrad, variant, block):
    """One 8-bit Adam step in NumPy float32, operation by operation as specified."""
    f = np.float32
    sqrt = variant == "fastlr"
    m = _quant8.SIGNED_MAP[st["mc"]] * np.repeat(st["ms"], block)[: p.size]
    r = _quant8.UNSIGNED_MAP[st["vc"]] * np.repeat(st["vs"], block)[: p.size]
    if amsgrad:
        x = _quant8.UNSIGNED_MAP[st["xc"]] * np.repeat(st["xs"], block)[: p.size]
    pf = p.astype(np.float32)
    gf = g.astype(np.float32) * f(1.0)
    bc1 = 1.0 - b1 ** step
    bc2 = 1.0 - b2 ** step
    coupled = wd != 0 and not decoupled
    if variant == "torchao":
        if coupled:
            gf = gf + f(wd) * pf
        if decoupled:
            pf = pf - f(f(lr) * f(wd)) * pf
        m = _lerp(m, gf, 1 - b1)
        v = _lerp(r, gf * gf, 1 - b2)
        src = v
        if amsgrad:
            x = np.where((x < v) | np.isnan(v), v, x)
            src = x
        denom = np.sqrt(src) / np.sqrt(f(bc2)) + f(eps)
        pf = pf - (f(lr / bc1) * m) / denom
        q = v
    else:
        m = np.where(r == 0, f(0), m)
        if coupled:
            gf = gf + f(wd) * pf
        if decoupled and wd != 0:
            pf = pf * f(1 - lr * wd)
        m = _lerp(m, gf, 1 - b1)
        v = (r * r) * f(b2) + (f(1 - b2) * gf) * gf
        q = np.sqrt(v)
        src = q
        if amsgrad:
            x = np.where((x < q) | np.isnan(q), q, x)
            src = x
        denom = src * f(1 / np.sqrt(bc2)) + f(eps)
        pf = pf + (f(-(lr / bc1)) * m) / denom
    p[...] = pf.astype(p.dtype)
    st["mc"][...], st["ms"][...] = _quant8.quantize(m, block, True)
    st["vc"][...], st["vs"][...] = _quant8.quantize(q, block, False)
    if amsgrad:
        st["xc"][...], st["xs"][...] = _quant8.quantize(x, block, False)


def _new_state(n, block):
    nb = _quant8.num_blocks(n, block)
    return {k: np.zeros(n, np.uint8) if k.endswith("c") else np.zeros(nb, np.float32)
            for k in ("mc", "ms", "vc", "vs", "xc", "xs")}


def _fused_step(ps, gs, sts, step, **kw):
    amsgrad = kw.get("amsgrad", False)
    return fastlr.adam8bit_step(
        ps, gs, [s["mc"] for s in sts], [s["ms"] for s in sts], [s["vc"] for s in sts], [s["vs"] for s in sts],
        step=step, max_exp_avg_sq_codes=[s["xc"] for s in sts] if amsgrad else None,
        max_exp_avg_sq_scales=[s["xs"] for s in sts] if amsgrad else None, **kw)


CASES = [
    dict(variant="fastlr", decoupled=True, wd=0.1, amsgrad=False, block=256),
    dict(variant="fastlr", decoupled=False, wd=0.01, amsgrad=True, block=64),
    dict(variant="fastlr", decoupled=False, wd=0.0, amsgrad=False, block=48),
    dict(variant="torchao", decoupled=True, wd=0.01, amsgrad=False, block=256),
    dict(variant="torchao", decoupled=False, wd=0.1, amsgrad=True, block=128),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_trajectory_matches_float32_reference_bit_for_bit(case, dtype):
    dt = np.float32 if dtype == "float32" else pytest.importorskip("ml_dtypes").bfloat16
    block = case["block"]
    sizes = [4096, 4096 + 17, 1, 300, 0] if case["variant"] == "fastlr" else [4096, block * 3, 0]
    rng = np.random.default_rng(2)
    ps = [rng.standard_normal(n).astype(dt) for n in sizes]
    ref_ps = [p.copy() for p in ps]
    sts = [_new_state(n, block) for n in sizes]
    ref_sts = [_new_state(n, block) for n in sizes]
    kw = dict(lr=3e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=case["wd"],
              decoupled_weight_decay=case["decoupled"], amsgrad=case["amsgrad"], block_size=block,
              variant=case["variant"])
    for step in range(1, 16):
        scale = np.exp(rng.uniform(-8, 2, 1)).astype(np.float32)
        gs = [(rng.standard_normal(n) * scale * (rng.random(n) < 0.9)).astype(dt) for n in sizes]
        _fused_step(ps, gs, sts, step, **kw)
        for p, g, st in zip(ref_ps, gs, ref_sts):
            _ref_step(p, g, st, step, 3e-3, 0.9, 0.99, 1e-8, case["wd"], case["decoupled"], case["amsgrad"],
                      case["variant"], block)
    for p, rp, st, rst in zip(ps, ref_ps, sts, ref_sts):
        np.testing.assert_array_equal(p.view(np.uint8), rp.view(np.uint8))
        for k in st:
            np.testing.assert_array_equal(st[k], rst[k], err_msg=k)


def _run(level, nthreads, variant="fastlr", dtype=np.float32, sr=False, steps=4):
    fastlr.set_num_threads(nthreads)
    _C.set_cpu_level(level)
    rng = np.random.default_rng(3)
    sizes = [300_000, 4096, 77]
    ps = [rng.standard_normal(n).astype(dtype) for n in sizes]
    sts = [_new_state(n, 256) for n in sizes]
    for step in range(1, steps + 1):
        gs = [rng.standard_normal(n).astype(dtype) for n in sizes]
        _fused_step(ps, gs, sts, step, lr=1e-2, weight_decay=0.01, decoupled_weight_decay=True, variant=variant,
                    stochastic_rounding=sr, seed=7)
    return ps, sts


@pytest.mark.parametrize("variant", ["fastlr", "torchao"])
def test_threads_and_cpu_levels_bit_identical(variant, restore_cpu_level, num_threads):
    base_p, base_s = _run(LEVELS[0], 1, variant)
    for level in LEVELS:
        for nt in (1, 2, 3):
            ps, sts = _run(level, nt, variant)
            for a, b in zip(ps, base_p):
                np.testing.assert_array_equal(a, b)
            for s, t in zip(sts, base_s):
                for k in s:
                    np.testing.assert_array_equal(s[k], t[k])


def test_bf16_stochastic_rounding_reproducible_and_unbiased(restore_cpu_level, num_threads):
    bf16 = pytest.importorskip("ml_dtypes").bfloat16
    a, _ = _run(LEVELS[0], 1, dtype=bf16, sr=True)
    for level in LEVELS:
        b, _ = _run(level, 2, dtype=bf16, sr=True)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.view(np.uint16), y.view(np.uint16))
    # unbiased: a tiny update (far below half an ulp of 1.0) moves the mean as in float32
    n = 1 << 16
    p = np.ones(n, bf16)
    g = np.ones(n, bf16)
    st = _new_state(n, 256)
    _fused_step([p], [g], [st], 1, lr=1e-4, variant="fastlr", stochastic_rounding=True)
    mean = p.astype(np.float64).mean()
    assert abs(mean - (1 - 1e-4)) < 2e-5  # round to nearest would leave 1.0
    p2 = np.ones(n, bf16)
    _fused_step([p2], [g], [_new_state(n, 256)], 1, lr=1e-4, variant="fastlr")
    assert np.all(p2.astype(np.float32) == 1.0)


# --------------------------------------------------- special values ---


@pytest.mark.parametrize("variant", ["fastlr", "torchao"])
def test_nonfinite_grads_and_zero_blocks(variant):
    n = 4096
    p = np.linspace(-1, 1, n).astype(np.float32)
    g = np.zeros(n, np.float32)
    g[300] = np.nan
    g[600] = np.inf
    st = _new_state(n, 256)
    p0 = p.copy()
    _fused_step([p], [g], [st], 1, lr=1e-2, variant=variant)
    # the float32 path: NaN where the grad is non-finite, nothing else moves with a zero grad
    f32 = p0.copy()
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    fastlr.adam_step(f32, g, m, v, step=1, lr=1e-2)
    np.testing.assert_array_equal(np.isnan(p), np.isnan(f32))
    ok = np.isfinite(f32)
    np.testing.assert_array_equal(p[ok], f32[ok])
    # blocks holding the NaN/inf carry a non-finite scale (as torchao's amax); zero blocks 1e-12
    assert np.isnan(st["ms"][1]) and np.isnan(st["vs"][1]) and not np.isfinite(st["vs"][2])
    assert st["ms"][0] == np.float32(1e-12) and st["vs"][5] == np.float32(1e-12)


# -------------------------------------------------- heavy-tailed grads ---


def _heavy_tailed_run(variant, steps=60):
    rng = np.random.default_rng(5)
    n = 4096
    p = np.zeros(n, np.float32)
    ref = p.copy()
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    st = _new_state(n, 256)
    for step in range(1, steps + 1):
        g = (rng.standard_normal(n) * 1e-4).astype(np.float32)
        big = rng.random(n) < 0.01
        g[big] = (rng.standard_normal(big.sum()) * 1e2).astype(np.float32)
        if step % 3 == 0:
            g[~big] = 0.0  # many elements see no gradient for a step
        _fused_step([p], [g], [st], step, lr=1e-3, variant=variant)
        fastlr.adam_step(ref, g, m, v, step=step, lr=1e-3)
    return np.abs(p - ref).max()


def test_heavy_tailed_grads_sqrt_encoding_tracks_float32():
    fastlr_err = _heavy_tailed_run("fastlr")
    torchao_err = _heavy_tailed_run("torchao")
    # Adam moves a param by about lr per step at most (0.06 in 60 steps): elements far below
    # their block's resolution are not tracked exactly, but no step leaves that bound
    assert fastlr_err < 2 * 1e-3 * 60
    assert torchao_err > 100 * fastlr_err  # the peers' lr·m/eps steps


# ------------------------------------------------------------ bad input ---


def test_bad_input_numpy():
    p = np.zeros(512, np.float32)
    g = np.zeros(512, np.float32)
    c = np.zeros(512, np.uint8)
    s = np.zeros(2, np.float32)
    ok = dict(step=1, lr=1e-3)
    with pytest.raises(TypeError, match="exp_avg_codes"):
        fastlr.adam8bit_step(p, g, c.astype(np.int8), s, c.copy(), s.copy(), **ok)
    with pytest.raises(ValueError, match="exp_avg_sq_scales"):
        fastlr.adam8bit_step(p, g, c, s, c.copy(), np.zeros(3, np.float32), **ok)
    with pytest.raises(TypeError, match="exp_avg_scales"):
        fastlr.adam8bit_step(p, g, c, s.astype(np.float64), c.copy(), s.copy(), **ok)
    with pytest.raises(ValueError, match="block_size"):
        fastlr.adam8bit_step(p, g, c, s, c.copy(), s.copy(), block_size=0, **ok)
    for bad in ("bnb", [], None):  # (an unhashable one raised TypeError "unhashable type")
        with pytest.raises(ValueError, match="variant"):
            fastlr.adam8bit_step(p, g, c, s, c.copy(), s.copy(), variant=bad, **ok)
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        fastlr.adam8bit_step(p, g, c, s, c.copy(), s.copy(), amsgrad=True, **ok)
    with pytest.raises(ValueError, match="same array memory"):
        fastlr.adam8bit_step(p, g, c, s, c, s.copy(), **ok)
    with pytest.raises(TypeError, match="float64"):
        fastlr.adam8bit_step(p.astype(np.float64), g.astype(np.float64), c, s, c.copy(), s.copy(), **ok)
    ro = c.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastlr.adam8bit_step(p, g, ro, s, c.copy(), s.copy(), **ok)
    assert not p.any() and not c.any() and not s.any()  # nothing was modified
