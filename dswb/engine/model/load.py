"""Loading a trained model from a directory: a causal LM or a scalar-head model (reward / value),
what kind a directory holds, the dswb stage record beside it, and fitting a vocabulary that grew.

A directory may hold a peft adapter instead of a model (`adapter_config.json`: a LoRA stage's
`final/<stage>/`). Loading it loads its base (recorded in `dswb_stage.json`, else peft's
`base_model_name_or_path`; itself an adapter directory after a `lora.chain = "merge"` stage), checks
the base's fingerprint (`dswb.engine.model.fingerprint`) and returns base and adapter merged, so every
reader of a final model (later stages, `dswb eval`, `rm:DIR` rewards) takes adapters as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dswb.errors import UserError
from dswb.rundir.layout import ADAPTER_CONFIG, is_adapter_dir, is_model_dir

STAGE_INFO = "dswb_stage.json"   # written by dswb beside every final model: stage, step, prompt format, task


def stage_info(path: Path) -> dict:
    try:
        return json.loads((path / STAGE_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def adapter_base(path: Path, where: str) -> Path:
    """The directory of the model an adapter was trained on, checked against its fingerprint."""
    from dswb.engine.model.fingerprint import model_fingerprint

    path = Path(path)
    recorded = stage_info(path).get("adapter", {})
    try:
        peft_cfg = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{where}: {path / ADAPTER_CONFIG} is unreadable: {exc}") from None
    base = Path(recorded.get("base") or peft_cfg.get("base_model_name_or_path") or "")
    if not str(base) or not is_model_dir(base):
        raise UserError(f"{where}: the adapter {path} was trained on {base or 'an unrecorded base'}, which is not "
                        f"a model directory here (moved or deleted?)")
    expected = recorded.get("base_fingerprint")
    if expected and not is_adapter_dir(base) and model_fingerprint(base) != expected:
        raise UserError(f"{where}: the base model {base} changed since the adapter {path} was trained on it "
                        f"(fingerprint differs): restore it, or train the adapter again")
    return base


def quantization(quantize: str, compute_dtype: torch.dtype = torch.float32):
    """bitsandbytes' config for a frozen base in `quantize` ('nf4' | 'int8'), None for 'none'."""
    if quantize == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise UserError(f"lora.quantize = '{quantize}' needs bitsandbytes: pip install 'dswb[qlora]'") from None
    if quantize == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def _from_pretrained(auto, path: Path, where: str, what: str, quantize: str, device, dtype: torch.dtype = torch.float32,
                     **kwargs) -> torch.nn.Module:
    extra = {}
    if quantize != "none":
        extra = {"quantization_config": quantization(quantize, dtype), "device_map": {"": str(device or "cpu")}}
    try:
        return auto.from_pretrained(path, local_files_only=True, dtype=dtype, attn_implementation="sdpa",
                                    **kwargs, **extra)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        raise UserError(f"{where}: cannot load {what} from {path}: {' '.join(str(exc).split())[:300]}") from None


PEFT_HINT = "adapters need peft: pip install 'dswb[lora]'"


def require_peft():
    try:
        import peft
    except ImportError:
        raise UserError(f"lora: {PEFT_HINT}") from None
    return peft


def load_adapter(model: torch.nn.Module, adapter_dir: Path, trainable: bool, where: str) -> torch.nn.Module:
    """`model` with the adapter saved in `adapter_dir` (peft's format), trainable or frozen."""
    peft = require_peft()
    try:
        return peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"{where}: cannot load the adapter in {adapter_dir}: {' '.join(str(exc).split())[:300]}") \
            from None


def _with_adapter(base: torch.nn.Module, path: Path, where: str, merge: bool) -> torch.nn.Module:
    saved_vocab = _saved_vocab(path)
    if saved_vocab and base.get_input_embeddings().num_embeddings < saved_vocab:
        base.resize_token_embeddings(saved_vocab)
    model = load_adapter(base, path, trainable=not merge, where=where)
    if not merge:
        return model
    merged = model.merge_and_unload()
    if hasattr(merged, "peft_config"):     # peft leaves its record on the merged model: a plain model now
        del merged.peft_config
    return merged


def _saved_vocab(path: Path) -> int:
    """The vocabulary an adapter directory's tokenizer has (0 when it has none)."""
    try:
        from transformers import AutoTokenizer
        return len(AutoTokenizer.from_pretrained(path, local_files_only=True))
    except (OSError, ValueError):
        return 0


def load_causal_lm(path: Path, where: str, *, quantize: str = "none", device=None, merge: bool = True,
                   dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A causal LM from a model directory, or from an adapter directory (base + adapter: merged, or
    with `merge=False` a peft model whose adapter trains on). `quantize` loads the frozen base in 4 or
    8 bits on `device` (QLoRA); `dtype` is the weights' dtype (a frozen base in bf16 on a GPU)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if is_adapter_dir(path):
        base = load_causal_lm(adapter_base(path, where), where, quantize=quantize, device=device, dtype=dtype)
        return _with_adapter(base, path, where, merge)
    return _from_pretrained(AutoModelForCausalLM, path, where, "a causal LM", quantize, device, dtype)


def load_scalar_model(path: Path, where: str, *, quantize: str = "none", device=None, merge: bool = True,
                      dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A model with a scalar head (`AutoModelForSequenceClassification`, num_labels=1): a trained
    reward model, or a causal LM's backbone with a new head (initialised from `run.seed`); from an
    adapter directory as `load_causal_lm` loads one. A causal LM's adapter (a policy as the start of
    a reward or value model) is merged into its base first, whatever `merge` says."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = Path(path)
    if is_adapter_dir(path):
        if not is_reward_model(path):
            lm = load_causal_lm(path, where, dtype=dtype)
            return _scalar_from_lm(lm, where)
        base = load_scalar_model(adapter_base(path, where), where, quantize=quantize, device=device, dtype=dtype)
        return _with_adapter(base, path, where, merge)
    # From a causal LM, transformers reports the unused lm_head and the new score head as a
    # multi-line table on stderr: expected here, so it is silenced.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return _from_pretrained(AutoModelForSequenceClassification, path, where, "a model with a scalar head",
                                quantize, device, dtype, num_labels=1)
    finally:
        hf_logging.set_verbosity(verbosity)


def _scalar_from_lm(lm: torch.nn.Module, where: str) -> torch.nn.Module:
    """A scalar-head model (new head, seeded by the caller) on the backbone of an in-memory causal
    LM (one merged from an adapter)."""
    import copy

    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(lm.config)
    config.num_labels = 1
    try:
        model = AutoModelForSequenceClassification.from_config(config, dtype=lm.dtype, attn_implementation="sdpa")
    except ValueError as exc:
        raise UserError(f"{where}: {type(lm).__name__} has no scalar-head variant: {exc}") from None
    model.base_model.load_state_dict(lm.base_model.state_dict())
    return model


def is_reward_model(path: Path) -> bool:
    path = Path(path)
    if is_adapter_dir(path):
        try:
            return json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("task_type") == "SEQ_CLS"
        except (OSError, ValueError):
            return False
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or [])


def fit_vocab(model: torch.nn.Module, tokenizer: Any) -> bool:
    """Grow the embeddings when the tokenizer has more tokens (e.g. chat tokens were added); True
    when they grew."""
    grew = model.get_input_embeddings().num_embeddings < len(tokenizer)
    if grew:
        model.resize_token_embeddings(len(tokenizer))
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return grew
