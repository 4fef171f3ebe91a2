"""Table 3: the empirical NTK of structured layers versus dense (the seed's NTK figure).

A 4-layer MLP on 14x14 Fashion-MNIST (2x2-average-pooled): ``196 -> H -> H -> H -> 10``;
the first and last layers are dense, the two ``H x H`` hidden layers take each structure:

* ``dense``;
* ``pixelfly``: flat block butterfly (blocks ``b``) + low rank, ``gamma``-mixed (SPEC 2);
* ``butterfly``: the product of block butterfly factors (blocks ``b_f``);
* ``bigbird``, ``random``: block layouts (blocks ``b``) without low rank;
* ``lowrank``: ``U V^T`` only;

at (about) the parameter count of the Butterfly product, which sets the target. The
layers are written here in plain PyTorch as masked dense weights (the same functions and
the same NTK as the block-sparse kernels: masked entries have zero gradient), so that
``torch.func.jacrev`` computes the Jacobian of the logits on a fixed batch of ``N`` test
images; ``K = J J^T`` (``N*10`` square) and the table reports
``||K - K_dense||_F / ||K_dense||_F`` at init and after training (mean over seeds, each
seed's dense model its own reference), and the final training loss. No speedup column:
these masked-dense layers are not the fast kernels (see the cv and lm tables).
"""
from __future__ import annotations

import math
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from . import tune
import time

from .training import fit, time_steps

__all__ = ["SIZES", "StructLinear", "structures", "empirical_ntk", "run"]

SIZES = {
    "default": dict(hidden=128, block=16, butterfly_block=8, n_train=4096, batch=64, steps=400,
                    tune_steps=100, ntk_batch=32, seeds=2),
    "quick": dict(hidden=64, block=16, butterfly_block=8, n_train=256, batch=32, steps=6,
                  tune_steps=3, ntk_batch=4, seeds=2),
}
METHODS = ("dense", "pixelfly", "butterfly", "bigbird", "random", "lowrank")


class StructLinear(nn.Module):
    """``y = x W^T + bias`` with ``W`` structured as ``kind`` (see the module docstring).
    ``masks``: block masks of the sparse part (one for ``sparse``, ``log2 n`` factor masks
    for ``butterfly``); ``rank``: low-rank width."""

    def __init__(self, features: int, kind: str, masks=(), rank: int = 0):
        super().__init__()
        H = features
        self.kind = kind
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m.float())
        self.n_masks = len(masks)
        self.weights = nn.ParameterList()
        if kind == "dense":
            self.weights.append(nn.Parameter(torch.randn(H, H) / math.sqrt(H)))
        elif kind in ("sparse", "butterfly"):
            for m in masks:   # fan-in of a masked weight: its nonzeros per row
                fan = m.float().sum(1).mean().item()
                self.weights.append(nn.Parameter(torch.randn(H, H) / math.sqrt(fan)))
        self.U = nn.Parameter(torch.randn(H, rank) / math.sqrt(rank)) if rank else None
        self.V = nn.Parameter(torch.randn(H, rank) / math.sqrt(H)) if rank else None
        mixed = kind == "sparse" and rank
        self.gamma_logit = nn.Parameter(torch.zeros(())) if mixed else None
        self.bias = nn.Parameter(torch.zeros(H))

    def weight(self):
        if self.kind == "dense":
            return self.weights[0]
        if self.kind == "butterfly":    # W = B_n ... B_2, each factor masked
            W = None
            for i, w in enumerate(self.weights):
                f = w * getattr(self, f"mask{i}")
                W = f if W is None else f @ W
            return W
        low = self.U @ self.V.T if self.U is not None else None
        if self.kind == "lowrank":
            return low
        B = self.weights[0] * self.mask0
        if low is None:
            return B
        g = torch.sigmoid(self.gamma_logit)
        return g * B + (1 - g) * low

    def effective_params(self) -> int:
        """Weights a sparse kernel would store (nonzeros of the masks + low rank)."""
        n = sum(int(getattr(self, f"mask{i}").sum()) for i in range(self.n_masks))
        if self.kind == "dense":
            n = self.weights[0].numel()
        return n + (self.U.numel() + self.V.numel() if self.U is not None else 0)

    def forward(self, x):
        return F.linear(x, self.weight(), self.bias)


