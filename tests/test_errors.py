"""Errors a user can act on: every bad argument gets a ValueError/TypeError that names it
and says what was expected, before anything is allocated; no C-internal names
(``pf_bsmm``, ``ldx``, ``C*b2``, ``PF_MAX_GRID``), no wrapped arithmetic, no allocator
failures for sizes that could never fit."""
import re

import numpy as np
import pytest
import torch

from pixelfly import PixelflyAttention, PixelflyLinear, layouts, ops, reference
from pixelfly.layouts import BlockIndex

INTERNAL = re.compile(r"\bpf_\w+|\bld[xyo]\b|C\*b2|R\*b1|PF_MAX_\w+|out of memory|"
                      r"too large to convert|index out of range|must have 0 columns")


def raises_clear(fn, name, exc=(ValueError, TypeError), match=None):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    assert re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", msg), f"{name!r} not named in: {msg}"
    assert not INTERNAL.search(msg), f"internal detail in: {msg}"
    if match:
        assert re.search(match, msg), msg
    return msg


LAY = layouts.flat_butterfly_layout(4, 4, 1)
IDX = ops.index_tensors(BlockIndex.from_layout(LAY))
BLOCKS = torch.randn(len(IDX[1]), 8, 8)
X = torch.randn(5, 32)


@pytest.mark.parametrize("b1,b2,name", [(2 ** 62, 8, "b1"), (8, 2 ** 62, "b2"), (2 ** 61 + 1, 8, "b1"),
                                        (0, 8, "b1"), (8, -1, "b2"), (16, 8, "b1")])
def test_bwd_w_block_sizes_are_named(b1, b2, name):
    raises_clear(lambda: ops.bsmm_bwd_w(X, X, *IDX, b1=b1, b2=b2), name)


def test_activation_shapes_and_dtypes_are_named():
    msg = raises_clear(lambda: ops.bsmm_fwd(torch.randn(5, 31), BLOCKS, *IDX), "x")
    assert "32 columns (in_features = 4 block-columns x b2 = 8), got 31" in msg
    raises_clear(lambda: ops.bsmm_bwd_x(torch.randn(5, 31), BLOCKS, *IDX), "dy",
                 match="out_features")
    raises_clear(lambda: ops.bsmm_fwd(X.int(), BLOCKS, *IDX), "x", TypeError)
    raises_clear(lambda: ops.bsmm_fwd(X, BLOCKS.double(), *IDX), "blocks", TypeError)
    raises_clear(lambda: ops.bsmm_fwd(X, BLOCKS[:-1], *IDX), "blocks")


@pytest.mark.parametrize("op,name", [("fwd", "x"), ("bwd_x", "dy"), ("bwd_w", "x")])
def test_impossible_sizes_fail_before_allocating(op, name):
    huge = torch.randn(1, 32).expand(2 ** 40, 32)
    fn = {"fwd": lambda: ops.bsmm_fwd(huge, BLOCKS, *IDX),
          "bwd_x": lambda: ops.bsmm_bwd_x(huge, BLOCKS, *IDX),
          "bwd_w": lambda: ops.bsmm_bwd_w(torch.randn(1, 32).expand(2 ** 40, 32), huge, *IDX, b1=8, b2=8)}[op]
    raises_clear(fn, name if op != "bwd_w" else "dy", match=r"1099511627776 rows.*memory")


def test_layer_with_an_impossible_input_names_x():
    lin = PixelflyLinear(64, 64, block_size=16, n_factors=1, rank=2)
    raises_clear(lambda: lin(torch.randn(1, 64).expand(2 ** 40, 64)), "x", match="memory")


def test_layer_input_on_another_device_names_x():
    # the layer's kernels skip the ops' Python checks (pixelfly.ops.internal): its own check
    # must catch x on another device (meta here: any machine has it)
    lin = PixelflyLinear(64, 64, block_size=16, n_factors=1, rank=2)
    with pytest.raises(ValueError, match="input x is on meta but the layer's parameters are on cpu"):
        lin(torch.randn(3, 64, device="meta"))


