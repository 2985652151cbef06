"""The frozen reference of a LoRA stage, without a second copy of the model's weights.

The reference is the stage's start model. When the stage's adapter is new (a base model, or an
earlier adapter merged first) that is the base with the adapter switched off (`disable_adapter`);
when the stage continues an earlier adapter (`lora.chain = "continue"`) it is that adapter as it
was loaded, kept frozen beside the trained one as a second adapter named `reference` (as TRL does).
A reference used only before the stage trains (DPO's precomputed log-probs) is the model as it is
(`current=True`): no second adapter is loaded. Either way the reference pass runs in eval mode (no
dropout) and without gradients; its outputs equal the start model's exactly.

`AdapterReference` is called like a model (`sequence_logprobs(ref, ...)`, `pair_logprobs(ref, ...)`).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from dswb.engine.adapters.lora import peft_of

REFERENCE_ADAPTER = "reference"


class AdapterReference:
    """The start model as a view of the trained peft model (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, continued_from: Path | None = None, current: bool = False) -> None:
        self.model = peft_of(model)
        if self.model is None:
            raise ValueError("AdapterReference needs a peft model")
        self.current = current           # the model as it is now: only before it trains (a precomputed reference)
        self.continued = continued_from is not None and not current
        if self.continued:
            self.model.load_adapter(str(continued_from), adapter_name=REFERENCE_ADAPTER, is_trainable=False)

    @property
    def config(self):
        return self.model.config

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.model.parameters()

    def eval(self) -> "AdapterReference":
        return self

    def requires_grad_(self, flag: bool = False) -> "AdapterReference":
        return self

    @contextmanager
    def active(self) -> Iterator[None]:
        """The trained model behaves as the reference inside this block."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if self.current:
                    yield
                elif not self.continued:
                    with model.disable_adapter():
                        yield
                else:
                    flags = [(p, p.requires_grad) for p in model.parameters()]
                    model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
                    try:
                        yield
                    finally:
                        model.set_adapter("default")
                        for p, flag in flags:
                            p.requires_grad_(flag)
        finally:
            model.train(was_training)

    def __call__(self, *args, **kwargs):
        with self.active():
            return self.model(*args, **kwargs)
