"""Build the model: a Llama-architecture model from a size preset, a tiny DeepSeek-V3 Mixture-of-Experts
(`moe-tiny`), or a local HF model directory.

Returns a real `transformers` model so that `save_pretrained` output loads with
`AutoModelForCausalLM.from_pretrained` offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM, LlamaConfig, LlamaForCausalLM

from dswb.errors import UserError

# hidden, intermediate, layers, heads, kv heads. Parameter counts below are for a 2,048-token vocab.
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (128, 352, 4, 4, 2),      # ~1.3 M
    "small": (256, 704, 10, 8, 4),    # ~8.4 M
    "base": (768, 2048, 12, 12, 4),   # ~85 M
}
# DeepSeek-V3's layout at toy scale: MLA attention, the first layer dense, then MoE layers with one shared
# and 8 routed experts, top-2 chosen within the best 2 of 4 groups (the router takes the top 2 scores of
# each group, so every group holds at least 2 experts). ~0.26 M parameters besides the embeddings.
MOE_TINY = dict(hidden_size=64, intermediate_size=192, moe_intermediate_size=32, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8,
                num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1, routed_scaling_factor=1.0,
                norm_topk_prob=True, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                v_head_dim=16)


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


def moe_tiny_config(vocab_size: int, max_seq_len: int, bos_id: int, eos_id: int, pad_id: int) -> DeepseekV3Config:
    return DeepseekV3Config(
        vocab_size=vocab_size, max_position_embeddings=max_seq_len, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, attention_dropout=0.0,
        attn_implementation="sdpa", num_nextn_predict_layers=0, **MOE_TINY,   # (MTP: `[mtp]`, docs/mtp.md)
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
    elif size == "moe-tiny":
        model = DeepseekV3ForCausalLM(moe_tiny_config(vocab, max_seq_len, tokenizer.bos_token_id,
                                                      tokenizer.eos_token_id, tokenizer.pad_token_id))
        source = "deepseek-v3-moe-tiny"
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
