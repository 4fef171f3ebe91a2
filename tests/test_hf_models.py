"""Hugging Face transformers models end to end (issue 9): eight families, random-init small
configs (no downloads), each planned at budget 0.25, sparsified, trained, saved, reloaded,
generated from, compiled, run in bf16 and densified back."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

import pixelfly  # noqa: E402
from pixelfly import PixelflyLinear  # noqa: E402

transformers.logging.set_verbosity_error()

BLOCK = 16   # hidden 128 -> an 8x8 block grid, where budget 0.25 buys a butterfly
VOCAB, SEQ, BATCH = 256, 16, 2
# Dynamo graph capture + AOTAutograd (the ops' fake kernels and autograd) for every family;
# inductor's C++ codegen of a whole HF model takes minutes on 2 cores (set the variable to
# "inductor" to run it; test_sparsify compiles a sparsified model with inductor).
COMPILE_BACKEND = os.environ.get("PIXELFLY_TEST_COMPILE_BACKEND", "aot_eager")
CAUSAL = ("gpt2", "llama", "qwen2", "mistral", "opt")


def _configs(n=2):
    """family -> (model class, config with ``n`` layers)."""
    t = transformers
    return {
        "gpt2": (t.GPT2LMHeadModel, t.GPT2Config(n_layer=n, n_embd=128, n_head=2, n_positions=64,
                                                  vocab_size=VOCAB)),
        "bert": (t.BertForSequenceClassification, t.BertConfig(
            hidden_size=128, num_hidden_layers=n, num_attention_heads=2, intermediate_size=512,
            vocab_size=VOCAB, max_position_embeddings=64, num_labels=3)),
        "llama": (t.LlamaForCausalLM, t.LlamaConfig(
            hidden_size=128, intermediate_size=512, num_hidden_layers=n, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False)),
        "qwen2": (t.Qwen2ForCausalLM, t.Qwen2Config(
            hidden_size=128, intermediate_size=512, num_hidden_layers=n, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=True)),
        "mistral": (t.MistralForCausalLM, t.MistralConfig(
            hidden_size=128, intermediate_size=512, num_hidden_layers=n, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False)),
        "vit": (t.ViTForImageClassification, t.ViTConfig(
            hidden_size=128, num_hidden_layers=n, num_attention_heads=2, intermediate_size=512,
            image_size=32, patch_size=8, num_labels=3)),
        "t5": (t.T5ForConditionalGeneration, t.T5Config(
            d_model=128, d_ff=512, d_kv=32, num_heads=4, num_layers=n, num_decoder_layers=n,
            vocab_size=VOCAB, decoder_start_token_id=0, pad_token_id=0)),
        "opt": (t.OPTForCausalLM, t.OPTConfig(
            hidden_size=128, ffn_dim=512, num_hidden_layers=n, num_attention_heads=2, vocab_size=VOCAB,
            max_position_embeddings=64, word_embed_proj_dim=128)),
    }


FAMILIES = list(_configs())


def build(family, seed=0):
    cls, cfg = _configs()[family]
    torch.manual_seed(seed)
    return cls(cfg).eval()


def batch(family, seed=1):
    """Keyword inputs with labels (a loss) for one step."""
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return {"pixel_values": torch.randn(BATCH, 3, 32, 32, generator=g),
                "labels": torch.randint(0, 3, (BATCH,), generator=g)}
    ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=g)
    if family == "bert":
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "labels": torch.randint(0, 3, (BATCH,), generator=g)}
    if family == "t5":
        return {"input_ids": ids, "labels": torch.randint(1, VOCAB, (BATCH, 8), generator=g)}
    return {"input_ids": ids, "labels": ids}


def inputs(family):
    """The example input of the plan: the batch without labels, as a tokenizer's BatchEncoding."""
    b = batch(family)
    if family == "t5":
        b["decoder_input_ids"] = b["labels"]
    return transformers.BatchEncoding({k: v for k, v in b.items() if k != "labels"})


def out_tensor(out):
    return out.logits


_CACHE = {}


def sparsified(family):
    """(plan, state_dict) of the family sparsified at budget 0.25 (built once)."""
    if family not in _CACHE:
        model = build(family)
        p = pixelfly.plan(model, inputs(family), budget=0.25, block_size=BLOCK)
        pixelfly.sparsify(model, p)  # random init: from_dense is tested on GPT-2 in test_sparsify
        _CACHE[family] = (p, {k: v.clone() for k, v in model.state_dict().items()})
    return _CACHE[family]


