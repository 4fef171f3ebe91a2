"""ButterflyLinear (the paper's butterfly-product baseline) equals the dense product."""
import pytest
import torch

from pixelfly.butterfly import ButterflyLinear


@pytest.mark.parametrize("features,block", [(32, 16), (64, 8), (128, 16)])
def test_equals_dense_product_of_factors(features, block):
    layer = ButterflyLinear(features, block_size=block, dtype=torch.float64)
    W = torch.eye(features, dtype=torch.float64)
    for B in layer.dense_factors():  # W = B_n ... B_2
        W = B @ W
    x = torch.randn(3, 5, features, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ W.T + layer.bias)
    n = features // block
    assert len(layer.factors) == n.bit_length() - 1
    assert all(f.shape == (2 * n, block, block) for f in layer.factors)


def test_gradcheck_and_output_scale():
    layer = ButterflyLinear(16, block_size=4, dtype=torch.float64)
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    big = ButterflyLinear(1024, block_size=32)
    xs = torch.randn(4096, 1024)
    ratio = big(xs).std() / torch.nn.Linear(1024, 1024)(xs).std()
    assert 0.8 < ratio < 1.25


def test_bad_sizes():
    with pytest.raises(ValueError, match="power of two"):
        ButterflyLinear(96, block_size=32)
    with pytest.raises(ValueError, match="features"):
        ButterflyLinear(0)
