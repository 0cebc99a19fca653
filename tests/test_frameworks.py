"""fastlr.optim inside the stacks people train with (no third-party framework needed here;
HF Trainer and Lightning are in test_trainers.py): torch.compile, ScheduleLR, timm-style
loops, SWA, checkpoints into torch.optim, meta-device params."""
import io
import warnings

import pytest

torch = pytest.importorskip("torch")

import fastlr  # noqa: E402
from fastlr.optim import ScheduleLR, to_torch_state_dict, torch_lr_scheduler  # noqa: E402
from conftest import tiny_data as data, tiny_model, train_step_fn  # noqa: E402


# ------------------------------------------------------------------- torch.compile ---

LRS = {
    "float": lambda: 1e-2,
    "tensor": lambda: torch.tensor(1e-2),
    "schedule": lambda: fastlr.Warmup(fastlr.Cosine(1e-2, 10), 3),
    "table": lambda: fastlr.Table([1e-2, 5e-3, 2e-2]),
}


def compiled_run(make_opt, backend, n=8):
    model = tiny_model()
    opt = make_opt(model.parameters())
    x, y = data()

    fn = train_step_fn(model, opt, x, y, backend)
    losses = [fn().item() for _ in range(n)]
    return losses, [p.detach().clone() for p in model.parameters()], opt


def graph_breaks():
    from torch._dynamo.utils import counters

    return dict(counters["graph_break"])


def reset_dynamo():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


@pytest.mark.parametrize("cls, lr", [("AdamW", lr) for lr in LRS] + [("SGD", "schedule")])
def test_compiled_training_step_equals_eager(cls, lr):
    from torch._dynamo.testing import CompileCounter

    def make(params):
        kw = {"momentum": 0.9} if cls == "SGD" else {}
        return getattr(fastlr.optim, cls)(params, lr=LRS[lr](), **kw)

    reset_dynamo()
    counter = CompileCounter()
    losses, params, opt = compiled_run(make, counter)
    frames_after_warmup = counter.frame_count
    breaks = graph_breaks()
    eager_losses, eager_params, eager_opt = compiled_run(make, None)
    assert losses == eager_losses
    for a, b in zip(params, eager_params):
        assert torch.equal(a, b)
    assert float(opt.param_groups[0]["lr"]) == float(eager_opt.param_groups[0]["lr"])
    # fastlr's share: exactly one graph break per opt.step() call site...
    ours = {k: v for k, v in breaks.items() if "FastlrOptimizer.step" in k}
    assert sum(ours.values()) == 1, breaks
    # ...of 3 in all (backward, opt.step, zero_grad); torch's fused AdamW has 6
    assert sum(breaks.values()) == 3, breaks
    # the frames holding ops (forward + loss; the detach after zero_grad) compiled once:
    # no recompile over 8 steps although the lr / the schedule value changes
    assert frames_after_warmup == 2
    compiled_run(make, counter, n=2)  # fresh model & optimizer: still none
    assert counter.frame_count == 2


def test_fewer_graph_breaks_than_torch_fused():
    from torch._dynamo.testing import CompileCounter

    counts = {}
    for name, make in [
        ("fastlr", lambda p: fastlr.optim.AdamW(p, lr=fastlr.Cosine(1e-2, 10))),
        ("torch_fused", lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True)),
    ]:
        reset_dynamo()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's "record_function ignored" under Dynamo
            compiled_run(make, CompileCounter(), n=3)
        counts[name] = sum(graph_breaks().values())
    assert counts == {"fastlr": 3, "torch_fused": 6}


def test_compiled_opt_step_runs_with_a_schedule():
    model = tiny_model()
    ref = tiny_model()
    sched = fastlr.OneCycle(0.05, 20)
    opt = fastlr.optim.Adam(model.parameters(), lr=sched)
    ref_opt = fastlr.optim.Adam(ref.parameters(), lr=sched)
    reset_dynamo()
    step = torch.compile(opt.step, backend="eager")
    x, y = data()
    for _ in range(4):
        for m, s in ((model, step), (ref, ref_opt.step)):
            torch.nn.functional.mse_loss(m(x), y).backward()
            s()
            m.zero_grad()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert opt.param_groups[0]["lr"] == sched(4)


