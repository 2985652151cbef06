"""DeepSeek-V3's multi-token prediction (MTP) modules, and their loss and weight schedule as pure functions.

Depth k (1..D) predicts token i+k+1 at position i, chained on depth k-1 (DeepSeek-V3 report, section 2.2):

    h'_i = eh_proj [enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)]        (2H -> H, no bias)
    h^k  = block_k(h')                                           (one decoder layer of the model's own class)
    logits^k_i = Head(shared_head.norm(h^k_i))

h^0 is the main model's last hidden state after its final norm (as vLLM's DeepSeek MTP takes it). The
concatenation puts the embedding first: the paper writes [h; Emb], DeepSeek's released `eh_proj` weights
(and vLLM) take [Emb; h]. The embedding, the output head and the rotary embeddings are the model's own,
used, not held: an `MtpModules` has only its own parameters (`layers.{k-1}.enorm`, `.hnorm`, `.eh_proj`,
`.block.*`, `.shared_head.norm`), so its state dict shares no tensor with the model's. Depth k runs on
the first T-k positions (the last k have no token t_{i+k}).

`mtp_of` finds modules attached to a model (`ATTR`, by `dswb.engine.train.mtp.MtpTraining`) through the
wrappers a trained model may have (DDP's `.module`, peft, `torch.compile`'s `_orig_mod`; FSDP2 and this
repo's DDP hooks keep the model itself).
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dswb.engine.model.backbone import backbone_of
from dswb.errors import UserError

IGNORE_INDEX = -100
ATTR = "mtp"        # the attached modules' name: `model.mtp`, state-dict keys `mtp.layers.0.eh_proj.weight`, ...


def mtp_weight(step: int, total_steps: int, weight: float, late_weight: float, late_from: float) -> float:
    """lambda for the 0-based step `step` of `total_steps`: `weight`, then `late_weight` from step
    `late_start(total_steps, late_from)` on (DeepSeek-V3: 0.3 for the first 10T tokens, 0.1 after)."""
    return late_weight if step >= late_start(total_steps, late_from) else weight


def late_start(total_steps: int, late_from: float) -> int:
    """The first 0-based step of `late_weight` (`total_steps` or more: never). Rounded so that
    0.7 of 10 steps is step 7, whatever 0.7 * 10 is in floating point."""
    return math.ceil(late_from * total_steps - 1e-9)


def mtp_targets(labels: torch.Tensor, depth: int, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The labels depth `depth` is scored against at positions 0..T-depth-2: `labels[i + depth + 1]`,
    -100 where that token is in another packed document than position i (`position_ids` restart at
    each document; None: one document a row, right-padded, nothing to mask)."""
    targets = labels[:, depth + 1:]
    if position_ids is not None and targets.shape[1] > 0:
        width = targets.shape[1]
        same = position_ids[:, depth + 1:] - position_ids[:, :width] == depth + 1
        targets = torch.where(same, targets, torch.full_like(targets, IGNORE_INDEX))
    return targets


def mtp_loss_sum(depth_logits: list[torch.Tensor], labels: torch.Tensor, position_ids: torch.Tensor | None = None
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(sum of token cross-entropies, number of targets) per depth. `labels` are aligned with the
    inputs (unshifted, -100 = no loss); depth k's logits (`depth_logits[k-1]`, [B, T_k, V] with
    T_k <= T) at position i are scored against `labels[i + k + 1]` (`mtp_targets`)."""
    sums, counts = [], []
    for depth, logits in enumerate(depth_logits, start=1):
        targets = mtp_targets(labels, depth, position_ids)
        width = min(targets.shape[1], logits.shape[1])
        targets, scored = targets[:, :width], logits[:, :width].float()
        sums.append(F.cross_entropy(scored.reshape(-1, scored.size(-1)), targets.reshape(-1),
                                    ignore_index=IGNORE_INDEX, reduction="sum"))
        counts.append((targets != IGNORE_INDEX).sum())
    return sums, counts


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module, nn.Module]:
    """(backbone, last decoder layer, final norm, rotary embedding, output head) of a decoder-only
    transformers model; one clear line when it has no such parts."""
    base = backbone_of(model)
    layers, norm, rotary = (getattr(base, name, None) for name in ("layers", "norm", "rotary_emb"))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(layers, nn.ModuleList) or not len(layers) or norm is None or rotary is None or head is None:
        raise UserError(f"mtp: {type(model).__name__} is not a decoder model with `model.layers`, `model.norm`, "
                        f"`model.rotary_emb` and an output head (Llama, Qwen, Mistral, DeepSeek-V3 ...): "
                        f"set mtp.depth = 0")
    return base, layers[-1], norm, rotary, head


def block_config(config, depth: int):
    """The model's config for the MTP blocks (layer indices N..N+D-1): a copy whose per-layer lists
    (`layer_types`) continue with the last layer's entry, so that a family that reads them (Qwen3) builds
    the block as its last layer."""
    config = copy.deepcopy(config)
    types = getattr(config, "layer_types", None)
    if isinstance(types, (list, tuple)) and types:
        config.layer_types = list(types)[:config.num_hidden_layers] + [types[config.num_hidden_layers - 1]] * depth
    return config


class SharedHead(nn.Module):
    """DeepSeek's `shared_head`: its own final norm; the head itself is the model's (not held)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm


