"""The one training loop every table uses: AdamW, linear warmup then cosine decay, the
step timed (forward + backward + optimizer step; data preparation is outside the timer)."""
from __future__ import annotations

import math
import statistics
import time

import torch

__all__ = ["cosine_warmup", "endless_batches", "fit", "median_step_time", "time_steps"]


def cosine_warmup(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: ``step / warmup`` during warmup, then cosine from 1 to 0."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def endless_batches(x, y, batch: int, seed: int, transform=None):
    """Endless shuffled minibatches ``(x[idx], y[idx])``, epoch after epoch; the same order
    for every method with the same seed. ``transform(xb, generator)`` (e.g. augmentation)
    draws from the same generator."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i:i + batch]
            yield (x[idx] if transform is None else transform(x[idx], g)), y[idx]


def fit(model, batches, loss_fn, lr: float, steps: int, *, warmup_frac: float = 0.05,
        weight_decay: float = 0.05, bar=None, label: str = "") -> dict:
    """Train ``model`` for ``steps`` batches from the iterator ``batches``; returns
    ``{"losses": [...], "step_times": [...]}`` (seconds per step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, int(warmup_frac * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_warmup(s, steps, warmup))
    losses, times = [], []
    model.train()
    for _, (xb, yb) in zip(range(steps), batches):
        t0 = time.perf_counter()
        loss = loss_fn(model, xb, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        sched.step()
        losses.append(loss.item())
        if bar is not None:
            bar.set_postfix_str(f"{label} loss {losses[-1]:.3f}")
            bar.update()
    if len(losses) < steps:
        raise ValueError(f"batches ran out after {len(losses)} of {steps} steps")
    return {"losses": losses, "step_times": times}


def median_step_time(times) -> float:
    """Median step time, skipping the first steps (allocation, caches) when there are enough."""
    skip = min(3, len(times) // 4)
    return statistics.median(times[skip:])


def time_steps(model, batches, loss_fn, n: int = 3) -> float:
    """Median seconds of ``n`` training steps (after one untimed step) of a throwaway copy
    of ``model``: what ``--estimate`` multiplies by a table's step counts."""
    import copy
    m = copy.deepcopy(model)
    log = fit(m, batches, loss_fn, 1e-4, n + 1)
    return statistics.median(log["step_times"][1:])
