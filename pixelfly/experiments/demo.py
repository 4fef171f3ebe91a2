"""The main job (``python -m pixelfly``): train a dense model and its Pixelfly version side by side.

Both models start from the same seed, see the same batches for the same number of steps,
and are timed in the same run; the table reports parameters, linear-layer FLOPs per step,
the median training step time, the speedup (dense time / Pixelfly time) and the final
loss / accuracy. A loss-vs-wall-clock plot is saved.

Learning rates follow the tables' rule (:mod:`pixelfly.experiments.tune`): each method gets
the same sweep (``tune.LEARNING_RATES``, a short run of ``tune_steps`` steps from the same
initial weights per rate), scored by the loss on a validation split carved out of the
training data (digits: 20% of the training images; ``gpt2``: the 5% of the text before the
held-out 5%), and then trains at its best rate. ``lr=`` skips the sweep.

Data needs no download: scikit-learn's digits for the image models (``mixer``, ``vit``),
Debian's King James Bible text (``bible-kjv-text``) for the byte-level ``gpt2`` (with a
synthetic corpus as stand-in when the package is absent, said so on screen).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools

import torch
import torch.nn.functional as F

from . import data as pf_data
from . import tune
from .training import fit, median_step_time

# Default demo sizes: wide enough that the linear layers dominate a step (as in the paper's
# models), small enough to train in a few minutes on 2 CPU cores.
DEMO_OVERRIDES = {
    "mixer": dict(image_size=8, patch_size=1, dim=512, depth=2, token_mlp_dim=64, channel_mlp_dim=2048),
    "vit": dict(dim=256, depth=4, n_heads=8, mlp_dim=1024),
    "gpt2": dict(dim=256, n_layer=4, n_heads=8, mlp_dim=1024, seq_len=128),
}
#: ``--tiny`` sizes (smoke tests)
TINY_OVERRIDES = {"mixer": dict(dim=64, channel_mlp_dim=128, token_mlp_dim=64, depth=1),
                  "vit": dict(dim=64, depth=1, n_heads=2, mlp_dim=128),
                  "gpt2": dict(dim=64, n_layer=1, n_heads=2, mlp_dim=128, seq_len=32)}


@dataclasses.dataclass
class RunResult:
    name: str
    params: int
    flops_per_step: float
    step_time: float
    final_loss: float
    metric_name: str
    metric: float
    lr: float
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


def loss_fn(model, xb, yb):
    out = model(xb)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1))


class Task:
    """Data (train / validation / test splits), batches and evaluation for one model family."""

    def __init__(self, model_name: str, batch: int, seed: int, seq_len: int | None, corpus=None):
        self.model_name, self.batch, self.seed, self.seq_len = model_name, batch, seed, seq_len
        if model_name == "gpt2":
            try:
                text = pf_data.load_text_corpus(corpus)
                self.source = "King James Bible (bible-kjv-text)" if corpus is None else str(corpus)
            except FileNotFoundError as e:
                print(f"note: {e}\n      training on a synthetic corpus instead")
                text = pf_data.synthetic_text(400_000, seed=seed)
                self.source = "synthetic text"
            t = pf_data.bytes_to_tensor(text)
            n = len(t)
            self.train, self.val, self.test = t[:int(0.90 * n)], t[int(0.90 * n):int(0.95 * n)], t[int(0.95 * n):]
        else:
            d = pf_data.load_digits_dataset(seed=seed)
            order = torch.randperm(len(d.x_train), generator=torch.Generator().manual_seed(seed))
            n_val = len(order) // 5
            val, train = order[:n_val], order[n_val:]
            self.train = (d.x_train[train], d.y_train[train])
            self.val = (d.x_train[val], d.y_train[val])
            self.test = (d.x_test, d.y_test)
            self.source = "scikit-learn digits"

    def batches(self):
        """Endless training batches, the same order for every model."""
        if self.model_name == "gpt2":
            yield from pf_data.get_batches(self.train, self.seq_len, self.batch, seed=self.seed)
            return
        for epoch in itertools.count():
            yield from pf_data.iterate_batches(*self.train, batch_size=self.batch,
                                               seed=self.seed + epoch, drop_last=True)

    @torch.no_grad()
    def mean_loss(self, model, split) -> float:
        """Mean loss on the validation (``"val"``) or test split."""
        model.eval()
        try:
            if self.model_name == "gpt2":
                losses = [loss_fn(model, x, y).item() for x, y in
                          pf_data.get_batches(getattr(self, split), self.seq_len, self.batch, n_batches=8,
                                              seed=1234)]
                return sum(losses) / len(losses)
            return loss_fn(model, *getattr(self, split)).item()
        finally:
            model.train()

    @torch.no_grad()
    def evaluate(self, model):
        """``(name, value)`` of the final metric on the test split."""
        if self.model_name == "gpt2":
            return "test loss", self.mean_loss(model, "test")
        model.eval()
        try:
            x, y = self.test
            return "test acc", (model(x).argmax(-1) == y).float().mean().item()
        finally:
            model.train()


def choose_lr(name, model, task, tune_steps, bar):
    """The tables' sweep for one method: ``(best lr, {lr: validation loss})``."""
    def score(lr):
        m = copy.deepcopy(model)
        torch.manual_seed(task.seed + 1)
        fit(m, task.batches(), loss_fn, lr, tune_steps, bar=bar, label=f"{name} lr={lr:g}")
        return task.mean_loss(m, "val")
    return tune.choose_lr(score)