def test_expanded_and_strided_inputs_are_computed_not_refused():
    """x with overlapping rows (stride 0, as expand gives) was refused with
    'pf_bsmm: ldx must be >= in = C*b2'; it is a valid input like any other."""
    x = torch.randn(1, 32, dtype=torch.float64).expand(6, 32)
    w = BLOCKS.double()
    torch.testing.assert_close(ops.bsmm_fwd(x, w, *IDX), reference.bsmm_fwd(x, w, LAY))
    dy = torch.randn(1, 32, dtype=torch.float64).expand(6, 32)
    torch.testing.assert_close(ops.bsmm_bwd_x(dy, w, *IDX), reference.bsmm_bwd_x(dy, w, LAY))
    torch.testing.assert_close(ops.bsmm_bwd_w(dy, x, *IDX, b1=8, b2=8),
                               reference.bsmm_bwd_w(dy, x, LAY, 8, 8))
    xt = torch.randn(32, 6, dtype=torch.float64).t()          # column-major rows
    torch.testing.assert_close(ops.bsmm_fwd(xt, w, *IDX), reference.bsmm_fwd(xt, w, LAY))


@pytest.mark.parametrize("value", [2 ** 63, 2 ** 64, 2 ** 70, -2 ** 63 - 1, 2 ** 62])
@pytest.mark.parametrize("fn,arg,pos", [
    ("flat_butterfly_layout", "rows", (None, 4, 1)), ("flat_butterfly_layout", "cols", (4, None, 1)),
    ("flat_butterfly_layout", "n_factors", (4, 4, None)),
    ("butterfly_product_layout", "rows", (None, 4, 1)), ("random_layout", "cols", (4, None, 0.5)),
    ("local_layout", "window", (4, 4, None)), ("sparse_transformer_layout", "stride", (4, 4, None)),
    ("bigbird_layout", "rows", (None, 4)), ("butterfly_factor_layout", "n", (None, 2)),
    ("butterfly_factor_layout", "k", (4, None)), ("default_butterfly_size", "rows", (None, 4)),
    ("csr_transpose", "rows", (None, 2, [0, 0, 0], [])),
])
def test_huge_integers_in_the_layout_api_are_value_errors(fn, arg, pos, value):
    args = tuple(value if a is None else a for a in pos)
    if fn == "default_butterfly_size" and value == 2 ** 62:  # valid: no grid is built
        assert layouts.default_butterfly_size(*args) == 4
        return
    raises_clear(lambda: getattr(layouts, fn)(*args), arg, ValueError)


@pytest.mark.parametrize("call,name", [
    (lambda r: layouts.layout_to_mask(r, 2), "layout"), (lambda r: layouts.mask_to_layout(r, 1), "mask"),
    (lambda r: layouts.layout_to_csr(r), "layout"), (lambda r: BlockIndex.from_layout(r), "layout"),
    (lambda r: layouts.csr_transpose(2, 2, r, [0]), "row_ptr"),
    (lambda r: layouts.csr_transpose(2, 2, [0, 1, 1], r), "col_idx"),
])
def test_ragged_lists_are_value_errors(call, name):
    raises_clear(lambda: call([[True], [True, False]]), name, ValueError, match="ragged")


def test_mask_and_block_limits_are_in_words():
    raises_clear(lambda: layouts.layout_to_mask(LAY, 2 ** 62), "block", ValueError)
    raises_clear(lambda: layouts.layout_to_mask(LAY, 2 ** 14), "block", ValueError, match="2\\*\\*30")
    raises_clear(lambda: layouts.flat_butterfly_layout(2 ** 16, 2 ** 16, 1), "rows", ValueError)


def test_attention_sizes():
    m = PixelflyAttention(32, 4, block_size=16)
    x = torch.randn(1, 1, 32).expand(1, 2 ** 40, 32)
    raises_clear(lambda: m(x), "L", ValueError, match="block grid")
    raises_clear(lambda: PixelflyAttention(32, 4, n_random_features=2 ** 62), "n_random_features",
                 ValueError)
    raises_clear(lambda: PixelflyAttention(32, 4, seq_len=-3), "seq_len", ValueError)
    from pixelfly.attention import sparse_lowrank_attention
    from pixelfly.attention_ops import AttentionIndex
    q = torch.randn(1, 1, 32, 8)
    raises_clear(lambda: sparse_lowrank_attention(q, q, q, AttentionIndex(np.ones((2, 2), bool)), 16,
                                                  features=torch.randn(4, 7)), "features", ValueError)


def test_cache_limit_range():
    raises_clear(lambda: ops.set_cache_limit(2 ** 70), "nbytes", ValueError)