class MtpLayer(nn.Module):
    """One depth: the two input norms, the projection, the decoder block and the final norm."""

    def __init__(self, model: nn.Module, config, layer_idx: int) -> None:
        super().__init__()
        _, last, norm, _, _ = _parts(model)
        hidden, eps = config.hidden_size, getattr(config, "rms_norm_eps", 1e-6)
        make_norm = type(norm)      # the family's RMSNorm (Gemma's is 1 + weight, others weight)
        self.enorm, self.hnorm = make_norm(hidden, eps=eps), make_norm(hidden, eps=eps)
        self.eh_proj = nn.Linear(2 * hidden, hidden, bias=False)
        self.block = type(last)(config, layer_idx=layer_idx)
        self.shared_head = SharedHead(make_norm(hidden, eps=eps))


class MtpModules(nn.Module):
    """D MTP depths for `model` (built from its config and its last decoder layer's class, on the device
    and in the dtype of its output head; initialised by the model's own `_init_weights`, so seed first).

    `forward(model, hidden, input_ids, attention_mask, position_ids)` returns the D depths' logits.
    `loss_weight` (lambda) and `tally` (this step's per-depth cross-entropy sums and target counts) are
    the training's running state (`dswb.engine.train.mtp`), not parameters."""

    def __init__(self, model: nn.Module, depth: int) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("MtpModules needs depth >= 1")
        _, _, _, _, head = _parts(model)
        self.config = block_config(model.config, depth)
        first = model.config.num_hidden_layers
        self.layers = nn.ModuleList(MtpLayer(model, self.config, first + k) for k in range(depth))
        with torch.no_grad():
            for module in self.modules():
                model._init_weights(module)
        self.to(device=head.weight.device, dtype=head.weight.dtype)
        self.loss_weight = 0.0
        self.tally: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def depth(self) -> int:
        return len(self.layers)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, model: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The logits of every depth: depth k's [B, T-k, V], position i predicting token i+k+1.
        `hidden` is h^0 ([B, T, H], after the model's final norm); `attention_mask` (2-D, padded
        batches) and `position_ids` (packed batches) are the batch's, as the model got them."""
        _, _, _, rotary, head = _parts(model)
        embed = model.get_input_embeddings()
        device = head.weight.device
        width = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(width, device=input_ids.device).unsqueeze(0).expand(input_ids.shape[0], -1)
        h, logits = hidden.to(device), []
        for k, layer in enumerate(self.layers, start=1):
            n = width - k
            if n <= 0:
                break
            e = embed(input_ids[:, k:].to(embed.weight.device)).to(device)
            h = layer.eh_proj(torch.cat([layer.enorm(e), layer.hnorm(h[:, :n])], dim=-1))
            positions = position_ids[:, :n].to(device)
            mask = attention_mask[:, :n].to(device) if attention_mask is not None else None
            out = layer.block(h, attention_mask=self._mask(h, mask, positions), position_ids=positions,
                              position_embeddings=rotary(h, positions), use_cache=False)
            h = out[0] if isinstance(out, tuple) else out
            logits.append(head(layer.shared_head.norm(h)))
        return logits

    def _mask(self, h: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor):
        """The block's attention mask, made as the model makes its last layer's (causal, or sliding
        window for a sliding last layer; packed documents kept apart through `position_ids`)."""
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        types = getattr(self.config, "layer_types", None)
        sliding = bool(types) and types[-1] == "sliding_attention"
        make = create_sliding_window_causal_mask if sliding else create_causal_mask
        return make(self.config, h, attention_mask, None, position_ids=position_ids)


def mtp_of(model: nn.Module) -> MtpModules | None:
    """The MTP modules attached to `model` (through DDP's `.module`, peft's base model, a compiled
    model's `_orig_mod`), else None."""
    seen = 0
    while model is not None and seen < 8:
        found = model._modules.get(ATTR) if isinstance(model, nn.Module) else None
        if isinstance(found, MtpModules):
            return found
        peft = hasattr(model, "peft_config") and hasattr(model, "get_base_model")
        model = model.get_base_model() if peft else _inner(model)
        seen += 1
    return None


def _inner(model: nn.Module) -> nn.Module | None:
    """The module a wrapper holds (DDP's `.module`, a compiled model's `._orig_mod`), else None."""
    for name in ("module", "_orig_mod"):
        inner = getattr(model, name, None)
        if isinstance(inner, nn.Module):
            return inner
    return None


def attach(model: nn.Module, mtp: MtpModules) -> nn.Module:
    """`mtp` as the submodule `model.mtp`: in `model.parameters()` (the optimizer) and `model.state_dict()`
    (the checkpoints)."""
    model.add_module(ATTR, mtp)
    return model


@contextmanager
def detached(model: nn.Module) -> Iterator[MtpModules | None]:
    """`model` without its MTP modules for the duration (a plain transformers model for
    `save_pretrained`); yields them (None when there are none)."""
    holder = model
    while holder is not None and not isinstance(holder._modules.get(ATTR), MtpModules):
        holder = _inner(holder)
    if holder is None:
        yield None
        return
    mtp = holder._modules.pop(ATTR)
    try:
        yield mtp
    finally:
        holder._modules[ATTR] = mtp


@contextmanager
def final_hidden(model: nn.Module, enabled: bool = True) -> Iterator[list[torch.Tensor]]:
    """Collects the output of the model's final norm (h^0) in the yielded list while the block runs
    (nothing when not `enabled`)."""
    box: list[torch.Tensor] = []
    if not enabled:
        yield box
        return
    _, _, norm, _, _ = _parts(model)
    handle = norm.register_forward_hook(lambda module, args, output: box.append(output))
    try:
        yield box
    finally:
        handle.remove()
