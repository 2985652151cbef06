"""The hook between building a model and training it.

Every stage calls `prepare_model` right after building (or loading) its model. Transforms that
change how a model trains — FP8 linear layers, distributed wrapping (DDP/FSDP) — are added to
`transforms` by the component that owns them; each receives the model, the config and the
device, and returns the model to train.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from dswb.config.schema import Config

ModelTransform = Callable[[torch.nn.Module, Config, torch.device], torch.nn.Module]


def prepare_model(model: torch.nn.Module, config: Config, device: torch.device,
                  transforms: Sequence[ModelTransform] = ()) -> torch.nn.Module:
    model = model.to(device)
    for transform in transforms:
        model = transform(model, config, device)
    return model.train()
