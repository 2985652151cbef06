"""FP8 statistics: the `layers` summary (the dashboard panel's keys plus scale and per-operand
detail), scalar metrics, threshold alerts raised once per crossing, the shadow check, and config
errors for impossible `[fp8]` combinations."""

from __future__ import annotations

import pytest
import torch

from dswb.config import load_config
from dswb.engine.fp8 import apply_fp8
from dswb.engine.fp8.monitor import Fp8Monitor
from dswb.engine.fp8.stats import relative_gap_pct, scalar_metrics, summarize, threshold_breaches
from dswb.errors import UserError


def counts(n: float, nonzero: float, saturated: float, underflow: float) -> dict:
    return {"n": n, "nonzero": nonzero, "saturated": saturated, "underflow": underflow}


def test_summary_has_the_panel_keys_and_the_worst_operand_per_group():
    data = {("mlp.up", "input"): {"amax": 3.0, "scale": 3.0 / 448, **counts(100, 80, 0, 8)},
            ("mlp.up", "grad"): {"amax": 0.01, "scale": 0.01 / 448, **counts(100, 100, 1, 2)},
            ("attn.qkv", "weight"): {"amax": 0.5, "scale": 0.5 / 448, **counts(10, 10, 0, 0)}}
    layers = summarize(data)
    up = layers["mlp.up"]
    assert {"amax", "saturation_pct", "underflow_pct", "scale", "operands"} <= set(up)
    assert up["amax"] == 3.0 and up["saturation_pct"] == 1.0 and up["underflow_pct"] == 10.0
    assert up["operands"]["input"]["underflow_pct"] == 10.0 and up["operands"]["grad"]["saturation_pct"] == 1.0
    assert scalar_metrics(layers) == {"fp8_amax": 3.0, "fp8_saturation_pct": 1.0, "fp8_underflow_pct": 10.0}
    assert scalar_metrics({}) == {}


def test_threshold_breaches_name_the_group_and_operand():
    layers = summarize({("mlp.down", "grad"): {"amax": 1.0, "scale": 1.0, **counts(1000, 1000, 5, 100)}})
    found = threshold_breaches(layers, saturation_pct=0.1, underflow_pct=5.0)
    assert [(code, group) for code, group, _ in found] == [("fp8_saturation", "mlp.down"),
                                                           ("fp8_underflow", "mlp.down")]
    assert "FP8 underflow 10% in mlp.down (grad) >= 5%" == found[1][2]
    assert threshold_breaches(layers, 0, 0) == []


def test_relative_gap():
    assert relative_gap_pct(2.02, 2.0) == pytest.approx(1.0)
    assert relative_gap_pct(1.0, 0.0) > 1e6


@pytest.fixture
def one_thread():
    """Tiny matmuls: one thread is faster than two fighting over a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeMonitor:
    def __init__(self) -> None:
        self.events, self.alerts = [], []

    def emit(self, kind, stage, step, **fields):
        self.events.append({"kind": kind, "stage": stage, "step": step, **fields})

    def alert(self, stage, step, code, message, explain, level="warning"):
        self.alerts.append((step, code, message))


def tiny_fp8_model(*overrides: str):
    from transformers import LlamaForCausalLM

    from dswb.engine.model.build import llama_config

    torch.manual_seed(0)
    cfg = load_config(None, ["fp8.enabled=true", *overrides])
    model = LlamaForCausalLM(llama_config("tiny", 64, 32, 1, 2, 0))
    return apply_fp8(model, cfg.fp8, torch.device("cpu")), cfg


def train_steps(model, monitor: Fp8Monitor, steps: range, scale: float = 1.0) -> list[dict]:
    metrics = []
    for step in steps:
        ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(step))
        out = model(input_ids=ids, labels=ids)
        (out.loss * scale).backward()
        model.zero_grad()
        metrics.append(monitor.metrics())
        monitor.after_step(step)
    return metrics


def test_monitor_writes_fp8_events_every_interval_with_metrics_on_the_same_steps(one_thread):
    model, cfg = tiny_fp8_model("fp8.stats_every=3")
    fake = FakeMonitor()
    monitor = Fp8Monitor(model, cfg.fp8, fake, "pretrain")
    metrics = train_steps(model, monitor, range(1, 5))
    events = [e for e in fake.events if e["kind"] == "fp8"]
    assert [e["step"] for e in events] == [1, 3]             # the stage's first step, then every 3
    assert [bool(m) for m in metrics] == [True, False, True, False]
    layers = events[-1]["layers"]
    assert set(layers) == {"attn.qkv", "attn.out", "mlp.up", "mlp.down"}
    assert set(layers["mlp.up"]["operands"]) == {"input", "weight", "grad"}
    assert events[-1]["backend"] == "auto" and events[-1]["recipe"].startswith("activations tile")


def test_alerts_fire_once_per_crossing(one_thread):
    model, cfg = tiny_fp8_model("fp8.stats_every=1", "fp8.underflow_alert_pct=0.000001",
                                "fp8.activations=tensor", "fp8.weights=tensor", "fp8.gradients=tensor")
    fake = FakeMonitor()
    monitor = Fp8Monitor(model, cfg.fp8, fake, "pretrain")
    train_steps(model, monitor, range(1, 3), scale=1e-3)   # per-tensor gradients: something always underflows
    codes = [(step, code) for step, code, _ in fake.alerts]
    assert codes and all(code == "fp8_underflow" for _, code in codes)
    assert {step for step, _ in codes} == {1}              # raised when crossing, not again while above


def test_shadow_check_compares_fp8_with_high_precision(one_thread):
    model, cfg = tiny_fp8_model("fp8.stats_every=2", "fp8.shadow_every=2", "fp8.shadow_alert_pct=0.0000001")
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(99))

    def probe() -> float:
        with torch.no_grad():
            return float(model(input_ids=ids, labels=ids).loss)

    fake = FakeMonitor()
    monitor = Fp8Monitor(model, cfg.fp8, fake, "pretrain", probe=probe)
    metrics = train_steps(model, monitor, range(1, 4))
    shadow = [e["shadow"] for e in fake.events if "shadow" in e]
    assert len(shadow) == 1 and 0 < shadow[0]["gap_pct"] < 5
    assert shadow[0]["fp8_loss"] != shadow[0]["reference_loss"]
    assert metrics[2]["fp8_shadow_gap_pct"] == pytest.approx(shadow[0]["gap_pct"], abs=1e-4)   # next step's metrics
    assert [code for _, code, _ in fake.alerts] == ["fp8_shadow_gap"]


@pytest.mark.parametrize("overrides, message", [
    (["fp8.scaling=delayed"], "fp8.scaling = 'delayed' keeps one amax history per tensor"),
    (["fp8.backend=torchao"], "fp8.backend = 'torchao' runs per-tensor or per-row scaling only"),
    (["fp8.backend=torchao", "fp8.activations=row", "fp8.weights=row", "fp8.gradients=row",
      "fp8.e5m2_gradients=true"], "uses its recipe's formats"),
    (["fp8.stats_every=10", "fp8.shadow_every=15"], r"fp8.shadow_every \(15\) must be a multiple of fp8.stats_every"),
    (["fp8.skip=['']"], "fp8.skip: empty pattern"),
    (["fp8.activations=col"], "fp8.activations: 'col' is not one of tensor, row, tile, block"),
    (["fp8.history_len=0"], "fp8.history_len: must be >= 1"),
])
def test_impossible_fp8_settings_are_one_line_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)
