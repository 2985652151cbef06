"""Turning post-training records into token ids: plain prompt/completion text and chat messages.

Two prompt formats, recorded in every final model's `dswb_stage.json` (`prompt_format`) so that
evaluation and inference format prompts exactly as training did:

- `plain`: `[bos] + prompt + completion + [eos]`, the pretraining format (no template). The built-in
  task uses it, so a pretrained model, its SFT and its RL stages all read `37+48=` the same way.
- `chat`: `messages` rendered by a chat template. A tokenizer that has one (`tokenizer.chat_template`)
  keeps it; otherwise dswb's default template is installed and saved with the final tokenizer:

      {{ bos_token }}<|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>

  with `<|system|>`, `<|user|>`, `<|assistant|>` and `<|end|>` added as special tokens (the model's
  embeddings grow to match). A turn ends with `<|end|>`, which is also a stop token for generation.

Loss masks: with `loss_on = "completion"`, only completion tokens (plain: the completion and eos;
chat: every assistant turn's content and its end token) carry the loss. Assistant spans are found
by rendering growing prefixes of the conversation, which works with any template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dswb.errors import UserError

ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
END_TOKEN = "<|end|>"
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ROLES = ("system", "user", "assistant")

Messages = list[dict[str, str]]


def install_chat_template(tokenizer: Any, template: str = "auto") -> bool:
    """Make sure `tokenizer` can render chats; returns True when tokens were added (resize the model).

    `auto` keeps the tokenizer's own template if it has one; `default` installs dswb's; anything
    else is a path to a Jinja template file.
    """
    if template == "auto" and getattr(tokenizer, "chat_template", None):
        return False
    if template in ("auto", "default"):
        before = len(tokenizer)
        tokenizer.add_special_tokens({"additional_special_tokens": [*ROLE_TOKENS, END_TOKEN]},
                                     replace_extra_special_tokens=False)
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        return len(tokenizer) != before
    path = Path(template).expanduser()
    try:
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"sft.template: cannot read chat template {path}: {exc.strerror or exc}") from None
    return False


def stop_ids(tokenizer: Any, prompt_format: str) -> list[int]:
    """Token ids that end a completion: eos, and the end-of-turn token of the default chat template."""
    ids = [tokenizer.eos_token_id]
    if prompt_format == "chat":
        end = tokenizer.convert_tokens_to_ids(END_TOKEN)
        if isinstance(end, int) and end != getattr(tokenizer, "unk_token_id", None) and end not in ids:
            ids.append(end)
    return [i for i in ids if i is not None]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"])


def _render(tokenizer: Any, messages: Messages, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def plain_prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + _encode(tokenizer, prompt)


def chat_prompt_ids(tokenizer: Any, messages: Messages) -> list[int]:
    """The conversation so far, followed by the start of an assistant turn."""
    return _encode(tokenizer, _render(tokenizer, messages, add_generation_prompt=True))


def prompt_ids(tokenizer: Any, prompt: str | Messages) -> list[int]:
    """Token ids of a prompt ready for generation, in the format its type implies."""
    if isinstance(prompt, str):
        return plain_prompt_ids(tokenizer, prompt)
    return chat_prompt_ids(tokenizer, prompt)


def encode_plain(tokenizer: Any, prompt: str, completion: str, loss_on: str = "completion",
                 add_eos: bool = True) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of `[bos] + prompt + completion + [eos]`."""
    head = plain_prompt_ids(tokenizer, prompt)
    tail = _encode(tokenizer, completion) + ([tokenizer.eos_token_id] if add_eos else [])
    mask = ([1 if loss_on == "all" else 0] * len(head)) + [1] * len(tail)
    return head + tail, mask


def encode_chat(tokenizer: Any, messages: Messages, loss_on: str = "completion") -> tuple[list[int], list[int]]:
    """(ids, loss mask) of a rendered conversation; the mask covers every assistant turn."""
    ids = _encode(tokenizer, _render(tokenizer, messages))
    if loss_on == "all":
        return ids, [1] * len(ids)
    mask = [0] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_encode(tokenizer, _render(tokenizer, messages[:i], add_generation_prompt=True)))
        end = len(_encode(tokenizer, _render(tokenizer, messages[:i + 1])))
        for j in range(min(start, len(ids)), min(end, len(ids))):
            mask[j] = 1
    return ids, mask


def completion_ids(tokenizer: Any, completion: str | Messages, prompt_format: str) -> list[int]:
    """Token ids of a completion as the model must produce it (including its stop token)."""
    if isinstance(completion, str):
        return _encode(tokenizer, completion) + [tokenizer.eos_token_id]
    text = "".join(m["content"] for m in completion)
    return _encode(tokenizer, text) + stop_ids(tokenizer, prompt_format)[-1:]


def check_messages(messages: Any, where: str, field: str = "messages") -> Messages:
    """Validate a chat: a non-empty list of {role, content} with known roles (one-line errors)."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: '{field}' must be a non-empty list of {{role, content}} objects")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: {field}[{k}] must be an object with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise UserError(f"{where}: {field}[{k}]: unknown role {m['role']!r} (system, user or assistant)")
    return messages
