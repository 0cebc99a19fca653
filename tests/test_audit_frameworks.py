"""Audit of issue 14 (in-kernel schedules inside torch.compile, frameworks, schedulers):
cases the first tests left out."""
import warnings

import pytest

torch = pytest.importorskip("torch")

import fastlr  # noqa: E402
import fastlr.optim  # noqa: E402
from conftest import tiny_data as data, tiny_model, train_step_fn  # noqa: E402


def reset_dynamo():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


SCHEDULE_FREE = {
    "sgd_sf_float": lambda ps: fastlr.optim.SGDScheduleFree(ps, lr=0.5, warmup_steps=2),
    "sgd_sf_schedule": lambda ps: fastlr.optim.SGDScheduleFree(ps, lr=fastlr.Cosine(0.5, 10)),
    "adamw_sf_float": lambda ps: fastlr.optim.AdamWScheduleFree(ps, lr=1e-2, warmup_steps=2),
    "adamw_sf_schedule": lambda ps: fastlr.optim.AdamWScheduleFree(
        ps, lr=fastlr.Warmup(fastlr.Cosine(1e-2, 10), 3)),
    "adamw_sf_table": lambda ps: fastlr.optim.AdamWScheduleFree(ps, lr=fastlr.Table([1e-2, 5e-3])),
    "radam_sf_schedule": lambda ps: fastlr.optim.RAdamScheduleFree(ps, lr=fastlr.Cosine(1e-2, 10)),
}


def sf_run(make, backend, n=8):
    model = tiny_model()
    opt = make(model.parameters())
    x, y = data()

    fn = train_step_fn(model, opt, x, y, backend)
    opt.train()
    losses = [fn().item() for _ in range(n)]
    opt.eval()
    return losses, [p.detach().clone() for p in model.parameters()], opt


@pytest.mark.parametrize("name", sorted(SCHEDULE_FREE))
def test_compiled_schedule_free_training_step_equals_eager(name):
    """A compiled training step calling a schedule-free opt.step() with a Schedule lr
    crashed (Dynamo's 'Expected np.nditer base, got bytes' at _C.schedule_at, the bug
    issue 14 fixed for the other optimizers); with a float lr Dynamo traced the step's
    Python: 11 graph breaks (fastlr.optim.AdamW: 3). Now a compiler boundary as
    fastlr.optim's: the eager results bit for bit, 3 breaks, no recompiles."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    make = SCHEDULE_FREE[name]
    reset_dynamo()
    counter = CompileCounter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses, params, opt = sf_run(make, counter)
    breaks = dict(counters["graph_break"])
    eager_losses, eager_params, eager_opt = sf_run(make, None)
    assert losses == eager_losses
    for a, b in zip(params, eager_params):
        assert torch.equal(a, b)
    for key in ("k", "lr", "lr_max", "weight_sum", "scheduled_lr"):
        assert opt.param_groups[0][key] == eager_opt.param_groups[0][key], key
    # backward, opt.step, zero_grad: as fastlr.optim.AdamW's compiled step
    assert sum(breaks.values()) == 3, breaks
    assert counter.frame_count == 2


def test_compiled_schedule_free_step_and_mode_switch_run_eagerly():
    """torch.compile(opt.step) and compiled eval()/train() with a Schedule lr."""
    model, ref = tiny_model(), tiny_model()
    sched = fastlr.OneCycle(0.05, 20)
    opt = fastlr.optim.AdamWScheduleFree(model.parameters(), lr=sched)
    ref_opt = fastlr.optim.AdamWScheduleFree(ref.parameters(), lr=sched)
    reset_dynamo()
    step = torch.compile(opt.step, backend="eager")
    to_eval = torch.compile(opt.eval, backend="eager")
    to_train = torch.compile(opt.train, backend="eager")
    x, y = data()
    to_train()
    ref_opt.train()
    for _ in range(4):
        for m, s in ((model, step), (ref, ref_opt.step)):
            torch.nn.functional.mse_loss(m(x), y).backward()
            s()
            m.zero_grad()
    to_eval()
    ref_opt.eval()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert opt.param_groups[0]["lr"] == sched(4)
    assert not opt.param_groups[0]["train_mode"]


@pytest.mark.parametrize("make", [
    lambda ps: fastlr.optim.AdamW(ps, lr=fastlr.Cosine(1e-2, 20)),
    lambda ps: fastlr.optim.AdamWScheduleFree(ps, lr=fastlr.Cosine(1e-2, 20)),
], ids=["adamw", "adamw_sf"])
def test_compiled_step_with_schedule_lr_step_does_not_recompile(make):
    """``opt.step(); lr_scheduler.step()`` with ScheduleLR inside the compiled step (the
    usual loop): Dynamo traced ScheduleLR.step, guarded on the group["lr"] floats it reads
    and recompiled at every step (9 frames in 10 steps, then the recompile limit). Now
    ScheduleLR.step is a compiler boundary as opt.step(): 2 frames, the same lrs."""
    from torch._dynamo.testing import CompileCounter

    model = tiny_model()
    opt = make(model.parameters())
    if hasattr(opt, "eval"):
        opt.train()
    lr_scheduler = fastlr.optim.ScheduleLR(opt)
    x, y = data()
    reset_dynamo()
    counter = CompileCounter()
    fn = train_step_fn(model, opt, x, y, counter, after_step=lr_scheduler.step)
    logged = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(10):
            fn()
            logged.append(lr_scheduler.get_last_lr()[0])
    assert logged == [fastlr.Cosine(1e-2, 20)(k + 1) for k in range(10)]
    assert lr_scheduler.last_epoch == 10
    assert counter.frame_count == 2
