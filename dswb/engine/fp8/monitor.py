"""FP8 statistics into the run: `fp8` events, scalar health metrics, alerts, the shadow check.

`Fp8Monitor` is wired by `transforms.model_hooks`: its `metrics` is one of the loop's metric
sources and its `after_step` one of its step hooks. Statistics are collected during one
training step every `fp8.stats_every` (and the first step of the stage), then written as an `fp8`
event at that step; the worst group's numbers also go into that step's metrics
(`fp8_amax`, `fp8_saturation_pct`, `fp8_underflow_pct`). An alert is raised when a group crosses a
threshold, once per crossing. Every `fp8.shadow_every` steps the stage's probe (the loss of a
fixed held-out batch) runs with FP8 on and off; their relative gap goes into that `fp8` event and
the next metrics event (`fp8_shadow_gap_pct`), with an alert above `fp8.shadow_alert_pct`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from dswb.engine.fp8.convert import fp8_disabled, fp8_info, fp8_layers
from dswb.engine.fp8.stats import (SATURATION_EXPLAIN, SHADOW_EXPLAIN, UNDERFLOW_EXPLAIN, Fp8Stats, relative_gap_pct,
                                   scalar_metrics, threshold_breaches)

EXPLAIN = {"fp8_saturation": SATURATION_EXPLAIN, "fp8_underflow": UNDERFLOW_EXPLAIN}


class Fp8Monitor:
    def __init__(self, model: torch.nn.Module, cfg: Any, monitor: Any, stage: str,
                 probe: Callable[[], float] | None = None) -> None:
        self.model, self.cfg, self.monitor, self.stage = model, cfg, monitor, stage
        self.probe = probe
        self.stats = Fp8Stats(active=cfg.stats_every > 0)
        for layer in fp8_layers(model):
            layer.recorder = self.stats
        self.info = fp8_info(model)
        self._fresh: dict = {}
        self._pending: dict[str, float] = {}   # shadow gap, reported with the next metrics
        self._active_alerts: set[tuple[str, str]] = set()

    def metrics(self) -> dict[str, float]:
        """This step's scalar health numbers (only on steps with fresh statistics)."""
        out, self._pending = self._pending, {}
        if self.stats.active and self.stats.data:
            self._fresh = self.stats.take()
            out.update(scalar_metrics(self._fresh))
        return out

    def after_step(self, step: int) -> None:
        cfg = self.cfg
        if self.stats.active and self.stats.data:   # not taken by metrics (a step that logged no metrics)
            self._fresh = self.stats.take()
        shadow = self._shadow(step) if cfg.shadow_every and step % cfg.shadow_every == 0 else None
        if self._fresh or shadow:
            fields: dict = {"backend": self.info.backend if self.info else "",
                            "recipe": self.info.recipe.describe() if self.info else ""}
            if self._fresh:   # a shadow-only event (statistics off) carries no `layers`
                fields["layers"] = self._fresh
            if shadow:
                fields["shadow"] = shadow
            self.monitor.emit("fp8", self.stage, step, **fields)
            self._alerts(step, self._fresh)
        self._fresh = {}
        self.stats.active = cfg.stats_every > 0 and (step + 1) % cfg.stats_every == 0

    def _alerts(self, step: int, layers: dict) -> None:
        if not layers:
            return
        now = {(code, group): message for code, group, message in
               threshold_breaches(layers, self.cfg.saturation_alert_pct, self.cfg.underflow_alert_pct)}
        for key, message in now.items():
            if key not in self._active_alerts:
                self.monitor.alert(self.stage, step, key[0], message, EXPLAIN[key[0]])
        self._active_alerts = set(now)

    def _shadow(self, step: int) -> dict | None:
        if self.probe is None:
            return None
        fp8_loss = self.probe()
        with fp8_disabled(self.model):
            reference = self.probe()
        gap = relative_gap_pct(fp8_loss, reference)
        self._pending["fp8_shadow_gap_pct"] = gap
        if self.cfg.shadow_alert_pct > 0 and gap >= self.cfg.shadow_alert_pct:
            self.monitor.alert(self.stage, step, "fp8_shadow_gap",
                               f"FP8 loss {fp8_loss:.4f} vs high precision {reference:.4f}: gap {gap:.2f}% "
                               f">= {self.cfg.shadow_alert_pct:g}%", SHADOW_EXPLAIN)
        return {"fp8_loss": round(fp8_loss, 6), "reference_loss": round(reference, 6), "gap_pct": round(gap, 4)}
