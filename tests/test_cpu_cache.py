"""Large CPU outputs: the output cache (reused buffers) and the streaming-store path."""
import pytest
import torch

from pixelfly import ops, reference
from pixelfly.layouts import BlockIndex, random_layout
from testing import assert_close_to_oracle


def big_case(dtype, R=24, C=31, b=32, T=1500, seed=0):
    """y [T, R*b] and dx [T, C*b] of >= 4 MiB (fp32): cached and streamed; C*b*4 bytes
    per row is not a multiple of 64, so row starts alternate between aligned/unaligned."""
    layout = random_layout(R, C, 0.2, seed=seed)
    it = ops.index_tensors(BlockIndex.from_layout(layout))
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randn(len(it[1]), b, b, generator=g, dtype=torch.float64)
    x = torch.randn(T, C * b, generator=g, dtype=torch.float64)
    dy = torch.randn(T, R * b, generator=g, dtype=torch.float64)
    return torch.as_tensor(layout), it, blocks, x, dy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_outputs_match_reference_fresh_and_reused(dtype):
    old = ops.set_cache_limit(256 << 20)
    try:
        ops.empty_cache()
        lay, it, blocks, x, dy = big_case(dtype, T=1500 if dtype == torch.float32 else 3000)
        y64 = reference.bsmm_fwd(x, blocks, lay)
        dx64 = reference.bsmm_bwd_x(dy, blocks, lay)
        yb = reference.bsmm_fwd(x.to(dtype), blocks.to(dtype), lay)
        dxb = reference.bsmm_bwd_x(dy.to(dtype), blocks.to(dtype), lay)
        ptrs = []
        for _ in range(2):  # fresh buffers, then (after they are freed) the cached ones
            y = ops.bsmm_fwd(x.to(dtype), blocks.to(dtype), *it)
            dx = ops.bsmm_bwd_x(dy.to(dtype), blocks.to(dtype), *it)
            assert y.numel() * y.element_size() >= 4 << 20
            assert_close_to_oracle(y, y64, yb, "fwd")
            assert_close_to_oracle(dx, dx64, dxb, "bwd_x")
            ptrs.append((y.data_ptr(), dx.data_ptr()))
            del y, dx
        assert ptrs[1][0] in ptrs[0] and ptrs[1][1] in ptrs[0]  # the second round reused them
        assert ops.cache_held() > 0
    finally:
        ops.set_cache_limit(old)


def test_cache_limit_and_clear():
    old = ops.set_cache_limit(64 << 20)
    try:
        lay, it, blocks, x, dy = big_case(torch.float32)
        x, blocks = x.float(), blocks.float()
        y = ops.bsmm_fwd(x, blocks, *it)
        nbytes = y.numel() * 4
        del y
        assert ops.cache_held() >= nbytes
        assert ops.empty_cache() >= nbytes and ops.cache_held() == 0
        assert ops.set_cache_limit(0) == 64 << 20  # off: freed tensors are not kept
        y = ops.bsmm_fwd(x, blocks, *it)
        y.add_(1.0)  # an ordinary, writable tensor either way
        del y
        assert ops.cache_held() == 0
        ops.set_cache_limit(1 << 20)  # below the size of one buffer: nothing is kept
        del_me = ops.bsmm_fwd(x, blocks, *it)
        del del_me
        assert ops.cache_held() == 0
    finally:
        ops.set_cache_limit(old)


def test_cache_bad_arguments():
    with pytest.raises(ValueError, match="nbytes"):
        ops.set_cache_limit(-1)
    with pytest.raises(TypeError, match="nbytes"):
        ops.set_cache_limit(1.5)


def test_cached_outputs_survive_autograd_and_pickling(tmp_path):
    lay, it, blocks, x, dy = big_case(torch.float32, T=1200)
    x = x.float().requires_grad_()
    w = blocks.float().requires_grad_()
    y = ops.bsmm(x, w, it)
    y.backward(dy.float())
    torch.testing.assert_close(x.grad.double(), reference.bsmm_bwd_x(dy, blocks, lay), rtol=1e-4, atol=1e-3)
    torch.save(y.detach(), tmp_path / "y.pt")
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), y.detach())


def _run(code, env=None, timeout=300):
    import os
    import subprocess
    import sys
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                          timeout=timeout, cwd=os.path.dirname(os.path.dirname(__file__)))


BIG_OP = ("import torch; from pixelfly import ops; from pixelfly.layouts import BlockIndex, "
          "flat_butterfly_layout as f; it = ops.index_tensors(BlockIndex.from_layout(f(64, 32, 1))); "
          "y = ops.bsmm_fwd(torch.randn(1024, 1024), torch.randn(len(it[1]), 32, 32), *it); ")


@pytest.mark.parametrize("value", ["-5", "abc", "1e3", "12.5", ""])
def test_bad_cache_env_is_an_error(value):
    p = _run(BIG_OP, {"PIXELFLY_CPU_CACHE_MB": value})
    assert p.returncode != 0
    assert f"PIXELFLY_CPU_CACHE_MB must be a non-negative integer number of MiB" in p.stderr
    assert f"got '{value}'" in p.stderr


def test_good_cache_env_is_the_limit():
    p = _run(BIG_OP + "del y; print(ops.set_cache_limit(0) >> 20)", {"PIXELFLY_CPU_CACHE_MB": "64"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["64"]


STEPS = r"""
import random, resource, sys, torch
from pixelfly import PixelflyLinear, ops
torch.manual_seed(0)
layer, rng = PixelflyLinear(1024, 4096), random.Random(0)
for _ in range(int(sys.argv[2])):
    T = 1024 if sys.argv[1] == "fixed" else rng.randint(900, 1150)
    layer(torch.randn(T, 1024, requires_grad=True)).sum().backward()
    assert ops.cache_held() <= 512 << 20
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_varying_rows_do_not_grow_memory():
    """T uniform in 900..1150: every new size used to map new buffers (RSS 430 MiB -> 1.5 GiB
    over 1000 steps); size classes keep the peak within 1.3x of the fixed-T run."""
    import subprocess
    import sys
    peak = {}
    for mode in ("fixed", "varying"):
        p = subprocess.run([sys.executable, "-c", STEPS, mode, "60"], capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stderr
        peak[mode] = int(p.stdout.split()[-1])
    assert peak["varying"] <= 1.3 * peak["fixed"], peak


def test_empty_cache_returns_memory_to_the_os():
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    old = ops.set_cache_limit(256 << 20)
    try:
        lay, it, blocks, x, dy = big_case(torch.float32, T=4000)
        x, blocks = x.float(), blocks.float()
        ys = [ops.bsmm_fwd(x + i, blocks, *it) for i in range(4)]
        del ys
        held = ops.cache_held()
        assert held >= 4 * 4000 * 24 * 32 * 4
        before = rss()
        assert ops.empty_cache() == held
        assert before - rss() >= 0.9 * held      # unmapped, not just kept by the allocator
    finally:
        ops.set_cache_limit(old)
