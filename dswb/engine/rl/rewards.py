"""Reward sources for PPO and GRPO, and their weighted sum (docs/rewards.md).

A source scores a batch of completions: one float per completion, NaN where it does not apply (a
function's None); a row it failed to score (a time limit, an exception, a worker that died) is
*unscorable*. The total is the weighted sum of the sources that apply (NaN skipped); a row that no
source applies to, or that a source failed to score, has a NaN total and is left out of the update
(GRPO: out of its group's mean and std, advantage 0; PPO: masked), as TRL >= 1.6 does with a row
whose rewards are all NaN (TRL <= 1.5's nansum made it 0, a spurious signal). Sources, named in a
stage's `rewards` list:

- `exact_match`: 1.0 when the completion's answer part (after the thinking, `reward_rules`) equals the
  record's `answer` (built-in task rule).
- `format`, `math`, `length`: the think/answer format, mathematical equality of the answer part with
  `answer` (math-verify), DAPO's overlong shaping or a linear length penalty (`reward_rules`).
- `rm` / `rm:DIR`: a reward model (`AutoModelForSequenceClassification`, num_labels=1), this run's
  `final/rm` or a directory; it scores `prompt + completion` (+ eos when the completion ended),
  tokenized with its own tokenizer.
- `module:function` or `path/to/file.py:function`: a Python function with TRL's signature

      def reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]],
                 **columns) -> list[float | None]

  where `columns` holds every other field of the prompt records as lists (e.g. `answer=[...]`),
  and `ended=[bool, ...]` (whether each completion stopped on its own). `None` means NaN.

`format`, `math` and functions run in worker processes under `rewards_timeout_s`
(`reward_workers`) when `rewards_workers` > 0; else in the trainer, with no time limit, where a
function's exception stops the run with a `UserError`.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from dswb.config.posttrain import RLSettings, parse_reward_source
from dswb.engine.data.records.task import score as exact_match_score
from dswb.engine.rl.reward_calls import CallResult, FunctionSpec, call_rows, checked_values, load_function
from dswb.engine.rl.reward_rules import (BATCH_RULES, DEFAULT_TAGS, MATH_INSTALL_HINT, answer_part, length_score,
                                         math_verify)
from dswb.engine.rl.reward_workers import RewardPool
from dswb.errors import UserError


@dataclass
class RewardInputs:
    prompts: list[Any]                  # prompt text, or messages for chat records
    completions: list[str]              # decoded completions (special tokens skipped)
    completion_ids: list[list[int]]
    ended: list[bool]
    columns: dict[str, list] = field(default_factory=dict)   # other record fields, one list each
    think_open: list[bool] = field(default_factory=list)     # the prompt ends inside an open thinking
    max_new_tokens: int = 0

    def opened(self) -> list[bool]:
        return self.think_open or [False] * len(self.completions)

    def arguments(self) -> dict[str, list]:
        """What a user's function receives: one list per argument, one value per completion."""
        return {"prompts": self.prompts, "completions": self.completions, "completion_ids": self.completion_ids,
                "ended": self.ended, **self.columns}

    def rule_arguments(self) -> dict[str, list]:
        return {**self.arguments(), "think_open": self.opened()}


class RewardSource:
    name: str = "reward"

    def __call__(self, inputs: RewardInputs) -> list[float]:
        raise NotImplementedError

    def score(self, inputs: RewardInputs) -> CallResult:
        """The values with the rows this source failed to score (by default: none)."""
        values = self(inputs)
        return CallResult(list(values), [False] * len(values))


def values_of(result: CallResult) -> list[float]:
    return [math.nan if v is None else v for v in result.values]


def need_answers(inputs: RewardInputs, name: str) -> list:
    answers = inputs.columns.get("answer")
    if answers is None:
        raise UserError(f"{name} reward: the prompt records have no 'answer' field")
    return answers


class ExactMatch(RewardSource):
    name = "exact_match"

    def __init__(self, tags: tuple[str, str] | list[str] = DEFAULT_TAGS) -> None:
        self.tags = tuple(tags)

    def __call__(self, inputs: RewardInputs) -> list[float]:
        answers = need_answers(inputs, self.name)
        return [math.nan if a is None else float(exact_match_score(answer_part(c, self.tags, o), str(a)))
                for c, a, o in zip(inputs.completions, answers, inputs.opened())]


class LengthReward(RewardSource):
    """`length`: DAPO's overlong punishment or -length / max_new_tokens, on completion tokens."""

    name = "length"

    def __init__(self, mode: str = "overlong", buffer: int = 0, max_new_tokens: int = 0) -> None:
        self.mode, self.buffer, self.max_new_tokens = mode, buffer, max_new_tokens

    def __call__(self, inputs: RewardInputs) -> list[float]:
        limit = inputs.max_new_tokens or self.max_new_tokens
        return [length_score(len(ids), limit, self.mode, self.buffer) for ids in inputs.completion_ids]


