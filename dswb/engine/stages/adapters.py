"""What a stage does with `[lora]`: load its start model for adapters, the transform that adds them,
the frozen reference without a second copy, and the record its final adapter keeps of its base.

    adapters = stage_adapters(config, STAGE, start.path)            # None: the stage trains in full
    model = adapters.load_lm(start.path, "sft.init", device, amp)    # plain, or peft when continuing
    grown = fit_vocab(model, tokenizer)
    model = prepare_model(model, config, device, adapters=adapters.transform("policy", grown))
    ref = adapters.reference(model)                                  # PPO, GRPO with beta > 0, DPO

A start that is itself a LoRA stage's adapter is continued (`lora.chain = "continue"`: its adapter
trains on, the result is an adapter of the same base) or merged into its base first (`"merge"`: a new
adapter on the merged model; the result's base is that earlier adapter's directory).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from dswb.config.adapters import LoraConfig, stage_lora
from dswb.engine.adapters.reference import AdapterReference
from dswb.engine.model.fingerprint import model_fingerprint
from dswb.engine.model.load import adapter_base, is_adapter_dir, is_reward_model, load_causal_lm, load_scalar_model
from dswb.engine.train.prepare import LoraTraining
from dswb.errors import UserError


@dataclass
class StageAdapters:
    """The `[lora]` settings of one stage and where its adapter comes from."""

    settings: LoraConfig
    stage: str
    continued: Path | None = None        # the adapter directory this stage keeps training
    base: Path | None = None             # the model directory the adapter sits on

    @property
    def where(self) -> str:
        return f"{'train' if self.stage == 'pretrain' else self.stage}.lora"

    @property
    def quantize(self) -> str:
        return self.settings.quantize

    def load_lm(self, path: Path, where: str, device: torch.device, amp_dtype=None) -> torch.nn.Module:
        """The start model for adapters: the base (quantized for QLoRA; in bf16 when the run computes in
        bf16: it never trains) and, when continuing, its adapter (trainable); else the start merged,
        ready for `transform`. Adapters themselves train in fp32 (peft casts them)."""
        keep = self.continued is not None
        return load_causal_lm(path, where, quantize=self.quantize, device=device, merge=not keep,
                              dtype=base_dtype(amp_dtype))

    def load_scalar(self, path: Path, where: str, device: torch.device, role: str, amp_dtype=None) -> torch.nn.Module:
        keep = self.continued is not None and role == "reward"
        return load_scalar_model(path, where, quantize=self.quantize, device=device, merge=not keep,
                                 dtype=base_dtype(amp_dtype))

    def transform(self, role: str = "policy", grown_vocab: bool = False) -> LoraTraining:
        if grown_vocab and self.continued is not None:
            raise UserError(f"{self.where}: this stage adds tokens to the vocabulary of the adapter it continues "
                            f"({self.continued}); set {self.where}.chain = 'merge' to start a new adapter")
        return LoraTraining(self.settings, role, self.where, grown_vocab)

    def reference(self, model: torch.nn.Module, before_training: bool = False) -> AdapterReference:
        """The stage's start model as a frozen view of `model` (docs: `dswb.engine.adapters.reference`);
        `before_training`: used only before the first step, so `model` as it is."""
        return AdapterReference(model, continued_from=self.continued, current=before_training)

    @cached_property
    def base_fingerprint(self) -> str | None:
        """The base's fingerprint, read once a stage (None for an adapter base: its own base is checked)."""
        return None if is_adapter_dir(self.base) else model_fingerprint(self.base)

    def record(self) -> dict:
        """What `final/<stage>/dswb_stage.json` keeps about the adapter (`adapter`)."""
        return {"base": str(self.base), "base_fingerprint": self.base_fingerprint,
                "continued": str(self.continued) if self.continued else None, "chain": self.settings.chain,
                "r": self.settings.r, "alpha": self.settings.alpha, "quantize": self.settings.quantize,
                "target_modules": self.settings.target_modules, "merge_final": self.settings.merge_final}

    def checkpoint_state(self) -> dict:
        """Saved in every checkpoint: a resume onto a different base is refused."""
        return {"base": str(self.base), "base_fingerprint": self.base_fingerprint}

    def check_resume(self, state: dict, where: str) -> None:
        saved = state.pop("adapter", None)
        if saved is None:
            raise UserError(f"{where}: the checkpoint holds the full model, but lora is on now: resume with the "
                            f"lora settings it was written with, or start the stage again")
        now = self.checkpoint_state()
        if saved != now:
            raise UserError(f"{where}: the checkpoint's adapter was trained on {saved['base']} "
                            f"(fingerprint {str(saved['base_fingerprint'])[:24]}), this stage's base is {now['base']} "
                            f"(fingerprint {str(now['base_fingerprint'])[:24]}): resume on the same base")


def base_dtype(amp_dtype) -> torch.dtype:
    """The frozen base's dtype: bf16 when the run computes in bf16 (a GPU), else fp32."""
    return torch.bfloat16 if amp_dtype == torch.bfloat16 else torch.float32


def stage_adapters(config, stage: str, start: Path | None, log: Callable[[str], None] | None = None,
                   reward: bool = False) -> StageAdapters | None:
    """The stage's adapters when `[lora]` is on for it and it starts from a trained model, else None
    (with a line to `log` when lora is on but the stage starts from random weights). An adapter start
    of the other kind (a policy's adapter as the start of a reward model: `reward`) is merged."""
    settings = stage_lora(config, stage)
    if not settings.enabled:
        return None
    if start is None:
        if log is not None:
            log("lora is on, but this stage starts from random weights: it trains every weight")
        return None
    if is_adapter_dir(start) and settings.chain == "continue" and is_reward_model(start) == reward:
        where = f"{stage}.init"
        return StageAdapters(settings, stage, continued=start, base=adapter_base(start, where))
    return StageAdapters(settings, stage, base=start)


def final_extra(adapters: StageAdapters | None, **extra) -> dict:
    """`finish_lm`'s `extra`: the stage's own fields and, for an adapter, its record."""
    return {**extra, "adapter": adapters.record()} if adapters is not None else extra
