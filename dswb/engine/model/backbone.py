"""The decoder stack of a transformers model, through the peft wrapper a model with adapters has."""

from __future__ import annotations

import torch


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """`model.model` of a `LlamaForCausalLM` (its `base_model_prefix` attribute), also inside a peft
    model (whose adapters sit in that same stack); the model itself when it has none."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()
    prefix = getattr(model, "base_model_prefix", "")
    inner = getattr(model, prefix, None) if prefix else None
    return inner if isinstance(inner, torch.nn.Module) else model
