"""Worker side of tests/test_distributed.py: one process per rank (gloo, CPU).

``launch(scenario, outdir)`` spawns ``WORLD`` processes running ``_main(rank, ...)``; each
runs one scenario (``ddp``, ``zero``, ``fsdp2``) and saves what it recorded to
``outdir/<scenario>-<rank>.pt`` for the test to compare with single-process references
computed by the same helpers (``make_model``, ``batch``, ``train``).
"""
import os
import socket
import sys
import time
import warnings

import torch
import torch.nn.functional as F

import fastlr
import fastlr.optim

WORLD = 2
STEPS = 6
RESUME_AT = 3
GLOBAL_BATCH = 8
DTYPE = torch.float64  # float64 so that the order of the gradient sums hardly shows

# one config per optimizer: float lr, so torch.optim runs the same trajectory
CONFIGS = {
    "SGD": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    "Adam": {"lr": 1e-2, "amsgrad": True, "weight_decay": 1e-3},
    "AdamW": {"lr": 1e-2, "weight_decay": 0.1},
    "RMSprop": {"lr": 1e-2, "momentum": 0.5, "centered": True},
    "Adagrad": {"lr": 0.1, "lr_decay": 1e-2},
}


def scheduled():
    """AdamW kwargs with a fastlr Schedule as lr (no torch.optim twin: fastlr only)."""
    return {"lr": fastlr.Warmup(fastlr.Cosine(2e-2, STEPS), 3), "weight_decay": 0.1}


def config(name):
    """(class name, kwargs) of a config; "AdamW-sched" is AdamW with a Schedule."""
    if name == "AdamW-sched":
        return "AdamW", scheduled()
    return name, dict(CONFIGS[name])


def make_model():
    """An MLP whose dim-0 sizes (9, 5, 1) shard unevenly over 2 ranks (one shard empty)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 9), torch.nn.Tanh(),
        torch.nn.Linear(9, 5), torch.nn.Tanh(),
        torch.nn.Linear(5, 1),
    ).to(DTYPE)


def batch(step, rank=None):
    """The global batch of a step, or rank's equal share of it."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=DTYPE)
    y = torch.randn(GLOBAL_BATCH, 1, generator=g, dtype=DTYPE)
    if rank is not None:
        n = GLOBAL_BATCH // WORLD
        x, y = x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]
    return x, y


def snapshot(model):
    """Each parameter's value on this rank (a DTensor's local shard: no communication)."""
    return [getattr(p, "_local_tensor", p).detach().clone() for p in model.parameters()]


def train(model, opt, steps, start=0, rank=None):
    """`steps` steps of MSE regression from step `start`. Returns the trajectory, one
    (steps, *shape) tensor per parameter, and the lr of group 0 after each step."""
    traj, lrs = [], []
    for step in range(start, start + steps):
        x, y = batch(step, rank)
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x), y).backward()
        opt.step()
        traj.append(snapshot(model))
        lrs.append(float(opt.param_groups[0]["lr"]))
    return [torch.stack(ps) for ps in zip(*traj)], lrs


def join(*trajs):
    """Trajectories one after the other (resumed training)."""
    return [torch.cat(ps) for ps in zip(*(t for t, _ in trajs))], [x for _, lrs in trajs for x in lrs]


def flat(traj, shards=None):
    """(steps, n) of a trajectory; `shards`: the ranks' trajectories of dim-0 shards."""
    if shards is not None:
        traj = [torch.cat(ps, dim=1) for ps in zip(*shards)]
    return torch.cat([t.reshape(t.shape[0], -1) for t in traj], dim=1)


def make_opt(lib, name, params):
    cls, kw = config(name)
    mod = fastlr.optim if lib == "fastlr" else torch.optim
    return getattr(mod, cls)(params, **kw)


def reference(name, lib="fastlr", steps=STEPS):
    """Single-process training on the global batch."""
    model = make_model()
    return train(model, make_opt(lib, name, model.parameters()), steps)


# ----------------------------------------------------------------------- DDP ---
def scenario_ddp(rank, outdir):
    from torch.nn.parallel import DistributedDataParallel as DDP

    res = {}
    for name in [*CONFIGS, "AdamW-sched"]:
        model = DDP(make_model())
        res["fastlr", name] = train(model, make_opt("fastlr", name, model.parameters()), STEPS, rank=rank)
    # checkpoint after RESUME_AT steps (rank 0 writes), then fresh objects resume
    for name in ("SGD", "AdamW-sched"):
        path = os.path.join(outdir, f"ddp-{name}.pt")
        model = DDP(make_model())
        opt = make_opt("fastlr", name, model.parameters())
        head = train(model, opt, RESUME_AT, rank=rank)
        if rank == 0:
            torch.save({"model": model.module.state_dict(), "optim": opt.state_dict()}, path)
        torch.distributed.barrier()
        ckpt = torch.load(path)  # weights_only: fastlr registers its Schedules as safe
        inner = make_model()
        inner.load_state_dict(ckpt["model"])
        model = DDP(inner)
        opt = make_opt("fastlr", name, model.parameters())
        opt.load_state_dict(ckpt["optim"])
        tail = train(model, opt, STEPS - RESUME_AT, start=RESUME_AT, rank=rank)
        res["resume", name] = join(head, tail)
    return res