def fresh_sparse(family, seed=0):
    p, sd = sparsified(family)
    model = pixelfly.sparsify(build(family, seed), pixelfly.Plan.from_dict(p.to_dict()))
    model.load_state_dict(sd)
    return model.eval(), p


@pytest.mark.parametrize("family", FAMILIES)
def test_plan_sparsifies_body_and_keeps_heads_dense(family):
    p, _ = sparsified(family)
    model = build(family)
    sparse = [lay.name for lay in p.layers if lay.sparse]
    assert len(sparse) >= 4, str(p)
    rebuilt = fresh_sparse(family)[0]
    for lay in p.layers:
        assert lay.sparse or lay.reason, lay.name
        assert isinstance(rebuilt.get_submodule(lay.name), PixelflyLinear) == lay.sparse, lay.name
    out_emb = model.get_output_embeddings()
    heads = [n for n, m in model.named_modules() if m is out_emb or n in ("classifier",)]
    assert heads
    for n in heads:
        assert not p[n].sparse and p[n].reason, (n, p[n])
    # every layer that ran counts its dense cost: the ones left dense are reported apart
    assert p.kept_dense_cost == pytest.approx(sum(lay.dense_cost for lay in p.layers if not lay.sparse))
    assert p.kept_dense_cost > 0 and f"{p.kept_dense_cost:.4g}" in str(p)
    assert p.sparse_total <= 0.25 * p.dense_total * (1 + 1e-12)


def test_t5_layers_whose_weight_is_read_stay_dense():
    p, _ = sparsified("t5")
    wo = [lay for lay in p.layers if lay.name.endswith("DenseReluDense.wo")]
    assert wo and all(not lay.sparse and "read outside" in lay.reason for lay in wo)
    assert "T5DenseActDense.forward" in wo[0].reason
    assert any(lay.sparse for lay in p.layers if lay.name.endswith("DenseReluDense.wi"))


@pytest.mark.parametrize("family", FAMILIES)
def test_train_adamw_loss_falls(family):
    model, _ = fresh_sparse(family)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = batch(family)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = model(**data).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.95, losses
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_round_trip_bit_exact(family):
    a, p = fresh_sparse(family)
    x = inputs(family)
    want = out_tensor(a(**x))
    b = pixelfly.sparsify(build(family, seed=5), pixelfly.Plan.from_dict(p.to_dict())).eval()
    assert not torch.equal(out_tensor(b(**x)), want)
    b.load_state_dict(a.state_dict())
    assert torch.equal(out_tensor(b(**x)), want)


@pytest.mark.parametrize("family", CAUSAL + ("t5",))
def test_generate_with_and_without_cache(family):
    model, _ = fresh_sparse(family)
    ids = batch(family)["input_ids"][:, :6]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with_cache = model.generate(ids, use_cache=True, **kw)
    without = model.generate(ids, use_cache=False, **kw)
    assert with_cache.shape[1] > (0 if family == "t5" else ids.shape[1])
    assert torch.equal(with_cache, without)


def one_layer(family):
    """The family with one layer (Dynamo's time grows with the unrolled layers), sparsified."""
    cls, cfg = _configs(n=1)[family]
    torch.manual_seed(0)
    model = cls(cfg).eval()
    return pixelfly.sparsify(model, 0.25, example_input=inputs(family), block_size=BLOCK)


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_compile_forward_backward(family):
    model = one_layer(family)  # eval mode: no dropout, both runs compute the same function
    assert any(isinstance(m, PixelflyLinear) for m in model.modules())
    data = batch(family)
    eager = model(**data).loss
    eager.backward()
    grads = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
    model.zero_grad()
    torch._dynamo.reset()
    got = torch.compile(model, backend=COMPILE_BACKEND)(**data).loss
    got.backward()
    torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-5)
    sparse_grads = [n for n in grads if n.endswith(".blocks")]
    assert sparse_grads
    for n in sparse_grads:
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, grads[n], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_forward_backward(family):
    model, _ = fresh_sparse(family)
    data = batch(family)
    want = out_tensor(model(**data)).float()
    model = model.to(torch.bfloat16)
    data = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in data.items()}
    out = model(**data)
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    assert torch.isfinite(out.logits).all()
    err = (out.logits.float() - want).abs().max()
    assert err < 0.1 * want.abs().max() + 0.1, err
    blocks = [q for n, q in model.named_parameters() if n.endswith(".blocks")]
    assert blocks and all(q.grad is not None and q.grad.dtype == torch.bfloat16 for q in blocks)


