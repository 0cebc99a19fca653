"""fastlr.optim with an in-kernel Schedule under the trainers people use: Hugging Face
Trainer (a tiny GPT-2 built from a config, nothing downloaded) and Lightning. Each test
skips where its library is not installed (CI installs them: the [test] extra)."""
import csv
import math
import warnings

import pytest

torch = pytest.importorskip("torch")

import fastlr  # noqa: E402
from fastlr.optim import ScheduleLR  # noqa: E402

# ------------------------------------------------------------------ Hugging Face ---

STEPS, WARMUP, LR = 20, 5, 3e-3


def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=64,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n=64, length=16):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 64, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def hf_train(tmp_path, make_optimizers):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = tiny_gpt2()
    losses = []
    model.register_forward_hook(lambda mod, args, out: losses.append(out.loss.item()))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
        dataloader_num_workers=0, max_grad_norm=1.0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TokenData(),
                                   optimizers=make_optimizers(model))
    trainer.train()
    logged = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    return losses, logged, model


def test_hf_trainer_logs_the_in_kernel_lr_and_trains_like_torch(tmp_path):
    transformers = pytest.importorskip("transformers")
    schedule = fastlr.Warmup(fastlr.Cosine(LR, STEPS - WARMUP), WARMUP)

    def fastlr_opt(model):
        opt = fastlr.optim.AdamW(model.parameters(), lr=schedule, weight_decay=0.01)
        return opt, ScheduleLR(opt)

    def torch_opt(model):
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
        return opt, transformers.get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*schedule.*overrid.*")  # nothing fights the kernel
        losses, logged, model = hf_train(tmp_path / "fastlr", fastlr_opt)
    ref_losses, ref_logged, ref_model = hf_train(tmp_path / "torch", torch_opt)
    assert len(losses) == len(ref_losses) == STEPS
    # the logged lr: the Schedule's value of each update (HF reads get_last_lr() between
    # opt.step() and sched.step()), as torch's equivalent LambdaLR logs it
    assert logged == [schedule(k) for k in range(STEPS)] and max(logged) == LR
    assert logged == pytest.approx(ref_logged, rel=1e-12, abs=1e-18)
    assert max(abs(a - b) for a, b in zip(losses, ref_losses)) < 1e-6
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)  # Adam's 1/sqrt(v) amplifies ulps


def test_hf_lambda_moves_into_the_kernel():
    """transformers' own schedule lambda, evaluated once into a fastlr.Lambda, gives the
    lr values of the LambdaLR transformers builds, to the bit."""
    transformers = pytest.importorskip("transformers")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = transformers.get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    torch_lrs = []
    for _ in range(STEPS):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    schedule = fastlr.Lambda(LR, sched.lr_lambdas[0], STEPS)
    assert schedule.values(STEPS).tolist() == torch_lrs


# ----------------------------------------------------------------------- Lightning ---

def lightning_module(make_config):
    pl = pytest.importorskip("lightning.pytorch")

    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return make_config(self)

    return pl, Regressor()


def loaders():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 4, generator=g)
    ds = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    return torch.utils.data.DataLoader(ds, batch_size=8), torch.utils.data.DataLoader(ds, batch_size=16)


def test_lightning_accepts_the_plateau_scheduler():
    def config(module):
        opt = fastlr.optim.SGD(module.parameters(), lr=fastlr.Cosine(0.05, 40))
        module.plateau = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=10.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": module.plateau, "monitor": "val_loss"}}

    pl, module = lightning_module(config)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    train, val = loaders()
    trainer.fit(module, train, val)
    assert trainer.lr_scheduler_configs[0].reduce_on_plateau
    group = trainer.optimizers[0].param_groups[0]
    # a threshold of 10 makes every epoch a bad one: a reduction after each epoch
    assert module.plateau.last_epoch == 3 and group["lr_scale"] == 0.125
    assert group["lr"] == 0.125 * fastlr.Cosine(0.05, 40)(12)  # 4 batches x 3 epochs, in kernel


def test_lightning_learning_rate_monitor_logs_the_schedule(tmp_path):
    schedule = fastlr.Warmup(fastlr.Cosine(0.05, 10), 2)

    def config(module):
        opt = fastlr.optim.AdamW(module.parameters(), lr=schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": ScheduleLR(opt), "interval": "step"}}

    pl, module = lightning_module(config)
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=CSVLogger(str(tmp_path), name="run"),
                         callbacks=[LearningRateMonitor(logging_interval="step")], log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    train, val = loaders()
    trainer.fit(module, train, val)
    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lr-AdamW")]
    lrs = [float(r["lr-AdamW"]) for r in rows]
    # LearningRateMonitor logs before each update: the lr that update uses
    assert len(lrs) == 12 and lrs == [schedule(k) for k in range(12)]
    assert not math.isclose(lrs[0], lrs[-1])
