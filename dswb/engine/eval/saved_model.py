"""`dswb eval`: score a saved model on the built-in task's held-out test split.

A causal LM is scored by greedy exact match (in the prompt format it was trained with); a reward
model (`*ForSequenceClassification`) by pair accuracy on held-out preference pairs, overall and by
kind of negative (near misses, random answers). The task's settings come from the model's
`dswb_stage.json` when dswb wrote it, so a model is always scored on the split it never saw.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dswb.engine.data.records.posttrain import task_preferences
from dswb.engine.data.records.task import AdditionTask
from dswb.engine.data.records.tokenizer import load_tokenizer
from dswb.engine.eval.task import generation_budget, task_accuracy
from dswb.engine.model.device import select_device
from dswb.engine.model.load import is_model_dir, is_reward_model, load_causal_lm, load_scalar_model, stage_info
from dswb.errors import UserError

DEFAULT_TASK = {"kind": "addition", "digits": 2, "n_train": 9000, "n_val": 500, "n_test": 500, "seed": 0}


def task_settings(model_dir: Path, overrides: dict) -> dict:
    settings = dict(DEFAULT_TASK)
    settings.update(stage_info(model_dir).get("task") or {})
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def evaluate_model(model_dir: Path, n: int | None = None, device: str = "auto", **task_overrides) -> dict:
    if not is_model_dir(model_dir):
        raise UserError(f"{model_dir}: not a model directory (no config.json) or an adapter directory "
                        f"(no adapter_config.json)")
    t = task_settings(model_dir, task_overrides)
    if t["kind"] != "addition":
        raise UserError(f"--task: unknown task {t['kind']!r} (built in: addition)")
    task = AdditionTask(int(t["digits"]), int(t["seed"]), bool(t.get("think", False)))
    test = task.split(int(t["n_train"]), int(t["n_val"]), int(t["n_test"])).test[: n or None]
    dev = select_device(device)
    tokenizer = load_tokenizer(model_dir, str(model_dir))
    info = stage_info(model_dir)
    started = time.perf_counter()
    result = {"model": str(model_dir), "stage": info.get("stage"), "task": t, "n": len(test)}
    torch.manual_seed(0)
    if is_reward_model(model_dir):
        from dswb.engine.data.batches.pairs import encode_pair
        from dswb.engine.eval.pairs import pair_accuracy
        from dswb.engine.model.load import fit_vocab

        model = load_scalar_model(model_dir, str(model_dir)).to(dev).eval()
        fit_vocab(model, tokenizer)
        pairs = [encode_pair(tokenizer, r) for r in task_preferences(task, test, 0.5, int(t["seed"]) + 2)]
        amp_dtype = torch.bfloat16 if dev.type == "cuda" else None
        result.update(kind="reward_model", **pair_accuracy(model, pairs, tokenizer.pad_token_id, dev, amp_dtype))
    else:
        model = load_causal_lm(model_dir, str(model_dir)).to(dev).eval()
        prompts, answers = [e.prompt for e in test], [e.answer for e in test]
        result.update(kind="causal_lm", exact_match=task_accuracy(model, tokenizer, prompts, answers, dev,
                                                                  max_new_tokens=generation_budget(tokenizer, task),
                                                                  prompt_format=info.get("prompt_format", "plain")))
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result