@pytest.mark.parametrize("family", FAMILIES)
def test_densify_same_function(family):
    model, _ = fresh_sparse(family)
    x = inputs(family)
    want = out_tensor(model(**x))
    pixelfly.densify(model)
    assert not any(isinstance(m, PixelflyLinear) for m in model.modules())
    assert getattr(model.config, "quantization_config", None) is None
    torch.testing.assert_close(out_tensor(model(**x)), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_and_reload(family, tmp_path):
    cls, _ = _configs()[family]
    model, p = fresh_sparse(family)
    x = inputs(family)
    want = out_tensor(model(**x))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    back = pixelfly.from_pretrained(cls, tmp_path)
    assert type(back) is cls and not back.training
    for lay in p.layers:
        assert isinstance(back.get_submodule(lay.name), PixelflyLinear) == lay.sparse, lay.name
    assert torch.equal(out_tensor(back(**x)), want)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    with pytest.raises(ValueError, match="pixelfly.from_pretrained"):
        cls.from_pretrained(tmp_path)
    back.save_pretrained(tmp_path / "again")  # a reloaded model saves its plan again
    assert torch.equal(out_tensor(pixelfly.from_pretrained(cls, tmp_path / "again")(**x)), want)


def test_plain_from_pretrained_without_pixelfly_is_not_silent(tmp_path):
    """In a process that never imported pixelfly, transformers cannot call our check; it
    still names the unknown method and lists the layers it re-initialises."""
    import subprocess
    import sys
    model, _ = fresh_sparse("llama")
    model.save_pretrained(tmp_path)
    code = ("import transformers, sys; transformers.logging.set_verbosity_warning();"
            f"transformers.LlamaForCausalLM.from_pretrained({str(tmp_path)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    log = proc.stdout + proc.stderr
    assert "pixelfly" in log and "MISSING" in log, log[-2000:]


def test_first_last_dense_is_overridable():
    model = build("llama")
    p = pixelfly.plan(model, inputs("llama"), budget=0.25, block_size=BLOCK, dense_first_last=False)
    assert p["lm_head"].sparse
    q = pixelfly.plan(model, inputs("llama"), budget=0.25, block_size=BLOCK)
    assert not q["lm_head"].sparse and "output layer" in q["lm_head"].reason


def test_exclude_misspelt_is_an_error():
    model = build("gpt2")
    with pytest.raises(ValueError, match="c_atn"):
        pixelfly.plan(model, inputs("gpt2"), budget=0.25, block_size=BLOCK, exclude=("c_atn",))
    p = pixelfly.plan(model, inputs("gpt2"), budget=0.25, block_size=BLOCK, exclude=("c_attn",))
    assert all(not p[n].sparse and p[n].reason == "excluded" for n in ("transformer.h.0.attn.c_attn",
                                                                         "transformer.h.1.attn.c_attn"))


def test_no_eligible_layer_gives_all_dense_plan():
    model = build("gpt2")
    p = pixelfly.plan(model, inputs("gpt2"), budget=0.25, block_size=256)
    assert not any(lay.sparse for lay in p.layers)
    assert all(lay.reason for lay in p.layers)
    q = pixelfly.plan(torch.nn.Sequential(torch.nn.ReLU()), torch.randn(2, 3), budget=0.25)
    assert q.layers == [] and "0/0" in str(q)


def test_sparsify_keeps_frozen_dtype_device_and_mode():
    model = build("llama").double()
    model.train()
    model.model.layers[0].requires_grad_(False)
    model.model.layers[1].mlp.eval()
    p = pixelfly.plan(model, inputs("llama"), budget=0.25, block_size=BLOCK)
    pixelfly.sparsify(model, p)
    frozen = model.model.layers[0].mlp.up_proj
    assert isinstance(frozen, PixelflyLinear)
    assert all(not q.requires_grad for q in model.model.layers[0].parameters())
    assert all(q.requires_grad for q in model.model.layers[1].parameters())
    assert all(q.dtype == torch.float64 and q.device.type == "cpu" for q in model.parameters())
    assert model.model.layers[0].mlp.up_proj.training
    assert not model.model.layers[1].mlp.up_proj.training
    pixelfly.densify(model)
    assert not model.model.layers[0].mlp.up_proj.weight.requires_grad
    assert not model.model.layers[1].mlp.up_proj.training


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_output_embeddings_stay_usable(family):
    """transformers code that reads ``get_output_embeddings().weight`` keeps working."""
    model, _ = fresh_sparse(family)
    assert model.get_output_embeddings().weight.shape == (VOCAB, 128)
    model.resize_token_embeddings(VOCAB + 8)
    ids = batch(family)["input_ids"]
    assert model(input_ids=ids).logits.shape == (*ids.shape, VOCAB + 8)
