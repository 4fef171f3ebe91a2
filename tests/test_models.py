"""Model definitions (pixelfly.models) and offline data loaders (pixelfly.data)."""
import base64
import gzip
import math
import os
import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelfly import reference
from pixelfly.experiments import data
from pixelfly.models import (MODELS, GPT2Config, MixerConfig, MultiHeadSelfAttention, ViTConfig,
                             build_model, example_input, get_config)

NAMES = sorted(MODELS)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", ["tiny", "small"])
def test_forward_shapes(name, size):
    model = build_model(name, size)
    x = example_input(name, model.config, batch=3)
    out = model(x)
    c = model.config
    if name == "gpt2":
        assert x.shape == (3, c.seq_len) and x.dtype == torch.int64
        assert out.shape == (3, c.seq_len, c.vocab_size)
        assert model(x[:, :5]).shape == (3, 5, c.vocab_size)      # shorter contexts work
    else:
        assert x.shape == (3, c.in_chans, c.image_size, c.image_size)
        assert out.shape == (3, c.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    model = build_model(name, "tiny")
    x = example_input(name, model.config, batch=2)
    out = model(x)
    if name == "gpt2":
        loss = F.cross_entropy(out.flatten(0, 1), x.flatten())
    else:
        loss = F.cross_entropy(out, torch.tensor([1, 7]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    # the classifier / LM head always gets a nonzero gradient
    head = model.wte.weight if name == "gpt2" else model.head.weight
    assert head.grad.abs().sum() > 0


def test_gpt2_one_step_reduces_loss():
    torch.manual_seed(0)
    model = build_model("gpt2", "tiny")
    x, y = next(data.get_batches(data.synthetic_text(5000), 32, 8, seed=1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(256), rel=0.05)   # small init: near uniform
    assert losses[-1] < losses[0] - 0.5


# ----------------------------------------------------------------------------- sizes

def _mixer_count(c: MixerConfig):
    D, N, T, Ch = c.dim, c.num_patches, c.token_mlp_dim, c.channel_mlp_dim
    P = c.in_chans * c.patch_size ** 2
    block = 2 * D + (N * T + T + T * N + N) + 2 * D + (D * Ch + Ch + Ch * D + D)
    return P * D + D + c.depth * block + 2 * D + D * c.num_classes + c.num_classes


def _block_count(D, M):
    return 2 * D + (3 * D * D + 3 * D) + (D * D + D) + 2 * D + (D * M + M + M * D + D)


def _vit_count(c: ViTConfig):
    D, P = c.dim, c.in_chans * c.patch_size ** 2
    return (P * D + D + c.seq_len * D + (D if c.pool == "cls" else 0)
            + c.depth * _block_count(D, c.mlp_dim) + 2 * D + D * c.num_classes + c.num_classes)


def _gpt2_count(c: GPT2Config):
    D = c.dim
    return (c.vocab_size * D + c.seq_len * D + c.n_layer * _block_count(D, c.mlp_dim) + 2 * D
            + (0 if c.tie_weights else D * c.vocab_size))


COUNTS = {"mixer": _mixer_count, "vit": _vit_count, "gpt2": _gpt2_count}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", ["tiny", "small"])
def test_parameter_counts(name, size):
    model = build_model(name, size)
    count = n_params(model)
    assert count == COUNTS[name](model.config)
    if size == "small":
        assert 300_000 < count < 2_000_000      # trains in minutes on a laptop CPU
    else:
        assert count < 200_000


def test_parameter_count_variants():
    assert n_params(build_model("vit", "tiny", pool="cls")) == _vit_count(ViTConfig.tiny(pool="cls"))
    untied = build_model("gpt2", "tiny", tie_weights=False)
    assert n_params(untied) == _gpt2_count(GPT2Config.tiny(tie_weights=False))
    assert isinstance(untied.lm_head, nn.Linear) and untied.keep_dense == ("lm_head",)
    assert build_model("gpt2", "tiny").lm_head is None


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", ["tiny", "small"])
def test_linear_sizes_are_block_multiples(name, size):
    """Every nn.Linear but the dense first/last layers is a multiple of the 32 block."""
    model = build_model(name, size)
    keep = tuple(model.keep_dense)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(linears) >= 4
    for n, m in linears:
        if n.split(".")[0] in keep:
            continue
        assert m.in_features % 32 == 0 and m.out_features % 32 == 0, (n, m)
    sparsifiable = [n for n, _ in linears if n.split(".")[0] not in keep]
    depth = model.config.n_layer if name == "gpt2" else model.config.depth
    assert len(sparsifiable) == 4 * depth          # two MLP layers + qkv/proj or token MLP


# ----------------------------------------------------------------------------- init

@pytest.mark.parametrize("name", NAMES)
def test_init_is_deterministic_under_seed(name):
    def state(seed):
        torch.manual_seed(seed)
        return build_model(name, "tiny").state_dict()

    a, b, c = state(3), state(3), state(4)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_gpt2_init_matches_gpt2():
    torch.manual_seed(0)
    model = build_model("gpt2")
    c = model.config
    resid = 0.02 / math.sqrt(2 * c.n_layer)
    for block in model.blocks:
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.attn.proj.weight.std().item() == pytest.approx(resid, rel=0.05)
        assert block.mlp.fc2.weight.std().item() == pytest.approx(resid, rel=0.05)
        assert torch.all(block.attn.qkv.bias == 0)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_image_model_init():
    torch.manual_seed(0)
    mixer, vit = build_model("mixer"), build_model("vit")
    w = mixer.blocks[0].channel_mlp.fc1.weight
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))                 # Xavier-uniform
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.all(mixer.head.weight == 0)
    assert vit.blocks[0].mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)


# ----------------------------------------------------------------------------- attention

def _reference_attention(mod: MultiHeadSelfAttention, x):
    B, L, D = x.shape
    H, hd = mod.n_heads, mod.head_dim
    q, k, v = mod.qkv(x).split(D, dim=-1)
    q, k, v = (t.view(B, L, H, hd).transpose(1, 2) for t in (q, k, v))
    y = reference.dense_attention(q, k, v, mod.causal).transpose(1, 2).reshape(B, L, D)
    return mod.proj(y)


@pytest.mark.parametrize("causal", [False, True])
def test_dense_attention_matches_softmax_reference(causal):
    mod = MultiHeadSelfAttention(64, 4, seq_len=16, causal=causal).double()
    x = torch.randn(2, 16, 64, dtype=torch.float64)
    torch.testing.assert_close(mod(x), _reference_attention(mod, x))


class RecordingAttention(nn.Module):
    """A stand-in for a block-sparse attention: dense, but counts its calls."""

    def __init__(self, dim, n_heads, seq_len, causal):
        super().__init__()
        self.args = (dim, n_heads, seq_len, causal)
        self.inner = MultiHeadSelfAttention(dim, n_heads, seq_len, causal)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        assert x.shape[-1] == self.args[0] and x.shape[1] <= self.args[2]
        return self.inner(x)


@pytest.mark.parametrize("name", ["vit", "gpt2"])
def test_attention_factory_hook(name):
    made = []

    def factory(dim, n_heads, seq_len, causal):
        made.append(RecordingAttention(dim, n_heads, seq_len, causal))
        return made[-1]

    model = build_model(name, "tiny", attention=factory)
    c = model.config
    depth = c.depth if name == "vit" else c.n_layer
    assert len(made) == depth
    assert all(block.attn is m for block, m in zip(model.blocks, made))
    expect = (c.dim, c.n_heads, c.seq_len, name == "gpt2")
    assert all(m.args == expect for m in made)
    model(example_input(name, c, batch=2)).sum().backward()
    assert [m.calls for m in made] == [1] * depth
    assert made[0].inner.qkv.weight.grad is not None

    # the plugged module really computes the attention: zeroing it changes the output
    x = example_input(name, c, batch=2)
    before = model(x)
    for m in made:
        nn.init.zeros_(m.inner.proj.weight)
    assert not torch.allclose(before, model(x))


def test_attention_argument_validation():
    with pytest.raises(ValueError):
        build_model("vit", "tiny", attention="sparse")
    with pytest.raises(TypeError):
        build_model("gpt2", "tiny", attention=lambda *a: "not a module")
    with pytest.raises(ValueError):
        build_model("mixer", "tiny", attention=lambda *a: nn.Identity())
    with pytest.raises(ValueError):
        build_model("resnet")
    with pytest.raises(TypeError):
        build_model("vit", "tiny", width=12)
    assert build_model("vit", "tiny", depth=1).config.depth == 1
    assert get_config("gpt2", GPT2Config(dim=96), n_heads=3).dim == 96


def test_gpt2_is_causal():
    torch.manual_seed(0)
    model = build_model("gpt2", "tiny").eval()
    x = example_input("gpt2", model.config, batch=2)
    t = 20
    x2 = x.clone()
    x2[:, t] = (x2[:, t] + 1) % model.config.vocab_size
    with torch.no_grad():
        a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t:] - b[:, t:]).abs().amax(dim=-1).min() > 0       # every later position changes


