"""Table 2: language modelling on the King James Bible (the seed's NLP table at CPU scale).

A GPT-2-style decoder (``pixelfly.models.GPT2``), **byte-level** (vocabulary 256: no
tokenizer to train or ship), at a "small" and a "medium"-like size, each as dense, BigBird
attention (``attention="bigbird"``, dense linears) and Pixelfly (``attention="pixelfly"``
plus every linear layer through the planner at budget 0.25). The text is split
contiguously: the last 5% is the held-out split (validation perplexity), the 5% before it
the tuning split of the learning-rate sweep. Perplexity is per byte: ``exp(mean loss)``.
"""
from __future__ import annotations

import copy
import math
import statistics

import torch
import torch.nn.functional as F

from . import baselines, tune
from .flops import forward_flops
from .training import fit, median_step_time, time_steps

__all__ = ["SIZES", "run"]

SIZES = {
    "default": dict(
        models={"GPT2-small": dict(dim=128, n_layer=2, n_heads=4, mlp_dim=512, seq_len=256),
                "GPT2-medium": dict(dim=256, n_layer=2, n_heads=8, mlp_dim=1024, seq_len=256)},
        batch=16, steps=160, tune_steps=40, eval_batches=32, seeds=2, block=32, text_bytes=None),
    "quick": dict(
        models={"GPT2-small": dict(dim=64, n_layer=1, n_heads=2, mlp_dim=128, seq_len=64)},
        batch=4, steps=6, tune_steps=3, eval_batches=2, seeds=2, block=16, text_bytes=200_000),
}
METHODS = ("dense", "bigbird", "pixelfly")


def load_splits(cfg):
    """``(train, tune, heldout)`` byte tensors of the KJV text (FileNotFoundError if absent)."""
    from .data import bytes_to_tensor, load_text_corpus
    text = load_text_corpus()
    if cfg["text_bytes"]:
        text = text[:cfg["text_bytes"]]
    t = bytes_to_tensor(text)
    n = len(t)
    return t[:int(0.90 * n)], t[int(0.90 * n):int(0.95 * n)], t[int(0.95 * n):]


def loss_fn(model, xb, yb):
    out = model(xb)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1))


@torch.no_grad()
def mean_loss(model, data, seq_len, batch, n_batches):
    from .data import get_batches
    model.eval()
    losses = [loss_fn(model, x, y).item() for x, y in get_batches(data, seq_len, batch, n_batches, seed=4321)]
    model.train()
    return statistics.fmean(losses)


def build_variants(overrides, seed, example, block):
    from ..models import build_model
    out = {}
    for method, attention in (("dense", "dense"), ("bigbird", "bigbird"), ("pixelfly", "pixelfly")):
        torch.manual_seed(seed)
        out[method] = build_model("gpt2", attention=attention, **overrides)
    out["pixelfly"], _ = baselines.pixelfly_variant(out["pixelfly"], example, budget=0.25, block_size=block)
    return out


def run(size="default", seeds=None, out_dir="results", data_dir=None):
    from tqdm import tqdm

    from .data import get_batches
    from . import results
    cfg = SIZES[size]
    n_seeds = seeds or cfg["seeds"]
    train, tune_split, heldout = load_splits(cfg)
    total = len(cfg["models"]) * len(METHODS) * (len(tune.LEARNING_RATES) * cfg["tune_steps"] + n_seeds * cfg["steps"])
    runs, curves, lrs, sweeps = [], {}, {}, {}
    with tqdm(total=total, desc="lm", disable=None) as bar:
        for label, overrides in cfg["models"].items():
            L, B = overrides["seq_len"], cfg["batch"]
            example = next(get_batches(train, L, B, 1, seed=0))[0]
            base = build_variants(overrides, 0, example, cfg["block"])
            for method in METHODS:
                def score(lr, method=method):
                    m = copy.deepcopy(base[method])
                    fit(m, get_batches(train, L, B, seed=0), loss_fn, lr, cfg["tune_steps"], bar=bar,
                        label=f"{label} {method} lr={lr:g}")
                    return mean_loss(m, tune_split, L, B, cfg["eval_batches"])
                lrs[(label, method)], sweeps[f"{label}/{method}"] = tune.choose_lr(score)
            for seed in range(n_seeds):
                models = build_variants(overrides, seed, example, cfg["block"])
                times = {}
                for method in METHODS:
                    m = models[method]
                    log = fit(m, get_batches(train, L, B, seed=seed), loss_fn, lrs[(label, method)],
                              cfg["steps"], bar=bar, label=f"{label} {method}")
                    times[method] = median_step_time(log["step_times"])
                    ppl = math.exp(mean_loss(m, heldout, L, B, cfg["eval_batches"]))
                    if seed == 0:
                        curves[f"{label} {method}"] = log["losses"]
                    runs.append(dict(task="KJV Bible (bytes)", model=label, method=method,
                                     metric="val perplexity (per byte)", value=ppl, speedup=0.0,
                                     params=baselines.n_params(m), flops=forward_flops(m, example[:1]),
                                     lr=lrs[(label, method)], step_time=times[method]))
                for r in runs[-len(METHODS):]:
                    r["speedup"] = times["dense"] / r["step_time"]
    return results.finish("lm", runs, out_dir, curves,
                          ("KJV Bible: perplexity vs speedup", "KJV Bible training loss (seed 0)"),
                          size=size, steps=cfg["steps"], batch=cfg["batch"], budget=0.25, block_size=cfg["block"],
                          tokenizer="bytes (vocabulary 256)", lr_sweep=sweeps,
                          notes="FLOPs: forward pass of one sequence in the linear/attention layers; speedup: "
                                "median training-step time of dense / method, same process and threads")


def estimate(size="default", seeds=None, data_dir=None) -> float:
    """Projected seconds of ``run(size)`` on this machine now (training steps only)."""
    from .data import get_batches
    cfg = SIZES[size]
    n_seeds = seeds or cfg["seeds"]
    train, _, _ = load_splits(cfg)
    steps = len(tune.LEARNING_RATES) * cfg["tune_steps"] + n_seeds * cfg["steps"]
    total = 0.0
    for overrides in cfg["models"].values():
        L, B = overrides["seq_len"], cfg["batch"]
        example = next(get_batches(train, L, B, 1, seed=0))[0]
        for m in build_variants(overrides, 0, example, cfg["block"]).values():
            total += steps * time_steps(m, get_batches(train, L, B, seed=0), loss_fn)
    return total
