"""Peak memory of one LRA training step, each (task, method) in a fresh subprocess.

The child builds the row's model for the task's shape, warms it up with a 2-example step
(code pages, thread pool, caches), then measures one full-batch training step (forward,
backward, AdamW) with ``pixelfly._memory.peak_rss_growth``: the step's peak working set
(activations, saved tensors, gradients, optimizer state, attention workspace).
Tokens are random: memory does not depend on their values.

    python -m pixelfly.experiments.lra_memory '{"size": "quick", "method": "pixelfly", ...}'
"""
from __future__ import annotations

import json
import subprocess
import sys

__all__ = ["step_peak_mib"]


def step_peak_mib(size: str, name: str, method: str, task) -> float:
    """MiB of peak RSS growth of one training step of ``method`` on ``task``'s shape."""
    spec = dict(size=size, name=name, method=method, vocab=task.vocab, n_classes=task.n_classes,
                seq_len=task.seq_len, pair=task.pair)
    import torch
    env_threads = str(torch.get_num_threads())
    res = subprocess.run([sys.executable, "-m", "pixelfly.experiments.lra_memory", json.dumps(spec), env_threads],
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"memory child for {name}/{method} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"] / 2 ** 20


def _child(spec: dict, threads: int) -> int:
    import torch

    from pixelfly._memory import peak_rss_growth

    from .lra import SIZES, build_model, loss_fn
    from .lra_data import Task
    torch.set_num_threads(threads)
    cfg = SIZES[spec["size"]]
    shape = (2, spec["seq_len"]) if spec["pair"] else (spec["seq_len"],)
    empty = torch.zeros(0, dtype=torch.long)
    task = Task(spec["name"], empty, empty, empty, empty, empty, empty, vocab=spec["vocab"],
                n_classes=spec["n_classes"], seq_len=spec["seq_len"], pair=spec["pair"])
    model = build_model(task, spec["method"], cfg, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
    g = torch.Generator().manual_seed(0)

    def step(n):
        x = torch.randint(1, spec["vocab"], (n, *shape), generator=g)
        y = torch.randint(0, spec["n_classes"], (n,), generator=g)
        return lambda: (opt.zero_grad(set_to_none=True), loss_fn(model, x, y).backward(), opt.step())

    step(2)()
    return peak_rss_growth(step(cfg["batch"]))


if __name__ == "__main__":
    print(json.dumps({"peak_bytes": _child(json.loads(sys.argv[1]), int(sys.argv[2]))}))
