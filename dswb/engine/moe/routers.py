"""Find the routers of a Mixture-of-Experts model: transformers' DeepSeek-V3, Qwen3-MoE and Mixtral.

In all three the router is a module of its own whose forward returns `(router_logits [T, E], gate
weights [T, K], chosen experts [T, K])` over the layer's flattened tokens; DeepSeek-V3's scores are
sigmoids and its top-k choice adds the buffer `e_score_correction_bias` (the gate weights come from the
unbiased scores), the others' are softmax. Models are found through wrappers (DDP, peft, FSDP).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# router class -> (family, scoring)
ROUTER_CLASSES = {
    "DeepseekV3TopkRouter": ("deepseek_v3", "sigmoid"),
    "Qwen3MoeTopKRouter": ("qwen3_moe", "softmax"),
    "MixtralTopKRouter": ("mixtral", "softmax"),
}
BIAS = "e_score_correction_bias"


@dataclass
class Router:
    name: str
    layer: int
    module: torch.nn.Module
    family: str
    scoring: str
    experts: int
    top_k: int

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.module, BIAS, None)


def _layer_index(name: str, fallback: int, n_layers: int) -> int:
    """The decoder layer a router belongs to; a multi-token-prediction module's block counts after the
    model's layers (`mtp.layers.K` is layer `num_hidden_layers + K`, as DeepSeek's checkpoints number it)."""
    found = re.findall(r"layers\.(\d+)\.", name + ".")
    if not found:
        return fallback
    mtp = name.startswith("mtp.") or ".mtp." in name
    return int(found[-1]) + (n_layers if mtp else 0)


def find_routers(model: torch.nn.Module) -> list[Router]:
    config = model_config_of(model)
    n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    routers = []
    for name, module in model.named_modules():
        kind = ROUTER_CLASSES.get(type(module).__name__)
        if kind is None:
            continue
        routers.append(Router(name=name, layer=_layer_index(name, len(routers), n_layers), module=module,
                              family=kind[0], scoring=kind[1], experts=int(module.num_experts),
                              top_k=int(module.top_k)))
    return routers


def unsupported_moe(model: torch.nn.Module) -> list[str]:
    """Class names of expert modules whose routers dswb cannot watch (an MoE family not listed above)."""
    known = {name.replace("TopkRouter", "").replace("TopKRouter", "") for name in ROUTER_CLASSES}
    found = set()
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("Experts") and not any(name.startswith(prefix) for prefix in known):
            found.add(name)
    return sorted(found)


def model_config_of(model: torch.nn.Module):
    """The transformers config of the model inside any wrapper (None when there is none)."""
    owner = forward_owner(model)
    return getattr(owner, "config", None)


def forward_owner(model: torch.nn.Module) -> torch.nn.Module | None:
    """The outermost transformers model inside any wrapper: the module whose forward receives the batch's
    `input_ids` and `attention_mask`."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return module
    return None
