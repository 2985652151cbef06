"""Build the model: a Llama-architecture model from a size preset, or a local HF model directory.

Returns a real `transformers` model so that `save_pretrained` output loads with
`AutoModelForCausalLM.from_pretrained` offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from dswb.errors import UserError

# hidden, intermediate, layers, heads, kv heads. Parameter counts below are for a 2,048-token vocab.
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (128, 352, 4, 4, 2),      # ~1.3 M
    "small": (256, 704, 10, 8, 4),    # ~8.4 M
    "base": (768, 2048, 12, 12, 4),   # ~85 M
}


@dataclass
class ModelInfo:
    params: int
    layers: int
    hidden: int
    vocab: int
    source: str


def llama_config(size: str, vocab_size: int, max_seq_len: int, bos_id: int, eos_id: int,
                 pad_id: int) -> LlamaConfig:
    hidden, inter, layers, heads, kv = SIZES[size]
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
        max_position_embeddings=max_seq_len, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
        attention_dropout=0.0, attn_implementation="sdpa",
    )


def build_model(size: str, path: str, tokenizer, max_seq_len: int,
                model: torch.nn.Module | None = None) -> tuple[torch.nn.Module, ModelInfo]:
    """A fresh model from `size` (seeded by the caller), or the one saved in `path` (already loaded:
    `model`, e.g. with a quantized base for adapters)."""
    vocab = len(tokenizer)
    if model is not None:
        source = str(path)
    elif path:
        model_dir = Path(path)
        if not (model_dir / "config.json").is_file():
            raise UserError(f"model.path: {model_dir} is not a Hugging Face model directory (no config.json)")
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True,
                                                         dtype=torch.float32, attn_implementation="sdpa")
        except (OSError, ValueError) as exc:
            raise UserError(f"model.path: cannot load {model_dir}: {' '.join(str(exc).split())[:300]}") from None
        if model.get_input_embeddings().num_embeddings < vocab:
            model.resize_token_embeddings(vocab)
        source = str(model_dir)
    else:
        cfg = llama_config(size, vocab, max_seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id,
                           tokenizer.pad_token_id)
        model = LlamaForCausalLM(cfg)
        source = f"llama-{size}"
    cfg = model.config
    info = ModelInfo(
        params=sum(p.numel() for p in model.parameters()),
        layers=getattr(cfg, "num_hidden_layers", 0), hidden=getattr(cfg, "hidden_size", 0),
        vocab=model.get_input_embeddings().num_embeddings, source=source,
    )
    return model, info
