"""The model zoo with block-sparse attention (attention="pixelfly" and the baselines)."""
import pytest
import torch

from pixelfly.attention import PixelflyAttention
from pixelfly.models import build_model, example_input


@pytest.mark.parametrize("name", ["vit", "gpt2"])
@pytest.mark.parametrize("layout", ["pixelfly", "bigbird", "local"])
def test_models_run_with_block_sparse_attention(name, layout):
    model = build_model(name, config="tiny", attention=layout)
    assert any(isinstance(m, PixelflyAttention) for m in model.modules())
    x = example_input(name, model.config, batch=2)
    out = model(x)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()


def test_gpt2_pixelfly_attention_is_causal():
    model = build_model("gpt2", config="tiny", attention="pixelfly").eval()
    x = example_input("gpt2", model.config, batch=1)
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % model.config.vocab_size
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[0, :-1], b[0, :-1])


def test_factory_settings_reach_the_module():
    factory = PixelflyAttention.factory(block_size=16, n_factors=1, n_random_features=8)
    model = build_model("vit", config="tiny", attention=factory)
    att = [m for m in model.modules() if isinstance(m, PixelflyAttention)]
    assert att and all(m.n_random_features == 8 for m in att)
    with pytest.raises(ValueError, match="unknown attention"):
        build_model("vit", config="tiny", attention="sparse-ish")
