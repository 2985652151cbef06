"""lm-evaluation-harness glue: standard (or local YAML) benchmark tasks on a saved model.

- `require_lm_eval` / `check_include`: the checks a config or command can make before any model loads.
- `task_manager`: lm-eval's task index, built over the `include` directories alone when they hold every
  requested name (milliseconds), else with lm-eval's bundled tasks too (seconds: thousands of YAML files);
  unknown names are one `UserError` with close matches.
- `model_args`: what lm-eval's `HFLM` loads for a model directory: a causal LM, a LoRA adapter (peft's
  format, through `peft=` on its recorded base, or its `merged/` model) — a reward model is refused.
- `run_tasks`: `simple_evaluate` on those tasks; its results without the per-sample records. What lm-eval
  prints meanwhile (progress bars, warnings, the `git describe` it runs) is held back (`held_output`) and
  shown only when it fails: `dswb eval` prints its own table, and a run's stdout is its progress display.
- `flatten` / `event_source`: the results as `eval` metrics (`lm_eval/<task>/<metric>`: numbers only) and
  the event's `source` field.

lm_eval (and torch through it) is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.util
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from dswb.errors import UserError
from dswb.rundir.layout import is_adapter_dir, is_model_dir

INSTALL_HINT = 'pip install -e ".[lm-eval]"'
PREFIX = "lm_eval"   # metric names: lm_eval/<task>/<metric>


def require_lm_eval(where: str) -> None:
    """A `UserError` when lm-evaluation-harness is not installed (checked without importing it)."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(f"{where}: lm-evaluation-harness tasks need the lm-eval package: {INSTALL_HINT}")


def lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return "unknown"


def check_include(include: list[str], where: str) -> list[str]:
    """The include directories as absolute paths; a `UserError` for one that is not a directory."""
    out = []
    for d in include:
        path = Path(d).expanduser()
        if not path.is_dir():
            raise UserError(f"{where}: no such task directory: {d}")
        out.append(str(path.resolve()))
    return out


def task_manager(names: list[str], include: list[str], where: str) -> Any:
    """lm-eval's `TaskManager` that knows every name in `names` (tasks, groups or tags)."""
    paths = tuple(check_include(include, where))
    if paths:
        manager = _indexed(paths, False)
        if all(n in manager.all_tasks for n in names):
            return manager
    manager = _indexed(paths, True)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.6)
        hint = (f" (did you mean {', '.join(close)}?)" if close
                else " (see `lm-eval ls tasks`; local tasks: --include DIR)")
        raise UserError(f"{where}: unknown lm-eval task {name!r}{hint}")
    return manager


