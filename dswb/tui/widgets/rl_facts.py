"""The RL stage at a glance: where an iteration's time goes, and the latest values of the RL
metrics that are not plotted (reward per source with the completions it could not score,
zero-variance groups, eos rate, PPO's value loss, DAPO's dynamic sampling...). Names follow
docs/run-directory.md and TRL's."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from dswb.tui.format import bar
from dswb.util.fmt import cut_text, finite_or_none, fmt_num

PHASES = (("generation", "timing/generation_s"), ("scoring", "timing/scoring_s"),
          ("ref log-probs", "timing/ref_logprobs_s"), ("update", "timing/update_s"))
FACTS = (("zero-std groups", "frac_reward_zero_std"), ("sampling rounds", "dynamic_sampling/rounds"),
         ("groups kept", "dynamic_sampling/groups_kept"), ("eos rate", "eos_rate"),
         ("clipped completions", "completions/clipped_ratio"), ("approx KL", "approx_kl"),
         ("ratio mean", "ratio_mean"), ("ratio max", "ratio_max"), ("policy loss", "policy_loss"),
         ("value loss", "value_loss"), ("explained var", "explained_variance"),
         ("completion tok/s", "completion_tokens_per_s"))
UNSCORABLE_STYLE = "bold red"


def timing_shares(metrics: dict) -> list[tuple[str, float, float]]:
    """(phase, seconds, share of their sum) for each `timing/*_s` phase the step reported."""
    phases = []
    for label, key in PHASES:
        seconds = finite_or_none(metrics.get(key))
        if seconds is not None and seconds >= 0:
            phases.append((label, seconds))
    total = sum(s for _, s in phases)
    return [(label, s, s / total if total > 0 else 0.0) for label, s in phases]


def reward_sources(metrics: dict) -> list[tuple[str, object]]:
    """(source, last mean) for every `rewards/<source>/mean` metric."""
    out = []
    for key, value in metrics.items():
        if isinstance(key, str) and key.startswith("rewards/") and key.endswith("/mean"):
            out.append((key[len("rewards/"):-len("/mean")], value))
    return out[:8]


def unscorable_now(metrics: dict, source: str) -> int:
    """Completions `source` could not score at the last iteration (`rewards/<source>/unscorable`), 0 if none."""
    count = finite_or_none(metrics.get(f"rewards/{source}/unscorable"))
    return int(count) if count is not None and count > 0 else 0


class RlFacts(Static):
    """`show(last_metrics)` of the shown RL stage."""

    DEFAULT_CSS = """
    RlFacts { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("no RL metrics yet", id=id, classes=classes)
        self._shown: object = None

    def show(self, metrics: dict) -> None:
        metrics = metrics if isinstance(metrics, dict) else {}
        key = tuple((k, fmt_num(metrics.get(k))) for _, k in PHASES + FACTS) + tuple(
            (k, fmt_num(v), unscorable_now(metrics, k)) for k, v in reward_sources(metrics))
        if key == self._shown:
            return
        self._shown = key
        self.update(render_rl_facts(metrics))


def render_rl_facts(metrics: object) -> Group | str:
    metrics = metrics if isinstance(metrics, dict) else {}
    parts: list = []
    shares = timing_shares(metrics)
    if shares:
        table = Table.grid(padding=(0, 1))
        table.add_row(Text("time per iteration", style="bold"), "", "", "")
        for label, seconds, share in shares:
            table.add_row(label, f"{fmt_num(seconds)}s", f"{100 * share:.0f}%", Text(bar(share, 10), style="cyan"))
        parts.append(table)
    facts = Table.grid(padding=(0, 1))
    shown = False
    for source, value in reward_sources(metrics):
        unscorable = unscorable_now(metrics, source)
        facts.add_row(f"reward {cut_text(source, 50, one_line=True)}", fmt_num(value),
                      *([Text(f"{fmt_num(unscorable)} unscorable", style=UNSCORABLE_STYLE)] if unscorable else []))
        shown = True
    for label, key in FACTS:
        if key in metrics:
            facts.add_row(label, fmt_num(metrics.get(key)))
            shown = True
    if shown:
        parts.append(facts)
    return Group(*parts) if parts else "no RL metrics yet"
