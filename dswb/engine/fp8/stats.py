"""FP8 health statistics per layer group and operand, and the alerts they raise.

While `Fp8Stats.active` is set (one training step every `fp8.stats_every`), every FP8 layer adds
the counts of its primary quantizations (input and weight in the forward pass, output gradient in
the backward pass) under its layer group. `summarize` turns them into the `layers` field of an
`fp8` event:

    {group: {"amax", "scale", "saturation_pct", "underflow_pct",
             "operands": {"input" | "weight" | "grad": {"amax", "scale", "saturation_pct", "underflow_pct"}}}}

`amax` is the largest magnitude seen, `scale` the largest dequantization scale used,
`saturation_pct` the share of non-zero values clipped at the FP8 maximum, `underflow_pct` the share
of non-zero values flushed to zero. A group's own numbers are the worst of its operands.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPERAND_KEYS = ("amax", "scale", "saturation_pct", "underflow_pct")

SATURATION_EXPLAIN = ("Values above the FP8 maximum times the scale were clipped. With current scaling this cannot "
                      "happen; with delayed scaling the amax grew faster than its history: shorten fp8.history_len, "
                      "or use fp8.scaling = 'current'. Persistent saturation hurts the loss.")
UNDERFLOW_EXPLAIN = ("Non-zero values became 0 in FP8 because they were tiny next to the largest value sharing their "
                     "scale. Finer granularity (tile/block instead of tensor/row) or fp8.e5m2_gradients = true for "
                     "gradients keep them; a little underflow is harmless, a lot slows or stalls learning.")
SHADOW_EXPLAIN = ("The FP8 loss of a fixed held-out batch differs from the same model's loss in high precision by "
                  "more than fp8.shadow_alert_pct. FP8 error is building up: check the saturation and underflow "
                  "in the FP8 panel, use finer granularity, or keep the affected layers in high precision "
                  "(fp8.skip).")


@dataclass
class Fp8Stats:
    active: bool = True
    data: dict = field(default_factory=dict)   # (group, role) -> running aggregates

    def add(self, group: str, role: str, amax: float, scale: float, counts: dict[str, float]) -> None:
        agg = self.data.setdefault((group, role), {"amax": 0.0, "scale": 0.0, "n": 0.0, "nonzero": 0.0,
                                                   "saturated": 0.0, "underflow": 0.0})
        agg["amax"] = max(agg["amax"], amax)
        agg["scale"] = max(agg["scale"], scale)
        for key in ("n", "nonzero", "saturated", "underflow"):
            agg[key] += counts[key]

    def take(self) -> dict:
        """The `layers` summary of what was collected, and a fresh start."""
        layers = summarize(self.data)
        self.data = {}
        return layers


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def summarize(data: dict) -> dict:
    """`{(group, role): aggregates}` -> the `layers` field of an `fp8` event (rounded for the event file)."""
    layers: dict[str, dict] = {}
    for (group, role), agg in sorted(data.items()):
        op = {"amax": round(agg["amax"], 6), "scale": float(f"{agg['scale']:.6g}"),
              "saturation_pct": round(_pct(agg["saturated"], agg["nonzero"]), 5),
              "underflow_pct": round(_pct(agg["underflow"], agg["nonzero"]), 5)}
        entry = layers.setdefault(group, {"amax": 0.0, "scale": 0.0, "saturation_pct": 0.0, "underflow_pct": 0.0,
                                          "operands": {}})
        entry["operands"][role] = op
        for key in OPERAND_KEYS:
            entry[key] = max(entry[key], op[key])
    return layers


def scalar_metrics(layers: dict) -> dict[str, float]:
    """Run-level health numbers for the metrics stream: the worst group of each kind."""
    if not layers:
        return {}
    return {"fp8_amax": max(v["amax"] for v in layers.values()),
            "fp8_saturation_pct": max(v["saturation_pct"] for v in layers.values()),
            "fp8_underflow_pct": max(v["underflow_pct"] for v in layers.values())}


def threshold_breaches(layers: dict, saturation_pct: float, underflow_pct: float) -> list[tuple[str, str, str]]:
    """`(code, group, message)` for each layer group over a threshold (0 disables a check)."""
    found = []
    for group, v in layers.items():
        worst = max(v.get("operands", {}).items(), key=lambda kv: kv[1]["saturation_pct"], default=(None, {}))
        if saturation_pct > 0 and v["saturation_pct"] >= saturation_pct:
            found.append(("fp8_saturation", group, f"FP8 saturation {v['saturation_pct']:.3g}% in {group} "
                                                  f"({worst[0]}) >= {saturation_pct:g}%"))
        worst = max(v.get("operands", {}).items(), key=lambda kv: kv[1]["underflow_pct"], default=(None, {}))
        if underflow_pct > 0 and v["underflow_pct"] >= underflow_pct:
            found.append(("fp8_underflow", group, f"FP8 underflow {v['underflow_pct']:.3g}% in {group} "
                                                 f"({worst[0]}) >= {underflow_pct:g}%"))
    return found


def relative_gap_pct(fp8_loss: float, reference_loss: float) -> float:
    """|FP8 loss - high-precision loss| / |high-precision loss|, in percent."""
    return 100.0 * abs(fp8_loss - reference_loss) / max(abs(reference_loss), 1e-12)