def test_vit_is_not_causal():
    model = build_model("vit", "tiny").eval()
    x = example_input("vit", model.config, batch=1)
    with torch.no_grad():
        a = model.forward_features(x)
        x2 = x.clone()
        x2[..., -1, -1] += 1.0                                      # last patch only
        b = model.forward_features(x2)
    assert (a[:, 0] - b[:, 0]).abs().max() > 0                      # the first token sees it


def test_gpt2_generate():
    model = build_model("gpt2", "tiny").eval()
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), 5, temperature=0)
    assert out.shape == (2, 8) and torch.equal(out[:, :3], torch.zeros(2, 3, dtype=torch.long))
    g = torch.Generator().manual_seed(0)
    out2 = model.generate(torch.zeros(1, 70, dtype=torch.long), 2, top_k=5, generator=g)
    assert out2.shape == (1, 72)


def test_example_input_deterministic():
    a = example_input("vit", "tiny", batch=4)
    assert torch.equal(a, example_input("vit", "tiny", batch=4))
    ids = example_input("gpt2", batch=4)
    assert ids.shape == (4, GPT2Config().seq_len) and 0 <= ids.min() and ids.max() < 256


# ----------------------------------------------------------------------------- digits

def test_digits_dataset():
    split = data.load_digits_dataset(test_fraction=0.2, seed=0)
    assert split.x_train.shape[1:] == (1, 8, 8) and split.x_train.dtype == torch.float32
    assert len(split.x_train) + len(split.x_test) == 1797
    assert len(split.x_test) == 360 and len(split.y_train) == len(split.x_train)
    assert split.x_train.mean().abs() < 1e-5 and abs(split.x_train.std().item() - 1) < 1e-3
    assert set(split.y_test.tolist()) == set(range(10))            # stratified
    again = data.load_digits_dataset(seed=0)
    other = data.load_digits_dataset(seed=1)
    assert torch.equal(split.x_train, again.x_train) and torch.equal(split.y_test, again.y_test)
    assert not torch.equal(split.y_train, other.y_train)
    raw = data.load_digits_dataset(normalize=False)
    assert raw.x_train.min() == 0 and raw.x_train.max() == 1
    # the image models eat them directly
    assert build_model("mixer", "tiny")(split.x_test[:5]).shape == (5, 10)


