"""Mixture-of-Experts routing statistics (`moe` events), per stage: what the Experts tab shows.

Every `moe.stats_every` steps the engine writes a `moe` event: the router family, the balancing,
the routed experts per layer and top-k, and per MoE layer the tokens each expert received over
the last `steps` steps (`load`), the imbalance (max/mean load), the router entropy, the mean gate
weight, the dead experts and the aux-free correction bias. `on_moe` keeps per stage the latest
layers (`MoeStage.layers`) and each layer's imbalance over steps (a bounded `SeriesHistory`).

Everything is checked here: a field of the wrong type or out of range is left out (a layer whose
load does not match the expert count keeps its other figures), a layer entry that is not an
object or has no layer index is skipped, at most `MAX_LAYERS` layers of `MAX_EXPERTS` experts are
kept, and an event without a step or without a usable layer counts as a bad event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dswb.tui.history import SeriesHistory, series_history
from dswb.tui.model_stage import event_stage
from dswb.tui.sanitize import name_text, number, step_value

if TYPE_CHECKING:
    from dswb.tui.model import RunModel

MAX_LAYERS = 128  # MoE layers kept per stage (DeepSeek-V3 has 58, Qwen3-235B 94)
MAX_EXPERTS = 512  # routed experts per layer (DeepSeek-V3: 256, Kimi K2: 384)
HISTORY_CAPACITY = 256  # imbalance points per layer kept exactly (then folded into min/max buckets)
LAYER_LIMIT = 1 << 20  # a larger layer index is not a layer
COUNT_LIMIT = 2 ** 53  # a token count beyond this is not a count
PLOT_LAYERS = 4  # layers on the imbalance curve (the chart has four colours): the worst ones


@dataclass(frozen=True)
class MoeLayer:
    """One MoE layer of the latest `moe` event; None (or empty) where the event's value was unusable."""

    layer: int
    tokens: float | None = None
    load: tuple[float, ...] = ()  # tokens per expert, one per routed expert
    imbalance: float | None = None  # max(load) / mean(load)
    entropy: float | None = None  # nats
    entropy_max: float | None = None  # log(experts)
    gate_mean: float | None = None
    dead: tuple[int, ...] = ()
    bias: tuple[float, ...] | None = None

    @property
    def entropy_share(self) -> float | None:
        """The router entropy as a share of its maximum (1: tokens spread evenly over the experts)."""
        if self.entropy is None or not self.entropy_max:
            return None
        return min(1.0, self.entropy / self.entropy_max)


@dataclass
class MoeStage:
    """What one stage's `moe` events said: the latest layers and each layer's imbalance history."""

    family: str = ""
    balance: str = ""
    experts: int | None = None
    top_k: int | None = None
    steps: int | None = None  # training steps the latest counts cover
    step: int = 0  # the step of the latest event
    layers: tuple[MoeLayer, ...] = ()
    imbalance: dict[str, SeriesHistory] = field(default_factory=dict)  # by layer index (as text)
    events: int = 0
    skipped: int = 0  # layer entries of the latest event left out (malformed, or beyond MAX_LAYERS)


def on_moe(model: RunModel, event: dict) -> None:
    """Fold a `moe` event into its stage's `MoeStage`; raises on one without a step or a usable layer."""
    step = step_value(event.get("step"), required=True)
    experts = _count(event.get("experts"), MAX_EXPERTS)
    raw = event.get("layers")
    if raw.__class__ is not list:
        raise ValueError("moe layers is not a list")
    layers, skipped = clean_moe_layers(raw, experts)
    if not layers:
        raise ValueError("no usable MoE layer")
    name = event_stage(model, event).name
    moe = model.moe.get(name)
    if moe is None:
        moe = model.moe[name] = MoeStage()
    fold_moe(moe, event, step, layers, skipped)
    model.moe_events += 1


def fold_moe(moe: MoeStage, event: dict, step: int, layers: tuple[MoeLayer, ...], skipped: int = 0) -> None:
    """Fold one event's checked `layers` into `moe` (the event's other fields are checked here)."""
    family, balance = event.get("family"), event.get("balance")
    if family.__class__ is str and family:
        moe.family = name_text(family, 40)
    if balance.__class__ is str and balance:
        moe.balance = name_text(balance, 20)
    moe.experts = _count(event.get("experts"), MAX_EXPERTS) or _load_width(layers) or moe.experts
    top_k = _count(event.get("top_k"), MAX_EXPERTS)
    moe.top_k = top_k if top_k is None or moe.experts is None or top_k <= moe.experts else None
    moe.steps = _count(event.get("steps"), COUNT_LIMIT)
    moe.step = step
    moe.layers = layers
    moe.skipped = skipped
    moe.events += 1
    for layer in layers:
        if layer.imbalance is not None:
            history = series_history(moe.imbalance, str(layer.layer), HISTORY_CAPACITY, MAX_LAYERS)
            if history is not None:
                history.append(step, layer.imbalance)