def structures(H: int, b: int, bf: int, seed: int = 0) -> dict:
    """``method -> (kind, masks, rank)`` for ``H x H`` layers at the Butterfly product's
    parameter count (``2 H b_f log2(H / b_f)``)."""
    import pixelfly
    n_bf = H // bf
    bf_masks = [torch.from_numpy(pixelfly.layout_to_mask(pixelfly.butterfly_factor_layout(n_bf, k), bf))
                for k in (1 << s for s in range(1, int(math.log2(n_bf)) + 1))]
    target = sum(int(m.sum()) for m in bf_masks)
    g = H // b
    blocks = target // (b * b)
    # Pixelfly: the largest flat butterfly leaving room for rank >= 1, low rank the rest
    flat = []
    for size in (1 << s for s in range(1, int(math.log2(g)) + 1)):
        for nf in range(1, int(math.log2(size)) + 1):
            lay = pixelfly.flat_butterfly_layout(g, g, nf, size)
            if lay.sum() * b * b + 2 * H <= target:
                flat.append((int(lay.sum()), lay))
    nnz, pf_layout = max(flat, key=lambda t: t[0])
    pf_rank = (target - nnz * b * b) // (2 * H)
    # BigBird: the (window, global, random) configuration nearest below the target
    bb = [pixelfly.bigbird_layout(g, g, w, ng, nr, seed=seed) for w in range(3) for ng in range(3) for nr in range(3)]
    bb_layout = max((lay for lay in bb if lay.sum() <= blocks), key=lambda lay: lay.sum())
    rnd = pixelfly.random_layout(g, g, blocks / (g * g), seed=seed)

    def mask(lay):
        return torch.from_numpy(pixelfly.layout_to_mask(lay, b))
    return {"dense": ("dense", (), 0),
            "pixelfly": ("sparse", (mask(pf_layout),), pf_rank),
            "butterfly": ("butterfly", tuple(bf_masks), 0),
            "bigbird": ("sparse", (mask(bb_layout),), 0),
            "random": ("sparse", (mask(rnd),), 0),
            "lowrank": ("lowrank", (), target // (2 * H))}


def build_mlp(H, struct, seed):
    torch.manual_seed(seed)
    kind, masks, rank = struct
    return nn.Sequential(nn.Linear(196, H), nn.GELU(), StructLinear(H, kind, masks, rank), nn.GELU(),
                         StructLinear(H, kind, masks, rank), nn.GELU(), nn.Linear(H, 10))


def empirical_ntk(model, x) -> torch.Tensor:
    """``J J^T`` of the logits w.r.t. every parameter on ``x``: ``[N*10, N*10]`` (float64)."""
    from torch.func import functional_call, jacrev
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v for k, v in model.named_buffers()}
    jac = jacrev(lambda p: functional_call(model, (p, buffers), (x,)))(params)
    K = None
    for j in jac.values():
        j = j.reshape(x.shape[0] * 10, -1).double()
        K = j @ j.T if K is None else K + j @ j.T
    return K


def rel_distance(K, K_ref) -> float:
    return (torch.linalg.norm(K - K_ref) / torch.linalg.norm(K_ref)).item()


def load_data(cfg, data_dir=None):
    from .fashion_mnist import load_fashion_mnist
    d = load_fashion_mnist(data_dir)

    def prep(x):
        return F.avg_pool2d(x, 2).flatten(1)
    xtr, xte = prep(d.x_train), prep(d.x_test)
    mean, std = xtr.mean(), xtr.std()
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    n = cfg["n_train"]
    return dict(x_train=xtr[:n], y_train=d.y_train[:n], x_val=xtr[n:n + 1000], y_val=d.y_train[n:n + 1000],
                x_ntk=xte[:cfg["ntk_batch"]])


def _batches(x, y, batch, seed):
    from .data import iterate_batches
    epoch = 0
    while True:
        yield from iterate_batches(x, y, batch_size=batch, seed=seed * 1000 + epoch, drop_last=True)
        epoch += 1


def _loss(model, xb, yb):
    return F.cross_entropy(model(xb), yb)


def run(size="default", seeds=None, out_dir="results", data_dir=None):
    from tqdm import tqdm

    from . import plots, results
    cfg = SIZES[size]
    n_seeds = seeds or cfg["seeds"]
    data = load_data(cfg, data_dir)
    H = cfg["hidden"]
    total = len(METHODS) * (len(tune.LEARNING_RATES) * cfg["tune_steps"] + n_seeds * cfg["steps"])
    runs, curves, lrs, sweeps = [], {}, {}, {}
    with tqdm(total=total, desc="ntk", disable=None) as bar:
        for method in METHODS:
            struct = structures(H, cfg["block"], cfg["butterfly_block"], seed=0)[method]

            def score(lr, struct=struct, method=method):
                m = build_mlp(H, struct, 0)
                fit(m, _batches(data["x_train"], data["y_train"], cfg["batch"], 0), _loss, lr,
                    cfg["tune_steps"], bar=bar, label=f"{method} lr={lr:g}")
                with torch.no_grad():
                    return _loss(m, data["x_val"], data["y_val"]).item()
            lrs[method], sweeps[method] = tune.choose_lr(score)
        for seed in range(n_seeds):
            kernels = {}
            for method in METHODS:
                struct = structures(H, cfg["block"], cfg["butterfly_block"], seed=seed)[method]
                m = build_mlp(H, struct, seed)
                k_init = empirical_ntk(m, data["x_ntk"])
                log = fit(m, _batches(data["x_train"], data["y_train"], cfg["batch"], seed), _loss, lrs[method],
                          cfg["steps"], bar=bar, label=method)
                kernels[method] = (k_init, empirical_ntk(m, data["x_ntk"]))
                if seed == 0:
                    curves[method] = log["losses"]
                hidden = [mod for mod in m if isinstance(mod, StructLinear)]
                params = sum(p.numel() for mod in m if isinstance(mod, nn.Linear) for p in mod.parameters()) \
                    + sum(h.effective_params() + h.bias.numel() for h in hidden)
                flops = 2.0 * (196 * H + 10 * H + sum(h.effective_params() for h in hidden))
                tail = log["losses"][-max(1, len(log["losses"]) // 10):]
                common = dict(task="NTK (Fashion-MNIST 14x14)", model=f"MLP-{H}", method=method, speedup=None,
                              params=params, flops=flops, lr=lrs[method])
                for when, K in (("init", kernels[method][0]), ("trained", kernels[method][1])):
                    runs.append(dict(common, metric=f"NTK rel. distance to dense ({when})",
                                     value=rel_distance(K, kernels["dense"][0 if when == "init" else 1])))
                runs.append(dict(common, metric="final training loss", value=statistics.fmean(tail)))
    rows = results.aggregate(runs)
    extra = dict(size=size, hidden=H, block_size=cfg["block"], butterfly_block_size=cfg["butterfly_block"],
                 steps=cfg["steps"], batch=cfg["batch"], ntk_batch=cfg["ntk_batch"], lr_sweep=sweeps, curves=curves,
                 notes="params: stored weights of a sparse kernel (mask nonzeros + low rank); FLOPs: 2 x those "
                       "weights per example; the NTK is on the logits of a fixed batch of test images")
    results.write_table("ntk", rows, out_dir, **extra)
    plot_ntk(rows, f"{out_dir}/ntk.png")
    plots.plot_curves(curves, f"{out_dir}/ntk_curves.png", f"MLP-{H} training loss (seed 0)")
    return rows, extra


def plot_ntk(rows, path):
    """Bar chart: NTK distance to dense at init and after training, per method."""
    from .plots import _plt
    plt = _plt()
    methods = [r["method"] for r in rows if r["metric"].endswith("(init)") and r["method"] != "dense"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, when in enumerate(("init", "trained")):
        rs = {r["method"]: r for r in rows if r["metric"].endswith(f"({when})")}
        ax.bar([i + 0.4 * k for i in range(len(methods))], [rs[m]["value"] for m in methods], width=0.4,
               yerr=[rs[m]["spread"] for m in methods], capsize=3, label=when)
    ax.set_xticks([i + 0.2 for i in range(len(methods))], methods)
    ax.set_ylabel("||K - K_dense||_F / ||K_dense||_F")
    ax.set_title("Empirical NTK distance to dense (equal parameters)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def estimate(size="default", seeds=None, data_dir=None) -> float:
    """Projected seconds of ``run(size)`` on this machine now (training steps + kernels)."""
    cfg = SIZES[size]
    n_seeds = seeds or cfg["seeds"]
    data = load_data(cfg, data_dir)
    steps = len(tune.LEARNING_RATES) * cfg["tune_steps"] + n_seeds * cfg["steps"]
    total = 0.0
    for struct in structures(cfg["hidden"], cfg["block"], cfg["butterfly_block"]).values():
        m = build_mlp(cfg["hidden"], struct, 0)
        total += steps * time_steps(m, _batches(data["x_train"], data["y_train"], cfg["batch"], 0), _loss)
        t0 = time.perf_counter()
        empirical_ntk(m, data["x_ntk"])
        total += 2 * n_seeds * (time.perf_counter() - t0)
    return total