def test_dynamo_explain_counts_one_break_for_opt_step():
    model = tiny_model()
    opt = fastlr.optim.AdamW(model.parameters(), lr=fastlr.Cosine(1e-2, 10))
    x, y = data()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)

    def just_step(x):
        y = x * 2
        opt.step()
        return y + 1

    reset_dynamo()
    explanation = torch._dynamo.explain(just_step)(x)
    assert explanation.graph_break_count == 1
    assert explanation.graph_count == 2
    assert "FastlrOptimizer.step" in str(explanation.break_reasons[0].reason)


# ---------------------------------------------------------------------- ScheduleLR ---

def test_schedule_lr_reports_the_lr_in_use_and_changes_nothing():
    sched = fastlr.Warmup(fastlr.Cosine(1e-2, 20), 5)
    model, ref = tiny_model(), tiny_model()
    opt = fastlr.optim.AdamW(model.parameters(), lr=sched)
    ref_opt = fastlr.optim.AdamW(ref.parameters(), lr=sched)
    s = ScheduleLR(opt)
    assert isinstance(s, torch.optim.lr_scheduler.LRScheduler)
    x, y = data()
    reported = [s.get_last_lr()[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "schedule overridden" warning: nothing is written
        for k in range(25):
            for m, o in ((model, opt), (ref, ref_opt)):
                torch.nn.functional.mse_loss(m(x), y).backward()
                o.step()
                m.zero_grad()
            s.step()
            reported.append(s.get_last_lr()[0])
    assert reported == sched.values(26).tolist()
    assert s.last_epoch == 25
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)  # stepping the scheduler changed nothing


def test_schedule_lr_state_dict_round_trip_and_torch_load():
    opt = fastlr.optim.SGD(tiny_model().parameters(), lr=fastlr.Exponential(0.1, 0.9))
    s = ScheduleLR(opt)
    for _ in range(3):
        s.step()
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)
    s2 = ScheduleLR(fastlr.optim.SGD(tiny_model().parameters(), lr=fastlr.Exponential(0.1, 0.9)))
    s2.load_state_dict(sd)
    assert s2.last_epoch == 3 and s2._step_count == s._step_count
    assert s2.state_dict().keys() == s.state_dict().keys()


def test_schedule_lr_with_groups_and_tensor_lr():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = fastlr.optim.Adam([{"params": [a], "lr": fastlr.Table([0.3, 0.2])},
                             {"params": [b], "lr": torch.tensor(0.05)}])
    s = ScheduleLR(opt)
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    opt.step()
    s.step()
    lrs = s.get_last_lr()
    assert lrs[0] == 0.2
    assert isinstance(lrs[1], torch.Tensor) and lrs[1].item() == pytest.approx(0.05)
    lrs[1].fill_(1.0)  # a copy: the optimizer's lr is untouched
    assert opt.param_groups[1]["lr"].item() == pytest.approx(0.05)


def test_timm_style_loop():
    """timm's scheduler protocol: step_update(num_updates) per update, step(epoch, metric)
    per epoch; timm's train loop logs the lr from the optimizer's param groups."""
    sched = fastlr.Warmup(fastlr.Cosine(1e-2, 12), 3)
    model = tiny_model()
    opt = fastlr.optim.AdamW(model.parameters(), lr=sched)
    s = ScheduleLR(opt)
    x, y = data()
    logged, updates = [], 0
    for epoch in range(3):
        for _ in range(5):
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            updates += 1
            s.step_update(num_updates=updates, metric=0.0)
            logged.append([g["lr"] for g in opt.param_groups][0])
        s.step(epoch + 1, 0.5)
    assert logged == sched.values(16).tolist()[1:]
    assert s.last_epoch == 3


# ------------------------------------------------------------------------------ SWA ---

