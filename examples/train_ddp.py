"""Data-parallel training with a fastlr optimizer.

    torchrun --nproc_per_node=2 examples/train_ddp.py [--steps 200]

fastlr.optim.AdamW is a drop-in torch.optim.AdamW: DDP averages the gradients across the
ranks during backward, then every rank's optimizer makes the same update (one fastlr
kernel call per step), its lr taken from a OneCycle schedule evaluated in C++. Runs on
CPU with the gloo backend in a few seconds.
"""
import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import fastlr
import fastlr.optim


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    args = parser.parse_args()

    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)  # the same task on every rank (DDP also broadcasts rank 0's model)
    teacher = torch.randn(16, 1)
    model = DDP(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1)))
    opt = fastlr.optim.AdamW(
        model.parameters(), lr=fastlr.OneCycle(3e-2, total_steps=args.steps), weight_decay=1e-2
    )

    data = torch.Generator().manual_seed(1)
    for step in range(1, args.steps + 1):
        # one global batch per step; each rank trains on its own slice of it
        x = torch.randn(args.batch_size * world, 16, generator=data)
        y = x @ teacher + 0.01 * torch.randn(len(x), 1, generator=data)
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]

        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()  # DDP all-reduces the gradients here
        opt.step()

        if step == 1 or step % 10 == 0 or step == args.steps:
            mean = loss.detach().clone()
            dist.all_reduce(mean)  # the loss over the global batch
            if rank == 0:
                print(f"step {step} loss {mean.item() / world:.5f} lr {opt.param_groups[0]['lr']:.2e}")

    # every rank ends with the same parameters
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    everyone = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(everyone, flat)
    if not all(torch.equal(flat, other) for other in everyone):
        raise RuntimeError("the ranks' parameters differ")
    if rank == 0:
        print(f"params in sync across {world} ranks")
    # every rank arrives before any tears its gloo pairs down: without it a rank that
    # destroys the group while a peer is still in all_gather aborted ("terminate called
    # without an active exception") about one run in three on a loaded host
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
