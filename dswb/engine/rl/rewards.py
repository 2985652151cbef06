"""Reward sources for PPO and GRPO, and their weighted sum.

A source scores a batch of completions and returns one float per completion (NaN: "does not
apply to this one"; the weighted sum skips it, as TRL's nansum does). Sources, named in a stage's
`rewards` list:

- `exact_match`: 1.0 when the completion equals the record's `answer` exactly (built-in task rule).
- `rm` / `rm:DIR`: a reward model (`AutoModelForSequenceClassification`, num_labels=1), this run's
  `final/rm` or a directory; it scores `prompt + completion` (+ eos when the completion ended),
  tokenized with its own tokenizer.
- `module:function` or `path/to/file.py:function`: a Python function with TRL's signature

      def reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]],
                 **columns) -> list[float | None]

  where `columns` holds every other field of the prompt records as lists (e.g. `answer=[...]`),
  and `ended=[bool, ...]` (whether each completion stopped on its own). `None` means NaN.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from dswb.config.posttrain import parse_reward_source
from dswb.engine.data.records.task import score as exact_match_score
from dswb.errors import UserError


@dataclass
class RewardInputs:
    prompts: list[Any]                  # prompt text, or messages for chat records
    completions: list[str]              # decoded completions (special tokens skipped)
    completion_ids: list[list[int]]
    ended: list[bool]
    columns: dict[str, list] = field(default_factory=dict)   # other record fields, one list each


class RewardSource:
    name: str = "reward"

    def __call__(self, inputs: RewardInputs) -> list[float]:
        raise NotImplementedError


class ExactMatch(RewardSource):
    name = "exact_match"

    def __call__(self, inputs: RewardInputs) -> list[float]:
        answers = inputs.columns.get("answer")
        if answers is None:
            raise UserError("exact_match reward: the prompt records have no 'answer' field")
        return [float("nan") if a is None else float(exact_match_score(c, str(a)))
                for c, a in zip(inputs.completions, answers)]


class RewardModelSource(RewardSource):
    """A scalar-head reward model, in eval mode, on its own device."""

    def __init__(self, path: Path, place: Callable[[torch.nn.Module], torch.nn.Module], amp_dtype=None,
                 name: str = "rm", batch_size: int = 256) -> None:
        from dswb.engine.data.records.tokenizer import load_tokenizer
        from dswb.engine.model.load import (
            is_reward_model,
            load_scalar_model,
            stage_info,
        )

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
        return encode_chat(self.tokenizer, list(prompt) + [{"role": "assistant", "content": completion}])[0]

    @torch.no_grad()
    def __call__(self, inputs: RewardInputs) -> list[float]:
        from dswb.engine.data.batches.collate import collate_padded
        from dswb.engine.preference.scoring import scalar_scores
        from dswb.engine.model.device import autocast

        rows = [self.encode(p, c, e) for p, c, e in zip(inputs.prompts, inputs.completions, inputs.ended)]
        out: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            batch = collate_padded(rows[start:start + self.batch_size], self.tokenizer.pad_token_id).to(self.device)
            with autocast(self.device, self.amp_dtype):
                out.extend(scalar_scores(self.model, batch.input_ids, batch.attention_mask).float().tolist())
        return out


def load_function(spec: str, where: str) -> Callable:
    """Import `module:function` (from the working directory or installed) or `file.py:function`."""
    target, _, name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser()
            if not path.is_file():
                raise UserError(f"{where}: no such file: {path}")
            module_spec = importlib.util.spec_from_file_location(f"dswb_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            cwd = str(Path.cwd())
            added = cwd not in sys.path
            if added:
                sys.path.insert(0, cwd)
            try:
                module = importlib.import_module(target)
            finally:
                if added:
                    sys.path.remove(cwd)
    except UserError:
        raise
    except ImportError as exc:
        raise UserError(f"{where}: cannot import '{target}': {exc}") from None
    except Exception as exc:  # the user's module failed while importing
        raise UserError(f"{where}: importing '{target}' raised {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"{where}: '{target}' has no function '{name}'")
    return fn


class PythonReward(RewardSource):
    def __init__(self, spec: str, where: str) -> None:
        self.fn = load_function(spec, where)
        self.name = spec.rpartition(":")[2]
        self.where = where

    def __call__(self, inputs: RewardInputs) -> list[float]:
        try:
            values = self.fn(prompts=inputs.prompts, completions=inputs.completions,
                             completion_ids=inputs.completion_ids, ended=inputs.ended, **inputs.columns)
        except Exception as exc:
            raise UserError(f"{self.where}: reward function '{self.name}' raised {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}") from None
        if not isinstance(values, (list, tuple)) or len(values) != len(inputs.completions):
            got = f"{len(values)} values" if isinstance(values, (list, tuple)) else type(values).__name__
            raise UserError(f"{self.where}: reward function '{self.name}' must return a list of "
                            f"{len(inputs.completions)} numbers, got {got}")
        out = []
        for v in values:
            if v is None:
                out.append(float("nan"))
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"{self.where}: reward function '{self.name}' returned {v!r}, not a number")
            else:
                out.append(float(v))
        return out


@dataclass
class RewardScores:
    total: torch.Tensor                 # [B] weighted sum (NaN sources skipped)
    per_source: dict[str, torch.Tensor]  # name -> [B] (NaN where it does not apply)


class CombinedReward:
    def __init__(self, sources: list[RewardSource], weights: list[float]) -> None:
        self.sources, self.weights = sources, weights
        names = [s.name for s in sources]
        self.names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]

    def __call__(self, inputs: RewardInputs) -> RewardScores:
        per_source = {name: torch.tensor(source(inputs), dtype=torch.float32)
                      for name, source in zip(self.names, self.sources)}
        stacked = torch.stack(list(per_source.values()))
        weights = torch.tensor(self.weights, dtype=torch.float32).unsqueeze(1)
        total = torch.nansum(stacked * weights, dim=0)
        return RewardScores(total=total, per_source=per_source)


def build_rewards(specs: list[str], weights: list[float], where: str, *, run_rm: Path | None,
                  place: Callable[[torch.nn.Module], torch.nn.Module], amp_dtype=None) -> CombinedReward:
    """The stage's reward function from its config (`rewards`, `reward_weights`); `place` puts a
    reward model on its device(s)."""
    from dswb.engine.model.load import is_model_dir

    sources: list[RewardSource] = []
    for i, spec in enumerate(specs):
        at = f"{where}[{i}]"
        kind, arg = parse_reward_source(spec)
        if kind == "rule":
            sources.append(ExactMatch())
        elif kind == "rm":
            if arg:
                path = Path(arg).expanduser()
                if not is_model_dir(path):
                    raise UserError(f"{at}: {path} is not a model directory (no config.json) or an adapter "
                                    f"directory (no adapter_config.json)")
                sources.append(RewardModelSource(path, place, amp_dtype, name=f"rm_{path.name}"))
            else:
                if run_rm is None or not is_model_dir(run_rm):
                    raise UserError(f"{at}: this run has no reward model (final/rm): run the rm stage first")
                sources.append(RewardModelSource(run_rm, place, amp_dtype, name="rm"))
        else:
            sources.append(PythonReward(arg, at))
    return CombinedReward(sources, list(weights) if weights else [1.0] * len(sources))


def nan_mean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan
