"""Training step time of Hugging Face models, dense vs Pixelfly at budget 0.25 (issue 9).

    python -m benchmarks.bench_hf --json bench-results/hf.json

transformers GPT-2 (4 layers x 512, 8 heads) and Llama (hidden 512, 4 layers, MLP 2048),
random init, batch 8 x seq 256, fp32, AdamW, one forward+backward+step per step; the
median of ``--steps`` steps after one warm-up step, dense then sparsified (blocks of 32,
first/last layers dense as ``pixelfly.plan`` does by default), in one process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def models(vocab_gpt2: int, vocab_llama: int):
    import transformers as t
    return {
        "gpt2": lambda: t.GPT2LMHeadModel(t.GPT2Config(n_layer=4, n_embd=512, n_head=8, n_positions=256,
                                                       vocab_size=vocab_gpt2)),
        "llama": lambda: t.LlamaForCausalLM(t.LlamaConfig(
            hidden_size=512, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=8, vocab_size=vocab_llama, max_position_embeddings=256,
            tie_word_embeddings=False)),
    }


def step_time(model, ids, steps: int) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for k in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        if k:  # the first step warms up (allocations, caches)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    import pixelfly
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--vocab-gpt2", type=int, default=50257)
    ap.add_argument("--vocab-llama", type=int, default=32000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results = {"loadavg_before": os.getloadavg(), "threads": torch.get_num_threads(), "batch": args.batch, "seq": args.seq, "budget": args.budget,
               "models": {}}
    for name, make in models(args.vocab_gpt2, args.vocab_llama).items():
        torch.manual_seed(0)
        model = make()
        ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq))
        dense = step_time(model, ids, args.steps)
        p = pixelfly.plan(model, {"input_ids": ids}, budget=args.budget)
        pixelfly.sparsify(model, p, init="from_dense")
        sparse = step_time(model, ids, args.steps)
        n_sparse = sum(lay.sparse for lay in p.layers)
        linear_cost = p.dense_total + p.kept_dense_cost
        row = {"dense_step_s": dense, "pixelfly_step_s": sparse, "ratio_dense_over_pixelfly": dense / sparse,
               "sparsified_layers": n_sparse, "layers": len(p.layers),
               "linear_cost_ratio": (p.sparse_total + p.kept_dense_cost) / linear_cost,
               "vocab": model.config.vocab_size}
        results["models"][name] = row
        print(f"{name}: dense {dense * 1e3:.0f} ms/step, pixelfly {sparse * 1e3:.0f} ms/step, "
              f"ratio {dense / sparse:.2f}x ({n_sparse}/{len(p.layers)} layers sparse, linear-layer cost "
              f"ratio {row['linear_cost_ratio']:.3f}, vocab {row['vocab']})", flush=True)
    results["loadavg_after"] = os.getloadavg()
    print(f"load average (1, 5, 15 min) after the run: {results['loadavg_after']}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
