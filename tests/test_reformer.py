"""Reformer LSH attention (pixelfly.reformer) against the brute-force oracle
pixelfly.reference.lsh_attention on the same hashing; gradients; causality; the module in
pixelfly's models."""
import pytest
import torch

from testing import assert_close_to_oracle

from pixelfly import reference
from pixelfly.models import build_model, example_input
from pixelfly.reformer import ReformerAttention, lsh_attention, lsh_buckets


def problem(B=2, H=3, L=32, d=8, n_buckets=4, n_hashes=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(B, H, L, d, generator=g).to(dtype)
    v = torch.randn(B, H, L, d, generator=g).to(dtype)
    buckets = lsh_buckets(qk, n_buckets, n_hashes, generator=g)
    return qk, v, buckets


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk,n_buckets,n_hashes", [(8, 4, 3), (4, 8, 1), (32, 2, 2), (16, 6, 2)])
def test_matches_brute_force(chunk, n_buckets, n_hashes, causal, dtype):
    qk, v, buckets = problem(n_buckets=n_buckets, n_hashes=n_hashes, seed=chunk + n_buckets,
                             dtype=dtype)
    key_mask = torch.ones(2, 32, dtype=torch.bool)
    key_mask[1, 25:] = False                                  # padding in one row
    got = lsh_attention(qk, v, buckets, chunk, causal=causal, key_mask=key_mask)
    want = reference.lsh_attention(qk.double(), v.double(), buckets, chunk, causal, key_mask)
    base = reference.lsh_attention(qk.float(), v.float(), buckets, chunk, causal, key_mask)
    assert_close_to_oracle(got.to(dtype), want, base.to(dtype), "lsh")


def test_buckets_are_angular_lsh():
    qk, _, buckets = problem(n_buckets=8, n_hashes=2)
    assert buckets.shape == (2, 3, 2, 32) and buckets.min() >= 0 and buckets.max() < 8
    R = torch.randn(8, 2, 4, generator=torch.Generator().manual_seed(5))
    b1 = lsh_buckets(qk, 8, 2, rotations=R)
    assert torch.equal(b1, lsh_buckets(3.0 * qk, 8, 2, rotations=R))        # scale invariant
    assert torch.equal((b1 + 4) % 8, lsh_buckets(-qk, 8, 2, rotations=R))    # antipodes


def test_self_only_when_nothing_else():
    """Causal position 0 has only itself: its output is its own value. Elsewhere a query's
    own key gets (numerically) no weight."""
    qk, v, buckets = problem(L=16, n_buckets=2, n_hashes=1)
    out = lsh_attention(qk, v, buckets, 16, causal=True)          # one chunk: all positions
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0])
    v2 = v.clone()
    v2[:, :, 5] += 100.0                                        # position 5's own value
    out2 = lsh_attention(qk, v2, buckets, 16, causal=True)
    torch.testing.assert_close(out2[:, :, 5], out[:, :, 5])


def test_gradients_flow_and_gradcheck():
    qk, v, buckets = problem(B=1, H=2, L=16, d=4, n_buckets=4, n_hashes=2, dtype=torch.float64)
    qk.requires_grad_(), v.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: lsh_attention(a, b, buckets, 4, causal=True), (qk, v))
    out = lsh_attention(qk, v, buckets, 4)
    gq, gv = torch.autograd.grad(out.square().sum(), (qk, v))
    assert torch.isfinite(gq).all() and gq.abs().sum() > 0 and gv.abs().sum() > 0


def test_causal_respected():
    """With the hashing fixed, nothing at positions after i reaches position i."""
    qk, v, buckets = problem(L=32, n_buckets=4, n_hashes=2)
    out = lsh_attention(qk, v, buckets, 8, causal=True)
    qk2, v2 = qk.clone(), v.clone()
    qk2[:, :, 20:] = torch.randn_like(qk2[:, :, 20:])
    v2[:, :, 20:] = 1e3
    out2 = lsh_attention(qk2, v2, buckets, 8, causal=True)
    assert torch.equal(out[:, :, :20], out2[:, :, :20])
    assert not torch.equal(out[:, :, 20:], out2[:, :, 20:])


def test_module_in_models_trains():
    model = build_model("gpt2", "tiny", attention="reformer")
    assert any(isinstance(m, ReformerAttention) for m in model.modules())
    x = example_input("gpt2", model.config, batch=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    vit = build_model("vit", "tiny", attention="reformer")
    assert vit(example_input("vit", vit.config)).shape[0] == 2


def test_module_pads_hashes_and_checks():
    torch.manual_seed(0)
    m = ReformerAttention(32, 2, 40, causal=True, chunk_size=8).eval()
    x = torch.randn(2, 37, 32)                                  # not a multiple of the chunk
    y = m(x)
    assert y.shape == x.shape
    assert torch.equal(m(x), y)                                  # evaluation hashing is fixed
    # the padded tail is masked: a key mask that drops nothing changes nothing
    assert torch.equal(m(x, torch.ones(2, 37, dtype=torch.bool)), y)
    m.train()                                                    # training: fresh rotations
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    b = m(x)
    torch.manual_seed(1)
    assert torch.equal(m(x), a) and not torch.equal(a, b)
    with pytest.raises(ValueError, match="x must be"):
        m(torch.randn(2, 5, 31))
    with pytest.raises(ValueError, match="n_buckets"):
        ReformerAttention(32, 2, n_buckets=3)
    qk = torch.randn(1, 1, 12, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        lsh_attention(qk, qk, torch.zeros(1, 1, 1, 12, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="buckets"):
        lsh_attention(qk, qk, torch.zeros(1, 1, 12, dtype=torch.long), 4)
