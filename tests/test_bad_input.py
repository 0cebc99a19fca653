"""Bad input to the NumPy kernels raises TypeError/ValueError naming the argument (and
the list index) before ANY array of the call is modified: every array is snapshotted
before the call and compared bit for bit after it. The bad entry is put last in a list
where possible, so a kernel validating lazily would already have updated the first."""
import numpy as np
import pytest

import fastlr

STATES = {
    "sgd_step": ["momentum_buffers"],
    "adam_step": ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
    "rmsprop_step": ["square_avgs", "grad_avgs", "momentum_buffers"],
    "adagrad_step": ["state_sums"],
}
OPTIONS = {
    "sgd_step": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1, "step": 2},
    "adam_step": {"lr": 0.1, "amsgrad": True, "weight_decay": 0.1, "step": 3},
    "rmsprop_step": {"lr": 0.1, "momentum": 0.9, "centered": True, "step": 2},
    "adagrad_step": {"lr": 0.1, "lr_decay": 0.1, "step": 2},
}
# Which state list each option needs (dropping it must raise).
REQUIRED = {
    "sgd_step": ["momentum_buffers"],
    "adam_step": ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
    "rmsprop_step": ["square_avgs", "grad_avgs", "momentum_buffers"],
    "adagrad_step": ["state_sums"],
}
HYPER = {
    "sgd_step": [("lr", -0.1), ("lr", float("nan")), ("momentum", -0.5), ("weight_decay", -1.0),
                 ("dampening", float("nan"))],
    "adam_step": [("lr", -0.1), ("lr", float("nan")), ("beta1", 1.0), ("beta1", -0.1), ("beta2", 1.5),
                  ("beta2", float("nan")), ("eps", -1e-8), ("weight_decay", -1.0)],
    "rmsprop_step": [("lr", -0.1), ("alpha", -0.5), ("eps", float("nan")), ("momentum", -0.1),
                     ("weight_decay", -1.0)],
    "adagrad_step": [("lr", -0.1), ("lr_decay", -0.1), ("eps", -1.0), ("weight_decay", float("nan"))],
}
KERNELS = sorted(STATES)
SIZES = (5, 33)


def make_call(kernel, dtype=np.float32):
    rng = np.random.default_rng(0)
    call = {"params": [rng.standard_normal(n).astype(dtype) for n in SIZES],
            "grads": [rng.standard_normal(n).astype(dtype) for n in SIZES]}
    for role in STATES[kernel]:
        call[role] = [np.abs(rng.standard_normal(n)).astype(dtype) for n in SIZES]
    call.update(OPTIONS[kernel])
    return call


def arrays_in(call):
    out = []
    for v in call.values():
        if isinstance(v, np.ndarray):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out += [a for a in v if isinstance(a, np.ndarray)]
    return out


def assert_rejected(kernel, call, exc, match):
    arrays = arrays_in(call)
    before = [a.copy() for a in arrays]
    with pytest.raises(exc, match=match):
        getattr(fastlr, kernel)(**call)
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(np.ascontiguousarray(a).view(np.uint8), b.view(np.uint8))


def test_valid_call_updates_every_array():
    """Sanity: the base calls are valid and do update params and states."""
    for kernel in KERNELS:
        call = make_call(kernel)
        grads = [g.copy() for g in call["grads"]]
        before = [a.copy() for a in arrays_in(call)]
        getattr(fastlr, kernel)(**call)
        changed = [not np.array_equal(a, b) for a, b in zip(arrays_in(call), before)]
        assert changed[0] and changed[1]  # both params
        for g, g0 in zip(call["grads"], grads):
            np.testing.assert_array_equal(g, g0)  # grads are never written


# --------------------------------------------------------------------- arrays ---