@functools.lru_cache(maxsize=4)
def _indexed(paths: tuple[str, ...], defaults: bool) -> Any:
    """A `TaskManager` over `paths` (and the bundled tasks), kept for the process: the check at a run's
    start and each stage's end share one index."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) or None, include_defaults=defaults)


def model_args(model_dir: Path, where: str) -> dict:
    """`HFLM` arguments for a model directory: `pretrained` (and `peft`, `tokenizer`)."""
    from dswb.engine.model.load import adapter_base, is_reward_model

    model_dir = Path(model_dir)
    if not is_model_dir(model_dir):
        raise UserError(f"{where}: {model_dir} is not a model directory (no config.json or adapter_config.json)")
    if is_reward_model(model_dir):
        raise UserError(f"{where}: {model_dir} is a reward model (a scalar head); lm-eval scores causal LMs only")
    if not is_adapter_dir(model_dir):
        return {"pretrained": str(model_dir)}
    merged = model_dir / "merged"
    if is_model_dir(merged) and not is_adapter_dir(merged):
        return {"pretrained": str(merged)}
    base = adapter_base(model_dir, where)
    if is_adapter_dir(base):
        raise UserError(f"{where}: the adapter {model_dir} sits on another adapter ({base}); lm-eval loads one "
                        f"adapter on a full model: set lora.merge_final = true and use its merged/ model")
    tokenizer = model_dir if (model_dir / "tokenizer_config.json").is_file() else base
    return {"pretrained": str(base), "peft": str(model_dir), "tokenizer": str(tokenizer)}


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"--device: expected auto, cpu or cuda, got {device!r}")
    return device


def run_tasks(model_dir: Path, names: list[str], *, include: list[str] = (), limit: int | None = None,
              num_fewshot: int | None = None, batch_size: int = 8, device: str = "auto",
              where: str = "lm-eval", manager: Any = None) -> dict:
    """lm-eval's results for `names` on the model in `model_dir`, without per-sample records, plus
    `seconds`, `model_args` and `lm_eval_version`."""
    require_lm_eval(where)
    args = model_args(model_dir, where)
    manager = manager or task_manager(names, list(include), where)
    device = resolve_device(device)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    t0 = time.perf_counter()
    with held_output():
        lm = HFLM(**args, device=device, batch_size=batch_size, dtype="float32" if device == "cpu" else "auto")
        results = simple_evaluate(model=lm, tasks=list(names), task_manager=manager, limit=limit or None,
                                  num_fewshot=num_fewshot, log_samples=False)
    if results is None:   # a non-zero rank under torch.distributed
        return {}
    keep = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples")
    out = {k: results[k] for k in keep if k in results}
    out.update(seconds=time.perf_counter() - t0, model_args=args, lm_eval_version=lm_eval_version(),
               limit=limit or None, num_fewshot=num_fewshot, device=device)
    return out


@contextlib.contextmanager
def held_output() -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2, so child processes' too, and the
    `sys.stdout` / `sys.stderr` objects) into a temporary file for the block; written back to stderr
    only if the block raises."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as held, open(held.fileno(), "w", closefd=False, buffering=1) as text:
        os.dup2(held.fileno(), 1)
        os.dup2(held.fileno(), 2)
        try:
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode("utf-8", "replace"))
                sys.stderr.flush()


def metric_rows(results: dict) -> list[tuple[str, str, float, float | None]]:
    """(task, metric, value, stderr or None) for every numeric metric of lm-eval's `results`; a metric
    under a filter other than `none` is named `<metric>/<filter>`."""
    rows = []
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            metric, sep, filt = key.partition(",")
            if not sep or metric.endswith("_stderr") or not _number(value):
                continue
            name = metric if filt in ("none", "") else f"{metric}/{filt}"
            stderr = values.get(f"{metric}_stderr,{filt}")
            rows.append((task, name, float(value), float(stderr) if _number(stderr) else None))
    return rows


def flatten(results: dict) -> dict[str, float]:
    """`{lm_eval/<task>/<metric>: value}`: the numbers of an `eval` event."""
    return {f"{PREFIX}/{task}/{metric}": value for task, metric, value, _ in metric_rows(results)}


def event_source(results: dict) -> dict:
    """The `source` field of an `eval` event made from lm-eval's results."""
    return {"name": "lm-eval", "version": results.get("lm_eval_version") or lm_eval_version(),
            "tasks": sorted(results.get("results", {})), "limit": results.get("limit"),
            "num_fewshot": results.get("num_fewshot")}


def _number(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# --- stage `eval_tasks` ----------------------------------------------------------------------

def stage_key(stage: str) -> str:
    """The config section of a stage (`[train]` for pretraining)."""
    return "train" if stage == "pretrain" else stage


def stage_tasks(config: Any, stage: str) -> list[str]:
    return list(getattr(getattr(config, stage_key(stage), None), "eval_tasks", None) or [])


def check_run_tasks(config: Any, distributed: bool) -> None:
    """At the start of a run: every stage's `eval_tasks` names a task lm-eval knows (a `UserError` naming
    the stage's key otherwise), so a typo fails before training, not hours later."""
    stages = [s for s in config.run.stages if stage_tasks(config, s)]
    if not stages:
        return
    where = f"{stage_key(stages[0])}.eval_tasks"
    require_lm_eval(where)
    if distributed:
        raise UserError(f"{where}: lm-eval tasks run in one process, not under torchrun: run "
                        f"`dswb eval RUN:stage --tasks ...` after training")
    for stage in stages:
        task_manager(stage_tasks(config, stage), list(config.eval.tasks_include), f"{stage_key(stage)}.eval_tasks")


def eval_settings(config: Any) -> dict:
    """`run_tasks` keywords from `[eval] tasks_*`."""
    e = config.eval
    return {"include": list(e.tasks_include), "limit": e.tasks_limit or None, "batch_size": e.tasks_batch_size,
            "num_fewshot": None if e.tasks_num_fewshot < 0 else e.tasks_num_fewshot}
