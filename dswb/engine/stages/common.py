"""What the post-training stages share: where a stage starts, loading models, resuming, finishing.

- `resolve_init`: the model a stage starts from (its `init`, else the latest language model of
  this run, else `model.path`), as a directory.
- `load_policy` / `load_reward_model`: a causal LM or a scalar-head model with its tokenizer.
- `resume`: the newest verified checkpoint of the stage, restored into model and optimizer.
- `finish`: held-out test score, the final model directory, the `stage_end` event.
- `TaskData`: the built-in task's splits and its evaluation helpers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from dswb.config.schema import LM_STAGES, STAGES
from dswb.engine.checkpoint.local import latest_checkpoint, load_checkpoint, remove_partial
from dswb.engine.context import StageContext
from dswb.engine.data.records.task import AdditionTask, TaskSplits
from dswb.engine.data.records.tokenizer import load_tokenizer
from dswb.engine.checkpoint.final import MARKER, is_complete
from dswb.engine.checkpoint.dcp import save_final_model
from dswb.errors import UserError
from dswb.stats import StatsBook


@dataclass
class StageStart:
    path: Path
    prompt_format: str      # "plain" or "chat" (how the model reads prompts)
    info: dict              # the starting model's dswb_stage.json (empty for a foreign model)


def stage_info(path: Path) -> dict:
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _model_dir(path: Path, where: str) -> Path:
    if not (path / "config.json").is_file():
        raise UserError(f"{where}: {path} is not a model directory (no config.json)")
    return path


def resolve_init(ctx: StageContext, stage: str, spec: str, where: str, *, required: bool = True) -> StageStart | None:
    """The directory a stage starts from (see `INIT_DOC` in dswb/config/posttrain.py)."""
    path: Path | None = None
    if spec in STAGES:
        path = ctx.finals.get(spec) or ctx.paths.final(spec)
        if not is_complete(path):
            raise UserError(f"{where}: this run has no finished '{spec}' stage ({path} is missing)")
    elif ":" in spec and not Path(spec).expanduser().exists():
        run_ref, _, other_stage = spec.rpartition(":")
        from dswb.rundir.layout import resolve_run
        other = resolve_run(run_ref, ctx.paths.root.parent)
        path = other.final(other_stage)
        if not is_complete(path):
            raise UserError(f"{where}: run {other.run_id} has no finished '{other_stage}' stage")
    elif spec:
        path = _model_dir(Path(spec).expanduser(), where)
    else:
        lm = [s for s in ctx.finals if s in LM_STAGES]
        if lm:
            path = ctx.finals[lm[-1]]
        elif ctx.config.model.path:
            path = _model_dir(Path(ctx.config.model.path).expanduser(), "model.path")
    if path is None:
        if required:
            raise UserError(f"{where}: nothing to start {stage} from: run an earlier stage in this run, "
                            f"set model.path, or set {stage}.init to a model directory or RUN:stage")
        return None
    info = stage_info(path)
    return StageStart(path=path, prompt_format=info.get("prompt_format", "plain"), info=info)


def load_tokenizer_from(path: Path, where: str) -> Any:
    return load_tokenizer(path, where)


def load_causal_lm(path: Path, where: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                    attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        raise UserError(f"{where}: cannot load a causal LM from {path}: {' '.join(str(exc).split())[:300]}") from None


def load_scalar_model(path: Path, where: str) -> torch.nn.Module:
    """A model with a scalar head (`AutoModelForSequenceClassification`, num_labels=1): a trained
    reward model, or a causal LM's backbone with a new head (initialised from the seed)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # From a causal LM, transformers reports the unused lm_head and the new score head as a
    # multi-line table on stderr: expected here, so it is silenced.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, local_files_only=True, dtype=torch.float32, attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        raise UserError(f"{where}: cannot load a model with a scalar head from {path}: "
                        f"{' '.join(str(exc).split())[:300]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


def is_reward_model(path: Path) -> bool:
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or [])


def fit_vocab(model: torch.nn.Module, tokenizer: Any) -> None:
    """Grow the embeddings when the tokenizer has more tokens (e.g. chat tokens were added)."""
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def resume(ctx: StageContext, stage: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """(start step, trainer state) from the newest checkpoint of `stage` when resuming, else (0, {})."""
    ckpt_dir = ctx.paths.checkpoints(stage)
    if remove_partial(ckpt_dir):
        ctx.monitor.log("removed an incomplete checkpoint left by an interrupted write", stage=stage)
    ckpt = latest_checkpoint(ckpt_dir) if ctx.resume else None
    if ckpt is None:
        return 0, {}
    state = load_checkpoint(ckpt, model, optimizer, ctx.device)
    start = state.pop("step")
    ctx.monitor.stats = StatsBook.from_dict(state.pop("stats"))
    ctx.monitor.log(f"resumed from {ckpt.path.name}", stage=stage, step=start)
    return start, state


def eval_every(ctx: StageContext, section: Any) -> int:
    return ctx.config.eval.every if section.eval_every < 0 else section.eval_every


def accuracy_target(section: Any):
    """`LoopParts.stop_when` for `stop_at_task_acc`: a reason once an evaluation reaches the target."""
    target = getattr(section, "stop_at_task_acc", 0.0)
    if not target:
        return None

    def reached(metrics: dict) -> str | None:
        acc = metrics.get("task_acc")
        return f"task_acc {acc:.3f} reached stop_at_task_acc {target:g}" if isinstance(acc, float) and acc >= target else None
    return reached


@dataclass
class TaskData:
    """The built-in task for post-training: its splits, and the prompts to score."""

    task: AdditionTask
    splits: TaskSplits

    @classmethod
    def from_config(cls, config: Any) -> "TaskData":
        task = AdditionTask(config.task.digits, config.run.seed)
        return cls(task, task.split(config.task.n_train, config.task.n_val, config.task.n_test))

    def val(self, n: int) -> tuple[list[str], list[str]]:
        return [e.prompt for e in self.splits.val[:n]], [e.answer for e in self.splits.val[:n]]

    def test(self) -> tuple[list[str], list[str]]:
        return [e.prompt for e in self.splits.test], [e.answer for e in self.splits.test]


def finish_lm(ctx: StageContext, stage: str, model: torch.nn.Module, tokenizer: Any, steps: int,
              prompt_format: str, test_score: Callable[[], dict] | None, extra: dict | None = None) -> str:
    """Score the finished model on held-out data, write `final/<stage>/`, emit `stage_end`."""
    mon = ctx.monitor
    if test_score is not None:
        t0 = time.perf_counter()
        scores = test_score()
        if scores:
            mon.eval(stage, steps, scores)
            mon.log("held-out test: " + " ".join(f"{k}={v:.4f}" for k, v in scores.items())
                    + f" ({time.perf_counter() - t0:.1f}s)", stage=stage, step=steps)
    final = save_final_model(ctx.paths.final(stage), model, tokenizer,
                       {"stage": stage, "step": steps, "run_id": ctx.paths.run_id, "prompt_format": prompt_format,
                        "task": task_info(ctx.config), "last_eval": mon.status.get("last_eval", {}), **(extra or {})})
    mon.emit("stage_end", stage, steps, state="finished", final_path=str(final))
    return "finished"


def task_info(config: Any) -> dict | None:
    if config.data.source != "task":
        return None
    t = config.task
    return {"kind": t.kind, "digits": t.digits, "n_train": t.n_train, "n_val": t.n_val, "n_test": t.n_test,
            "seed": config.run.seed}
