"""Where a final model's multi-token prediction (MTP) modules are saved, and how a later stage reads them.

`save_pretrained_with_mtp` writes the model as the plain transformers model (no `mtp.*` keys, so
`AutoModelForCausalLM.from_pretrained` loads it with nothing missing or unexpected) and, when MTP modules
are attached (`dswb.engine.model.mtp`), beside it:
- `mtp.safetensors`: the modules' own state dict (`layers.{k-1}.enorm.weight`, `...block.self_attn...`),
  its metadata naming the depth, the model type and the main model's layer count;
- for a DeepSeek-V3 model whose transformers class ignores them on load, also DeepSeek's own layout inside
  the model's safetensors: depth k as layer `num_hidden_layers + k - 1` of `model.layers` (`enorm`,
  `hnorm`, `eh_proj`, the block's keys, `shared_head.norm`, copies of the head as `shared_head.head` and
  of the embedding as `embed_tokens`), in the original format transformers saves every layer in, and
  `num_nextn_predict_layers = D` in config.json. transformers 5.24's DeepSeek-V3 ignores only
  `model.layers.61.*` (the real model's 61 layers + 1): a smaller DeepSeek (dswb's `moe-tiny`) would load
  with unexpected keys, so it gets `mtp.safetensors` only, and `num_nextn_predict_layers = 0` (its
  config's default is 1, DeepSeek-V3's) since its weights hold no MTP layer.

`load_mtp` fills a stage's new MTP modules from a model directory's `mtp.safetensors` (its first depths
when the file has more or fewer than the stage trains).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dswb.engine.model.mtp import MtpModules, detached
from dswb.errors import UserError

MTP_FILE = "mtp.safetensors"


def save_pretrained_with_mtp(model: torch.nn.Module, directory: Path) -> None:
    """`model.save_pretrained(directory)` without its MTP modules, which go beside it (see the module docstring)."""
    with detached(model) as mtp:
        layout = deepseek_layout(model, mtp) if mtp is not None else {}
        state = {**model.state_dict(), **layout} if layout else None
        model.save_pretrained(directory, state_dict=state, safe_serialization=True)
    if mtp is None:
        return
    save_file({k: v.detach().contiguous() for k, v in mtp.state_dict().items()}, str(Path(directory) / MTP_FILE),
              metadata={"format": "pt", "depth": str(mtp.depth), "model_type": str(model.config.model_type),
                        "num_hidden_layers": str(model.config.num_hidden_layers),
                        "deepseek_layout": str(bool(layout)).lower()})
    config_file = Path(directory) / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if layout or "num_nextn_predict_layers" in config:   # the MTP layers the model's weights hold
        config["num_nextn_predict_layers"] = mtp.depth if layout else 0
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def layout_key(n_layers: int, k: int, name: str) -> str:
    """DeepSeek's checkpoint name of the MTP modules' `layers.{k}.<name>` (k 0-based)."""
    return f"model.layers.{n_layers + k}.{name.removeprefix('block.')}"


def deepseek_layout_loads(model: torch.nn.Module, depth: int) -> bool:
    """Whether `model` is a DeepSeek-V3 whose transformers class ignores the MTP layers' keys on load."""
    if getattr(model.config, "model_type", "") != "deepseek_v3":
        return False
    ignored = getattr(type(model), "_keys_to_ignore_on_load_unexpected", None) or []
    n = model.config.num_hidden_layers
    return all(any(re.search(p, layout_key(n, k, "eh_proj.weight")) for p in ignored) for k in range(depth))


def deepseek_layout(model: torch.nn.Module, mtp: MtpModules) -> dict[str, torch.Tensor]:
    """The MTP modules as DeepSeek-V3's checkpoints hold them (empty when `deepseek_layout_loads` says no)."""
    if not deepseek_layout_loads(model, mtp.depth):
        return {}
    n = model.config.num_hidden_layers
    state = {}
    for name, tensor in mtp.state_dict().items():
        k, _, rest = name.removeprefix("layers.").partition(".")
        state[layout_key(n, int(k), rest)] = tensor.detach()
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    for k in range(mtp.depth):
        state[layout_key(n, k, "shared_head.head.weight")] = head.detach().clone()
        state[layout_key(n, k, "embed_tokens.weight")] = embed.detach().clone()
    return state


def mtp_depth_saved(directory: Path) -> int:
    """The depth of the MTP modules saved in `directory` (0: none)."""
    path = Path(directory) / MTP_FILE
    if not path.is_file():
        return 0
    with safe_open(str(path), framework="pt") as f:
        return int((f.metadata() or {}).get("depth", 0))


def load_mtp(mtp: MtpModules, directory: Path) -> str | None:
    """Fill `mtp`'s first depths from `directory/mtp.safetensors`; says what was loaded (None: no file,
    `mtp` keeps its fresh weights). One clear line when the file does not fit the modules."""
    path = Path(directory) / MTP_FILE
    saved = mtp_depth_saved(directory)
    if not saved:
        return None
    n = min(saved, mtp.depth)
    wanted = {k for k in mtp.state_dict() if int(k.split(".")[1]) < n}
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if k in wanted}
    missing = sorted(wanted - state.keys())
    try:
        if missing:
            raise RuntimeError(f"missing {missing[:3]}")
        mtp.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise UserError(f"mtp: {path} does not fit this model's MTP modules (saved for another model?): "
                        f"{' '.join(str(exc).split())[:200]}") from None
    fresh = f", {_depths(n + 1, mtp.depth)} fresh" if n < mtp.depth else ""
    return f"{_depths(1, n)} from {path}{fresh}"


def _depths(first: int, last: int) -> str:
    return f"depth {first}" if first == last else f"depths {first}-{last}"
