"""Table 4: the Long Range Arena at CPU scale (the seed's LRA table).

Five tasks (``lra_data``: ListOps, Text, Retrieval, Image, Pathfinder), six attentions in the
same small encoder (``lra_model``: Transformer = dense SDPA, Reformer, BigBird, Sparse
Transformer, local, Pixelfly = flat block butterfly + random features); the same width,
depth, optimizer (AdamW, warmup + cosine), learning rate, steps and data order for every
row, as in LRA, so the attention is the only difference. Accuracy on a held-out test
split; speedup = the Transformer's median training-step time over the row's, measured in
the same run on the same threads; peak memory = the resident-set growth of one training
step, each (task, method) in a fresh subprocess (``lra_memory``; ``--quick``: ListOps only).
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from .flops import forward_flops
from .lra_model import METHODS, LRAClassifier, attention_for
from .training import endless_batches as batches, fit, median_step_time, time_steps

__all__ = ["SIZES", "run", "estimate", "load_task", "build_model"]

SIZES = {
    "default": dict(
        tasks={"listops": dict(seq_len=1024), "text": dict(seq_len=2048), "retrieval": dict(seq_len=1024),
               "image": dict(), "pathfinder": dict(side=32)},
        model=dict(dim=64, depth=2, n_heads=2, mlp_dim=128), block=32, n_random_features=32,
        batch=16, steps=200, n_val=256, n_test=500, lr=1e-3, seeds=1, memory_tasks=None),
    "quick": dict(
        tasks={"listops": dict(seq_len=128), "text": dict(seq_len=256), "retrieval": dict(seq_len=128),
               "image": dict(), "pathfinder": dict(side=16)},
        model=dict(dim=32, depth=1, n_heads=2, mlp_dim=64), block=16, n_random_features=8,
        batch=4, steps=4, n_val=8, n_test=16, lr=1e-3, seeds=1, memory_tasks=("listops",)),
}
TASK_NAMES = {"listops": "ListOps", "text": "Text", "retrieval": "Retrieval", "image": "Image",
              "pathfinder": "Pathfinder"}


def load_task(name: str, cfg: dict, seed: int = 0, text: bytes | None = None, data_dir=None):
    """The task's splits at the table's size (``n_train = steps * batch``: one pass)."""
    from . import lra_data as D
    n = (cfg["steps"] * cfg["batch"], cfg["n_val"], cfg["n_test"])
    kw = cfg["tasks"][name]
    if name == "listops":
        return D.listops_task(*n, seq_len=kw["seq_len"], seed=seed)
    if name == "pathfinder":
        return D.pathfinder_task(*n, side=kw["side"], seed=seed)
    if name == "image":
        return D.image_task(*n, data_dir=data_dir, seed=seed)
    if text is None:
        from .data import load_text_corpus
        text = load_text_corpus()
    make = D.text_task if name == "text" else D.retrieval_task
    return make(text, *n, seq_len=kw["seq_len"], seed=seed)


def build_model(task, method: str, cfg: dict, seed: int) -> LRAClassifier:
    torch.manual_seed(seed)
    att = attention_for(method, cfg["block"], cfg["n_random_features"])
    return LRAClassifier(task.vocab, task.n_classes, task.seq_len, attention=att, block=cfg["block"],
                         pair=task.pair, **cfg["model"])


def loss_fn(model, xb, yb):
    return F.cross_entropy(model(xb), yb)


@torch.no_grad()
def accuracy(model, x, y, batch=64) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    model.train()
    return correct / len(x)


def run(size="default", seeds=None, out_dir="results", data_dir=None, tasks=None, memory=True):
    """Run the table; returns ``(rows, extra)`` and writes ``results/lra.*``."""
    from tqdm import tqdm

    from . import results
    from .lra_memory import step_peak_mib
    cfg = SIZES[size]
    n_seeds = seeds or cfg["seeds"]
    names = list(tasks or cfg["tasks"])
    text = None
    if {"text", "retrieval"} & set(names):
        from .data import load_text_corpus
        text = load_text_corpus()
    runs, curves, mem = [], {}, {}
    with tqdm(total=len(names) * len(METHODS) * n_seeds * cfg["steps"], desc="lra", disable=None) as bar:
        for name in names:
            task = load_task(name, cfg, 0, text, data_dir)
            example = task.x_test[:1]
            for seed in range(n_seeds):
                times = {}
                for method in METHODS:
                    m = build_model(task, method, cfg, seed)
                    log = fit(m, batches(task.x_train, task.y_train, cfg["batch"], seed), loss_fn, cfg["lr"],
                              cfg["steps"], bar=bar, label=f"{name} {method}")
                    times[method] = median_step_time(log["step_times"])
                    if seed == 0:
                        curves[f"{TASK_NAMES[name]} {method}"] = log["losses"]
                    runs.append(dict(task=TASK_NAMES[name], model=f"{TASK_NAMES[name]} (L={m.padded_len})",
                                     method=method, metric="test accuracy",
                                     value=accuracy(m, task.x_test, task.y_test), speedup=0.0,
                                     params=sum(p.numel() for p in m.parameters()),
                                     flops=forward_flops(m, example), step_time=times[method],
                                     seq_len=m.padded_len))
                for r in runs[-len(METHODS):]:
                    r["speedup"] = times["transformer"] / r["step_time"]
            if memory and (cfg["memory_tasks"] is None or name in cfg["memory_tasks"]):
                for method in METHODS:
                    mem[f"{TASK_NAMES[name]}/{method}"] = step_peak_mib(size, name, method, task)
    for r in runs:
        r["peak_mib"] = mem.get(f"{r['task']}/{r['method']}")
    summary = average_rows(results.aggregate(runs))
    rows, extra = results.finish(
        "lra", runs, out_dir, curves, ("LRA: accuracy vs speedup (per task)", "LRA training loss (seed 0)"),
        size=size, steps=cfg["steps"], batch=cfg["batch"], lr=cfg["lr"], block_size=cfg["block"],
        n_random_features=cfg["n_random_features"], model=cfg["model"], tasks=cfg["tasks"], peak_mib=mem,
        average=summary,
        notes="one learning rate for every row (LRA's protocol: only the attention differs); speedup: "
              "median training-step time of the Transformer / the row's, same process and threads; "
              "peak_mib: resident-set growth of one training step, fresh subprocess per row")
    from .lra_report import write_report
    write_report(rows, summary, mem, out_dir)
    return rows, extra


def average_rows(rows) -> dict:
    """Per method: mean accuracy over the tasks, and speedup at the longest task."""
    out = {}
    longest = max(r["seq_len"] for r in rows)
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        at_longest = [r["speedup"] for r in rs if r["seq_len"] == longest]
        out[method] = {"average_accuracy": statistics.fmean(r["value"] for r in rs),
                       "speedup_longest": statistics.fmean(at_longest) if at_longest else None,
                       "longest_len": longest, "tasks": len(rs)}
    return out


def estimate(size="default", seeds=None, data_dir=None) -> float:
    """Projected seconds of ``run(size)``: a few timed steps of every (task, method) times
    the step count, plus the evaluation."""
    cfg = dict(SIZES[size])
    n_seeds = seeds or cfg["seeds"]
    total = 0.0
    small = dict(cfg, steps=8, n_val=8, n_test=8)
    for name in cfg["tasks"]:
        task = load_task(name, small, 0, None, data_dir)
        for method in METHODS:
            m = build_model(task, method, cfg, 0)
            step = time_steps(m, batches(task.x_train, task.y_train, cfg["batch"], 0), loss_fn)
            total += n_seeds * step * (cfg["steps"] + cfg["n_test"] / cfg["batch"] / 3)
    return total