def test_swa_with_a_float_lr_and_swalr_equals_torch():
    from torch.optim.swa_utils import SWALR, AveragedModel

    def run(mod):
        model = tiny_model()
        opt = mod.SGD(model.parameters(), lr=0.05, momentum=0.9)
        swa_model = AveragedModel(model)
        swa_sched = SWALR(opt, swa_lr=0.01, anneal_epochs=3)
        x, y = data()
        lrs = []
        for epoch in range(8):
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            if epoch >= 3:
                swa_model.update_parameters(model)
                swa_sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        return lrs, [p.detach() for p in swa_model.parameters()]

    lrs, params = run(fastlr.optim)
    ref_lrs, ref_params = run(torch.optim)
    assert lrs == ref_lrs and lrs[-1] == 0.01
    for a, b in zip(params, ref_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_swa_with_an_in_kernel_schedule_equals_torch_lambdalr():
    """The SWA recipe with a Schedule: the SWA phase is part of the schedule
    (Sequential ending on Constant(swa_lr)); torch reference: the same values by LambdaLR."""
    from torch.optim.swa_utils import AveragedModel

    swa_start, swa_lr = 6, 0.005
    sched = fastlr.Sequential([fastlr.Cosine(0.05, swa_start), fastlr.Constant(swa_lr)], [swa_start])

    def run(make):
        model = tiny_model()
        opt, lr_sched = make(model.parameters())
        swa_model = AveragedModel(model)
        x, y = data()
        for step in range(12):
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            if lr_sched is not None:
                lr_sched.step()
            if step >= swa_start:
                swa_model.update_parameters(model)
        return opt.param_groups[0]["lr"], [p.detach() for p in swa_model.parameters()]

    def torch_make(params):
        opt = torch.optim.SGD(params, lr=1.0)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, sched)

    lr, params = run(lambda p: (fastlr.optim.SGD(p, lr=sched), None))
    ref_lr, ref_params = run(torch_make)
    assert lr == ref_lr == swa_lr
    for a, b in zip(params, ref_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------- checkpoints into torch ---

@pytest.mark.parametrize("cls", ["AdamW", "SGD"])
def test_checkpoint_into_torch_continues_the_schedule(cls):
    sched = fastlr.Warmup(fastlr.Cosine(2e-2, 30), 4)
    kw = {"momentum": 0.9} if cls == "SGD" else {}
    x, y = data()

    def train(model, opt, n, lr_sched=None):
        lrs = []
        for _ in range(n):
            lrs.append(float(opt.param_groups[0]["lr"]))
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            if lr_sched is not None:
                lr_sched.step()
        return lrs

    model = tiny_model()
    opt = getattr(fastlr.optim, cls)(model.parameters(), lr=sched, **kw)
    train(model, opt, 10)
    plateau = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    plateau.step(1.0)
    plateau.step(1.0)  # a reduction: lr_scale 0.5, carried over to torch
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)

    # fastlr continues
    lrs = train(model, opt, 15)
    final = [p.detach().clone() for p in model.parameters()]

    # torch.optim continues from the checkpoint
    buf.seek(0)
    ckpt = torch.load(buf)
    model2 = tiny_model(seed=5)
    model2.load_state_dict(ckpt["model"])
    topt = getattr(torch.optim, cls)(model2.parameters(), lr=0.123, **kw)
    exported = to_torch_state_dict(ckpt["opt"])
    assert not {"lr_schedule", "lr_scale", "schedule_t"} & exported["param_groups"][0].keys()
    topt.load_state_dict(exported)
    tsched = torch_lr_scheduler(topt, ckpt["opt"])
    tlrs = train(model2, topt, 15, tsched)
    assert tlrs == lrs  # the same lr at every update, to the bit
    assert lrs[0] == 0.5 * sched(10)
    for a, b in zip(final, model2.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    # the LambdaLR itself checkpoints and resumes under torch.load(weights_only=True)
    buf = io.BytesIO()
    torch.save(tsched.state_dict(), buf)
    buf.seek(0)
    again = torch_lr_scheduler(topt, ckpt["opt"])
    again.load_state_dict(torch.load(buf))
    assert again.lr_lambdas[0].t0 == 10 and again.last_epoch == 15


def test_plain_torch_load_freezes_lr_and_export_warns_about_momentum():
    w = torch.nn.Parameter(torch.ones(2))
    opt = fastlr.optim.SGD([w], lr=fastlr.Exponential(1.0, 0.5), momentum=fastlr.Table([0.9, 0.5]))
    w.grad = torch.ones(2)
    opt.step()
    with pytest.warns(UserWarning, match="momentum schedule of param_groups \\[0\\] is frozen"):
        sd = to_torch_state_dict(opt)
    assert sd["param_groups"][0]["lr"] == 0.5 and sd["param_groups"][0]["momentum"] == 0.5
    assert opt.param_groups[0]["lr_schedule"] == fastlr.Exponential(1.0, 0.5)  # source untouched
    with pytest.raises(TypeError, match="optimizer or its state_dict"):
        to_torch_state_dict([1, 2])
    with pytest.raises(ValueError, match="1 param groups, optimizer has 2"):
        torch_lr_scheduler(torch.optim.SGD([{"params": [w]}, {"params": [torch.nn.Parameter(torch.ones(1))]}],
                                           lr=0.1), opt)


def test_export_of_a_scheduled_low_precision_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).to(torch.bfloat16)
    sched = fastlr.Cosine(1e-2, 10)
    opt = fastlr.optim.AdamW(model.parameters(), lr=sched, master_weights=True, state_dtype=torch.bfloat16)
    for _ in range(3):
        model(torch.randn(2, 4, dtype=torch.bfloat16)).float().pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    model32 = torch.nn.Linear(4, 3)
    sd = to_torch_state_dict(opt, params=model32.parameters())
    group = sd["param_groups"][0]
    assert group["lr"] == sched(3) and not {"lr_schedule", "master_weights", "state_dtype"} & group.keys()
    for p, q in zip(model.parameters(), model32.parameters()):
        assert torch.equal(q, opt.state[p]["master_param"])
    assert all(v.dtype == torch.float32 for s in sd["state"].values() for k, v in s.items() if k != "step")
    topt = torch.optim.AdamW(model32.parameters())
    topt.load_state_dict(sd)
    assert torch_lr_scheduler(topt, opt).get_last_lr() == [sched(3)]


