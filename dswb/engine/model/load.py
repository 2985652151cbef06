"""Loading a trained model from a directory: a causal LM or a scalar-head model (reward / value),
what kind a directory holds, the dswb stage record beside it, and fitting a vocabulary that grew."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dswb.errors import UserError

STAGE_INFO = "dswb_stage.json"   # written by dswb beside every final model: stage, step, prompt format, task


def stage_info(path: Path) -> dict:
    try:
        return json.loads((path / STAGE_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def load_causal_lm(path: Path, where: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                    attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        raise UserError(f"{where}: cannot load a causal LM from {path}: {' '.join(str(exc).split())[:300]}") from None


def load_scalar_model(path: Path, where: str) -> torch.nn.Module:
    """A model with a scalar head (`AutoModelForSequenceClassification`, num_labels=1): a trained
    reward model, or a causal LM's backbone with a new head (initialised from `run.seed`)."""
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
