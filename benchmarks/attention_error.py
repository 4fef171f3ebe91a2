"""Does the low-rank part earn its place? Output error of Pixelfly attention against exact
dense attention on real activations: sparse only vs sparse + low rank, and sparse only with a
denser layout at the same compute as sparse + low rank (issue 13).

Real activations: a byte-level transformers GPT-2 (2 layers x 256, 4 heads of 64, causal)
is trained for ``--steps`` steps on the KJV Bible at ``--seq`` tokens, then the q, k, v that
its attention receives on a held-out batch are recorded (through a recording
``attn_implementation``). For every (layer, head) the float64 output of exact causal softmax
attention is compared with (relative Frobenius error ``|y - y*| / |y*|``, mean over heads):

  * ``sparse``:        the flat block butterfly of ``attn_implementation="pixelfly"`` (blocks
                       of 32, 2 factors), the sparse part alone;
  * ``sparse+lr r``:   the same plus the low-rank part with r random features (mean over
                       ``--feature-seeds`` draws), r = 16, 32, 64;
  * ``sparse, same compute``: the flat butterfly (size, factors) whose kept causal entries
                       cost what sparse + low rank (r = 64) costs in the fused kernel's
                       forward: 4 d flops per kept key and row, 8 r d per row for the
                       low-rank part (features of q and k, the per-block summaries, the
                       product), i.e. about 2 r more keys per row;
  * ``low rank only``: Performer-style features over every allowed key (r = 64).

The same methods on Gaussian q, k, v (untrained) are the contrast. Writes JSON, markdown and a
bar plot.

    python -m benchmarks.attention_error --json results/attention_error.json --plot results/attention_error.png
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from tqdm import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BLOCK, FACTORS, RANKS = 32, 2, (16, 32, 64)


def _record_attention(store):
    """An attention function for transformers that records (q, k, v, scaling) and runs SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def fn(module, query, key, value, attention_mask, **kw):
        store.append((query.detach().double(), key.detach().double(), value.detach().double(),
                      kw.get("scaling")))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)
    return fn