# ---------------------------------------------------------------------- ZeRO ---
def _zero(lib, lr=1e-2):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(make_model())
    cls = fastlr.optim.AdamW if lib == "fastlr" else torch.optim.AdamW
    params = list(model.parameters())
    # the last layer joins through add_param_group (ZeRO forwards it to the rank owning it)
    opt = ZeroRedundancyOptimizer(params[:4], optimizer_class=cls, lr=lr, weight_decay=0.1)
    opt.add_param_group({"params": params[4:], "weight_decay": 0.0})
    return model, opt


def scenario_zero(rank, outdir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = _scenario_zero(rank, outdir)
    res["warnings"] = [str(x.message) for x in caught if "fastlr" in str(x.message)]
    return res


def _scenario_zero(rank, outdir):
    res = {}
    for lib in ("fastlr", "torch"):
        model, opt = _zero(lib)
        res[lib] = train(model, opt, STEPS, rank=rank)
        res[lib, "optim_class"] = type(opt.optim).__module__
    for name, lr in (("float", 1e-2), ("sched", scheduled()["lr"])):
        path = os.path.join(outdir, f"zero-{name}.pt")
        model, opt = _zero("fastlr", lr)
        if name == "sched":
            res["fastlr", name] = train(model, opt, STEPS, rank=rank)
            model, opt = _zero("fastlr", lr)
        head = train(model, opt, RESUME_AT, rank=rank)
        opt.consolidate_state_dict(to=0)  # every rank takes part; rank 0 receives
        if rank == 0:
            sd = opt.state_dict()
            res["consolidated", name] = sorted(sd["state"])
            torch.save({"model": model.module.state_dict(), "optim": sd}, path)
        torch.distributed.barrier()
        ckpt = torch.load(path)
        model, opt = _zero("fastlr", lr)
        model.module.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optim"])
        tail = train(model, opt, STEPS - RESUME_AT, start=RESUME_AT, rank=rank)
        res["resume", name] = join(head, tail)
    return res


# --------------------------------------------------------------------- FSDP2 ---
def _fsdp2_unavailable():
    """None when fully_shard can train on CPU/gloo here, else the reason."""
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError as e:
        return f"torch {torch.__version__} has no FSDP2 fully_shard ({e})"
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        m = fully_shard(torch.nn.Linear(2, 3), mesh=mesh)
        m(torch.ones(1, 2)).sum().backward()
        torch.optim.SGD(m.parameters(), lr=0.1).step()
    except Exception as e:  # noqa: BLE001 - the reason is reported as the skip
        return f"fully_shard does not run on CPU/gloo in torch {torch.__version__}: {type(e).__name__}: {e}"
    return None


def _sharded(mesh):
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    for layer in (model[0], model[2], model[4]):
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def scenario_fsdp2(rank, outdir):
    reason = _fsdp2_unavailable()
    if reason is not None:
        return {"skip": reason}
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    mesh = init_device_mesh("cpu", (WORLD,))
    res = {}
    for name in [*CONFIGS, "AdamW-sched"]:
        for lib in ("fastlr", "torch"):
            if lib == "torch" and name == "AdamW-sched":
                continue
            model = _sharded(mesh)
            opt = make_opt(lib, name, model.parameters())
            res[lib, name] = train(model, opt, STEPS, rank=rank)
            if lib == "fastlr":
                # state like torch's: DTensors sharded like their param, plain step counters
                kinds = set()
                for p in model.parameters():
                    for key, v in opt.state[p].items():
                        kinds.add((key, type(v).__name__,
                                   isinstance(v, DTensor) and v.placements == p.placements))
                res["state_kinds", name] = sorted(kinds)
    # mid-training DCP checkpoint (sharded, both ranks write) and resume
    ckpt = os.path.join(outdir, "dcp")
    model = _sharded(mesh)
    opt = make_opt("fastlr", "AdamW-sched", model.parameters())
    head = train(model, opt, RESUME_AT, rank=rank)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=ckpt)
    model = _sharded(mesh)
    opt = make_opt("fastlr", "AdamW-sched", model.parameters())
    msd, osd = get_state_dict(model, opt)
    dcp.load({"model": msd, "optim": osd}, checkpoint_id=ckpt)
    set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd)
    tail = train(model, opt, STEPS - RESUME_AT, start=RESUME_AT, rank=rank)
    res["resume", "AdamW-sched"] = join(head, tail)
    return res


