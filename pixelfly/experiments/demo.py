"""The main job: train a dense model and its Pixelfly version side by side.

Both models start from the same seed, see the same batches for the same number of steps,
and are timed in the same run; the table reports parameters, linear-layer FLOPs per step,
the median training step time, the speedup (dense time / Pixelfly time) and the final
loss / accuracy. A loss-vs-wall-clock plot is saved.

Data needs no download: scikit-learn's digits for the image models (``mixer``, ``vit``),
Debian's King James Bible text (``bible-kjv-text``) for the byte-level ``gpt2`` (with a
synthetic corpus as stand-in when the package is absent, said so on screen).
"""
from __future__ import annotations

import copy
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import data as pf_data
from .models import build_model
from .convert import plan as make_plan
from .convert import sparsify

# Default demo sizes: wide enough that the linear layers dominate a step (as in the paper's
# models), small enough to train in a few minutes on 2 CPU cores.
DEMO_OVERRIDES = {
    "mixer": dict(image_size=8, patch_size=1, dim=512, depth=2, token_mlp_dim=64, channel_mlp_dim=2048),
    "vit": dict(dim=256, depth=4, n_heads=8, mlp_dim=1024),
    "gpt2": dict(dim=256, n_layer=4, n_heads=8, mlp_dim=1024, seq_len=128),
}


@dataclasses.dataclass
class RunResult:
    name: str
    params: int
    flops_per_step: float
    step_time: float
    final_loss: float
    metric_name: str
    metric: float
    curve: list  # (seconds, loss)


def linear_flops(plan, sparse: bool) -> float:
    """FLOPs of the traced linear layers in one forward pass (x3 for forward + backward)."""
    total = 0.0
    for lay in plan.layers:
        dense = 2.0 * lay.tokens * lay.out_features * lay.in_features
        if sparse and lay.sparse:
            b1, b2 = plan.block_size
            total += 2.0 * lay.tokens * (lay.nnz * b1 * b2 + lay.rank * (lay.in_features + lay.out_features))
        else:
            total += dense
    return 3.0 * total


class Task:
    """Data, loss and evaluation for one model family."""

    def __init__(self, model_name: str, batch: int, seed: int, corpus=None):
        self.model_name, self.batch, self.seed = model_name, batch, seed
        if model_name == "gpt2":
            try:
                text = pf_data.load_text_corpus(corpus)
                self.source = "King James Bible (bible-kjv-text)" if corpus is None else str(corpus)
            except FileNotFoundError as e:
                print(f"note: {e}\n      training on a synthetic corpus instead")
                text = pf_data.synthetic_text(400_000, seed=seed)
                self.source = "synthetic text"
            self.train_text, self.val_text = pf_data.split_text(text, 0.05)
        else:
            self.digits = pf_data.load_digits_dataset(seed=seed)
            self.source = "scikit-learn digits"

    def batches(self, steps: int, seq_len: int | None = None):
        if self.model_name == "gpt2":
            yield from pf_data.get_batches(self.train_text, seq_len, self.batch, n_batches=steps, seed=self.seed)
            return
        d, k, epoch = self.digits, 0, 0
        while k < steps:
            for xb, yb in pf_data.iterate_batches(d.x_train, d.y_train, batch_size=self.batch,
                                                  seed=self.seed + epoch, drop_last=True):
                if k == steps:
                    return
                yield xb, yb
                k += 1
            epoch += 1

    def loss(self, model, xb, yb):
        out = model(xb)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model, seq_len=None):
        model.eval()
        try:
            if self.model_name == "gpt2":
                losses = [self.loss(model, x, y).item() for x, y in
                          pf_data.get_batches(self.val_text, seq_len, self.batch, n_batches=8, seed=1234)]
                return "val loss", sum(losses) / len(losses)
            d = self.digits
            pred = model(d.x_test).argmax(-1)
            return "test acc", (pred == d.y_test).float().mean().item()
        finally:
            model.train()