def trained_activations(steps: int, seq: int, batch: int, seed: int = 0):
    """q, k, v [B, H, L, d] of every layer of a byte-level GPT-2 trained on the KJV text."""
    import transformers
    from transformers.modeling_utils import AttentionInterface
    from pixelfly.experiments.data import bytes_to_tensor, get_batches, load_text_corpus
    torch.manual_seed(seed)
    text = bytes_to_tensor(load_text_corpus())
    train, held = text[: int(0.95 * len(text))], text[int(0.95 * len(text)):]
    cfg = transformers.GPT2Config(n_layer=2, n_embd=256, n_head=4, n_positions=seq, vocab_size=256,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for x, _ in tqdm(get_batches(train, seq, batch, steps, seed=seed), total=steps, desc="train GPT-2"):
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    store: list = []
    AttentionInterface.register("pixelfly_record", _record_attention(store))
    model.set_attn_implementation("pixelfly_record")
    model.eval()
    with torch.no_grad():
        x, _ = next(iter(get_batches(held, seq, 1, 1, seed=99)))
        model(input_ids=x)
    return store, losses


def _exact(q, k, v, scale):
    L = q.shape[-2]
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(torch.triu(torch.ones(L, L, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(s, -1) @ v


def _rel(y, ref):
    return float((y - ref).norm() / ref.norm())


def _causal_entries(lay, L):
    """Kept (query, key) entries of a causal block layout at length L."""
    from pixelfly.reference import layout_to_mask
    mask = np.asarray(layout_to_mask(lay, BLOCK, BLOCK))[:L, :L] & np.tril(np.ones((L, L), bool))
    return int(mask.sum())


def butterflies(R: int):
    """Every flat butterfly (size n, factors m) over R blocks, causal: [(n, m, layout)]."""
    from pixelfly.attention import build_attention_layout
    out, n = [], 2
    while n <= R:
        out += [(n, m, build_attention_layout(R, "pixelfly", n_factors=m, butterfly_size=n, causal=True))
                for m in range(1, int(np.log2(n)) + 1)]
        n *= 2
    return out


def _time(fn, q, k, v, reps=5):
    """Median forward+backward seconds of fn(q, k, v) in float32."""
    xs = [t.float().requires_grad_() for t in (q, k, v)]
    times = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        fn(*xs).sum().backward()
        if i:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matched_layouts(acts, L: int, d: int, r: int):
    """The flat butterflies matched to sparse + low rank (r features): by the flop model
    (8 r d per row, 4 d per kept key) and by measured time on the recorded heads."""
    from pixelfly.attention import build_attention_layout, gaussian_features, sparse_lowrank_attention
    from pixelfly.attention_ops import AttentionIndex
    R = L // BLOCK
    base_lay = build_attention_layout(R, "pixelfly", n_factors=FACTORS, causal=True)
    base = _causal_entries(base_lay, L)
    target = base + L * (8 * r * d) // (4 * d)
    cands = [(n, m, lay, _causal_entries(lay, L)) for n, m, lay in butterflies(R)]
    flops = min(cands, key=lambda c: abs(c[3] - target))
    q = torch.cat([a[0] for a in acts], 1)
    k, v = torch.cat([a[1] for a in acts], 1), torch.cat([a[2] for a in acts], 1)
    w = gaussian_features(r, d)
    idx = AttentionIndex(base_lay)
    t_lr = _time(lambda q, k, v: sparse_lowrank_attention(q, k, v, idx, BLOCK, causal=True, features=w), q, k, v)
    timed = []
    for n, m, lay, kept in tqdm(cands, desc="time layouts"):
        ix = AttentionIndex(lay)
        timed.append((abs(_time(lambda q, k, v: sparse_lowrank_attention(q, k, v, ix, BLOCK, causal=True), q, k, v)
                          - t_lr), n, m, lay, kept))
    same_time = min(timed, key=lambda c: c[0])
    cost = {"allowed_entries": L * (L + 1) // 2, "sparse_kept_entries": base,
            "flop_target_entries": target, "lowrank_fwd_bwd_s": t_lr,
            "same_flops": {"butterfly_size": flops[0], "n_factors": flops[1], "kept_entries": flops[3]},
            "same_time": {"butterfly_size": same_time[1], "n_factors": same_time[2], "kept_entries": same_time[4]}}
    return flops[2], same_time[3], cost


def errors(acts, seeds: int, same_flops, same_time):
    """Relative errors per method, mean over (layer, head) and feature draws."""
    from pixelfly.attention import build_attention_layout, gaussian_features, sparse_lowrank_attention
    from pixelfly.attention_ops import AttentionIndex
    q0 = acts[0][0]
    L, d = q0.shape[-2], q0.shape[-1]
    R = L // BLOCK
    idx = AttentionIndex(build_attention_layout(R, "pixelfly", n_factors=FACTORS, causal=True))
    idx_flops, idx_time = AttentionIndex(same_flops), AttentionIndex(same_time)
    idx_none = AttentionIndex(np.zeros((R, R), bool))
    out = {"sparse": [], "sparse, same time": [], "sparse, same flops": [], "low rank only r=64": []}
    out.update({f"sparse+lr r={r}": [] for r in RANKS})
    for q, k, v, scaling in tqdm(acts, desc="errors"):
        scale = d ** -0.5 if scaling is None else scaling
        ref = _exact(q, k, v, scale)
        out["sparse"].append(_rel(sparse_lowrank_attention(q, k, v, idx, BLOCK, scale=scale, causal=True), ref))
        for name, ix in (("sparse, same time", idx_time), ("sparse, same flops", idx_flops)):
            out[name].append(_rel(sparse_lowrank_attention(q, k, v, ix, BLOCK, scale=scale, causal=True), ref))
        for r in RANKS:
            errs = []
            for s in range(seeds):
                w = gaussian_features(r, d, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                errs.append(_rel(sparse_lowrank_attention(q, k, v, idx, BLOCK, scale=scale, causal=True,
                                                          features=w), ref))
                if r == RANKS[-1]:
                    out["low rank only r=64"].append(_rel(sparse_lowrank_attention(
                        q, k, v, idx_none, BLOCK, scale=scale, causal=True, features=w), ref))
            out[f"sparse+lr r={r}"].append(float(np.mean(errs)))
    return {m: float(np.mean(v)) for m, v in out.items()}


def split_heads(acts):
    """[(q, k, v, scaling)] per (layer, head) from per-layer [1, H, L, d] tensors."""
    return [(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1], s) for q, k, v, s in acts for h in range(q.shape[1])]


def markdown(res) -> str:
    rows = ["| method | trained GPT-2 q/k/v | Gaussian q/k/v |", "|---|---|---|"]
    for m in res["trained"]:
        rows.append(f"| {m} | {res['trained'][m]:.4f} | {res['gaussian'][m]:.4f} |")
    c = res["cost"]
    rows.append("")
    rows.append(f"L = {res['seq']}, d = 64, blocks of {BLOCK}; kept causal entries of {c['allowed_entries']}: "
                f"sparse {c['sparse_kept_entries']}; same time as sparse + low rank r=64 "
                f"({c['lowrank_fwd_bwd_s'] * 1e3:.1f} ms fwd+bwd on the recorded heads): "
                f"{c['same_time']['kept_entries']} (flat butterfly size {c['same_time']['butterfly_size']}, "
                f"{c['same_time']['n_factors']} factors); same flops: {c['same_flops']['kept_entries']} "
                f"(target {c['flop_target_entries']}; size {c['same_flops']['butterfly_size']}, "
                f"{c['same_flops']['n_factors']} factors).")
    return "\n".join(rows) + "\n"


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = list(res["trained"])
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(x - 0.2, [res["trained"][m] for m in methods], 0.4, label="trained GPT-2 q/k/v")
    ax.bar(x + 0.2, [res["gaussian"][m] for m in methods], 0.4, label="Gaussian q/k/v")
    ax.set_xticks(x, methods, rotation=20, ha="right")
    ax.set_ylabel("relative error vs exact attention")
    ax.set_title(f"Pixelfly attention error, causal, L = {res['seq']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--feature-seeds", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    acts, losses = trained_activations(args.steps, args.seq, args.batch)
    trained = split_heads(acts)
    g = torch.Generator().manual_seed(1)
    gauss = [tuple(torch.randn(1, 1, args.seq, 64, generator=g, dtype=torch.float64) for _ in range(3)) + (None,)
             for _ in range(len(trained))]
    res = {"seq": args.seq, "steps": args.steps, "train_loss_first_last": [losses[0], losses[-1]],
           "heads": len(trained)}
    same_flops, same_time, res["cost"] = matched_layouts(acts, args.seq, 64, RANKS[-1])
    res["trained"] = errors(trained, args.feature_seeds, same_flops, same_time)
    res["gaussian"] = errors(gauss, args.feature_seeds, same_flops, same_time)
    res["seconds"] = time.time() - t0
    print(markdown(res))
    print(f"GPT-2 training loss {losses[0]:.3f} -> {losses[-1]:.3f} over {args.steps} steps; {res['seconds']:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.splitext(args.json)[0] + ".md", "w") as f:
            f.write(markdown(res))
    if args.plot:
        plot(res, args.plot)
    return res


if __name__ == "__main__":
    main()
