"""What every tracker sink shares: the `Sink` interface and the reading of events into scalars.

A sink receives the run's events (the dicts written to `events.jsonl`, or read back from it) one by
one through `write`, always on one thread (the pump's, or `dswb runs export`'s). It opens its store
in `open`, after which `where` says where it writes (and `note`, when set, something the user must
know about it, logged once), and `close` ends it. Scalars are named `<stage>/<metric>` exactly as the
event's `metrics` keys (`run/<metric>` for an event outside a stage) and logged at the event's step;
the per-layer detail of `moe` and `fp8` events and a stage's model and data sizes (`stage_start`,
where an adapter's trainable share shows) become scalars too (`event_numbers`). Numbers that are
not finite (null in the file) are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

SCALAR_KINDS = ("metrics", "eval", "system", "moe", "fp8", "stage_start")
SUMMARY_KINDS = ("metrics", "eval", "system")   # whose latest values make a stage's summary
PARAM_VALUE_LIMIT = 500     # characters of one flattened config value (MLflow's older servers accept 500)


class Sink:
    """One tracker. Subclasses set `name` and implement `_open`, `_write` and `_close`."""

    name = "sink"

    def __init__(self, target: str | None = None, continue_run: bool = True) -> None:
        self.target = target              # overrides `[monitor] report_dir` (`dswb runs export --out`)
        self.continue_run = continue_run  # a resumed run continues the tracker's run (export: a new one)
        self.where = ""
        self.note = ""
        self.run_dir: Path | None = None
        self.config: dict = {}
        self.last: dict[str, dict[str, float]] = {}   # stage -> metric -> latest value
        self.state: str | None = None                 # the run_end state, once seen

    def open(self, run_dir: Path, config: dict) -> None:
        self.run_dir, self.config = Path(run_dir), config
        self._open()

    def write(self, event: dict) -> None:
        kind = event.get("kind")
        if kind in SUMMARY_KINDS:
            for tag, value in scalars(event):
                self.last.setdefault(stage_name(event), {})[tag.split("/", 1)[1]] = value
        elif kind == "run_end":
            self.state = event.get("state")
        self._write(event)

    def close(self) -> None:
        self._close()

    def report_dir(self) -> str:
        """Where this sink writes, from `--out` or `[monitor] report_dir` ("" = under the run directory)."""
        if self.target:
            return self.target
        return str((self.config.get("monitor") or {}).get("report_dir") or "")

    def _open(self) -> None:
        raise NotImplementedError

    def _write(self, event: dict) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


def stage_name(event: dict) -> str:
    return str(event.get("stage") or "run")


MOE_LAYER_FIELDS = ("imbalance", "entropy", "dead", "gate_mean", "tokens")
FP8_GROUP_FIELDS = ("amax", "saturation_pct", "underflow_pct")
STAGE_START_FIELDS = {"model": ("params", "trainable"), "data": ("train_samples", "val_samples", "train_tokens")}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and value not in (float("inf"), float("-inf"))


def event_numbers(event: dict) -> dict[str, Any]:
    """The event's numbers by metric name (not yet checked finite): `metrics` of `metrics`, `eval` and
    `system` events; `moe/layer<L>/<field>` (and `bias_abs`, the mean |bias|) per MoE layer;
    `fp8/<group>/<field>` and `fp8/shadow_gap_pct` of `fp8` events; `model/<field>` and `data/<field>` of
    `stage_start`."""
    kind = event.get("kind")
    if kind in ("metrics", "eval", "system"):
        metrics = event.get("metrics")
        return dict(metrics) if isinstance(metrics, dict) else {}
    out: dict[str, Any] = {}
    if kind == "moe":
        for layer in event.get("layers") or []:
            if not isinstance(layer, dict):
                continue
            name = f"moe/layer{layer.get('layer')}"
            out.update({f"{name}/{field}": layer.get(field) for field in MOE_LAYER_FIELDS})
            bias = layer.get("bias")
            if isinstance(bias, list) and bias and all(is_number(b) for b in bias):
                out[f"{name}/bias_abs"] = sum(abs(b) for b in bias) / len(bias)
    elif kind == "fp8":
        layers = event.get("layers")
        for group, stats in (layers.items() if isinstance(layers, dict) else ()):
            if isinstance(stats, dict):
                out.update({f"fp8/{group}/{field}": stats.get(field) for field in FP8_GROUP_FIELDS})
        shadow = event.get("shadow")
        if isinstance(shadow, dict):
            out["fp8/shadow_gap_pct"] = shadow.get("gap_pct")
    elif kind == "stage_start":
        for part, fields in STAGE_START_FIELDS.items():
            table = event.get(part)
            if isinstance(table, dict):
                out.update({f"{part}/{field}": table.get(field) for field in fields})
    return out


def scalars(event: dict) -> Iterator[tuple[str, float]]:
    """`(<stage>/<name>, value)` for every finite number of `event_numbers(event)`."""
    stage = stage_name(event)
    for name, value in event_numbers(event).items():
        if is_number(value):
            yield f"{stage}/{name}", float(value)


def step_of(event: dict) -> int:
    step = event.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else 0


def flatten_config(config: dict, limit: int = PARAM_VALUE_LIMIT) -> dict[str, str]:
    """`{"section.key": "value"}` for the resolved config, values cut to `limit` characters."""
    flat = {}
    for section, table in config.items():
        items = table.items() if isinstance(table, dict) else [("", table)]
        for key, value in items:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[f"{section}.{key}" if key else section] = text if len(text) <= limit else text[:limit - 1] + "…"
    return flat


def alert_text(event: dict) -> str:
    """One line for an `alert` event."""
    return f"[{event.get('level', 'warning')}] {event.get('code', '?')}: {event.get('message', '')}"


def summary_text(stage: str, state: Any, last: dict[str, float]) -> str:
    """A Markdown table of a stage's latest value of every metric, written at its `stage_end`."""
    rows = "\n".join(f"| {name} | {value:.6g} |" for name, value in sorted(last.items()))
    return f"stage **{stage}** ended: {state}\n\n| metric | last |\n|---|---|\n{rows}\n"


def rows_of(samples) -> tuple[list[str], list[list]]:
    """Columns and rows of a `samples` event's list of dicts (values not str/number as JSON)."""
    samples = [s for s in samples or [] if isinstance(s, dict)]
    columns = list(dict.fromkeys(k for s in samples for k in s))
    plain = (str, int, float, bool, type(None))
    return columns, [[v if isinstance(v := s.get(c), plain) else json.dumps(v, default=str) for c in columns]
                     for s in samples]


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)
