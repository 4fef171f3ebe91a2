"""Helper for test_fsdp: trains a model of PixelflyLinear layers with FSDP2 (fully_shard) on
2 gloo processes (CPU, loopback), the same model in one process on the same data, then saves
and reloads the sharded training state with torch.distributed.checkpoint. Rank 0 writes the
results to argv[1]. Run as a script (the test spawns it)."""
import copy
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from pixelfly import PixelflyLinear

STEPS, BATCH = 4, 16
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(PixelflyLinear(64, 128, block_size=16, n_factors=1, rank=4), nn.GELU(),
                         PixelflyLinear(128, 64, block_size=16, n_factors=1, rank=2))


def shard(model, mesh):
    for layer in model:
        if isinstance(layer, PixelflyLinear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS + 1, BATCH, 64, generator=g), torch.randn(STEPS + 1, BATCH, 64, generator=g)


def train(model, opt, xs, ys):
    for x, y in zip(xs, ys):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def worker(rank, world, out):
    torch.set_num_threads(1)
    # rendezvous through a file (no port to race for); gloo then talks over loopback
    dist.init_process_group("gloo", init_method="file://" + out + ".rendezvous", rank=rank,
                            world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        xs, ys = data()
        half = BATCH // world
        mine = slice(rank * half, (rank + 1) * half)
        model = shard(make_model(), mesh)
        opt = optimizer(model)
        train(model, opt, xs[:STEPS, mine], ys[:STEPS, mine])
        trained = get_model_state_dict(model, options=FULL)  # full tensors on rank 0
        sharded = {n: type(p).__name__ for n, p in model.named_parameters()}

        # distributed checkpoint: save the sharded model and optimizer, load them into a
        # freshly built (differently initialised) sharded model, take one more step on both
        ckpt = out + ".dcp"
        dcp.save({"model": get_model_state_dict(model),
                  "optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=ckpt)
        fresh = shard(make_model(seed=7), mesh)
        fresh_opt = optimizer(fresh)
        state = {"model": get_model_state_dict(fresh),
                 "optim": get_optimizer_state_dict(fresh, fresh_opt)}
        dcp.load(state, checkpoint_id=ckpt)
        set_model_state_dict(fresh, state["model"])
        set_optimizer_state_dict(fresh, fresh_opt, state["optim"])
        loaded = get_model_state_dict(fresh, options=FULL)
        train(model, opt, xs[STEPS:, mine], ys[STEPS:, mine])
        train(fresh, fresh_opt, xs[STEPS:, mine], ys[STEPS:, mine])
        resumed = get_model_state_dict(model, options=FULL)
        resumed_from_ckpt = get_model_state_dict(fresh, options=FULL)
        if rank == 0:
            single = make_model()
            single_opt = optimizer(single)
            train(single, single_opt, xs[:STEPS], ys[:STEPS])
            single_trained = copy.deepcopy(single.state_dict())
            # the sharded checkpoint read back without FSDP, into one plain model
            plain = make_model(seed=9)
            plain_state = {"model": plain.state_dict()}
            dcp.load(plain_state, checkpoint_id=ckpt, no_dist=True)
            plain.load_state_dict(plain_state["model"])
            torch.save({"fsdp": trained, "single": single_trained, "sharded": sharded,
                        "loaded": loaded, "resumed": resumed,
                        "resumed_from_ckpt": resumed_from_ckpt,
                        "plain": plain.state_dict()}, out)
        # rank 1 would otherwise tear its process group down while rank 0 still works on
        # the single-process runs: gloo then aborted it now and then ("terminate called
        # without an active exception", about 1 run in 6 on the 2-core VM)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(2, sys.argv[1]), nprocs=2, join=True)
