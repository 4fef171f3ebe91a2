"""Adversarial run: bad arguments, NaN/inf inputs, corrupt files and bad settings thrown at
the public API, each case classified as ok / crash / hang / wrong / unclear.

* crash: the process died (signal, abort); hang: no answer within ``--timeout`` seconds;
* wrong: a silently wrong result (NaN/inf pattern of an attention output differing from
  ``pixelfly.reference``, bad input accepted, a bad setting silently replaced);
* unclear: an error a user cannot act on (not ValueError/TypeError, no argument of the
  call named, or a C-internal name / wrapped number / allocator failure in the message).

Cases run in a worker process that the driver restarts after a crash or a hang.

    python -m benchmarks.adversarial            # prints the counts and the failing cases
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

INTERNAL = re.compile(r"\bpf_\w+|\bld[xyo]\b|C\*b2|R\*b1|PF_MAX_\w+|out of memory allocating|"
                      r"too large to convert|index out of range|range\(\) arg|must have 0 columns")
BIG = [2 ** 62, 2 ** 63, 2 ** 64, 2 ** 70, -2 ** 63 - 1]
EXTREME = [-2 ** 64, -2 ** 63, -1, 0, 1, 2, 3, 8, 2 ** 20, 2 ** 31, 2 ** 62, 2 ** 63, 2 ** 64,
           1.5, float("nan"), None, True, "3", [[True, False], [True]]]


# ------------------------------------------------------------------ case builders
def names_any(msg, names):
    """Whether ``msg`` names one of ``names`` (as a word: ``x`` is not in ``expected``)."""
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", msg) for n in names)


def error_case(fn, names):
    """The call must raise ValueError/TypeError naming one of ``names``, cleanly."""
    def run():
        try:
            fn()
        except (ValueError, TypeError) as e:
            msg = str(e)
            if INTERNAL.search(msg):
                return "unclear", f"{type(e).__name__}: {msg[:160]}"
            if not names_any(msg, names):
                return "unclear", f"names none of {names}: {type(e).__name__}: {msg[:160]}"
            return "ok", ""
        except Exception as e:  # noqa: BLE001
            return "unclear", f"{type(e).__name__}: {str(e)[:160]}"
        return "wrong", "accepted"
    return run


def fuzz_case(fn, args, names):
    """Extreme arguments: a clean ValueError/TypeError naming an argument, or a result."""
    def run():
        try:
            fn(*args)
        except (ValueError, TypeError) as e:
            msg = str(e)
            if INTERNAL.search(msg) or not names_any(msg, names):
                return "unclear", f"{args!r:.80}: {type(e).__name__}: {msg[:140]}"
            return "ok", ""
        except Exception as e:  # noqa: BLE001
            return "unclear", f"{args!r:.80}: {type(e).__name__}: {str(e)[:140]}"
        return "ok", ""
    return run


def attention_case(where, value, dtype_name, causal, rank, isa):
    def run():
        import numpy as np
        import torch
        from pixelfly import attention_ops, reference
        from pixelfly.attention import build_attention_layout, gaussian_features, sparse_lowrank_attention
        from pixelfly.attention_ops import AttentionIndex
        dtype = getattr(torch, dtype_name)
        B, H, L, d, b = 1, 2, 64, 8, 16
        g = torch.Generator().manual_seed(hash((where, value, causal, rank)) & 0xFFFF)
        qkv = [torch.randn(B, H, L, d, generator=g, dtype=torch.float64) for _ in range(3)]
        t = qkv["qkv".index(where)]
        for _ in range(2):
            t[0, int(torch.randint(H, (1,), generator=g)), int(torch.randint(L, (1,), generator=g)),
              int(torch.randint(d, (1,), generator=g))] = value
        q, k, v = (x.to(dtype) for x in qkv)
        lay = build_attention_layout(L // b, "pixelfly", n_factors=1, causal=causal)
        w = gaussian_features(rank, d, dtype=torch.float64) if rank else None
        prev = attention_ops.set_cpu_isa(isa)
        try:
            y = sparse_lowrank_attention(q, k, v, AttentionIndex(lay), b, causal=causal, features=w)
        finally:
            attention_ops.set_cpu_isa(prev)
        q64, k64, v64 = (x.double() for x in (q, k, v))
        if rank:
            ref = reference.pixelfly_attention(q64, k64, v64, lay, b, w, causal=causal)
        else:
            ref = reference.masked_attention(q64, k64, v64, lay, b, causal=causal)[0]
        y = y.double()
        for name, f in (("nan", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
            if not torch.equal(f(y), f(ref)):
                return "wrong", (f"{name} pattern: {int(f(y).sum())} vs reference "
                                 f"{int(f(ref).sum())}")
        return "ok", ""
    return run


def lzw_case(seed):
    def run():
        import random
        from pixelfly.experiments import data
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
        from test_models import _ec02_file
        rng = random.Random(seed)
        stream = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        try:
            data.decode_bible_data(_ec02_file([stream]))
        except ValueError as e:
            return ("ok", "") if "corrupt" in str(e) else ("unclear", str(e)[:120])
        except Exception as e:  # noqa: BLE001
            return "unclear", f"{type(e).__name__}: {str(e)[:120]}"
        return "ok", ""
    return run


def truncated_case(cut):
    def run():
        import base64
        import struct
        import tempfile
        from pixelfly.experiments import data
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
        from test_models import _KJV_LZW_PREFIX, _ec02_file
        raw = _ec02_file([_KJV_LZW_PREFIX])
        del base64, struct
        with tempfile.NamedTemporaryFile(suffix=".data") as f:
            f.write(raw[:int(len(raw) * cut)])
            f.flush()
            try:
                data.load_text_corpus(f.name)
            except ValueError as e:
                return ("ok", "") if "truncated" in str(e) else ("unclear", str(e)[:120])
            except Exception as e:  # noqa: BLE001
                return "unclear", f"{type(e).__name__}: {str(e)[:120]}"
        return "wrong", "a truncated file was accepted"
    return run


def env_case(value):
    def run():
        code = ("import torch, warnings; warnings.simplefilter('error'); from pixelfly import ops; "
                "ops.cache_held(); x = torch.randn(2048, 1024); "
                "from pixelfly import PixelflyLinear; PixelflyLinear(1024, 1024)(x)")
        env = dict(os.environ, PIXELFLY_CPU_CACHE_MB=value)
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=120)
        if p.returncode != 0 and "PIXELFLY_CPU_CACHE_MB" in p.stderr:
            return "ok", ""
        if p.returncode == 0:
            return "wrong", f"PIXELFLY_CPU_CACHE_MB={value!r} silently ignored"
        return "unclear", p.stderr.strip().splitlines()[-1][:160]
    return run


def build_cases():
    import numpy as np
    import torch
    from pixelfly import layouts, ops, data, PixelflyLinear, PixelflyAttention, attention_ops
    cases = []
    # attention: NaN/inf in q, k or v, every dtype, causal or not, sparse or sparse + low rank
    isas = [1] + ([3] if ops.cpu_isa() >= 3 else [])
    for where in "qkv":
        for value in (float("nan"), float("inf"), float("-inf")):
            for dt in ("float32", "bfloat16", "float64"):
                for causal in (False, True):
                    for rank in (0, 8):
                        for isa in isas:
                            cases.append((f"attn {where}={value} {dt} causal={causal} r={rank} isa={isa}",
                                          attention_case(where, value, dt, causal, rank, isa)))
    # the ops and the layer: bad shapes, huge sizes, strides
    lay = layouts.flat_butterfly_layout(4, 4, 1)
    idx = ops.index_tensors(layouts.BlockIndex.from_layout(lay))
    nnz = len(idx[1])
    blocks = torch.randn(nnz, 8, 8)
    x = torch.randn(5, 32)
    dy = torch.randn(5, 32)
    lin = PixelflyLinear(64, 64, block_size=16, n_factors=1, rank=2)
    errs = [
        ("bsmm_bwd_w b1=2**62", lambda: ops.bsmm_bwd_w(dy, x, *idx, b1=2 ** 62, b2=8), ["b1"]),
        ("bsmm_bwd_w b2=2**62", lambda: ops.bsmm_bwd_w(dy, x, *idx, b1=8, b2=2 ** 62), ["b2"]),
        ("bsmm_bwd_w b1=0", lambda: ops.bsmm_bwd_w(dy, x, *idx, b1=0, b2=8), ["b1"]),
        ("bsmm_fwd x cols", lambda: ops.bsmm_fwd(torch.randn(5, 31), blocks, *idx), ["x"]),
        ("bsmm_fwd x 1-D", lambda: ops.bsmm_fwd(torch.randn(32), blocks, *idx), ["x"]),
        ("bsmm_fwd int x", lambda: ops.bsmm_fwd(x.int(), blocks, *idx), ["x"]),
        ("bsmm_fwd blocks dtype", lambda: ops.bsmm_fwd(x, blocks.double(), *idx), ["blocks"]),
        ("bsmm_fwd blocks count", lambda: ops.bsmm_fwd(x, blocks[:-1], *idx), ["blocks"]),
        ("bsmm_fwd 2**40 rows", lambda: ops.bsmm_fwd(torch.randn(1, 32).expand(2 ** 40, 32), blocks, *idx), ["x"]),
        ("bsmm_bwd_x 2**40 rows", lambda: ops.bsmm_bwd_x(torch.randn(1, 32).expand(2 ** 40, 32), blocks, *idx), ["dy"]),
        ("layer 2**40 rows", lambda: lin(torch.randn(1, 64).expand(2 ** 40, 64)), ["x"]),
        ("layer wrong features", lambda: lin(torch.randn(3, 63)), ["x", "in_features"]),
        ("layer in_features=2**63", lambda: PixelflyLinear(2 ** 63, 64), ["in_features"]),
        ("layer block_size=2**62", lambda: PixelflyLinear(64, 64, block_size=2 ** 62), ["block_size"]),
        ("attention 2**40 tokens", lambda: PixelflyAttention(32, 4, block_size=16)(torch.randn(1, 1, 32).expand(1, 2 ** 40, 32)), ["x", "seq", "L"]),
        ("attention n_random_features=2**62", lambda: PixelflyAttention(32, 4, n_random_features=2 ** 62), ["n_random_features"]),
        ("set_cache_limit 2**70", lambda: ops.set_cache_limit(2 ** 70), ["nbytes"]),
        ("set_cpu_isa 7", lambda: attention_ops.set_cpu_isa(7), ["isa"]),
        ("get_batches batch_size=0", lambda: next(data.get_batches(b"abcdefgh" * 10, 4, 0)), ["batch_size"]),
        ("get_batches batch_size=-1", lambda: next(data.get_batches(b"abcdefgh" * 10, 4, -1)), ["batch_size"]),
        ("get_batches seq_len=-3", lambda: next(data.get_batches(b"abcdefgh" * 10, -3, 2)), ["seq_len"]),
        ("get_batches seq_len=0", lambda: next(data.get_batches(b"abcdefgh" * 10, 0, 2)), ["seq_len"]),
        ("get_batches n_batches=-1", lambda: next(data.get_batches(b"abcdefgh" * 10, 4, 2, n_batches=-1)), ["n_batches"]),
        ("iterate_batches batch_size=0", lambda: next(data.iterate_batches(x, batch_size=0)), ["batch_size"]),
        ("iterate_batches batch_size=-2", lambda: next(data.iterate_batches(x, batch_size=-2)), ["batch_size"]),
        ("iterate_batches no tensors", lambda: next(data.iterate_batches(batch_size=2)), ["tensors"]),
        ("ByteLMDataset seq_len=0", lambda: data.ByteLMDataset(b"abc" * 9, 0), ["seq_len"]),
        ("ByteLMDataset stride=-1", lambda: data.ByteLMDataset(b"abc" * 9, 4, -1), ["stride"]),
        ("synthetic_text n_bytes=-1", lambda: data.synthetic_text(-1), ["n_bytes"]),
        ("split_text 1.5", lambda: data.split_text(b"abc", 1.5), ["val_fraction"]),
        ("layout_to_mask block=2**62", lambda: layouts.layout_to_mask(lay, 2 ** 62), ["block"]),
        ("layout_to_mask ragged", lambda: layouts.layout_to_mask([[True], [True, False]], 2), ["layout"]),
        ("mask_to_layout ragged", lambda: layouts.mask_to_layout([[True], [True, False]], 1), ["mask"]),
        ("layout_to_csr ragged", lambda: layouts.layout_to_csr([[True, False], [True]]), ["layout"]),
        ("csr_transpose ragged", lambda: layouts.csr_transpose(2, 2, [[0], [1, 2]], [0, 1]), ["row_ptr"]),
        ("BlockIndex ragged", lambda: layouts.BlockIndex.from_layout([[True], [False, True]]), ["layout"]),
    ]
    for fname, names in (("flat_butterfly_layout", ["rows"]), ("butterfly_product_layout", ["rows"]),
                         ("random_layout", ["rows"]), ("local_layout", ["rows"]),
                         ("sparse_transformer_layout", ["rows"]), ("bigbird_layout", ["rows"])):
        for big in BIG:
            extra = {"flat_butterfly_layout": (1,), "butterfly_product_layout": (1,),
                     "random_layout": (0.5,), "local_layout": (1,),
                     "sparse_transformer_layout": (1,), "bigbird_layout": ()}[fname]
            errs.append((f"{fname} rows={big}", (lambda f=getattr(layouts, fname), b=big, e=extra: f(b, 4, *e)), names))
    errs.append(("flat_butterfly_layout n_factors=2**64", lambda: layouts.flat_butterfly_layout(4, 4, 2 ** 64), ["n_factors"]))
    errs.append(("butterfly_factor_layout n=2**63", lambda: layouts.butterfly_factor_layout(2 ** 63, 2), ["n"]))
    errs.append(("local_layout window=2**63", lambda: layouts.local_layout(4, 4, 2 ** 63), ["window"]))
    errs.append(("bigbird window=2**63", lambda: layouts.bigbird_layout(4, 4, window=2 ** 63), ["window"]))
    errs.append(("csr_transpose rows=2**63", lambda: layouts.csr_transpose(2 ** 63, 2, [0], []), ["rows"]))
    errs.append(("default_butterfly_size 2**63", lambda: layouts.default_butterfly_size(2 ** 63, 4), ["rows"]))
    cases += [(name, error_case(fn, names)) for name, fn, names in errs]
    # random extreme arguments through the layout API
    import random
    rng = random.Random(0)
    sigs = {"flat_butterfly_layout": ["rows", "cols", "n_factors", "butterfly_size"],
            "butterfly_product_layout": ["rows", "cols", "n_factors", "butterfly_size"],
            "butterfly_factor_layout": ["n", "k"], "local_layout": ["rows", "cols", "window"],
            "bigbird_layout": ["rows", "cols", "window", "n_global", "n_random", "seed"],
            "sparse_transformer_layout": ["rows", "cols", "stride"],
            "random_layout": ["rows", "cols", "density", "seed"],
            "layout_to_mask": ["layout", "block"], "mask_to_layout": ["mask", "block"],
            "default_butterfly_size": ["rows", "cols"]}
    small = [1, 2, 4, 8]
    for fname, params in sigs.items():
        for i in range(16):
            args = []
            for p in params:
                if p in ("layout", "mask"):
                    args.append(rng.choice([lay, np.ones((4, 4), bool), [[True], [True, False]], None,
                                            np.ones((2, 2, 2), bool), np.ones((4, 4), np.int8)]))
                else:
                    args.append(rng.choice(EXTREME) if rng.random() < 0.5 else rng.choice(small))
            cases.append((f"fuzz {fname}{tuple(args)!r:.60}",
                          fuzz_case(getattr(layouts, fname), tuple(args), params + ["block b1", "block b2"])))
    cases += [(f"lzw random stream {s}", lzw_case(s)) for s in range(100)]
    cases += [(f"truncated EC02 at {c:.2f}", truncated_case(c)) for c in (0.02, 0.05, 0.08, 0.3, 0.6, 0.95)]
    cases += [(f"PIXELFLY_CPU_CACHE_MB={v}", env_case(v)) for v in ("-5", "abc", "1e3")]
    return cases


# ------------------------------------------------------------------ driver
def worker(start):
    import warnings
    warnings.simplefilter("ignore")
    cases = build_cases()
    print(f"N {len(cases)}", flush=True)
    for i in range(start, len(cases)):
        print(f"S {i}", flush=True)
        try:
            status, detail = cases[i][1]()
        except Exception as e:  # noqa: BLE001  (a bug of the case itself)
            status, detail = "unclear", f"{type(e).__name__}: {str(e)[:160]}"
        print(f"R {i} {status} {detail}".replace("\n", " "), flush=True)


def limit_memory():
    """The worker may use at most MEM_LIMIT bytes of address space: a case that tries to
    allocate terabytes fails there instead of swapping the machine."""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))


MEM_LIMIT = 8 << 30


def drive(timeout):
    import selectors
    results, names, start, total = {}, None, 0, None
    while total is None or start < total:
        p = subprocess.Popen([sys.executable, "-m", "benchmarks.adversarial", "--worker", str(start)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
                             preexec_fn=limit_memory)
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        current, last = None, time.time()
        while True:
            if not sel.select(timeout=1.0):
                if current is not None and time.time() - last > timeout:
                    p.kill()
                    results[current] = ("hang", f"no answer in {timeout} s")
                    start = current + 1
                    break
                continue
            line = p.stdout.readline()
            if not line:
                p.wait()
                if current is not None and current not in results:
                    results[current] = ("crash", f"worker died (exit {p.returncode})")
                    start = current + 1
                else:
                    start = total if total is not None else 0
                break
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "N":
                total = int(rest)
            elif kind == "S":
                current, last = int(rest), time.time()
            elif kind == "R":
                i, status, detail = (rest.split(" ", 2) + [""])[:3]
                results[int(i)] = (status, detail)
                current = None
        if total is None:
            raise SystemExit("the worker failed before listing its cases")
    return results, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case (hang)")
    ap.add_argument("--show", type=int, default=60, help="failing cases to print")
    args = ap.parse_args()
    if args.worker is not None:
        return worker(args.worker)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    results, total = drive(args.timeout)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    names = [n for n, _ in build_cases()]
    counts = {k: 0 for k in ("ok", "crash", "hang", "wrong", "unclear")}
    shown = 0
    for i in range(total):
        status, detail = results.get(i, ("crash", "no result"))
        counts[status] = counts.get(status, 0) + 1
        if status != "ok" and shown < args.show:
            print(f"{status:8s} {names[i]}: {detail}")
            shown += 1
    print(f"cases tried: {total}; " + ", ".join(f"{k}: {v}" for k, v in counts.items())
          + f" ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
