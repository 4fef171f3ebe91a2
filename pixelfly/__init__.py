"""pixelfly: Pixelated Butterfly sparse training with C/CUDA block-sparse kernels.

``W = gamma * B + (1 - gamma) * U V^T`` with ``B`` a flat block butterfly (block-sparse) and
``U V^T`` low rank; see SPEC.md and README.md.

Main entry points:
    flat_butterfly_layout, butterfly_factor_layout, ... : block layouts (NumPy bool arrays)
    allocate_budget, layer_cost, CostModel              : the budget model of SPEC section 3
    choose_config                                       : the planner's butterfly rule on a density
    PixelflyLinear                                      : drop-in for nn.Linear
    plan, sparsify, densify, Plan                       : whole models under a budget
    from_pretrained                                     : reload a sparsified HF model
    reference                                           : the pure-PyTorch oracle

``import pixelfly`` loads only the layout/budget API (NumPy and the C core): whatever needs
torch loads on first use, and ``pixelfly.plan`` etc. are the functions however reached.
Data loading, the demo and plotting live in :mod:`pixelfly.experiments` (optional
dependencies: ``pip install pixelfly[experiments]``).
"""
import sys as _sys

from .budget import BudgetPlan, CostModel, LayerPlan, allocate_budget, layer_cost
from .costs import choose_config
from .fly_layouts import fly_config_layout
from .layouts import (BlockIndex, bigbird_layout, butterfly_factor_layout,
                      butterfly_product_layout, csr_transpose, default_butterfly_size,
                      flat_butterfly_layout, layout_to_csr, layout_to_mask, local_layout,
                      mask_to_layout, random_layout, sparse_transformer_layout)

__version__ = "0.1.0"

__all__ = [
    "reference", "BudgetPlan", "CostModel", "LayerPlan", "allocate_budget", "layer_cost",
    "BlockIndex", "bigbird_layout", "butterfly_factor_layout", "butterfly_product_layout",
    "csr_transpose", "default_butterfly_size", "flat_butterfly_layout", "layout_to_csr",
    "layout_to_mask", "local_layout", "mask_to_layout", "random_layout",
    "sparse_transformer_layout", "fly_config_layout", "PixelflyLinear", "choose_config", "plan", "sparsify",
    "densify", "Plan", "PlanError", "from_pretrained", "ButterflyLinear", "PixelflyAttention", "fly_config",
    "apply_fly_configs", "register_hf_attention",
]


_LAZY = {"PixelflyLinear": "linear", "ops": None,
         "ButterflyLinear": "butterfly", "PixelflyAttention": "attention",
         "plan": "convert", "sparsify": "convert", "densify": "convert", "Plan": "planfile",
         "PlanError": "planfile", "from_pretrained": "hf", "reference": None,
         "models": None, "fly_config": "authors", "apply_fly_configs": "authors",
         "register_hf_attention": "hf_attention"}


def __getattr__(name):
    # Modules that load torch and the ops extension are imported on first use, so the
    # torch-free layout/budget API imports fast.
    import importlib
    if name not in _LAZY:
        raise AttributeError(f"module 'pixelfly' has no attribute {name!r}")
    mod = importlib.import_module(f"pixelfly.{_LAZY[name] or name}")
    return mod if _LAZY[name] is None else getattr(mod, name)


if "transformers" in _sys.modules and "torch" in _sys.modules:
    # transformers is loaded: register the check that stops its plain from_pretrained from
    # silently loading a pixelfly checkpoint as a dense model (pixelfly.hf).
    __getattr__("from_pretrained")

# transformers' attn_implementation="pixelfly" (and the baselines): registered when
# transformers.modeling_utils is (or gets) loaded; nothing is imported here (hf_import_hook).
from . import hf_import_hook as _hf_import_hook  # noqa: E402

_hf_import_hook.install()
