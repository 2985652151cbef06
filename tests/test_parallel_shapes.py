"""Model shapes from a config alone: parameter counts per module equal the real transformers model."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig, MistralConfig,
                          Qwen2Config, Qwen3Config)

from dswb.engine.placement.shapes import (SIZES, TASK_VOCAB, shape_from_config, shape_from_hf_config,
                                         shape_from_model_dir, shape_from_size, total_params, units)
from dswb.errors import UserError
from helpers import tiny_config

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=101)
CASES = [
    (LlamaConfig, {}),
    (LlamaConfig, dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True, head_dim=24)),
    (Qwen2Config, {}),
    (Qwen2Config, dict(tie_word_embeddings=True)),
    (Qwen3Config, dict(head_dim=20, attention_bias=True)),
    (MistralConfig, dict(head_dim=12)),
]


def _model(config_cls, extra):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config_cls(**SMALL, **extra))


@pytest.mark.parametrize("config_cls,extra", CASES, ids=lambda v: getattr(v, "__name__", None) or str(v))
def test_parameter_counts_per_module_equal_the_real_model(config_cls, extra, tmp_path):
    model = _model(config_cls, extra)
    model.config.save_pretrained(tmp_path)  # config.json only, no weights
    shape = shape_from_model_dir(tmp_path)
    assert total_params(shape) == sum(p.numel() for p in model.parameters())
    seen: set[int] = set()
    for unit in units(shape):
        params = [p for p in model.get_submodule(unit.name).parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        assert unit.params == sum(p.numel() for p in params), unit.name
        linears = [m for m in model.get_submodule(unit.name).modules() if isinstance(m, torch.nn.Linear)]
        assert unit.matmul_params == sum(m.weight.numel() for m in linears), unit.name
    assert bool(units(shape)[-1].tied_to) == bool(extra.get("tie_word_embeddings"))


@pytest.mark.parametrize("config_cls", [LlamaConfig, Qwen2Config])
def test_a_scalar_head_counts_as_the_value_and_reward_models_have_it(config_cls):
    config = config_cls(**SMALL, num_labels=1)
    model = AutoModelForSequenceClassification.from_config(config)
    shape = shape_from_hf_config(config.to_dict()).with_scalar_head()
    assert total_params(shape) == sum(p.numel() for p in model.parameters())
    assert units(shape)[-1].name == "score"


def test_builtin_sizes_mirror_the_model_builder_and_the_task_vocabulary():
    from dswb.engine.data.records.tokenizer import build_char_tokenizer
    from dswb.engine.model.build import SIZES as BUILDER_SIZES, llama_config

    assert SIZES == BUILDER_SIZES
    assert TASK_VOCAB == len(build_char_tokenizer())
    for size in SIZES:
        with torch.device("meta"):  # shapes only, nothing allocated
            model = AutoModelForCausalLM.from_config(llama_config(size, 300, 64, 1, 2, 0))
        assert total_params(shape_from_size(size, 300)) == sum(p.numel() for p in model.parameters())


def test_shape_from_a_run_config_uses_the_task_vocabulary_or_the_model_directory(tmp_path):
    assert shape_from_config(tiny_config()).vocab == TASK_VOCAB
    assert shape_from_config(tiny_config("data.source=files", "data.paths=['x.txt']", "model.vocab_size=999")).vocab == 999
    LlamaConfig(**SMALL).save_pretrained(tmp_path)
    shape = shape_from_config(tiny_config(f"model.path={json.dumps(str(tmp_path))}"))
    assert (shape.hidden, shape.layers, shape.vocab) == (64, 3, 101)


def test_a_70b_config_plans_without_allocating_anything():
    cfg = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
           "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256}
    assert total_params(shape_from_hf_config(cfg)) == 70_553_706_496  # Llama-3-70B's published count


@pytest.mark.parametrize("content,message", [
    (None, "has no config.json"),
    ("{not json", "cannot read"),
    ('{"model_type": "gpt2", "n_embd": 64}', "model_type 'gpt2' is not one the planner knows"),
    ('{"model_type": "llama", "hidden_size": 64}', "missing 'intermediate_size'"),
    ('{"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 0, '
     '"num_attention_heads": 4, "vocab_size": 10}', "'num_hidden_layers' must be a positive integer"),
])
def test_bad_model_directories_are_one_line_user_errors(tmp_path, content, message):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(UserError, match=message):
        shape_from_model_dir(tmp_path)