def train(name, model, task, steps, lr, flops, bar) -> RunResult:
    torch.manual_seed(task.seed + 1)
    log = fit(model, task.batches(), loss_fn, lr, steps, bar=bar, label=name)
    losses, curve, elapsed = log["losses"], [], 0.0
    for dt, loss in zip(log["step_times"], losses):
        elapsed += dt
        curve.append((elapsed, loss))
    metric_name, metric = task.evaluate(model)
    tail = losses[-10:]
    return RunResult(name=name, params=sum(p.numel() for p in model.parameters()), flops_per_step=flops,
                     step_time=median_step_time(log["step_times"]), final_loss=sum(tail) / len(tail),
                     metric_name=metric_name, metric=metric, lr=lr, curve=curve)


def format_table(results) -> str:
    dense = results[0]
    head = (f"{'model':<10} {'params':>10} {'GFLOP/step':>11} {'step (ms)':>10} {'speedup':>8} "
            f"{'lr':>7} {'final loss':>11} {results[0].metric_name:>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.name:<10} {r.params:>10,} {r.flops_per_step / 1e9:>11.2f} {r.step_time * 1e3:>10.1f} "
                     f"{dense.step_time / r.step_time:>7.2f}x {r.lr:>7.0e} {r.final_loss:>11.4f} {r.metric:>9.4f}")
    return "\n".join(lines)


def format_sweeps(sweeps, tune_steps) -> str:
    """How the learning rates were chosen, one line per method."""
    if not sweeps:
        return "learning rate: given (--lr), no sweep"
    lines = [f"learning rates: each method's best of {tune.LEARNING_RATES} after {tune_steps} steps "
             "(AdamW, warmup + cosine), by the loss on a validation split of the training data:"]
    for name, (best, scores) in sweeps.items():
        tried = ", ".join(f"{lr:g}: {s:.4f}" for lr, s in scores.items())
        lines.append(f"  {name:<9} {tried}  -> {best:g}")
    return "\n".join(lines)


def plot_curves(results, path, title):
    from .plots import _plt
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        t, loss = zip(*r.curve)
        ax.plot(t, loss, label=f"{r.name} ({r.step_time * 1e3:.0f} ms/step, lr {r.lr:g})")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(model_name: str = "mixer", budget: float = 0.25, steps: int = 120, batch: int = 64,
             lr: float | None = None, seed: int = 0, block_size: int = 32,
             plot: str | None = "pixelfly-demo.png", corpus=None, threads: int | None = None,
             tune_steps: int = 20, **overrides):
    """Train dense and Pixelfly versions of ``model_name``, each at the learning rate its own
    sweep chose (``lr=None``) or at ``lr``; returns ``(results, plan, sweeps)``."""
    from tqdm import tqdm

    from ..convert import plan as make_plan
    from ..convert import sparsify
    from ..models import build_model
    if threads:
        torch.set_num_threads(threads)
    cfg = {**DEMO_OVERRIDES[model_name], **overrides}
    torch.manual_seed(seed)
    dense = build_model(model_name, **cfg)
    task = Task(model_name, batch, seed, dense.config.seq_len if model_name == "gpt2" else None, corpus)
    example = next(task.batches())[0]
    plan = make_plan(dense, example, budget=budget, block_size=block_size)
    sparse = sparsify(copy.deepcopy(dense), plan, init="random")
    models = {"dense": dense, "pixelfly": sparse}
    flops = {"dense": linear_flops(plan, False), "pixelfly": linear_flops(plan, True)}
    print(f"pixelfly demo: {model_name} on {task.source}, budget {budget}, {steps} steps of batch {batch}, "
          f"{torch.get_num_threads()} threads")
    sweep_steps = 0 if lr is not None else len(tune.LEARNING_RATES) * tune_steps
    results, sweeps = [], {}
    with tqdm(total=2 * (steps + sweep_steps), desc="training", disable=None) as bar:
        for name, model in models.items():
            if lr is None:
                sweeps[name] = choose_lr(name, model, task, tune_steps, bar)
            results.append(train(name, model, task, steps, sweeps[name][0] if lr is None else lr,
                                 flops[name], bar))
    if plot:
        plot_curves(results, plot, f"{model_name}: dense vs Pixelfly (budget {budget})")
    return results, plan, sweeps


def add_arguments(ap):
    ap.add_argument("--model", choices=sorted(DEMO_OVERRIDES), default="mixer")
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None,
                    help="learning rate of both models (default: each method's best of a sweep)")
    ap.add_argument("--tune-steps", type=int, default=20, help="steps of each sweep run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--plot", default="pixelfly-demo.png", help="loss-vs-time plot ('' to skip)")
    ap.add_argument("--corpus", default=None, help="text file for gpt2 (default: KJV Bible)")
    ap.add_argument("--tiny", action="store_true", help="tiny model sizes (smoke test)")
    ap.add_argument("--show-plan", action="store_true", help="print the budget plan first")


def main_demo(args) -> None:
    for name in ("steps", "batch", "tune_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    overrides = TINY_OVERRIDES[args.model] if args.tiny else {}
    results, plan, sweeps = run_demo(args.model, args.budget, args.steps, args.batch, args.lr, args.seed,
                                     args.block, args.plot or None, args.corpus,
                                     tune_steps=args.tune_steps, **overrides)
    if args.show_plan:
        print(plan)
    print(format_table(results))
    print(format_sweeps(sweeps, args.tune_steps))
    if args.plot:
        print(f"loss-vs-time plot written to {args.plot}")