def _cases():
    cases = []
    for k in KERNELS:
        roles = ["params", "grads"] + STATES[k]

        def add(name, mutate, exc, match, k=k):
            cases.append(pytest.param(k, mutate, exc, match, id=f"{k}-{name}"))

        add("unsupported-dtype", lambda c, roles=roles: {**c, **{r: [a.astype(np.int32) for a in c[r]] for r in roles}},
            TypeError, r"params\[0\].*dtype")
        add("complex-dtype", lambda c, roles=roles: {**c, **{r: [a.astype(np.complex64) for a in c[r]] for r in roles}},
            TypeError, r"params\[0\].*dtype")
        for role in roles:
            def set1(c, value, role=role):
                c = dict(c)
                c[role] = [c[role][0], value(c[role][1])]
                return c

            add(f"{role}-mixed-dtype", lambda c, s=set1: s(c, lambda a: a.astype(np.float64)),
                TypeError, rf"{role}\[1\].*float64")
            add(f"{role}-float16-among-float32", lambda c, s=set1: s(c, lambda a: a.astype(np.float16)),
                TypeError, rf"{role}\[1\]")
            if role != "params":
                add(f"{role}-shape", lambda c, s=set1: s(c, lambda a: np.zeros(a.size + 1, a.dtype)),
                    ValueError, rf"{role}\[1\].*shape")
                add(f"{role}-shape-2d", lambda c, s=set1: s(c, lambda a: a.reshape(1, -1).copy()),
                    ValueError, rf"{role}\[1\].*shape")
                add(f"{role}-too-few", lambda c, role=role: {**c, role: c[role][:1]}, ValueError, role)
                add(f"{role}-too-many", lambda c, role=role: {**c, role: c[role] + c[role][:1]}, ValueError, role)
            add(f"{role}-not-array", lambda c, s=set1: s(c, lambda a: a.tolist()), TypeError, rf"{role}\[1\]")
            add(f"{role}-wrong-type", lambda c, role=role: {**c, role: 3.0}, TypeError, role)
            add(f"{role}-non-contiguous", lambda c, s=set1: s(c, lambda a: np.repeat(a, 2)[::2]),
                ValueError, rf"{role}\[1\].*contiguous")
            if role != "grads":
                def read_only(a):
                    a = a.copy()
                    a.setflags(write=False)
                    return a

                add(f"{role}-read-only", lambda c, s=set1, f=read_only: s(c, f), ValueError, rf"{role}\[1\].*read-only")
        for role in REQUIRED[k]:
            add(f"missing-{role}", lambda c, role=role: {**c, role: None}, ValueError, role)
        for name, value in HYPER[k]:
            add(f"{name}={value}", lambda c, name=name, value=value: {**c, name: value}, ValueError, name)
            add(f"{name}-type", lambda c, name=name: {**c, name: "0.1"}, TypeError, name)
        add("step=0", lambda c: {**c, "step": 0}, ValueError, "step")
        add("step=-3", lambda c: {**c, "step": -3}, ValueError, "step")
        add("step=1.5", lambda c: {**c, "step": 1.5}, TypeError, "step")
        add("step=str", lambda c: {**c, "step": "2"}, TypeError, "step")
        add("step=True", lambda c: {**c, "step": True}, TypeError, "step")
        if k in ("adam_step", "adagrad_step"):
            add("step-missing", lambda c: {**c, "step": None}, ValueError, "step")
        first_state = STATES[k][0]
        add("state-aliases-param", lambda c, r=first_state: {**c, r: [c[r][0], c["params"][1]]},
            ValueError, "twice")
        if len(STATES[k]) > 1:
            r0, r1 = STATES[k][:2]
            add("same-state-twice", lambda c, r0=r0, r1=r1: {**c, r1: [c[r1][0], c[r0][1]]}, ValueError, "twice")
        add("overlapping-views", lambda c, r=first_state: {**c, r: [c[r][0], c["params"][1][:]]}, ValueError, "twice")
        add("params-empty-list-vs-grads", lambda c: {**c, "params": []}, ValueError, "grads")
        # '>f4' is also named float32: read in native order it would be garbage
        add("big-endian", lambda c: {k: [a.astype(a.dtype.newbyteorder(">")) for a in v]
                                     if isinstance(v, list) else v for k, v in c.items()}, TypeError, "byte order")

        def shifted_grad(c):  # grads[1] reads params[1] one element ahead
            p = c["params"][1]
            base = np.concatenate([p, p[-1:]])
            return {**c, "params": [c["params"][0], base[:-1]], "grads": [c["grads"][0], base[1:]]}

        add("grad-overlaps-param", shifted_grad, ValueError, r"grads\[1\] shares memory")
        add("grad-is-a-state", lambda c, r=first_state: {**c, "grads": [c["grads"][0], c[r][1]]}, ValueError,
            r"grads\[1\] shares memory")
        add("lr-beyond-float", lambda c: {**c, "lr": 10**400}, ValueError, "lr")

        class FakeSchedule:  # only fastlr's own schedules reach the C++ evaluator
            _encoding = np.array([14.0, 1e12])

        add("lr-fake-schedule", lambda c: {**c, "lr": FakeSchedule()}, TypeError, "lr")
    cases.append(pytest.param("sgd_step", lambda c: {**c, "nesterov": True, "dampening": 0.5}, ValueError,
                              "[Nn]esterov", id="sgd_step-nesterov-dampening"))
    cases.append(pytest.param("sgd_step", lambda c: {**c, "nesterov": True, "momentum": 0.0}, ValueError,
                              "[Nn]esterov", id="sgd_step-nesterov-no-momentum"))
    return cases