def train(name, model, task, steps, lr, seq_len, flops, bar):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    times, curve, elapsed, losses = [], [], 0.0, []
    model.train()
    for xb, yb in task.batches(steps, seq_len):
        t0 = time.perf_counter()
        loss = task.loss(model, xb, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        times.append(dt)
        elapsed += dt
        losses.append(loss.item())
        curve.append((elapsed, losses[-1]))
        bar.set_postfix_str(f"{name} loss {losses[-1]:.3f}")
        bar.update()
    metric_name, metric = task.evaluate(model, seq_len)
    tail = losses[-10:]
    return RunResult(name=name, params=sum(p.numel() for p in model.parameters()), flops_per_step=flops,
                     step_time=statistics.median(times[1:] or times), final_loss=sum(tail) / len(tail),
                     metric_name=metric_name, metric=metric, curve=curve)


def format_table(results) -> str:
    dense = results[0]
    head = f"{'model':<10} {'params':>10} {'GFLOP/step':>11} {'step (ms)':>10} {'speedup':>8} {'final loss':>11} {results[0].metric_name:>9}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.name:<10} {r.params:>10,} {r.flops_per_step / 1e9:>11.2f} {r.step_time * 1e3:>10.1f} "
                     f"{dense.step_time / r.step_time:>7.2f}x {r.final_loss:>11.4f} {r.metric:>9.4f}")
    return "\n".join(lines)


def plot_curves(results, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        t, loss = zip(*r.curve)
        ax.plot(t, loss, label=f"{r.name} ({r.step_time * 1e3:.0f} ms/step)")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(model_name: str = "mixer", budget: float = 0.25, steps: int = 120, batch: int = 64,
             lr: float = 2e-3, seed: int = 0, block_size: int = 32, plot: str | None = "pixelfly-demo.png",
             corpus=None, threads: int | None = None, **overrides):
    """Train dense and Pixelfly versions of ``model_name``; returns ``(results, plan)``."""
    if threads:
        torch.set_num_threads(threads)
    cfg = {**DEMO_OVERRIDES[model_name], **overrides}
    task = Task(model_name, batch, seed, corpus)
    torch.manual_seed(seed)
    dense = build_model(model_name, **cfg)
    seq_len = dense.config.seq_len if model_name == "gpt2" else None
    example = next(iter(task.batches(1, seq_len)))[0]
    plan = make_plan(dense, example, budget=budget, block_size=block_size)
    sparse = sparsify(copy.deepcopy(dense), plan, init="random")
    flops = {"dense": linear_flops(plan, False), "pixelfly": linear_flops(plan, True)}
    print(f"pixelfly demo: {model_name} on {task.source}, budget {budget}, {steps} steps of batch {batch}, "
          f"{torch.get_num_threads()} threads")
    results = []
    with tqdm(total=2 * steps, desc="training") as bar:
        for name, model in (("dense", dense), ("pixelfly", sparse)):
            torch.manual_seed(seed + 1)
            results.append(train(name, model, task, steps, lr, seq_len, flops[name], bar))
    if plot:
        plot_curves(results, plot, f"{model_name}: dense vs Pixelfly (budget {budget})")
    return results, plan


def add_arguments(ap):
    ap.add_argument("--model", choices=sorted(DEMO_OVERRIDES), default="mixer")
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--plot", default="pixelfly-demo.png", help="loss-vs-time plot ('' to skip)")
    ap.add_argument("--corpus", default=None, help="text file for gpt2 (default: KJV Bible)")
    ap.add_argument("--tiny", action="store_true", help="tiny model sizes (smoke test)")
    ap.add_argument("--show-plan", action="store_true", help="print the budget plan first")


def main_demo(args) -> None:
    overrides = {}
    if args.tiny:
        overrides = {"mixer": dict(dim=64, channel_mlp_dim=128, token_mlp_dim=64, depth=1),
                     "vit": dict(dim=64, depth=1, n_heads=2, mlp_dim=128),
                     "gpt2": dict(dim=64, n_layer=1, n_heads=2, mlp_dim=128, seq_len=32)}[args.model]
    results, plan = run_demo(args.model, args.budget, args.steps, args.batch, args.lr, args.seed,
                             args.block, args.plot or None, args.corpus, **overrides)
    if args.show_plan:
        print(plan)
    print(format_table(results))
    if args.plot:
        print(f"loss-vs-time plot written to {args.plot}")
