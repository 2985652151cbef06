"""LoRA on a loaded model through `peft`: which modules get adapters, the peft config, and wrapping.

`apply_lora(model, settings, role, where)` freezes the base and adds adapters to the modules that
`settings.target_modules` names: 'all-linear' is every linear layer (bitsandbytes' quantized ones
included) except the output head and the score head; other entries are module names or fnmatch
patterns on the dotted module name. A pattern that matches no module is a user error, as is an
adapter on Mixture-of-Experts experts (their weights are 3-D parameters, not linear layers).
Reward and value models (`role` "reward" / "value") train their `score` head in full beside the
adapters; a vocabulary that grew in this stage trains the embeddings and the output head in full
(new tokens would otherwise keep their random rows).
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace
from typing import Any

import torch

from dswb.config.adapters import LoraConfig
from dswb.engine.model.load import require_peft
from dswb.errors import UserError

SCORE_HEADS = ("score",)
SCALAR_ROLES = ("reward", "value")


def is_adapted(model: torch.nn.Module) -> bool:
    """True when `model` (or a module inside it, e.g. PPO's policy) carries peft adapters."""
    return any(hasattr(m, "peft_config") and hasattr(m, "get_base_model") for m in model.modules())


def peft_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if hasattr(m, "peft_config") and hasattr(m, "get_base_model")]


def linear_types() -> tuple[type, ...]:
    types: list[type] = [torch.nn.Linear]
    try:
        from transformers.pytorch_utils import Conv1D
        types.append(Conv1D)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def expert_parameters(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.dim() == 3 and "expert" in n]


def resolve_targets(model: torch.nn.Module, patterns: list[str], where: str) -> list[str]:
    """Full names of the modules `patterns` select (see the module docstring); a pattern that selects
    nothing, or that reaches an expert, is a `UserError`."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    heads = {id(output)} | {id(getattr(model, h)) for h in SCORE_HEADS if hasattr(model, h)}
    named = [(n, m) for n, m in model.named_modules() if n]
    linears = [n for n, m in named if isinstance(m, linear_types()) and id(m) not in heads]
    chosen: list[str] = []
    for pattern in patterns:
        if pattern == "all-linear":
            hits = linears
        else:
            hits = [n for n, _ in named if n == pattern or n.endswith("." + pattern) or fnmatch.fnmatchcase(n, pattern)]
            owners = {n.rsplit(".", 1)[0] for n in expert_parameters(model)}   # the routed experts' modules
            if any(h == o or h.startswith(o + ".") for h in hits for o in owners):
                raise UserError(f"{where}: {pattern!r} reaches Mixture-of-Experts experts, whose weights are 3-D "
                                f"parameters LoRA cannot adapt here; target the attention and shared linears")
            hits = [n for n in hits if isinstance(dict(named)[n], linear_types() + (torch.nn.Embedding,))]
        if not hits:
            raise UserError(f"{where}: {pattern!r} matches no linear layer of {type(model).__name__} "
                            f"(e.g. {', '.join(sorted({n.rsplit('.', 1)[-1] for n in linears})[:8])})")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def compact_targets(model: torch.nn.Module, names: list[str]) -> list[str]:
    """`names` as peft's `target_modules`: the short names (`q_proj`) where every module of that
    short name is chosen, the full names otherwise; both match by suffix in peft."""
    by_leaf: dict[str, list[str]] = {}
    for n, _ in model.named_modules():
        if n:
            by_leaf.setdefault(n.rsplit(".", 1)[-1], []).append(n)
    chosen, out = set(names), []
    for leaf in sorted({n.rsplit(".", 1)[-1] for n in names}):
        members = by_leaf[leaf]
        out += [leaf] if all(m in chosen for m in members) else [m for m in members if m in chosen]
    return out


def full_modules(model: torch.nn.Module, settings: LoraConfig, role: str, grown_vocab: bool, where: str) -> list[str]:
    """Modules trained in full beside the adapters (peft's `modules_to_save`)."""
    names = dict(model.named_modules())
    extra = list(settings.modules_to_save)
    if role in SCALAR_ROLES:
        extra += [h for h in SCORE_HEADS if h in names]
    if grown_vocab:
        inner = {id(m): n for n, m in names.items()}
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            if emb is not None and id(emb) in inner:
                extra.append(inner[id(emb)].rsplit(".", 1)[-1])
    for name in extra:
        if not any(n == name or n.endswith("." + name) for n in names):
            raise UserError(f"{where}.modules_to_save: {name!r} is no module of {type(model).__name__}")
    return list(dict.fromkeys(extra))


def peft_config(model: torch.nn.Module, settings: LoraConfig, role: str, grown_vocab: bool, where: str):
    peft = require_peft()
    targets = resolve_targets(model, settings.target_modules, f"{where}.target_modules")
    return peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                           target_modules=compact_targets(model, targets),
                           modules_to_save=full_modules(model, settings, role, grown_vocab, where) or None,
                           task_type="SEQ_CLS" if role in SCALAR_ROLES else "CAUSAL_LM", bias="none")


