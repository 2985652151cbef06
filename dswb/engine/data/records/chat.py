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

Reasoning: an assistant message may carry `reasoning_content` beside `content` (Qwen3's and
DeepSeek-R1's convention). The template decides how it is written and what the history keeps of
earlier thinking; dswb's default writes `<think>REASONING</think>` before the content of every turn
that has it (messages without it render exactly as before).

Loss masks: with `loss_on = "completion"`, only completion tokens (plain: the completion and eos;
chat: every assistant turn as the template renders it in the whole conversation, reasoning
included when kept, and the end-of-turn text) carry the loss. The conversation is rendered once; a
turn starts where the render of the turns before it plus the generation prompt ends, and ends after
its content and the end-of-turn text the template writes when the turn closes. Character spans
become token spans through the fast tokenizer's offsets. A template that hides a turn's content, or
whose generation prompt does not begin the rendered turn, is an error, never a silent zero loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dswb.errors import UserError

ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
END_TOKEN = "<|end|>"
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}<|{{ message['role'] }}|>"
    "{% if message['reasoning_content'] is string %}<think>{{ message['reasoning_content'] }}</think>{% endif %}"
    "{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ROLES = ("system", "user", "assistant")

Messages = list[dict[str, str]]

_TEMPLATE_FILES: dict[str, str] = {}   # template text -> the file it was read from, to name it in errors


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
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"sft.template: cannot read chat template {path}: {exc.strerror or exc}") from None
    _TEMPLATE_FILES[text] = str(path)
    tokenizer.chat_template = text
    return False


def template_source(tokenizer: Any) -> str:
    """How errors name the tokenizer's chat template: dswb's default, the file it came from, or its own."""
    template = getattr(tokenizer, "chat_template", None)
    if template == DEFAULT_CHAT_TEMPLATE:
        return "dswb's default chat template"
    if isinstance(template, str) and template in _TEMPLATE_FILES:
        return f"chat template {_TEMPLATE_FILES[template]}"
    return "the tokenizer's own chat template"


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


def encode_chat(tokenizer: Any, messages: Messages, loss_on: str = "completion",
                where: str = "") -> tuple[list[int], list[int]]:
    """(ids, loss mask) of a rendered conversation; the mask covers every assistant turn.

    `where` names the record (`file:line`) in errors.
    """
    text = _render(tokenizer, messages)
    if loss_on == "all":
        ids = _encode(tokenizer, text)
        return ids, [1] * len(ids)
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{where or 'chat record'}: assistant loss masks need a fast tokenizer (offsets), "
                        f"got {type(tokenizer).__name__}")
    encoded = tokenizer(text, add_special_tokens=False, return_attention_mask=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    mask = token_mask(encoded["offset_mapping"], assistant_spans(tokenizer, messages, text, where))
    if not any(mask):
        raise UserError(f"{where or 'chat record'}: {template_source(tokenizer)} marks no assistant token "
                        f"(nothing to learn from)")
    return ids, mask


def assistant_spans(tokenizer: Any, messages: Messages, text: str, where: str = "") -> list[tuple[int, int]]:
    """Character spans `[start, end)` of the assistant turns in `text`, the render of all `messages`.

    A turn starts where the render of the turns before it plus the generation prompt ends. When the
    whole render writes the turn as a render that ends with it does (its reasoning kept), the content
    ends where it ends there; otherwise (e.g. earlier thinking dropped) the content is found in
    `text` from the start. The span closes with the text both renders write after the content
    (the end-of-turn marker).
    """
    at, source = where or "chat record", template_source(tokenizer)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = _render(tokenizer, messages[:i], add_generation_prompt=True)
        last = _render(tokenizer, messages[:i + 1])
        if not (text.startswith(head) and last.startswith(head)):
            raise UserError(f"{at}: {source}: the render of messages[:{i}] with the generation prompt does not "
                            f"begin the render of assistant turn messages[{i}]; cannot place its loss mask")
        start = len(head)
        last_end = _content_end(last, start, message)
        if last_end < 0:
            raise UserError(f"{at}: {source} does not render the content of assistant turn messages[{i}]; "
                            f"cannot place its loss mask")
        kept = text[:last_end] == last[:last_end]
        end = last_end if kept else _content_end(text, start, {"content": message["content"]})
        if end < 0:
            raise UserError(f"{at}: {source} drops the content of assistant turn messages[{i}] from the "
                            f"conversation; cannot place its loss mask")
        spans.append((start, end + len(_common_prefix(last[last_end:], text[end:]))))
    return spans


def _content_end(text: str, start: int, message: dict) -> int:
    """Where `message`'s content ends in `text` (searched from `start`, after its reasoning if written), or -1."""
    reasoning = (message.get("reasoning_content") or "").strip()
    after = _find_end(text, reasoning, start) if reasoning else -1
    end = _find_end(text, message["content"], after) if after >= 0 else -1
    return end if end >= 0 else _find_end(text, message["content"], start)


def _find_end(text: str, needle: str, start: int) -> int:
    """End of the first `needle` in `text[start:]`, or of it stripped (templates trim whitespace), or -1."""
    for candidate in dict.fromkeys((needle, needle.strip())):
        at = text.find(candidate, start)
        if at >= 0:
            return at + len(candidate)
    return -1


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def token_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token whose characters `[a, b)` overlap a span (a zero-width token counts where it sits)."""
    return [int(any(a < e and max(b, a + 1) > s for s, e in spans)) for a, b in offsets]


def completion_ids(tokenizer: Any, completion: str | Messages, prompt_format: str) -> list[int]:
    """Token ids of a completion as the model must produce it (including its stop token)."""
    if isinstance(completion, str):
        return _encode(tokenizer, completion) + [tokenizer.eos_token_id]
    text = "".join(m["content"] for m in completion)
    return _encode(tokenizer, text) + stop_ids(tokenizer, prompt_format)[-1:]


def check_messages(messages: Any, where: str, field: str = "messages") -> Messages:
    """Validate a chat: a non-empty list of {role, content} with known roles (one-line errors).

    An assistant message may also carry `reasoning_content` (a string; null means none).
    """
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: '{field}' must be a non-empty list of {{role, content}} objects")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: {field}[{k}] must be an object with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise UserError(f"{where}: {field}[{k}]: unknown role {m['role']!r} (system, user or assistant)")
        reasoning = m.get("reasoning_content")
        if reasoning is not None and m["role"] != "assistant":
            raise UserError(f"{where}: {field}[{k}]: 'reasoning_content' is only for assistant messages")
        if reasoning is not None and not isinstance(reasoning, str):
            raise UserError(f"{where}: {field}[{k}]: 'reasoning_content' must be a string")
    return messages
