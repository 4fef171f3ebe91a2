"""What the AVX-512 and AVX512_BF16 kernels execute, instruction by instruction, on a CPU
this machine may not have.

Where no AVX512_BF16 CPU is at hand its speed cannot be timed, but what it runs can be
counted: the C core runs on the emulated Sapphire Rapids of tests/emulator.py (built
without UBSan, like the library) and every executed instruction is attributed to its
function and mnemonic. Per op the table gives the instructions per arithmetic instruction
(``vdpbf16ps``: 64 FLOPs, ``vfmadd*ps`` on zmm: 32), overall and inside the register tile,
and the tile's most frequent instructions: the overhead a real core must issue beside
its FMA ports. Counts, not seconds: the same on every machine.

    python -m benchmarks.instruction_mix --json results/instruction_mix.json --plot results/instruction_mix.png
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys

import numpy as np
import torch
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the emulator is a test helper

import emulator  # noqa: E402
from pixelfly import ops  # noqa: E402
from pixelfly.layouts import BlockIndex, random_layout  # noqa: E402

ARITH = {"vdpbf16ps": 64, "vfmadd231ps": 32, "vfmadd213ps": 32, "vfmadd132ps": 32}
TILE = re.compile(r"^(rows|mk|pf_tile)")  # the register-tile functions of kernels_simd.h
RUNTIME = {"memcpy", "memset", "memmove"}  # the test runtime's; glibc's in the library


def disassembly(program):
    """address -> (function, mnemonic) of every instruction of the program."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", program], check=True,
                          capture_output=True, text=True).stdout
    where, fn = {}, None
    for line in text.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:", line)
        if m:
            fn = m.group(1).split(".")[0]
            continue
        m = re.match(r"\s+([0-9a-f]+):\s+(\S+)", line)
        if m:
            where[int(m.group(1), 16)] = (fn, m.group(2))
    return where


def counted(emu):
    """Install a hook counting executed instructions by address; returns the counter."""
    counts = collections.Counter()
    cpu, hook = emu.session.cpu, emu.bx.Hook()

    def before(sess, cpu_id, insn):
        counts[cpu.rip] += 1
    hook.before_execution = before
    hook.hlt, hook.exception = emu.hook.hlt, emu.hook.exception
    emu.hook = hook
    return counts


def case(R, C, b, T, density, dtype, seed=0):
    layout = random_layout(R, C, density, seed=seed)
    it = [t.numpy() for t in ops.index_tensors(BlockIndex.from_layout(layout))]
    g = torch.Generator().manual_seed(seed)
    nnz = len(it[1])

    def arr(*shape):
        t = torch.randn(*shape, generator=g).to(dtype)
        return t.view(torch.int16).numpy().view(np.uint16) if dtype == torch.bfloat16 else t.numpy()
    return (R, C, b, b, *it), arr(T, C * b), arr(nnz, b, b), arr(T, R * b), nnz


def profile(emu, where, counts, op, dtype, isa, R, C, b, T, density):
    index, x, w, dy, nnz = case(R, C, b, T, density, dtype)
    operands = {"fwd": dict(x=x, w=w), "bwd_x": dict(dy=dy, w=w), "bwd_w": dict(x=x, dy=dy)}[op]
    name = "bfloat16" if dtype == torch.bfloat16 else "float32"
    counts.clear()
    emu.bsmm(op, name, isa, index, T, **operands)
    by_fn, tile_mix = collections.Counter(), collections.Counter()
    arith = tile_total = 0
    for rip, n in counts.items():
        fn, mnem = where.get(rip, ("?", "?"))
        by_fn[fn] += n
        arith += n * (mnem in ARITH)
        if TILE.match(fn):
            tile_total += n
            tile_mix[mnem] += n
    runtime = sum(by_fn[f] for f in RUNTIME)
    total = sum(counts.values()) - runtime
    flops = 2 * T * nnz * b * b
    tile_arith = sum(n for m, n in tile_mix.items() if m in ARITH)
    return dict(op=op, dtype=name, isa=isa, shape=[R * b, C * b], T=T, block=b, density=density,
                flops=flops, instructions=total, runtime_copies=runtime, arithmetic=arith,
                flops_per_instruction=flops / total, per_arithmetic=total / max(arith, 1),
                tile_share=tile_total / total, tile_per_arithmetic=tile_total / max(tile_arith, 1),
                tile_top=tile_mix.most_common(6))


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r['dtype'][:4]} {r['op']}" for r in rows]
    tile = [r["tile_per_arithmetic"] for r in rows]
    whole = [r["per_arithmetic"] for r in rows]
    xs = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(xs - 0.2, whole, 0.4, label="whole call")
    ax.bar(xs + 0.2, tile, 0.4, label="register tile")
    ax.set_xticks(xs, labels, rotation=20)
    ax.set_ylabel("instructions per vdpbf16ps / FMA")
    ax.set_title("Executed instructions per arithmetic instruction (emulated Sapphire Rapids)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1024, help="square weight side (default 1024)")
    p.add_argument("--rows", type=int, default=512, help="T (default 512)")
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--density", type=float, default=0.125)
    p.add_argument("--json")
    p.add_argument("--plot")
    a = p.parse_args(argv)
    why = emulator.unavailable()
    if why:
        sys.exit(f"instruction_mix: no emulator here: {why}")
    emu = emulator.Emulator(sanitize=False)
    try:
        where, counts = disassembly(emu.program), counted(emu)
        R = a.size // a.block
        jobs = [(op, dt, isa) for dt, isa in ((torch.bfloat16, "avx512bf16"), (torch.float32, "avx512"))
                for op in ("fwd", "bwd_x", "bwd_w")]
        rows = [profile(emu, where, counts, op, dt, isa, R, R, a.block, a.rows, a.density)
                for op, dt, isa in tqdm(jobs, desc="emulated calls")]
    finally:
        emu.close()
    print(f"{a.size}x{a.size}, block {a.block}, density {a.density}, T = {a.rows}; instructions "
          "executed (test runtime's byte copies left out)")
    print(f"{'dtype':9} {'op':6} {'instr':>9} {'FLOP/instr':>10} {'per arith':>9} {'tile share':>10} "
          f"{'tile per arith':>14}  tile's most frequent")
    for r in rows:
        top = ", ".join(f"{m} {n / max(r['arithmetic'], 1):.2f}" for m, n in r["tile_top"][:5])
        print(f"{r['dtype']:9} {r['op']:6} {r['instructions']:9d} {r['flops_per_instruction']:10.1f} "
              f"{r['per_arithmetic']:9.2f} {r['tile_share']:10.2f} {r['tile_per_arithmetic']:14.2f}  {top}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)
    if a.plot:
        plot(rows, a.plot)


if __name__ == "__main__":
    main()
