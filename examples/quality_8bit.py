"""Quality of 8-bit AdamW state: a teacher-student MLP (64 -> 256 -> 256 -> 16, every
weight matrix >= 4096 elements, so its state is 8-bit) trained with float32 AdamW
(torch.optim), fastlr's AdamW8bit (torchao's semantics), fastlr's own encoding
(`fastlr.optim.AdamW(state_dtype="8bit")`: sqrt(v) + zero-code guard), the same with bf16
params and fp32 master weights (the model runs in bf16) and, when installed, torchao's AdamW8bit
(run eagerly: the same arithmetic without minutes of compiling). Two gradient regimes:
the plain regression, and the same with heavy-tailed gradients (a few output units' losses
scaled by 1e4, many others by 1e-3). Prints final eval losses (and their ratio to float32),
the largest parameter difference between fastlr's and torchao's AdamW8bit after 100 steps,
and writes docs/img/quant8_quality.png.

    python examples/quality_8bit.py [--steps 1500] [--out docs/img/quant8_quality.png]
"""
import argparse
import time

import torch

import fastlr.optim

D_IN, D_H, D_OUT, N, BATCH, LR, WD = 64, 256, 16, 8192, 128, 1e-3, 0.01


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = [torch.randn(D_IN, 128, generator=g) / 8, torch.randn(128, D_OUT, generator=g) / 11]
    X = torch.randn(N + 2048, D_IN, generator=g)
    Y = torch.tanh(X @ teacher[0]) @ teacher[1]
    return X[:N], Y[:N], X[N:], Y[N:]


def model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(D_IN, D_H), torch.nn.GELU(), torch.nn.Linear(D_H, D_H),
                               torch.nn.GELU(), torch.nn.Linear(D_H, D_OUT))


def torchao_eager(params):
    try:
        import torchao.optim as tao
    except Exception:  # noqa: BLE001 - not installed
        return None
    opt = tao.AdamW8bit(params, lr=LR, weight_decay=WD)
    real = torch.compile

    def step():
        torch.compile = lambda fn, **_: fn
        try:
            opt.step()
        finally:
            torch.compile = real

    return step


def master_8bit(params):
    """bf16 params (the model runs in bf16), fp32 master weights and 8-bit state; None when
    this build has no 8-bit kernel with master weights."""
    try:
        opt = fastlr.optim.AdamW(params, lr=LR, weight_decay=WD, state_dtype="8bit", master_weights=True)
    except (NotImplementedError, TypeError, ValueError):
        return None
    return opt.step


OPTIMIZERS = {
    "float32 AdamW (torch)": lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD).step,
    "fastlr AdamW8bit": lambda ps: fastlr.optim.AdamW8bit(ps, lr=LR, weight_decay=WD).step,
    # the fastlr encoding (sqrt(v), zero-code guard), as the drop-in classes' option
    "fastlr AdamW state_dtype=8bit": lambda ps: fastlr.optim.AdamW(ps, lr=LR, weight_decay=WD,
                                                                   state_dtype="8bit").step,
    "bf16 params, fp32 master, 8-bit state": master_8bit,
    "torchao AdamW8bit": torchao_eager,
}


def train(name, steps, heavy, seed=0):
    X, Y, Xe, Ye = problem(seed)
    net = model(seed)
    if name.startswith("bf16 params"):
        net = net.to(torch.bfloat16)
        X, Y = X.to(torch.bfloat16), Y.to(torch.bfloat16)
    step = OPTIMIZERS[name](list(net.parameters()))
    if step is None:
        return None
    evaluator = model(seed)
    weight = torch.ones(D_OUT)
    if heavy:  # per-output loss weights spanning 7 decades: heavy-tailed grads in the last layer
        weight[:2] = 1e4
        weight[2:10] = 1e-3
    gen = torch.Generator().manual_seed(seed + 1)
    curve = []
    for t in range(1, steps + 1):
        idx = torch.randint(0, N, (BATCH,), generator=gen)
        loss = (((net(X[idx]) - Y[idx]) ** 2) * weight).mean()
        net.zero_grad()
        loss.backward()
        step()
        if t % 25 == 0 or t == steps:
            with torch.no_grad():  # the weights in float32: measures them, not bf16 arithmetic
                evaluator.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
                curve.append((t, (((evaluator(Xe) - Ye) ** 2)).mean().item()))
    return curve, [p.detach().float().clone() for p in net.parameters()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--out", default="docs/img/quant8_quality.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    for heavy in (False, True):
        for name in OPTIMIZERS:
            t0 = time.perf_counter()
            r = train(name, args.steps, heavy)
            if r is None:
                print(f"{name}: not available (torchao not installed, or no such kernel in this build)")
                continue
            results[(heavy, name)] = r
            print(f"{'heavy-tailed' if heavy else 'plain':12s} {name:38s} final eval MSE {r[0][-1][1]:.5f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    for heavy in (False, True):
        ref = results[(heavy, "float32 AdamW (torch)")][0][-1][1]
        for name in OPTIMIZERS:
            if (heavy, name) in results:
                final = results[(heavy, name)][0][-1][1]
                print(f"{'heavy-tailed' if heavy else 'plain':12s} {name:38s} {final:.5f}  "
                      f"{100 * (final / ref - 1):+.2f} % vs float32")
    ours = train("fastlr AdamW8bit", 100, False)
    theirs = train("torchao AdamW8bit", 100, False)
    if theirs is not None:
        diff = max((a - b).abs().max().item() for a, b in zip(ours[1], theirs[1]))
        print(f"largest parameter difference, fastlr vs torchao AdamW8bit after 100 steps: {diff:.2e}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"float32 AdamW (torch)": ("k", "-"), "fastlr AdamW8bit": ("tab:blue", "-"),
              "fastlr AdamW state_dtype=8bit": ("tab:green", "--"),
              "bf16 params, fp32 master, 8-bit state": ("tab:purple", "-."), "torchao AdamW8bit": ("tab:red", ":")}
    for ax, heavy in zip(axes, (False, True)):
        for name in OPTIMIZERS:
            if (heavy, name) in results:
                t, v = zip(*results[(heavy, name)][0])
                ax.plot(t, v, color=styles[name][0], linestyle=styles[name][1], label=name)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("eval MSE")
        ax.set_title("heavy-tailed gradients" if heavy else "plain regression")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
