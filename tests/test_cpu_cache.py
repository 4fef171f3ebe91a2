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
