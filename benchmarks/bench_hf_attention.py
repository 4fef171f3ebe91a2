"""Training step time of a transformers GPT-2: dense SDPA vs attn_implementation="pixelfly",
alone and with the linears sparsified (issue 13).

    python -m benchmarks.bench_hf_attention --json bench-results/hf_attention.json
    python -m benchmarks.bench_hf_attention --seq 1024 --batch 4      # the issue's target size

GPT-2 with 4 layers x 512 (8 heads), ``n_positions = seq``, random init, fp32, AdamW, one
forward+backward+step per step; the median of ``--steps`` steps after one warm-up step, in
one process: (1) dense, ``attn_implementation="sdpa"``; (2) the same weights with
``"pixelfly"`` attention (blocks of 32, flat butterfly with 2 factors, causal, plus 64 random
features); (3) then
its linears sparsified at ``--budget`` (``pixelfly.sparsify(model, plan, attention="pixelfly")``,
first/last layers dense as ``pixelfly.plan`` does). The losses of the timed steps of (3) are
recorded (they must fall: the same batch every step).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_steps(model, ids, steps: int):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times, losses = [], []
    for k in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if k:  # the first step warms up (allocations, caches, layouts)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), losses


def main(argv=None):
    import transformers
    import pixelfly
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--attn-dropout", type=float, default=0.1,
                    help="attn_pdrop (GPT-2's 0.1 by default; with it SDPA on the CPU takes its "
                         "slower math path in training)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=args.width // 64,
                                  n_positions=args.seq, vocab_size=args.vocab, attn_pdrop=args.attn_dropout)
    model = transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa")
    ids = torch.randint(0, args.vocab, (args.batch, args.seq))
    res = {"loadavg_before": os.getloadavg(), "threads": torch.get_num_threads(), **vars(args)}
    res["dense_sdpa_s"], _ = run_steps(model, ids, args.steps)
    model.set_attn_implementation("pixelfly")
    res["pixelfly_attention_s"], _ = run_steps(model, ids, args.steps)
    plan = pixelfly.plan(model, {"input_ids": ids}, budget=args.budget)
    pixelfly.sparsify(model, plan, init="from_dense", attention="pixelfly")
    res["pixelfly_attention_and_linears_s"], res["losses"] = run_steps(model, ids, args.steps)
    res["sparsified_layers"] = sum(lay.sparse for lay in plan.layers)
    res["ratio_attention_only"] = res["dense_sdpa_s"] / res["pixelfly_attention_s"]
    res["ratio_attention_and_linears"] = res["dense_sdpa_s"] / res["pixelfly_attention_and_linears_s"]
    res["loadavg_after"] = os.getloadavg()
    print(f"GPT-2 {args.layers}x{args.width}, batch {args.batch} x seq {args.seq}, vocab {args.vocab}: "
          f"attn_pdrop {args.attn_dropout}: dense sdpa {res['dense_sdpa_s'] * 1e3:.0f} ms/step; pixelfly attention "
          f"{res['pixelfly_attention_s'] * 1e3:.0f} ms ({res['ratio_attention_only']:.2f}x); + linears at "
          f"budget {args.budget} ({res['sparsified_layers']}/{len(plan.layers)} sparse) "
          f"{res['pixelfly_attention_and_linears_s'] * 1e3:.0f} ms "
          f"({res['ratio_attention_and_linears']:.2f}x); losses {[round(x, 3) for x in res['losses']]}; "
          f"load average after {res['loadavg_after']}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
