"""`prepare_model`: the one hook between loading a model and training it. A model transform changes
the model before it trains and adds its metrics and step hooks to the loop (`model_hooks`)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from helpers import tiny_config
from transformers import LlamaConfig, LlamaForCausalLM

from dswb.engine.train.prepare import (Fp8Training, ModelHooks, ModelTransform, MoeTraining, model_hooks, prepare_model,
                                       transforms_for)


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


class FreezeEmbeddings(ModelTransform):
    name = "freeze-embeddings"

    def __init__(self) -> None:
        self.steps: list[int] = []

    def apply(self, model, config, device):
        model.get_input_embeddings().requires_grad_(False)
        return model

    def hooks(self, model, ctx, stage, probe):
        ctx.monitor.log(f"{self.name}: {sum(not p.requires_grad for p in model.parameters())} frozen", stage=stage)
        return ModelHooks(metric_sources=[lambda: {"frozen_params": 1}], step_hooks=[self.steps.append])


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message, stage=None, event=True, **_):
        self.lines.append(message)


def test_a_transform_changes_the_model_and_adds_its_hooks_to_the_loop():
    config = tiny_config()
    transform = FreezeEmbeddings()
    model = prepare_model(tiny_model(), config, torch.device("cpu"), transforms=[transform])
    assert not model.get_input_embeddings().weight.requires_grad and model.training
    ctx = SimpleNamespace(monitor=Lines(), config=config)
    hooks = model_hooks(model, ctx, "pretrain")
    assert ctx.monitor.lines == ["freeze-embeddings: 1 frozen"]
    assert [source() for source in hooks.metric_sources] == [{"frozen_params": 1}]
    hooks.step_hooks[0](3)
    assert transform.steps == [3]


def test_the_config_picks_the_transforms_of_a_trained_model_only():
    assert [type(t) for t in transforms_for(tiny_config(), "policy", trainable=True)] == [MoeTraining]
    fp8 = tiny_config("fp8.enabled=true")
    assert [type(t) for t in transforms_for(fp8, "policy", trainable=True)] == [Fp8Training, MoeTraining]
    assert transforms_for(fp8, "reference", trainable=False) == []