def test_iterate_batches():
    x, y = torch.arange(10).float(), torch.arange(10)
    batches = list(data.iterate_batches(x, y, batch_size=4, seed=0))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(10))
    assert all(torch.equal(bx.long(), by) for bx, by in batches)
    assert len(list(data.iterate_batches(x, y, batch_size=4, drop_last=True))) == 2


# ----------------------------------------------------------------------------- text

def test_synthetic_text_deterministic():
    a = data.synthetic_text(20_000, seed=0)
    assert isinstance(a, bytes) and len(a) == 20_000
    assert a == data.synthetic_text(20_000, seed=0)
    assert a != data.synthetic_text(20_000, seed=1)
    assert data.synthetic_text(500, seed=0) == a[:500]
    a.decode("ascii")
    words = a.split()
    assert len(set(words)) > 50 and a.count(b".") > 100


def test_byte_batches_shift_by_one():
    text = bytes(range(256)) * 8                      # next byte = current + 1 (mod 256)
    batches = list(data.get_batches(text, seq_len=16, batch_size=5, n_batches=3, seed=0))
    assert len(batches) == 3
    for x, y in batches:
        assert x.shape == y.shape == (5, 16) and x.dtype == torch.int64
        assert torch.equal(y, (x + 1) % 256)
        assert torch.equal(y[:, :-1], x[:, 1:])
    again = list(data.get_batches(text, 16, 5, n_batches=3, seed=0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


def test_byte_lm_dataset():
    text = b"abcdefghij"
    ds = data.ByteLMDataset(text, seq_len=4)
    assert len(ds) == 2                                             # starts 0, 4
    x, y = ds[1]
    assert bytes(x.tolist()) == b"efgh" and bytes(y.tolist()) == b"fghi"
    dense = data.ByteLMDataset(text, seq_len=4, stride=1)
    assert len(dense) == 6 and bytes(dense[5][1].tolist()) == b"ghij"
    with pytest.raises(IndexError):
        dense[6]
    with pytest.raises(ValueError):
        data.ByteLMDataset(b"abc", seq_len=4)
    loader = torch.utils.data.DataLoader(dense, batch_size=3)
    xb, yb = next(iter(loader))
    assert xb.shape == (3, 4) and torch.equal(yb[:, :-1], xb[:, 1:])
    train, val = data.split_text(text, 0.2)
    assert train == b"abcdefgh" and val == b"ij"


def test_text_corpus_plain_and_gzip(tmp_path):
    body = data.synthetic_text(3000, seed=2)
    plain = tmp_path / "corpus.txt"
    plain.write_bytes(body)
    packed = tmp_path / "corpus.txt.gz"
    packed.write_bytes(gzip.compress(body))
    assert data.load_text_corpus(plain) == body
    assert data.load_text_corpus(str(packed)) == body


def test_text_corpus_missing(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install bible-kjv-text"):
        data.load_text_corpus(tmp_path / "nope.txt")
    monkeypatch.setattr(data, "KJV_PATHS", (str(tmp_path / "bible.data"),))
    with pytest.raises(FileNotFoundError, match="apt-get install bible-kjv-text") as e:
        data.load_text_corpus()
    assert "path=" in str(e.value)


# First 720 bytes of window 0 of Debian bible-kjv-text 4.38's /usr/lib/bible.data (a
# Unix-compress LZW stream; long enough to cross the 9 -> 10 bit code width change).
_KJV_LZW_PREFIX = base64.b64decode(
    "SN6wyQNCSBoxbMqwABGkDh00b+Sk0VOGDAgUS9K4OQNCSZg2ZeakAGGljJw5ad64cQECBJUyeOiYSZMQRI4Z"
    "MGLAqOFCwZEyMXTEAJHEDYiHZUCIKXNGoxuNHI+8sThGTpkwdCoeRZOUaxg7ZYyGcWMRKYirch72/BlUBkOy"
    "W5OifQjiTpg5ddM8fOMQhJmIbRaOtWjnTRoyO0AMBkEmjJw1bkLitYu3DhyVcf2GGZP0jZnMZMqUgcMyCFyz"
    "U+CkkUgHhGcQUi22eQPWomXMZs1s7vzZrN2sJ9cC1THjrcXYIOaEObyQSZnWSK0qTcomzRk0dHQoPs1VOmUQ"
    "1a/TER6UhnHYU5OHuZM5PPaFD7GC0Fv3Logzb6ZqX4ycTBo7h2lllnutmSHHG22A5hhkkpGnQw3nITdGGGwk"
    "VBZX4FmHHQhEhJGHYNwl1dhjkc2BF4YTVqiVExqOd55ZZYD11EbbXZjUbHLMyNEdJiWV22pztNZYHg7aEGF6"
    "yjEHgnPQdZfUUor5tVobH4XVmkaZtXFYkK71huFvJs0BokUJXSnkfwFmBuZJfh2YoG9YhengDUfKFkZomc0k"
    "B5UguUHHmIyhGZqN9QE3GRppjIFGXT2CUAdZJuU5ZZV+tomgmnGyeQeiijIqXRhi0OYjhnryaeV+cNH33Rxv"
    "OIhDnSCkaKGke1LaGhJXyVhaiGfJCFWNWUako6ejJjVHGWOoZNGQDuYAa5JkNPccpoY6CqkcmXkl43T3YeVk"
    "WW+c8Vx31tLxhmuRgQAHG7sBWiZochDELlxhwAEHWqhapKp9rDqoE6yyCoghGfGCt1gRjj2U2GJmneGtSb+a"
    "K250XVIbZqwUzorhFFfNkS96FinHXnxm1ocXflP5O5RpxyG5XLRLTgtjwouKIRGNf6W16Bly3CVmtiaJAUIe"
    "aZTBhn80HlsRoLnJUQd9dFiVFNFGI82RgU+3"
)


def _ec02_file(streams, window=65536):
    head = b"EC02Compressed Data File".ljust(0x50, b"\0") + struct.pack(">III", 0, window, len(streams))
    offsets, pos = [], len(head) + 4 * (len(streams) + 1) + 3
    for s in streams:
        offsets.append(pos)
        pos += len(s)
    offsets.append(pos)
    return head + struct.pack(f">{len(offsets)}I", *offsets) + b"\x1f\x9d\x90" + b"".join(streams)


def test_text_corpus_bible_format(tmp_path):
    path = tmp_path / "bible.data"
    path.write_bytes(_ec02_file([_KJV_LZW_PREFIX], window=65536))
    text = data.load_text_corpus(path)                   # one (last) window: any length
    assert text.startswith(b"Holy Bible, Authorized (King James) Version.  Textfile 930105.\n"
                           b"Ge1:1 In the beginning God created the heaven and the earth.\n")
    # this verse is decoded after the code width has grown to 10 bits
    assert (b"\nGe1:10 And God called the dry land Earth; and the gathering together of the "
            b"waters called he Seas: and God saw that it was good.\n") in text
    # windows are independent streams: non-final windows must be full
    path.write_bytes(_ec02_file([_KJV_LZW_PREFIX, _KJV_LZW_PREFIX], window=len(text)))
    assert data.load_text_corpus(path) == text + text
    path.write_bytes(_ec02_file([_KJV_LZW_PREFIX, _KJV_LZW_PREFIX]))
    with pytest.raises(ValueError, match="window 0"):
        data.load_text_corpus(path)


@pytest.mark.skipif(not any(os.path.isfile(p) for p in data.KJV_PATHS),
                    reason="bible-kjv-text is not installed")
def test_installed_kjv_corpus():
    text = data.load_text_corpus()
    assert len(text) > 4_000_000 and text.count(b"\n") > 31_000
    assert text.rstrip().endswith(b"The grace of our Lord Jesus Christ be with you all. Amen.")
