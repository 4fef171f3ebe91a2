"""Helper for test_sparsify's DDP test: trains a sparsified model with DistributedDataParallel
on 2 gloo processes (loopback), and the same model in one process on the same data; rank 0
saves both results to argv[1]. Run as a script (the test spawns it)."""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pixelfly.convert import sparsify

STEPS, BATCH = 4, 16


def make_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32))
    return sparsify(model, 0.4, example_input=torch.randn(BATCH, 64), block_size=16, dense_first_last=False)


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, BATCH, 64, generator=g), torch.randn(STEPS, BATCH, 32, generator=g)


def train(model, xs, ys):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in zip(xs, ys):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return {n: p.detach().clone() for n, p in model.named_parameters()}, grads


def worker(rank, world, out):
    torch.set_num_threads(1)
    # rendezvous through a file (no port to race for); gloo then talks over loopback
    dist.init_process_group("gloo", init_method="file://" + out + ".rendezvous", rank=rank,
                            world_size=world)
    try:
        model = nn.parallel.DistributedDataParallel(make_model())
        xs, ys = data()
        half = BATCH // world
        shard = slice(rank * half, (rank + 1) * half)
        weights, grads = train(model, xs[:, shard], ys[:, shard])
        if rank == 0:
            strip = lambda d: {k.removeprefix("module."): v for k, v in d.items()}  # noqa: E731
            single_w, single_g = train(make_model(), xs, ys)
            torch.save({"ddp": strip(weights), "ddp_grads": strip(grads), "single": single_w,
                        "single_grads": single_g}, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(2, sys.argv[1]), nprocs=2, join=True)
