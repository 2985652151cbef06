"""`[mtp]` in training: DeepSeek-V3's multi-token prediction modules on the trained model, their loss term
and their metrics (docs/mtp.md).

`MtpTraining` is the `ModelTransform` the language-modelling stages (pretraining, SFT) pass to
`prepare_model` when `mtp.depth > 0` and the model trains in full: it attaches `MtpModules` as the
submodule `model.mtp` (so the optimizer trains them and every checkpoint holds them: a resume is bitwise),
initialised from the start model's `mtp.safetensors` when it has one, else fresh (seeded by the stage).
Its hooks log what was added, report `mtp_loss` (the depths' mean cross-entropy over the last step's
micro-batches, this rank's) and `mtp_weight` (lambda of that step), and move lambda along its schedule
(`mtp_weight`: `weight`, then `late_weight` from `late_from` of the stage's steps).

`mtp_loss_term` is what `dswb.engine.train.step` adds to a micro-batch's loss sum. The caller divides
that sum by the step's main target count, so the MTP term is put on the same token-sum scale: depth k's
mean cross-entropy on this micro-batch times the micro-batch's main target count,

    lambda / D * sum_k (CE_sum_k / n_k) * n_main

With one micro-batch a step this is exactly DeepSeek-V3's lambda / D * sum_k L_k; with gradient
accumulation (and over DDP ranks) each micro-batch's MTP loss weighs what its main loss weighs (its share
of the step's main targets), as its router losses do (`dswb.engine.moe.share`). It differs from one big
batch's value only as far as n_k / n_main differs between the micro-batches (depth k has k fewer targets
a sequence). Evaluation (`val_loss`) and the `loss` metric stay the main next-token loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from dswb.config.moe import MtpConfig
from dswb.engine.checkpoint.mtp import load_mtp
from dswb.engine.model.mtp import MtpModules, attach, late_start, mtp_loss_sum, mtp_of, mtp_weight
from dswb.engine.train.prepare import ModelHooks, ModelTransform
from dswb.errors import UserError

__all__ = ["MtpTraining", "mtp_loss_term", "mtp_metrics", "mtp_of", "mtp_transforms"]

UNSUPPORTED_MODES = {
    "fsdp": "the MTP modules would sit outside the sharded units, their gradients never reduced",
    "pipeline": "the MTP modules need the last stage's hidden states and the first stage's embedding",
}


class MtpTraining(ModelTransform):
    """Attaches `mtp.depth` MTP modules (from `source/mtp.safetensors` when it has them) and adds their
    log line, metrics and weight schedule to the loop; `total_steps` is the stage's `steps`."""

    name = "mtp"

    def __init__(self, settings: MtpConfig, total_steps: int, source: Path | None = None) -> None:
        self.settings, self.total_steps, self.source = settings, total_steps, source
        self.origin = "fresh"

    def weight_at(self, step: int) -> float:
        s = self.settings
        return mtp_weight(step, self.total_steps, s.weight, s.late_weight, s.late_from)

    def apply(self, model: torch.nn.Module, config, device: torch.device) -> torch.nn.Module:
        mode = config.parallel.mode
        if mode in UNSUPPORTED_MODES:
            raise UserError(f"mtp: multi-token prediction does not run with parallel.mode = '{mode}' "
                            f"({UNSUPPORTED_MODES[mode]}): use mode 'ddp' or 'none', or set mtp.depth = 0")
        if mtp_of(model) is not None:
            return model
        mtp = MtpModules(model, self.settings.depth)
        loaded = load_mtp(mtp, self.source) if self.source is not None else None
        self.origin = loaded or "fresh"
        mtp.loss_weight = self.weight_at(0)
        return attach(model, mtp)

    def describe(self, mtp: MtpModules) -> str:
        s = self.settings
        late = late_start(self.total_steps, s.late_from)
        weights = (f"loss weight {s.weight:g} then {s.late_weight:g} from step {late + 1}"
                   if late < self.total_steps and s.late_weight != s.weight else f"loss weight {s.weight:g}")
        return f"mtp: depth {mtp.depth}, +{mtp.n_params():,} parameters ({self.origin}), {weights}"

    def hooks(self, model: torch.nn.Module, ctx, stage: str, probe: Callable[[], float] | None) -> ModelHooks:
        mtp = mtp_of(model)
        if mtp is None:
            return ModelHooks()
        status = ctx.monitor.status    # `begin_stage` has recorded the step this stage (re)starts at
        start = int(status.get("step") or 0) if status.get("stage") == stage else 0
        mtp.loss_weight = self.weight_at(start)
        ctx.monitor.log(self.describe(mtp), stage=stage)

        def after_step(step: int) -> None:   # `step` steps are done: set lambda of the next one
            mtp.tally.clear()
            mtp.loss_weight = self.weight_at(step)
        return ModelHooks(metric_sources=[lambda: mtp_metrics(mtp)], step_hooks=[after_step])


def mtp_loss_term(mtp: MtpModules, model: torch.nn.Module, hidden: torch.Tensor, batch) -> torch.Tensor:
    """The MTP part of a micro-batch's loss sum (see the module docstring), recorded in `mtp.tally`."""
    logits = mtp(model, hidden, batch.input_ids, batch.attention_mask, batch.position_ids)
    sums, counts = mtp_loss_sum(logits, batch.labels, batch.position_ids)
    if not sums:        # a batch too short for any depth
        return hidden.new_zeros(())
    sums_t, counts_t = torch.stack(sums), torch.stack(counts)
    mtp.tally.append((sums_t.detach(), counts_t))
    means = sums_t / counts_t.clamp(min=1)
    return means.sum() * (mtp.loss_weight / mtp.depth * batch.n_target)


def mtp_metrics(mtp: MtpModules) -> dict:
    """`mtp_loss` (mean over the depths of each depth's mean cross-entropy over the last step's micro-batches;
    `mtp_loss/k` per depth when there are several) and `mtp_weight` (lambda of that step)."""
    metrics = {"mtp_weight": mtp.loss_weight}
    if not mtp.tally:
        return metrics
    width = max(len(s) for s, _ in mtp.tally)
    sums, counts = torch.zeros(width, dtype=torch.float64), torch.zeros(width, dtype=torch.float64)
    for s, c in mtp.tally:
        sums[:len(s)] += s.double().cpu()
        counts[:len(c)] += c.double().cpu()
    scored = counts > 0
    if not scored.any():
        return metrics
    per_depth = sums[scored] / counts[scored]
    metrics["mtp_loss"] = float(per_depth.mean())
    if width > 1:
        metrics.update({f"mtp_loss/{k + 1}": float(sums[k] / counts[k]) for k in range(width) if scored[k]})
    return metrics


def mtp_transforms(config, total_steps: int, source: Path | None, adapters: bool,
                   log: Callable[[str], None]) -> list[ModelTransform]:
    """The `extras` of a language-modelling stage for `[mtp]`: `MtpTraining` when `mtp.depth > 0` and the
    model trains in full; none (with a log line) when the stage trains LoRA adapters."""
    if config.mtp.depth <= 0:
        return []
    if adapters:
        log("mtp: not trained in this stage: it trains LoRA adapters, and the MTP modules train with the full "
            "model only (the final adapter holds no MTP weights)")
        return []
    return [MtpTraining(config.mtp, total_steps, source)]