class RuleReward(RewardSource):
    """`format` or `math` in the trainer: row by row, a row whose check raises is unscorable."""

    def __init__(self, name: str, settings: dict) -> None:
        self.name, self.settings = name, settings

    def score(self, inputs: RewardInputs) -> CallResult:
        if self.name == "math":
            need_answers(inputs, self.name)
        return call_rows(BATCH_RULES[self.name], inputs.rule_arguments(), self.settings)

    def __call__(self, inputs: RewardInputs) -> list[float]:
        return values_of(self.score(inputs))


class RewardModelSource(RewardSource):
    """A scalar-head reward model, in eval mode, on its own device."""

    def __init__(self, path: Path, place: Callable[[torch.nn.Module], torch.nn.Module], amp_dtype=None,
                 name: str = "rm", batch_size: int = 256) -> None:
        from dswb.engine.data.records.tokenizer import load_tokenizer
        from dswb.engine.model.load import is_reward_model, load_scalar_model, stage_info

        if not is_reward_model(path):
            raise UserError(f"reward '{name}': {path} is not a reward model (no *ForSequenceClassification "
                            f"architecture in config.json)")
        self.name, self.amp_dtype, self.batch_size = name, amp_dtype, batch_size
        self.tokenizer = load_tokenizer(path, f"reward '{name}'")
        self.model = place(load_scalar_model(path, f"reward '{name}'").requires_grad_(False))
        self.device = next(self.model.parameters()).device
        self.prompt_format = stage_info(path).get("prompt_format", "plain")

    def encode(self, prompt: Any, completion: str, ended: bool) -> list[int]:
        from dswb.engine.data.records.chat import encode_chat, encode_plain

        if isinstance(prompt, str):
            return encode_plain(self.tokenizer, prompt, completion, add_eos=ended)[0]
        return encode_chat(self.tokenizer, list(prompt) + [{"role": "assistant", "content": completion}], "all")[0]

    @torch.no_grad()
    def __call__(self, inputs: RewardInputs) -> list[float]:
        from dswb.engine.data.batches.collate import collate_padded
        from dswb.engine.model.device import autocast
        from dswb.engine.preference.scoring import scalar_scores

        rows = [self.encode(p, c, e) for p, c, e in zip(inputs.prompts, inputs.completions, inputs.ended)]
        out: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            batch = collate_padded(rows[start:start + self.batch_size], self.tokenizer.pad_token_id).to(self.device)
            with autocast(self.device, self.amp_dtype):
                out.extend(scalar_scores(self.model, batch.input_ids, batch.attention_mask).float().tolist())
        return out


class PythonReward(RewardSource):
    """A user's function in the trainer: no time limit; an exception stops the run (`UserError`)."""

    def __init__(self, spec: str, where: str) -> None:
        self.fn = load_function(spec, where)
        self.name = spec.rpartition(":")[2]
        self.where = where

    def __call__(self, inputs: RewardInputs) -> list[float]:
        try:
            values = self.fn(**inputs.arguments())
        except Exception as exc:
            raise UserError(f"{self.where}: reward function '{self.name}' raised {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}") from None
        try:
            return [math.nan if v is None else v for v in checked_values(values, len(inputs.completions))]
        except ValueError as exc:
            raise UserError(f"{self.where}: reward function '{self.name}' {exc}") from None


class PooledReward(RewardSource):
    """A user's function or a `format` / `math` rule, run by the reward workers under their time limit."""

    def __init__(self, name: str, key: str, pool: RewardPool, settings: dict | None = None,
                 rule: bool = False) -> None:
        self.name, self.key, self.pool, self.settings, self.rule = name, key, pool, settings or {}, rule

    def score(self, inputs: RewardInputs) -> CallResult:
        if self.name == "math":
            need_answers(inputs, self.name)
        arguments = inputs.rule_arguments() if self.rule else inputs.arguments()
        return self.pool.call(self.key, arguments, self.settings)

    def __call__(self, inputs: RewardInputs) -> list[float]:
        return values_of(self.score(inputs))


@dataclass
class RewardScores:
    total: torch.Tensor                  # [B] weighted sum of the sources that apply; NaN: left out
    per_source: dict[str, torch.Tensor]  # name -> [B] (NaN where it does not apply or failed)
    # name -> [B] bool: rows the source failed to score (time limit, exception, dead worker); a row
    # tensor, so that a selection of rows keeps its own
    unscorable: dict[str, torch.Tensor] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)   # name -> the first failure of this call
    # per-row facts of a reasoning stage's completions (think_open, in_format, think_tokens), set by the stage
    reasoning: dict[str, torch.Tensor] = field(default_factory=dict)

    def unscorable_counts(self) -> dict[str, int]:
        return {name: int(rows.sum()) for name, rows in self.unscorable.items()}


