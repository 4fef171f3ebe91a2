"""attn_implementation="pixelfly" inside transformers models (pixelfly.hf_attention): GPT-2,
Llama (grouped-query attention) and BERT (padding), small random-init configs, against the
float64 oracle of pixelfly.reference run through the same models; dense layouts against the
models' SDPA; padding excluded exactly; KV-cache generation against no cache; training;
clear errors."""
import copy
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: E402
from transformers.modeling_utils import AttentionInterface  # noqa: E402

from testing import assert_close_to_oracle  # noqa: E402

import pixelfly  # noqa: E402
from pixelfly import reference  # noqa: E402
from pixelfly.hf_attention import DEFAULTS, register_hf_attention  # noqa: E402

B8 = 8   # block of the test layouts: 64 positions -> an 8 x 8 block grid
IMPLS = {
    "t_pixelfly": register_hf_attention("t_pixelfly", "pixelfly", block_size=B8),
    "t_bigbird": register_hf_attention("t_bigbird", "bigbird", block_size=B8),
    "t_lowrank": register_hf_attention("t_lowrank", "pixelfly", block_size=B8, n_random_features=16),
    "t_dense": register_hf_attention("t_dense", "dense", block_size=B8),
}


def _oracle_for(impl):
    """The same attention from pixelfly.reference (dense L x L masks), in the input dtype."""
    def oracle(module, q, k, v, mask, dropout=0.0, scaling=None, **kwargs):
        causal = module.is_causal
        L = q.shape[2]
        assert k.shape[2] == L, "the oracle runs without cache"
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        elem = None if mask is None else mask[:, :1].bool()         # [B, 1, L, L]
        lay = torch.from_numpy(impl.layout(module.config, L, causal))
        w = impl.features(module, q.shape[-1], q.device)
        if w is None:
            out = reference.masked_attention(q, k, v, lay, impl.block_size, causal, scaling, mask=elem)[0]
        else:
            out = reference.pixelfly_attention(q, k, v, lay, impl.block_size, w.to(q.dtype), causal,
                                               scaling, mask=elem)
        return out.transpose(1, 2).contiguous(), None
    return oracle


for _name, _impl in IMPLS.items():
    AttentionInterface.register(_name + "_oracle", _oracle_for(_impl))
    AttentionMaskInterface.register(_name + "_oracle", sdpa_mask)


def make(family, attn, **over):
    torch.manual_seed(0)
    if family == "gpt2":
        kw = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=96,
                                      **{**kw, **over})
        cls = transformers.GPT2LMHeadModel
    elif family == "llama":
        cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=96,
                                       max_position_embeddings=64, **over)
        cls = transformers.LlamaForCausalLM
    else:
        cfg = transformers.BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, vocab_size=96, max_position_embeddings=64,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **over)
        cls = transformers.BertModel
    cfg.pad_token_id = 0
    return cls._from_config(cfg, attn_implementation=attn).eval()


