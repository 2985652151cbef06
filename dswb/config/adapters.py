"""`[lora]`: train low-rank adapters (LoRA, or QLoRA on a quantized base) instead of every weight.

One `[lora]` section applies to every stage that starts from a trained model; a stage changes any of
its fields in its own table (`[sft.lora]`, `[grpo.lora]`, `[train.lora]` for continued pretraining;
`--set sft.lora.r=8`), which holds only the fields it changes. `stage_lora(config, stage)` is the
result. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from dswb.config.fields import doc

QUANTIZE = ("none", "nf4", "int8")


@dataclass
class LoraConfig:
    """`[lora]`: adapters through `peft` (docs/adapters.md)."""

    enabled: bool = doc(False, "Train LoRA adapters on a frozen base in every stage that starts from a trained model "
                        "(pretraining from random weights trains in full).")
    r: int = doc(16, "Rank of each adapter.", min=1)
    alpha: float = doc(32.0, "Scaling numerator: the update is (alpha / r) B A.", min=0.0)
    dropout: float = doc(0.05, "Dropout on the adapters' input (SFT, RM, DPO; PPO and GRPO run without dropout).",
                         min=0.0, max=0.9)
    target_modules: list[str] = doc(None, "Modules that get adapters: 'all-linear' (every linear layer but the "
                                    "output head), or names / regex patterns of modules.",
                                    factory=lambda: ["all-linear"])
    modules_to_save: list[str] = doc(None, "Modules trained in full beside the adapters (the reward and value "
                                     "models' score head is added automatically).", factory=list)
    quantize: str = doc("none", "QLoRA: keep the frozen base in 4-bit NF4 or int8 (bitsandbytes); none: its dtype.",
                        choices=QUANTIZE)
    chain: str = doc("continue", "A stage that starts from a LoRA stage's adapter: keeps training it (continue: the "
                     "result stays an adapter of the same base) or merges it first and trains a new one (merge).",
                     choices=("continue", "merge"))
    value: str = doc("adapter", "PPO's value model: its own adapter on its own frozen copy of the backbone, or "
                     "trained in full (full: 16 bytes a parameter more).", choices=("adapter", "full"))
    merge_final: bool = doc(False, "Also write the merged full model (`final/<stage>/merged/`) at the end of a stage.")


def lora_fields() -> dict[str, Any]:
    return {f.name: f for f in fields(LoraConfig)}


def stage_lora(config: Any, stage: str) -> LoraConfig:
    """The `[lora]` settings of `stage`: the run's, changed by the stage's own `[<stage>.lora]` table."""
    section = getattr(config, "train" if stage == "pretrain" else stage)
    return replace(config.lora, **section.lora)


ADAPTER_STAGES = ("pretrain", "sft", "rm", "dpo", "ppo", "grpo")


def validate_lora(config: Any, where: str) -> None:
    """`[lora]` combinations that cannot work (raise `UserError`)."""
    from dswb.errors import UserError

    for stage in config.run.stages:
        lora = stage_lora(config, stage)
        if not lora.enabled:
            continue
        name = "train" if stage == "pretrain" else stage
        if not lora.target_modules or any(not t.strip() for t in lora.target_modules):
            raise UserError(f"{where}: {name}.lora.target_modules: give 'all-linear' or module names")
        if config.fp8.enabled:
            raise UserError(f"{where}: lora with fp8.enabled: FP8 training converts the trained linear layers, "
                            f"which LoRA freezes; turn one of them off (stage {stage})")
        if config.parallel.mode in ("fsdp", "pipeline", "layers"):
            raise UserError(f"{where}: lora with parallel.mode = '{config.parallel.mode}': adapters train in one "
                            f"process or under DDP (parallel.mode = 'ddp'); stage {stage}")