# ----------------------------------------------------------------- precision ---
# bf16 params with fp32 master weights and bf16 optimizer state (issue #12)
PRECISION = {"lr": 1e-2, "weight_decay": 0.1, "master_weights": True, "state_dtype": torch.bfloat16}


def make_bf16_model():
    return make_model().to(torch.bfloat16)


def typed_train(model, opt, steps, start=0, rank=None):
    """train() on a bf16 or float32 model (inputs cast to its dtype, the loss in float32)."""
    dtype = next(model.parameters()).dtype
    traj = []
    for step in range(start, start + steps):
        x, y = batch(step, rank)
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x.to(dtype)).float(), y.float()).backward()
        opt.step()
        traj.append(snapshot(model))
    return [torch.stack(ps) for ps in zip(*traj)]


def ddp_resumed(make, options, path, rank):
    """fastlr.optim.AdamW(**options) under DDP with a checkpoint after RESUME_AT steps (rank 0
    saves model and optimizer state_dict; fresh objects on every rank load it, the options
    coming from the dict): the trajectory of the STEPS steps."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(make())
    opt = fastlr.optim.AdamW(model.parameters(), **options)
    head = typed_train(model, opt, RESUME_AT, rank=rank)
    if rank == 0:
        torch.save({"model": model.module.state_dict(), "optim": opt.state_dict()}, path)
    torch.distributed.barrier()
    ckpt = torch.load(path)
    inner = make()
    inner.load_state_dict(ckpt["model"])
    model = DDP(inner)
    opt = fastlr.optim.AdamW(model.parameters(), lr=options["lr"], weight_decay=options["weight_decay"])
    opt.load_state_dict(ckpt["optim"])
    tail = typed_train(model, opt, STEPS - RESUME_AT, start=RESUME_AT, rank=rank)
    return [torch.cat(ps) for ps in zip(head, tail)]


def masters(opt, params):
    """Each param's fp32 master (a DTensor's local shard)."""
    return [getattr(opt.state[p]["master_param"], "_local_tensor", opt.state[p]["master_param"]).clone()
            for p in params]


def scenario_precision(rank, outdir):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    res = {}
    model = DDP(make_bf16_model())
    opt = fastlr.optim.AdamW(model.parameters(), **PRECISION)
    res["ddp"] = typed_train(model, opt, STEPS, rank=rank)
    res["ddp", "masters"] = masters(opt, list(model.parameters()))
    # DDP checkpoint after RESUME_AT steps: masters and bf16 state come back as saved
    res["ddp", "resume"] = ddp_resumed(make_bf16_model, PRECISION, os.path.join(outdir, "precision-ddp.pt"), rank)
    # ZeRO: each rank keeps the masters and state of its own params
    model = DDP(make_bf16_model())
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=fastlr.optim.AdamW, **PRECISION)
    res["zero"] = typed_train(model, opt, STEPS, rank=rank)
    res["zero", "local_state"] = sorted(
        (key, str(v.dtype)) for st in opt.optim.state.values() for key, v in st.items()
    )
    opt.consolidate_state_dict(to=0)
    if rank == 0:
        sd = opt.state_dict()
        res["zero", "consolidated"] = sorted((pid, sorted(st)) for pid, st in sd["state"].items())
    # FSDP2: the update runs on each rank's local shard, the master is a DTensor like the param
    if _fsdp2_unavailable() is None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor

        mesh = init_device_mesh("cpu", (WORLD,))
        model = make_bf16_model()
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer, mesh=mesh)
        model = fully_shard(model, mesh=mesh)
        opt = fastlr.optim.AdamW(model.parameters(), **PRECISION)
        res["fsdp2"] = typed_train(model, opt, STEPS, rank=rank)
        res["fsdp2", "masters"] = masters(opt, list(model.parameters()))
        res["fsdp2", "state_kinds"] = sorted({
            (key, type(v).__name__, str(v.dtype), isinstance(v, DTensor) and v.placements == p.placements)
            for p in model.parameters() for key, v in opt.state[p].items()
        })
    return res


# --------------------------------------------------------------------- 8-bit ---
# state_dtype="8bit" (issue #13): two weight matrices of >= 4096 elements hold 8-bit state
# (6400 = 25 blocks of 256; 5000: a partial last block), the other params float32 state
QUANT8 = {"lr": 1e-2, "weight_decay": 0.1, "state_dtype": "8bit"}


def make_q8_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, 100), torch.nn.Tanh(),
        torch.nn.Linear(100, 50), torch.nn.Tanh(),
        torch.nn.Linear(50, 1),
    )


def scenario_quant8(rank, outdir):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    res = {}
    model = DDP(make_q8_model())
    opt = fastlr.optim.AdamW(model.parameters(), **QUANT8)
    res["ddp"] = typed_train(model, opt, STEPS, rank=rank)
    res["ddp", "state_keys"] = [sorted(opt.state[p]) for p in model.parameters()]
    # DDP checkpoint after RESUME_AT steps: codes and scales come back as saved
    res["ddp", "resume"] = ddp_resumed(make_q8_model, QUANT8, os.path.join(outdir, "quant8-ddp.pt"), rank)
    # ZeRO: each rank keeps the 8-bit state of its own params
    model = DDP(make_q8_model())
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=fastlr.optim.AdamW, **QUANT8)
    res["zero"] = typed_train(model, opt, STEPS, rank=rank)
    opt.consolidate_state_dict(to=0)
    if rank == 0:
        res["zero", "consolidated"] = sorted((pid, sorted(st)) for pid, st in opt.state_dict()["state"].items())
    if _fsdp2_unavailable() is None:
        res.update(_quant8_fsdp2(rank, outdir))
    return res


# FSDP2 (a separate model: 8-bit state needs shards of whole rows of whole 256-blocks)
QUANT8_SHARDED = (2, 6)  # the (20, 256) and (9, 512) weights; (512, 20) keeps float32 state
QUANT8_FSDP2 = {
    "AdamW": QUANT8,
    "SGD": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "state_dtype": "8bit"},
    "RMSprop": {"lr": 1e-2, "momentum": 0.5, "centered": True, "state_dtype": "8bit"},
    "Adagrad": {"lr": 0.1, "initial_accumulator_value": 0.1, "state_dtype": "8bit"},
    "AdamW8bit": {"lr": 1e-2},  # torchao's layout and semantics
}


def make_q8_fsdp_model(name="AdamW"):
    """The 8-bit weights are params 2 and 6, one of 9 rows (shards of 5 and 4); param 4 is a
    (512, 20) weight for state_dtype="8bit" (rows of 20: float32 state under FSDP2, 8-bit
    unsharded), a (256, 9) one for AdamW8bit (its layout has no per-group choice)."""
    torch.manual_seed(0)
    if name == "AdamW8bit":
        sizes = [(6, 512), (512, 9), (9, 256), (256, 20), (20, 1)]
    else:
        sizes = [(6, 256), (256, 20), (20, 512), (512, 9), (9, 1)]
    layers = []
    for n_in, n_out in sizes:
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def q8_unsharded(name):
    """Unsharded params and optimizer with the state each param has under FSDP2."""
    params = [p.detach().clone() for p in make_q8_fsdp_model(name).parameters()]
    if name == "AdamW8bit":
        return params, fastlr.optim.AdamW8bit(params, **QUANT8_FSDP2[name])
    groups = [{"params": [q for i, q in enumerate(params) if i != 4]}, {"params": [params[4]], "state_dtype": None}]
    return params, getattr(fastlr.optim, name)(groups, **QUANT8_FSDP2[name])


def lockstep(model, opt, params, ref_opt, steps, rank):
    """Trains the sharded model and steps unsharded copies of its params with the same
    (gathered) grads; returns the trajectory and the largest |difference| seen."""
    traj, worst = [], 0.0
    for step in range(steps):
        x, y = batch(step, rank)
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x.float()), y.float()).backward()
        for p, q in zip(model.parameters(), params):
            q.grad = p.grad.full_tensor()
        opt.step()
        ref_opt.step()
        traj.append(snapshot(model))
        worst = max([worst] + [float((p.full_tensor() - q).abs().max()) for p, q in zip(model.parameters(), params)])
    return [torch.stack(ps) for ps in zip(*traj)], worst


def _quant8_fsdp2(rank, outdir):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    mesh = init_device_mesh("cpu", (WORLD,))

    def sharded(name="AdamW"):
        model = make_q8_fsdp_model(name)
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        return fully_shard(model, mesh=mesh)

    res = {}
    for name, kw in QUANT8_FSDP2.items():
        model = sharded(name)
        opt = getattr(fastlr.optim, name)(model.parameters(), **kw)
        res["fsdp2", name], res["fsdp2", name, "vs unsharded"] = lockstep(model, opt, *q8_unsharded(name),
                                                                          STEPS, rank)
        res["fsdp2", name, "state"] = [
            sorted((key, type(v).__name__, tuple(v.shape), str(v.dtype),
                    isinstance(v, DTensor) and v.placements == p.placements) for key, v in opt.state[p].items())
            for p in model.parameters()
        ]
    # mid-training DCP checkpoint (each rank writes its shards of codes and scales), resumed
    for name in ("AdamW", "AdamW8bit"):
        path = os.path.join(outdir, f"quant8-dcp-{name}")
        model = sharded(name)
        opt = getattr(fastlr.optim, name)(model.parameters(), **QUANT8_FSDP2[name])
        head = typed_train(model, opt, RESUME_AT, rank=rank)
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
        model = sharded(name)
        opt = getattr(fastlr.optim, name)(model.parameters(), **QUANT8_FSDP2[name])
        msd, osd = get_state_dict(model, opt)
        dcp.load({"model": msd, "optim": osd}, checkpoint_id=path)
        set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd)
        tail = typed_train(model, opt, STEPS - RESUME_AT, start=RESUME_AT, rank=rank)
        res["fsdp2", name, "resume"] = [torch.cat(ps) for ps in zip(head, tail)]
    # a sharded float32 state (a dict without state_dtype) into an 8-bit optimizer: unsharded
    # it would be quantized; sharded it is refused before anything changes
    model = sharded()
    opt32 = fastlr.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    typed_train(model, opt32, 1, rank=rank)
    _, osd32 = get_state_dict(model, opt32)
    opt = fastlr.optim.AdamW(model.parameters(), **QUANT8)
    typed_train(model, opt, 1, rank=rank)
    msd, _ = get_state_dict(model, opt)
    before = [{k: getattr(v, "_local_tensor", v).clone() for k, v in opt.state[p].items()} for p in model.parameters()]
    try:
        set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd32)
        res["fsdp2", "float32 into 8-bit"] = "no error"
    except NotImplementedError as e:
        res["fsdp2", "float32 into 8-bit"] = str(e)
    res["fsdp2", "float32 into 8-bit", "unchanged"] = all(
        sorted(b) == sorted(opt.state[p]) and all(torch.equal(b[k], getattr(opt.state[p][k], "_local_tensor",
                                                                                opt.state[p][k])) for k in b)
        for b, p in zip(before, model.parameters()))
    return res


SCENARIOS = {"ddp": scenario_ddp, "zero": scenario_zero, "fsdp2": scenario_fsdp2,
             "precision": scenario_precision, "quant8": scenario_quant8}


# --------------------------------------------------------------------- launch ---
def _main(rank, scenarios, port, outdir):
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    fastlr.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        for scenario in scenarios:
            # each scenario's results are saved as soon as it is done: a later failure
            # (which stops every rank) leaves the earlier ones to their tests
            t0 = time.perf_counter()
            res = SCENARIOS[scenario](rank, outdir)
            res["seconds"] = time.perf_counter() - t0
            torch.save(res, os.path.join(outdir, f"{scenario}-{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    """A TCP port free on 127.0.0.1 now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenarios, outdir, timeout=55.0):
    """Runs the scenarios one after the other on WORLD spawned processes. Raises on a
    worker's error (with its traceback) or after `timeout` s, always reaping the workers;
    ``results(scenario, outdir)`` then reads what each finished scenario saved."""
    import torch.multiprocessing as mp

    # one OpenMP thread per worker (the children read the environment at spawn)
    omp = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        ctx = mp.start_processes(
            _main, args=(list(scenarios), free_port(), outdir), nprocs=WORLD, join=False,
            start_method="spawn",
        )
    finally:
        if omp is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = omp
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=0.2):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{list(scenarios)} did not finish in {timeout:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join(5)


def results(scenario, outdir):
    """The per-rank results a scenario saved, or None when it did not finish."""
    paths = [os.path.join(outdir, f"{scenario}-{r}.pt") for r in range(WORLD)]
    if not all(os.path.exists(p) for p in paths):
        return None
    return [torch.load(p, weights_only=False) for p in paths]


if __name__ == "__main__":  # manual run: python tests/_dist_worker.py OUTDIR [SCENARIO...]
    os.makedirs(sys.argv[1], exist_ok=True)
    t0 = time.perf_counter()
    launch(sys.argv[2:] or list(SCENARIOS), sys.argv[1])
    for name in sys.argv[2:] or SCENARIOS:
        print(name, round(results(name, sys.argv[1])[0]["seconds"], 2), "s")
    print("total", round(time.perf_counter() - t0, 2), "s")