def batch(family, L=37, B=3, seed=1):
    """Token ids and a padding mask: left padding for the causal models, right for BERT;
    rows of different lengths, L not a multiple of the block."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 96, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    for r, n in enumerate([0, 5, 19][:B]):
        if family == "bert":
            mask[r, L - n:] = 0
        else:
            mask[r, :n] = 0
    return ids, mask


def output(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", ["t_pixelfly", "t_bigbird", "t_lowrank"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_model_matches_float64_oracle(family, name, dtype=torch.float32):
    ids, mask = batch(family)
    model = make(family, name).to(dtype)
    got = output(model, ids, mask)
    model.set_attn_implementation(name + "_oracle")
    base = output(model, ids, mask)
    oracle = output(copy.deepcopy(model).double(), ids, mask)
    valid = mask.bool()
    assert_close_to_oracle(got[valid], oracle[valid], base[valid], f"{family}/{name}")
    # the layout really is sparse at this length (not a disguised dense run)
    lay = IMPLS[name].layout(model.config, ids.shape[1], family != "bert")
    full = torch.ones(lay.shape, dtype=torch.bool)
    assert lay.sum() < (full.tril() if family != "bert" else full).sum()


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_bfloat16_model_matches_float64_oracle(family):
    test_model_matches_float64_oracle(family, "t_lowrank", torch.bfloat16)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_dense_layout_equals_sdpa(family):
    ids, mask = batch(family)
    model = make(family, "t_dense")
    got = output(model, ids, mask)
    model.set_attn_implementation("sdpa")
    want = output(model, ids, mask)
    valid = mask.bool()
    torch.testing.assert_close(got[valid], want[valid], rtol=1e-4, atol=1e-5)
    # and without padding, where the models pass no mask at all (is_causal)
    full = torch.ones_like(mask)
    model.set_attn_implementation("t_dense")
    got = output(model, ids, full)
    model.set_attn_implementation("sdpa")
    torch.testing.assert_close(got, output(model, ids, full), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["t_pixelfly", "t_lowrank"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_padding_excluded_exactly(family, name):
    """What padded positions hold changes nothing, to the bit, at the other positions."""
    ids, mask = batch(family)
    other = torch.where(mask.bool(), ids, torch.randint_like(ids, 1, 96))
    assert not torch.equal(other, ids)
    model = make(family, name)
    valid = mask.bool()
    assert torch.equal(output(model, ids, mask)[valid], output(model, other, mask)[valid])


@pytest.mark.parametrize("name", ["t_pixelfly", "t_lowrank"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_with_cache_matches_no_cache(family, name):
    ids, mask = batch(family, L=13, B=3)
    model = make(family, name)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
              return_dict_in_generate=True, output_scores=True)
    with_cache = model.generate(ids, use_cache=True, **kw)
    no_cache = model.generate(ids, use_cache=False, **kw)
    assert with_cache.sequences.shape[1] == 21          # crosses two block boundaries
    assert torch.equal(with_cache.sequences, no_cache.sequences)
    for a, b in zip(with_cache.scores, no_cache.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_cache_rows_match_oracle_directly():
    """A decode step's rows (over the cache) against the oracle's rows of the full sequence."""
    impl = IMPLS["t_lowrank"]
    model = make("llama", "t_lowrank")
    attn = model.model.layers[1].self_attn
    g = torch.Generator().manual_seed(3)
    B, H, L, d, n = 2, 4, 30, 16, 3
    q, k, v = (torch.randn(B, H, L, d, generator=g) for _ in range(3))
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[1, :4] = False
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    full = (causal & keep[:, None, :])[:, None]
    lay = torch.from_numpy(impl.layout(model.config, L, True))
    w = impl.features(attn, d, q.device)
    want = reference.pixelfly_attention(q.double(), k.double(), v.double(), lay, B8, w.double(),
                                        True, d ** -0.5, mask=full)[:, :, -n:]
    base = reference.pixelfly_attention(q, k, v, lay, B8, w, True, d ** -0.5, mask=full)[:, :, -n:]
    got, _ = impl(attn, q[:, :, -n:], k, v, full[:, :, -n:], is_causal=True)
    assert_close_to_oracle(got.transpose(1, 2), want, base, "decode rows")


def test_training_with_sparsified_linears_and_pixelfly_attention():
    model = make("gpt2", None, attn_pdrop=0.1).train()
    ids, mask = batch("gpt2", L=32, B=4)
    plan = pixelfly.plan(model, {"input_ids": ids}, budget=0.25, block_size=16)
    pixelfly.sparsify(model, plan, attention="t_pixelfly")
    assert model.config._attn_implementation == "t_pixelfly"
    assert any(isinstance(m, pixelfly.PixelflyLinear) for m in model.modules())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_dropout_drops_the_output_in_training_only():
    impl = IMPLS["t_pixelfly"]
    model = make("gpt2", "t_pixelfly")
    attn = model.transformer.h[0].attn
    q, k, v = (torch.randn(2, 4, 24, 16) for _ in range(3))
    clean, _ = impl(attn, q, k, v, None)
    again, _ = impl(attn, q, k, v, None, dropout=0.0)
    assert torch.equal(clean, again)
    torch.manual_seed(0)
    dropped, _ = impl(attn, q, k, v, None, dropout=0.5)
    zero = dropped == 0
    assert 0.4 < zero.float().mean() < 0.6
    torch.testing.assert_close(dropped[~zero], 2 * clean[~zero])


def test_set_attn_implementation_and_defaults_registered():
    ids, mask = batch("gpt2")
    for name in DEFAULTS:
        assert name in AttentionInterface._global_mapping
        model = make("gpt2", "sdpa")
        model.set_attn_implementation(name)
        assert model.config._attn_implementation == name
        assert torch.isfinite(output(model, ids, mask)[mask.bool()]).all()
    a = make("gpt2", "t_pixelfly")
    b = make("gpt2", "sdpa")
    b.set_attn_implementation("t_pixelfly")
    assert torch.equal(output(a, ids, mask), output(b, ids, mask))


def test_clear_errors():
    impl = IMPLS["t_pixelfly"]
    model = make("gpt2", "t_pixelfly")
    attn = model.transformer.h[0].attn
    q = k = v = torch.randn(1, 4, 16, 16)
    for arg in ("softcap", "sliding_window", "s_aux", "position_bias"):
        with pytest.raises(ValueError, match=arg):
            impl(attn, q, k, v, None, **{arg: torch.ones(1) if arg != "sliding_window" else 4})
    band = torch.ones(16, 16, dtype=torch.bool).tril() & torch.ones(16, 16, dtype=torch.bool).triu(-3)
    with pytest.raises(ValueError, match="mask structure"):
        impl(attn, q, k, v, band[None, None])
    bias = torch.zeros(1, 1, 16, 16)
    bias[..., 3] = -2.0
    with pytest.raises(ValueError, match="additive attention bias"):
        impl(attn, q, k, v, bias)
    with pytest.raises(ValueError, match="heads"):
        impl(attn, q, k[:, :3], v[:, :3], None)
    with pytest.raises(ValueError, match="unknown layout"):
        register_hf_attention("t_bad", "butterfly")
    with pytest.raises(ValueError, match="transformers' own"):
        register_hf_attention("sdpa")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="not a registered attn_implementation"):
        pixelfly.sparsify(model, 0.25, {"input_ids": torch.randint(0, 96, (1, 32))},
                          attention="pixelfy", block_size=16)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    from pixelfly.models import build_model
    with pytest.raises(ValueError, match="Hugging Face"):
        pixelfly.sparsify(build_model("gpt2", "tiny"), 0.25, attention="pixelfly")


def test_import_pixelfly_registers_lazily():
    code = ("import sys, pixelfly\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
            "import transformers\n"
            "m = transformers.GPT2LMHeadModel._from_config(transformers.GPT2Config(n_layer=1, "
            "n_embd=32, n_head=2, vocab_size=50), attn_implementation='pixelfly')\n"
            "from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as A\n"
            "assert set(%r) <= set(A.valid_keys())\n"
            "print(m.config._attn_implementation)\n") % (sorted(DEFAULTS),)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "pixelfly"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("r", [0, 6])
def test_key_mask_gradients(causal, r):
    """sparse_lowrank_attention(key_mask=): gradcheck in float64, and the float32 gradients
    against the oracle's (keys excluded element by element, rows left without keys)."""
    from pixelfly.attention import AttentionIndex, gaussian_features, sparse_lowrank_attention
    g = torch.Generator().manual_seed(7)
    B, H, L, d, b = 2, 1, 16, 3, 4
    lay = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    lay = lay & torch.ones(4, 4, dtype=torch.bool).tril() if causal else lay
    idx = AttentionIndex(lay.numpy())
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[0, :6] = False                         # rows 0..5 of batch 0 (causal) see no key
    keep[1, 9:11] = False
    mask = keep[:, None, None, :]
    w64 = gaussian_features(r, d, generator=g).double() if r else None

    def f(q, k, v):
        w = None if w64 is None else w64.to(q.dtype)
        return sparse_lowrank_attention(q, k, v, idx, b, causal=causal, features=w, key_mask=keep)

    def ref(q, k, v):
        if w64 is None:
            return reference.masked_attention(q, k, v, lay, b, causal, mask=mask)[0]
        return reference.pixelfly_attention(q, k, v, lay, b, w64.to(q.dtype), causal, mask=mask)

    q, k, v = (torch.randn(B, H, L, d, generator=g, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    assert torch.autograd.gradcheck(f, (q, k, v))
    go = torch.randn(B, H, L, d, generator=g, dtype=torch.float64)
    want = torch.autograd.grad(ref(q, k, v), (q, k, v), go)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    got = torch.autograd.grad(f(q32, k32, v32), (q32, k32, v32), go.float())
    qb, kb, vb = (t.detach().float().requires_grad_() for t in (q, k, v))
    base = torch.autograd.grad(ref(qb, kb, vb), (qb, kb, vb), go.float())
    for name, x, x64, xb in zip("qkv", got, want, base):
        assert_close_to_oracle(x, x64, xb, "d" + name)