def clean_moe_layers(raw: list, experts: int | None) -> tuple[tuple[MoeLayer, ...], int]:
    """The usable layers of an event's `layers` (at most MAX_LAYERS, each layer index once, in
    the event's order) and how many entries were left out. With `experts` unknown, the first
    usable load sets the width every other load must have."""
    out: list[MoeLayer] = []
    seen: set[int] = set()
    for entry in raw[:MAX_LAYERS]:
        layer = clean_moe_layer(entry, experts)
        if layer is None or layer.layer in seen:
            continue
        seen.add(layer.layer)
        out.append(layer)
        if experts is None and layer.load:
            experts = len(layer.load)
    return tuple(out), len(raw) - len(out)


def clean_moe_layer(entry: Any, experts: int | None) -> MoeLayer | None:
    """One layer of a `moe` event, checked; None when it is not an object with a layer index."""
    if entry.__class__ is not dict:
        return None
    index = _count(entry.get("layer"), LAYER_LIMIT, minimum=0)
    if index is None:
        return None
    load = _load(entry.get("load"), experts)
    width = len(load) or experts
    imbalance = _bounded(entry.get("imbalance"), float(width or MAX_EXPERTS) * (1 + 1e-9))
    if imbalance is None and load:
        imbalance = load_imbalance(load)
    entropy_max = _bounded(entry.get("entropy_max"), math.log(MAX_EXPERTS) + 1e-6)
    if entropy_max is None and width:
        entropy_max = math.log(width)
    entropy = _bounded(entry.get("entropy"), (entropy_max or math.log(MAX_EXPERTS)) * (1 + 1e-6) + 1e-9)
    bias = _floats(entry.get("bias"), width)
    return MoeLayer(layer=index, tokens=_bounded(entry.get("tokens"), COUNT_LIMIT), load=load,
                    imbalance=imbalance, entropy=entropy, entropy_max=entropy_max,
                    gate_mean=_bounded(entry.get("gate_mean"), 1e6), dead=_indices(entry.get("dead"), width),
                    bias=bias or None)


def load_imbalance(load: tuple[float, ...]) -> float | None:
    """max(load) / mean(load); None when no token was routed."""
    total = sum(load)
    return max(load) * len(load) / total if total > 0 else None


def imbalance_series(moe: MoeStage | None, limit: int = PLOT_LAYERS) -> list[tuple[str, list, list, bool]]:
    """The imbalance curves of the `limit` layers with the highest latest imbalance, worst first:
    `[(label, steps, values, clean)]` as `MetricPlot` takes them (values are finite and bounded)."""
    if moe is None:
        return []
    curves = [(name, *h.points()) for name, h in moe.imbalance.items() if h.n]
    curves = [c for c in curves if c[1]]
    curves.sort(key=lambda c: (-c[2][-1], int(c[0])))
    return [(f"layer {name}", xs, ys, True) for name, xs, ys in curves[:limit]]


def moe_stats_every(config: Any) -> int | None:
    """`moe.stats_every` of a run's config (`run_start`), when it is there and an integer."""
    moe = config.get("moe") if config.__class__ is dict else None
    every = moe.get("stats_every") if moe.__class__ is dict else None
    return every if every.__class__ is int and 0 <= every < COUNT_LIMIT else None

def _count(value: Any, limit: int, minimum: int = 1) -> int | None:
    """An integer (or integral float) in [minimum, limit], else None."""
    if value.__class__ is float and math.isfinite(value) and value.is_integer():
        value = int(value)
    return value if value.__class__ is int and minimum <= value <= limit else None


def _bounded(value: Any, limit: float) -> float | None:
    """A finite number in [0, limit], else None."""
    value = number(value)
    return value if value is not None and 0 <= value <= limit else None


def _load(value: Any, experts: int | None) -> tuple[float, ...]:
    """Tokens per expert: `experts` counts (any width up to MAX_EXPERTS when unknown), else ()."""
    if value.__class__ is not list or not 0 < len(value) <= MAX_EXPERTS:
        return ()
    if experts is not None and len(value) != experts:
        return ()
    load = tuple(_bounded(x, COUNT_LIMIT) for x in value)
    return () if None in load else load


def _load_width(layers: tuple[MoeLayer, ...]) -> int | None:
    return next((len(layer.load) for layer in layers if layer.load), None)


def _indices(value: Any, experts: int | None) -> tuple[int, ...]:
    """Expert indices below `experts` (MAX_EXPERTS when unknown), each once, in order."""
    if value.__class__ is not list:
        return ()
    limit = (experts or MAX_EXPERTS) - 1
    indices = (_count(x, limit, minimum=0) for x in value[:4 * MAX_EXPERTS])
    return tuple(sorted({i for i in indices if i is not None}))


def _floats(value: Any, width: int | None) -> tuple[float, ...]:
    """`width` finite numbers (the aux-free bias per expert), else ()."""
    if value.__class__ is not list or not value or len(value) != (width or len(value)) or len(value) > MAX_EXPERTS:
        return ()
    out = tuple(number(x) for x in value)
    return () if None in out else out

