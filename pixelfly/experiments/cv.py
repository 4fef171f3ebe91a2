"""Table 1: image classification on Fashion-MNIST (the seed's CV tables at CPU scale).

MLP-Mixer and ViT at "S"- and "B"-like widths, each as dense, Butterfly (product of block
butterfly factors on the layers the planner sparsifies) and Pixelfly (planner, budget 0.25,
first/last layers dense). Images are zero-padded from 28x28 to 32x32 so that patches of 4
give 64 tokens (a multiple of the block size); training uses random crops (4-pixel
translation) and horizontal flips, AdamW with linear warmup + cosine decay, and the same
data order for every method. The learning rate of each (model, method) is chosen by the
same sweep (``tune.LEARNING_RATES``) on a validation split of the training set.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from . import baselines, tune
from .fashion_mnist import load_fashion_mnist
from .flops import forward_flops
from .training import endless_batches, fit, median_step_time, time_steps

__all__ = ["SIZES", "run"]

BUTTERFLY_BLOCK = 8   # a butterfly product over n blocks has 2 log2(n) / n of the dense
                      # weights: 1.0 at n = 4, so blocks of 8 (n = 16..128 here: 0.5 .. 0.11)
# "S"/"B"-like widths scaled to 2 CPU cores (the paper's S/B: 512/768 wide, 8/12 deep).
SIZES = {
    "default": dict(
        models={"Mixer-S": ("mixer", dict(dim=128, depth=2, token_mlp_dim=128, channel_mlp_dim=512)),
                "Mixer-B": ("mixer", dict(dim=256, depth=2, token_mlp_dim=256, channel_mlp_dim=1024)),
                "ViT-S": ("vit", dict(dim=128, depth=2, n_heads=4, mlp_dim=512)),
                "ViT-B": ("vit", dict(dim=256, depth=2, n_heads=8, mlp_dim=1024))},
        n_train=None, n_test=2000, n_val=1000, batch=32, steps=100, tune_steps=20, seeds=2, block=32),
    "quick": dict(
        models={"Mixer-S": ("mixer", dict(dim=64, depth=1, token_mlp_dim=64, channel_mlp_dim=128)),
                "ViT-S": ("vit", dict(dim=64, depth=1, n_heads=2, mlp_dim=128))},
        n_train=512, n_test=256, n_val=128, batch=32, steps=6, tune_steps=3, seeds=2, block=16),
}
METHODS = ("dense", "butterfly", "pixelfly")


def pad32(x):
    return F.pad(x, (2, 2, 2, 2))


def augment(x, g):
    """Random 4-pixel translation (pad 2, crop) and horizontal flip, per image."""
    B = x.shape[0]
    xp = F.pad(x, (2, 2, 2, 2))
    dx = torch.randint(0, 5, (B,), generator=g)
    dy = torch.randint(0, 5, (B,), generator=g)
    out = torch.stack([xp[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32] for i in range(B)])
    flip = torch.rand(B, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def batches(x, y, batch, seed):
    """Endless augmented minibatches; the same order for every method with the same seed."""
    return endless_batches(x, y, batch, seed, augment)


def loss_fn(model, xb, yb):
    return F.cross_entropy(model(xb), yb)


@torch.no_grad()
def evaluate(model, x, y, batch=500):
    model.eval()
    loss = correct = 0.0
    for i in range(0, len(x), batch):
        out = model(x[i:i + batch])
        loss += F.cross_entropy(out, y[i:i + batch], reduction="sum").item()
        correct += (out.argmax(-1) == y[i:i + batch]).sum().item()
    model.train()
    return loss / len(x), correct / len(x)


def load_data(cfg, data_dir=None):
    d = load_fashion_mnist(data_dir)
    mean, std = d.x_train.mean(), d.x_train.std()
    xtr, xte = pad32((d.x_train - mean) / std), pad32((d.x_test - mean) / std)
    ytr, yte = d.y_train, d.y_test
    perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(1234))
    val, train = perm[:cfg["n_val"]], perm[cfg["n_val"]:]
    if cfg["n_train"]:
        train = train[:cfg["n_train"]]
    n_test = cfg["n_test"] or len(xte)
    return dict(x_train=xtr[train], y_train=ytr[train], x_val=xtr[val], y_val=ytr[val],
                x_test=xte[:n_test], y_test=yte[:n_test])


def build_variants(kind, overrides, seed, example, block):
    """dense, butterfly, pixelfly models of one architecture from one seed."""
    from ..models import build_model
    torch.manual_seed(seed)
    dense = build_model(kind, image_size=32, patch_size=4, **overrides)
    pix, plan = baselines.pixelfly_variant(dense, example, budget=0.25, block_size=block)
    torch.manual_seed(seed)
    bfly = baselines.butterfly_variant(dense, plan, block_size=BUTTERFLY_BLOCK)
    return {"dense": dense, "butterfly": bfly, "pixelfly": pix}


def run(size="default", seeds=None, out_dir="results", data_dir=None, bar_cls=None):
    """Run the table; returns ``(rows, extra)`` and writes the files of ``results``."""
    from tqdm import tqdm

    from . import results
    cfg = SIZES[size]
    n_seeds = seeds or cfg["seeds"]
    data = load_data(cfg, data_dir)
    example = data["x_train"][:cfg["batch"]]
    n_models = len(cfg["models"])
    total = n_models * len(METHODS) * (len(tune.LEARNING_RATES) * cfg["tune_steps"] + n_seeds * cfg["steps"])
    runs, curves, lrs, sweeps = [], {}, {}, {}
    with tqdm(total=total, desc="cv", disable=None) as bar:
        for label, (kind, overrides) in cfg["models"].items():
            base = build_variants(kind, overrides, 0, example, cfg["block"])
            for method in METHODS:       # the same sweep for every method
                def score(lr, method=method):
                    m = copy.deepcopy(base[method])
                    fit(m, batches(data["x_train"], data["y_train"], cfg["batch"], 0), loss_fn, lr,
                        cfg["tune_steps"], bar=bar, label=f"{label} {method} lr={lr:g}")
                    return evaluate(m, data["x_val"], data["y_val"])[0]
                lrs[(label, method)], sweeps[f"{label}/{method}"] = tune.choose_lr(score)
            for seed in range(n_seeds):
                models = build_variants(kind, overrides, seed, example, cfg["block"])
                times = {}
                for method in METHODS:
                    m = models[method]
                    log = fit(m, batches(data["x_train"], data["y_train"], cfg["batch"], seed), loss_fn,
                              lrs[(label, method)], cfg["steps"], bar=bar, label=f"{label} {method}")
                    times[method] = median_step_time(log["step_times"])
                    _, acc = evaluate(m, data["x_test"], data["y_test"])
                    if seed == 0:
                        curves[f"{label} {method}"] = log["losses"]
                    runs.append(dict(task="Fashion-MNIST", model=label, method=method, metric="test accuracy",
                                     value=acc, speedup=0.0, params=baselines.n_params(m),
                                     flops=forward_flops(m, example[:1]), lr=lrs[(label, method)],
                                     step_time=times[method]))
                for r in runs[-len(METHODS):]:
                    r["speedup"] = times["dense"] / r["step_time"]
    return results.finish("cv", runs, out_dir, curves,
                          ("Fashion-MNIST: accuracy vs speedup", "Fashion-MNIST training loss (seed 0)"),
                          size=size, steps=cfg["steps"], batch=cfg["batch"], budget=0.25, block_size=cfg["block"],
                          butterfly_block_size=BUTTERFLY_BLOCK, lr_sweep=sweeps,
                          notes="FLOPs: forward pass of one image in the linear/attention layers; speedup: "
                                "median training-step time of dense / method, same process and threads")


def estimate(size="default", seeds=None, data_dir=None) -> float:
    """Projected seconds of ``run(size)`` on this machine now: a few timed steps and one
    timed evaluation batch of every (model, method), times the table's counts."""
    cfg = SIZES[size]
    n_seeds = seeds or cfg["seeds"]
    data = load_data(cfg, data_dir)
    example = data["x_train"][:cfg["batch"]]
    steps = len(tune.LEARNING_RATES) * cfg["tune_steps"] + n_seeds * cfg["steps"]
    total = 0.0
    for kind, overrides in cfg["models"].values():
        for m in build_variants(kind, overrides, 0, example, cfg["block"]).values():
            total += steps * time_steps(m, batches(data["x_train"], data["y_train"], cfg["batch"], 0), loss_fn)
            n_eval = min(500, len(data["x_test"]))
            t0 = time.perf_counter()
            evaluate(m, data["x_test"][:n_eval], data["y_test"][:n_eval])
            evals = n_seeds * len(data["x_test"]) + len(tune.LEARNING_RATES) * len(data["x_val"])
            total += (time.perf_counter() - t0) * evals / n_eval
    return total
