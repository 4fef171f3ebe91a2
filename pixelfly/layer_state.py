"""What the block-sparse layers share as ``nn.Module`` citizens: an all-or-nothing
state-dict check (every shape checked before anything is copied)."""
from __future__ import annotations

import torch

__all__ = ["shape_errors", "refuse_load"]


def shape_errors(module, state_dict, prefix: str, expected=None) -> list:
    """Messages for the entries of ``state_dict`` that ``module`` (with its submodules) could
    not load: not a tensor, or not of the expected shape (``expected[key]`` for a key of
    ``module.state_dict()`` where given, else the current shape). Checking all of them
    before copying any makes a load all or nothing."""
    expected = expected or {}
    errors = []
    for name, t in module.state_dict(keep_vars=True).items():
        key = prefix + name
        if key not in state_dict:
            continue
        value = state_dict[key]
        shape = tuple(expected.get(name, t.shape))
        if not isinstance(value, torch.Tensor):
            errors.append(f"While copying the parameter named {key!r}, expected torch.Tensor "
                          f"from checkpoint but received {type(value).__name__}")
        elif tuple(value.shape) != shape:
            errors.append(f"size mismatch for {key}: copying a param with shape "
                          f"{tuple(value.shape)} from checkpoint, the shape in current model is "
                          f"{shape}.")
    return errors


def refuse_load(state_dict, prefix: str, errors, error_msgs, layer: str):
    """Report ``errors`` and load nothing: the submodules' entries (``prefix`` + ``sub.``) are
    withheld from ``state_dict``, ``load_state_dict``'s own copy, read for them next."""
    error_msgs.extend(f"{e} ({layer}: nothing was loaded into this layer)" for e in errors)
    for key in [k for k in state_dict if k.startswith(prefix) and "." in k[len(prefix):]]:
        del state_dict[key]