def weighted_total(values: torch.Tensor, weights: torch.Tensor, failed: torch.Tensor) -> torch.Tensor:
    """`[B]` sum over sources of weight x value (`values`, `failed`: `[S, B]`), NaN skipped; NaN where
    every source is NaN or where a source failed."""
    total = torch.nansum(values * weights.unsqueeze(1), dim=0)
    return total.masked_fill(torch.isnan(values).all(dim=0) | failed.any(dim=0), math.nan)


class CombinedReward:
    def __init__(self, sources: list[RewardSource], weights: list[float], pool: RewardPool | None = None) -> None:
        self.sources, self.weights, self.pool = sources, weights, pool
        names = [s.name for s in sources]
        self.names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]

    def __call__(self, inputs: RewardInputs) -> RewardScores:
        results = {name: source.score(inputs) for name, source in zip(self.names, self.sources)}
        per_source = {name: torch.tensor(values_of(r), dtype=torch.float32) for name, r in results.items()}
        unscorable = {name: torch.tensor(r.failed, dtype=torch.bool) for name, r in results.items()}
        total = weighted_total(torch.stack(list(per_source.values())), torch.tensor(self.weights, dtype=torch.float32),
                               torch.stack(list(unscorable.values())))
        return RewardScores(total=total, per_source=per_source, unscorable=unscorable,
                            errors={name: r.error for name, r in results.items() if r.error})

    def close(self) -> None:
        """Stop the reward workers (if any); idempotent."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def build_rewards(specs: list[str], weights: list[float], where: str, *, run_rm: Path | None,
                  place: Callable[[torch.nn.Module], torch.nn.Module], amp_dtype=None,
                  section: Any = None) -> CombinedReward:
    """The stage's reward function from its config (`rewards`, `reward_weights`, and the section's
    think tags, format regex, length settings, `max_new_tokens`, reward workers and time limit;
    `section` None: `RLSettings`' defaults with the rewards in the trainer); `place` puts a reward
    model on its device(s). A user's function is loaded here first, so that its mistakes stop the
    stage before training; with workers, each worker loads it again."""
    from dswb.engine.model.load import is_model_dir

    section = section if section is not None else RLSettings(rewards_workers=0)
    pooled = section.rewards_workers > 0
    rule_settings = {"format": {"think_tags": list(section.think_tags), "format_regex": section.format_regex},
                     "math": {"think_tags": list(section.think_tags)}}
    sources: list[RewardSource | None] = []
    deferred: dict[int, FunctionSpec] = {}   # index -> what the workers run
    for i, spec in enumerate(specs):
        at = f"{where}[{i}]"
        kind, arg = parse_reward_source(spec)
        if kind == "rule" and arg == "exact_match":
            sources.append(ExactMatch(section.think_tags))
        elif kind == "rule" and arg == "length":
            sources.append(LengthReward(section.length_reward, section.overlong_buffer, section.max_new_tokens))
        elif kind == "rule":
            check_math_verify(arg, at, imported=not pooled)
            deferred[i] = FunctionSpec("rule", arg, at)
            sources.append(None if pooled else RuleReward(arg, rule_settings[arg]))
        elif kind == "rm":
            sources.append(reward_model(arg, at, run_rm, place, amp_dtype, is_model_dir))
        else:
            sources.append(PythonReward(arg, at))
            deferred[i] = FunctionSpec("python", arg, at)
    pool = None
    if pooled and deferred:
        pool = RewardPool({str(i): fs for i, fs in deferred.items()}, section.rewards_workers,
                          section.rewards_timeout_s, where)
        for i, fs in deferred.items():
            rule = fs.kind == "rule"
            sources[i] = PooledReward(fs.target if rule else fs.name, str(i), pool,
                                      rule_settings[fs.target] if rule else None, rule=rule)
    return CombinedReward([s for s in sources if s is not None], list(weights) if weights else [1.0] * len(specs),
                          pool=pool)


def check_math_verify(rule: str, at: str, imported: bool) -> None:
    """A one-line error when `math` is asked for and math-verify is missing (imported when the rule
    runs in the trainer; only looked for when it runs in the workers)."""
    if rule != "math":
        return
    try:
        if imported:
            math_verify()
        elif importlib.util.find_spec("math_verify") is None:
            raise ImportError(f"the math reward needs the math-verify package: {MATH_INSTALL_HINT}")
    except ImportError as exc:
        raise UserError(f"{at}: {exc}") from None


def reward_model(arg: str, at: str, run_rm: Path | None, place, amp_dtype, is_model_dir) -> RewardModelSource:
    if arg:
        path = Path(arg).expanduser()
        if not is_model_dir(path):
            raise UserError(f"{at}: {path} is not a model directory (no config.json) or an adapter "
                            f"directory (no adapter_config.json)")
        return RewardModelSource(path, place, amp_dtype, name=f"rm_{path.name}")
    if run_rm is None or not is_model_dir(run_rm):
        raise UserError(f"{at}: this run has no reward model (final/rm): run the rm stage first")
    return RewardModelSource(run_rm, place, amp_dtype, name="rm")


def nan_mean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan
