"""Console front ends for headless `dswb run`: a live progress bar on a TTY, plain lines otherwise.

Both implement the engine's `Reporter` protocol; they only print.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from dswb.util.fmt import fmt_duration


def format_rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def metrics_summary(metrics: dict) -> str:
    parts = []
    if metrics.get("reward") is not None:   # RL stages: the reward first, then its spread and the KL
        parts.append(f"reward {metrics['reward']:.3f}")
        if metrics.get("kl") is not None:
            parts.append(f"kl {metrics['kl']:.3f}")
    elif metrics.get("accuracy") is not None:   # reward model
        parts.append(f"acc {metrics['accuracy']:.1%}")
    elif metrics.get("rewards/accuracies") is not None:   # DPO
        parts.append(f"acc {metrics['rewards/accuracies']:.1%}")
    if metrics.get("loss") is not None:
        parts.append(f"loss {metrics['loss']:.4f}")
    if metrics.get("lr") is not None:
        parts.append(f"lr {metrics['lr']:.2e}")
    if metrics.get("grad_norm") is not None:
        parts.append(f"gnorm {metrics['grad_norm']:.2f}")
    if metrics.get("tokens_per_s") is not None:
        parts.append(f"{format_rate(metrics['tokens_per_s'])} tok/s")
    if metrics.get("pad_efficiency") is not None:
        parts.append(f"pad {metrics['pad_efficiency']:.0%}")
    return "  ".join(parts)


SHOWN_KINDS = ("eval", "checkpoint", "alert", "log", "stage_end")


def _event_line(event: dict) -> str | None:
    """Notable events, worded as `dswb watch` words them."""
    from dswb.cli.watch_cmd import describe

    kind, stage = event.get("kind"), event.get("stage") or "-"
    if kind not in SHOWN_KINDS:
        return None
    if kind == "log":
        return f"[{stage}] {event.get('message')}"
    if kind == "eval" and not event.get("metrics"):   # an evaluation that measured nothing
        return None
    return f"[{stage}] step {event.get('step')} {kind}: {describe(event)}"


class PlainReporter:
    """One line per `every` steps (and per notable event): for logs, pipes and dumb terminals."""

    def __init__(self, out: TextIO = sys.stdout, every_s: float = 5.0) -> None:
        self.out, self.every_s, self._last = out, every_s, 0.0

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def on_stage_start(self, stage: str, total_steps: int, start_step: int) -> None:
        self._print(f"[{stage}] starting at step {start_step}/{total_steps}")

    def on_metrics(self, stage, step, total_steps, metrics, eta_s) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s or step == total_steps or step == 1:
            self._last = now
            self._print(f"[{stage}] step {step}/{total_steps}  {metrics_summary(metrics)}  eta {fmt_duration(eta_s, clock=True)}")

    def on_event(self, event: dict) -> None:
        if event.get("kind") == "stage_start":
            self.on_stage_start(event["stage"], event.get("total_steps", 0), event.get("step", 0))
            return
        line = _event_line(event)
        if line:
            self._print(line)

    def on_stage_end(self, stage: str, state: str) -> None:
        pass

    def close(self) -> None:
        """Called when the run ends, before the outcome is printed."""


class TTYReporter(PlainReporter):
    """A single progress line redrawn in place; events print above it."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        super().__init__(out)
        self._bar = ""
        self._last_draw = 0.0

    def _clear(self) -> None:
        if self._bar:
            self.out.write("\r\x1b[2K")
            self._bar = ""

    def _print(self, line: str) -> None:
        self._clear()
        print(line, file=self.out, flush=True)

    def close(self) -> None:
        """End a progress line cut short (a failure, a stop), so the outcome gets a line of its own."""
        if self._bar:
            self.out.write("\n")
            self.out.flush()
            self._bar = ""

    def on_metrics(self, stage, step, total_steps, metrics, eta_s) -> None:
        now = time.monotonic()
        if now - self._last_draw < 0.1 and step != total_steps:
            return
        self._last_draw = now
        width = shutil.get_terminal_size((100, 20)).columns
        frac = step / max(1, total_steps)
        head = f"{stage} {step}/{total_steps} {frac:4.0%} "
        tail = f" {metrics_summary(metrics)}  ETA {fmt_duration(eta_s, clock=True)}"
        bar_w = max(10, min(30, width - len(head) - len(tail) - 4))
        filled = int(bar_w * frac)
        line = f"{head}[{'#' * filled}{'-' * (bar_w - filled)}]{tail}"[: width - 1]
        self.out.write("\r\x1b[2K" + line)
        self.out.flush()
        self._bar = line
        if step == total_steps:
            self.out.write("\n")
            self._bar = ""
