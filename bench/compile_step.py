"""torch.compile of a training step containing opt.step(): graph breaks, graphs,
recompiles and compile time, fastlr (float / tensor / Schedule lr) next to torch.optim's
fused AdamW.

    python bench/compile_step.py [--backend eager|aot_eager|inductor] [--reps 3] [--json out.json]
                                 [--variant N]

For inductor, compare cold compiles: run each variant in its own process with an empty
cache, e.g. ``for n in 0 1 2 3; do TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python
bench/compile_step.py --backend inductor --reps 1 --variant $n; done`` (within one
process, later variants reuse the kernels compiled for the first).

Model: a 2-layer GPT-like stack (d_model 128, 4 heads, seq 32, vocab 512; ~0.5M params), so
that the compile dominates.
Compile time is the wall time of the first compiled call minus the median of the steady
compiled calls after it; each rep starts from torch._dynamo.reset(), and the variants are
interleaved rep by rep so that a busy host slows them alike. Reported: median and
min-max over the reps.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch

import fastlr


class Block(torch.nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(d)
        self.attn = torch.nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = torch.nn.LayerNorm(d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(), torch.nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(torch.nn.Module):
    def __init__(self, vocab=512, d=128, heads=4, layers=2, seq=32):
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Parameter(torch.zeros(seq, d))
        self.blocks = torch.nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, idx):
        return self.head(self.blocks(self.tok(idx) + self.pos))


VARIANTS = {
    "fastlr AdamW, float lr": lambda p: fastlr.optim.AdamW(p, lr=3e-4),
    "fastlr AdamW, tensor lr": lambda p: fastlr.optim.AdamW(p, lr=torch.tensor(3e-4)),
    "fastlr AdamW, Schedule lr": lambda p: fastlr.optim.AdamW(p, lr=fastlr.Warmup(fastlr.Cosine(3e-4, 1000), 100)),
    "torch AdamW fused": lambda p: torch.optim.AdamW(p, lr=3e-4, fused=True),
}


def one(make, backend, steps):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = TinyGPT()
    opt = make(model.parameters())
    idx = torch.randint(0, 512, (4, 32))

    def train_step():
        logits = model(idx)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    fn = torch.compile(train_step, backend=backend)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    steady = statistics.median(times[2:])
    return {
        "compile_s": times[0] - steady,
        "steady_step_ms": steady * 1e3,
        "graph_breaks": sum(counters["graph_break"].values()),
        "unique_graphs": counters["stats"]["unique_graphs"],
        "recompiles": sum(v for k, v in counters["recompiles"].items()) if "recompiles" in counters else 0,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="eager")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json")
    ap.add_argument("--variant", type=int, help="only the N-th optimizer (0-based)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    names = list(VARIANTS) if args.variant is None else [list(VARIANTS)[args.variant]]
    runs = {name: [] for name in names}
    for _ in range(args.reps):
        for name in names:
            runs[name].append(one(VARIANTS[name], args.backend, args.steps))
    rows = {}
    print(f"backend={args.backend}, torch {torch.__version__}, threads {torch.get_num_threads()}, reps {args.reps}")
    print("| optimizer | graph breaks | graphs | recompiles | compile s (median, min-max) | steady step ms |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        c = [r["compile_s"] for r in rs]
        row = {k: rs[-1][k] for k in ("graph_breaks", "unique_graphs", "recompiles")}
        row.update(compile_s=statistics.median(c), compile_min=min(c), compile_max=max(c),
                   steady_step_ms=statistics.median(r["steady_step_ms"] for r in rs))
        rows[name] = row
        print(f"| {name} | {row['graph_breaks']} | {row['unique_graphs']} | {row['recompiles']} | "
              f"{row['compile_s']:.2f} ({row['compile_min']:.2f}-{row['compile_max']:.2f}) | "
              f"{row['steady_step_ms']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": args.backend, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