# ----------------------------------------------------------------- plateau for torch ---

def test_plateau_is_torchs_plateau_scheduler_and_composes_with_a_schedule():
    assert issubclass(fastlr.optim.ReduceLROnPlateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert isinstance(fastlr.ReduceLROnPlateau(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)),
                      torch.optim.lr_scheduler.ReduceLROnPlateau)
    w = torch.nn.Parameter(torch.ones(1))
    sched = fastlr.Cosine(1.0, 10)
    opt = fastlr.optim.SGD([w], lr=sched)
    p = fastlr.optim.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    for _ in range(3):
        w.grad = torch.ones(1)
        opt.step()
        p.step(1.0)
    assert opt.param_groups[0]["lr"] == 0.25 * sched(3)
    assert p.get_last_lr() == [0.25 * sched(3)]


# --------------------------------------------------------------------- meta device ---

@pytest.mark.parametrize("name, kw", [
    ("SGD", {"lr": 0.1, "momentum": 0.9}), ("Adam", {}), ("AdamW", {"amsgrad": True}),
    ("RMSprop", {"momentum": 0.5, "centered": True}), ("Adagrad", {}),
])
def test_meta_params_step_as_in_torch(name, kw):
    layouts = []
    for mod in (torch.optim, fastlr.optim):
        p = torch.nn.Parameter(torch.empty(4, 3, device="meta"))
        p.grad = torch.empty(4, 3, device="meta")
        opt = getattr(mod, name)([p], **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "GPU params fall back" warning
            opt.step()
            opt.step()
        st = opt.state[p]
        layouts.append({k: (v.device.type, v.dtype, tuple(v.shape), v.item() if v.device.type == "cpu" else None)
                        for k, v in st.items()})
    assert layouts[0] == layouts[1]
    if "step" in layouts[1]:
        assert layouts[1]["step"] == ("cpu", torch.float32, (), 2.0)


# ------------------------------------------------------------------------- README ---

def test_readme_section_runs_as_written(tmp_path, monkeypatch, capsys):
    """The Python blocks of README "Schedules in frameworks", in order, in one namespace
    (timm's needs torchvision: skipped; HF's and Lightning's where installed)."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("### Schedules in frameworks", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 6
    monkeypatch.chdir(tmp_path)
    ns = {}
    ran = 0
    for block in blocks:
        if "timm" in block:
            continue
        if "import transformers" in block and not all(
            __import__("importlib").util.find_spec(m) for m in ("transformers", "accelerate")
        ):
            continue
        if "lightning" in block and __import__("importlib").util.find_spec("lightning") is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(block, "README.md", "exec"), ns)
        ran += 1
    out = capsys.readouterr().out
    assert "True 9e-05" in out and "[0.001  0.0005 0.0001 0.0001 0.0001]" in out
    assert "True" in out.splitlines()[-1]
    assert ran >= 4