@pytest.mark.parametrize("kernel,mutate,exc,match", _cases())
def test_rejected_before_any_change(kernel, mutate, exc, match):
    assert_rejected(kernel, mutate(make_call(kernel)), exc, match)


_SHARED_MEMORY_CASES = [c for c in _cases() if c.id.split("-", 1)[1] in (
    "state-aliases-param", "same-state-twice", "overlapping-views", "grad-overlaps-param", "grad-is-a-state")]


@pytest.mark.parametrize("kernel,mutate,exc,match", _SHARED_MEMORY_CASES)
def test_shared_memory_refused_by_the_vectorized_check(kernel, mutate, exc, match, monkeypatch):
    """Calls of many arrays check for shared memory in NumPy: the same refusals."""
    monkeypatch.setattr(fastlr._kernels, "_VECTORIZED_SPANS", 0)
    assert_rejected(kernel, mutate(make_call(kernel)), exc, match)


@pytest.mark.parametrize("vectorized", [False, True])
def test_grads_that_are_their_params_pass_both_checks(vectorized, monkeypatch):
    """Many arrays, each grad its own param's memory, one empty: accepted by both checks."""
    monkeypatch.setattr(fastlr._kernels, "_VECTORIZED_SPANS", 0 if vectorized else 10**9)
    ps = [np.ones(n, np.float32) for n in [3, 0, 5] * 20]
    fastlr.sgd_step(ps, ps, lr=0.1)
    assert all((p == 0.9).all() for p in ps)


@pytest.mark.parametrize("kernel", KERNELS)
def test_read_only_grads_are_fine(kernel):
    call = make_call(kernel)
    for g in call["grads"]:
        g.setflags(write=False)
    getattr(fastlr, kernel)(**call)


@pytest.mark.parametrize("kernel", KERNELS)
def test_grad_that_is_its_param_is_fine(kernel):
    """A grad that is exactly its param's memory reads each element before it is written:
    the same result as a copy of it (the huge-tensor tests rely on this)."""
    call = make_call(kernel)
    expected = {k: ([a.copy() for a in v] if isinstance(v, list) else v) for k, v in call.items()}
    expected["grads"] = [p.copy() for p in expected["params"]]
    getattr(fastlr, kernel)(**expected)
    call["grads"] = call["params"]
    getattr(fastlr, kernel)(**call)
    for role, arrays in expected.items():
        if isinstance(arrays, list) and role != "grads":
            for got, want in zip(call[role], arrays):
                np.testing.assert_array_equal(got, want)


def test_adamw_grad_that_is_its_param_is_refused():
    """torch decays the param before reading the grad: a grad that is the param would be
    read decayed by torch and undecayed by the kernel."""
    call = make_call("adam_step")
    call.update(grads=call["params"], weight_decay=0.1, decoupled_weight_decay=True)
    assert_rejected("adam_step", call, ValueError, r"grads\[0\] is the memory of params\[0\]")


def test_grad_that_is_another_param_is_refused():
    p = [np.ones(4), np.full(4, 2.0)]
    assert_rejected("sgd_step", {"params": p, "grads": [p[1], np.ones(4)], "lr": 0.1}, ValueError,
                    r"grads\[0\] shares memory")


def test_ndarray_subclasses_are_updated_through_a_plain_view():
    class Lying(np.ndarray):  # a subclass may override what a plain array reports
        size = property(lambda self: 10**9)
        shape = property(lambda self: (10**9,))

    p, g = np.ones((2, 3)).view(Lying), np.full((2, 3), 2.0).view(Lying)
    fastlr.sgd_step(p, g, lr=0.5)
    np.testing.assert_array_equal(p.view(np.ndarray), 0.0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_and_zero_size(kernel):
    """An empty list, and zero-size arrays (which may share an address), are no-ops."""
    call = make_call(kernel)
    empty = {k: ([] if isinstance(v, list) else v) for k, v in call.items()}
    getattr(fastlr, kernel)(**empty)
    z = np.zeros(0, np.float32)
    zeros = {k: ([z, z] if isinstance(v, list) else v) for k, v in call.items()}
    getattr(fastlr, kernel)(**zeros)


def test_schedule_without_step_changes_nothing():
    S = pytest.importorskip("fastlr.schedules")
    if not hasattr(S, "StepDecay"):
        pytest.skip("fastlr.schedules has no StepDecay yet")
    call = make_call("sgd_step")
    assert_rejected("sgd_step", {**call, "lr": S.StepDecay(0.1, step_size=2), "step": None}, ValueError, "step")