def apply_lora(model: torch.nn.Module, settings: LoraConfig, role: str, where: str,
               grown_vocab: bool = False) -> torch.nn.Module:
    """The base frozen, adapters on the target modules: a peft model (see the module docstring)."""
    peft = require_peft()
    config = peft_config(model, settings, role, grown_vocab, where)
    return upcast_trainable(peft.get_peft_model(model, config))


def upcast_trainable(model: torch.nn.Module) -> torch.nn.Module:
    """Trained parameters in fp32 (a base in bf16 gives its `modules_to_save` copies its dtype)."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; a quantized 4-bit weight counts its logical elements."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if getattr(p, "quant_state", None) is not None:     # bitsandbytes Params4bit: 2 values a byte
            n = int(torch.Size(p.quant_state.shape).numel())
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def adapter_norm(model: torch.nn.Module) -> float:
    """The L2 norm of the adapters' delta-carrying weights (B of every LoRA pair), over all of them."""
    squares = [p.detach().float().pow(2).sum() for name, p in model.named_parameters()
               if p.requires_grad and ".lora_B." in name]
    return float(torch.stack(squares).sum()) ** 0.5 if squares else 0.0     # one read from the device


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout of `model` to 0 (PPO and GRPO: the policy that samples is the one that
    trains); returns how many there were with p > 0."""
    count = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) and m.p > 0:
            m.p = 0.0
            count += 1
    return count


def describe(settings: LoraConfig, model: torch.nn.Module) -> str:
    """One log line: the adapters' settings (a continued adapter's own), the base's precision, what trains."""
    found = peft_of(model)
    if found is not None:        # a continued adapter keeps the rank and alpha it was created with
        own = found.peft_config["default"]
        settings = replace(settings, r=own.r, alpha=float(own.lora_alpha), dropout=float(own.lora_dropout))
    trainable, total = parameter_counts(model)
    return (f"LoRA r={settings.r} alpha={settings.alpha:g} dropout={settings.dropout:g}, "
            f"base in {base_precision(settings, model)}: "
            f"{trainable:,} of {total:,} parameters train ({100.0 * trainable / max(total, 1):.2f}%)")


def base_precision(settings: LoraConfig, model: torch.nn.Module) -> str:
    """How the frozen base is held: 'nf4 (QLoRA)', 'int8 (QLoRA)', or its dtype ('bfloat16', 'float32')."""
    if settings.quantize != "none":
        return f"{settings.quantize} (QLoRA)"
    frozen = next((p for p in model.parameters() if not p.requires_grad), None)
    return str(frozen.dtype).replace("torch.", "") if frozen is not None else "float32"


def peft_of(model: Any):
    """The peft model inside `model` (itself, or PPO's policy), else None."""
    found = peft_modules(model)
    return found[0] if found else None
