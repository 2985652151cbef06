"""Post-training records: reading them from JSONL (TRL's conventions) or from the built-in task.

Formats, one JSON object per line (`.jsonl` files, or directories of them):
- SFT: `{"prompt": str, "completion": str}` (plain), `{"messages": [{"role", "content"}, ...]}`
  (chat), or `{"prompt": [messages], "completion": [messages]}` (conversational prompt/completion).
  An assistant message may carry `reasoning_content` (its thinking, written by the chat template).
- Preference (reward model, DPO): `{"prompt", "chosen", "rejected"}` with strings (plain) or message
  lists (chat), or chat `{"chosen": [...], "rejected": [...]}` whose shared leading turns are the
  prompt; optional `"margin"` (a number).
- RL prompts (PPO, GRPO): `{"prompt": str | [messages], ...}`; every other field (e.g. `answer`)
  is passed to reward functions.
A bad line is a `UserError` naming `file:line` and the field. A dataset mixes no formats: it is
all plain or all chat (the model must see prompts one way).

The built-in task provides every format from its splits (train for training, val for evaluation
during a stage, test for the final score), with near-miss negatives as well as random ones.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dswb.engine.data.records.chat import Messages, check_messages
from dswb.engine.data.records.task import AdditionTask, TaskExample
from dswb.errors import UserError


@dataclass
class SFTRecord:
    prompt: str | Messages          # a string (plain) or the turns before the first assistant turn (chat)
    completion: str | Messages | None = None   # plain completion; None when `messages` holds everything
    messages: Messages | None = None
    where: str = ""

    @property
    def is_chat(self) -> bool:
        return self.messages is not None or not isinstance(self.prompt, str)

    def conversation(self) -> Messages:
        if self.messages is not None:
            return self.messages
        return list(self.prompt) + list(self.completion or [])  # type: ignore[arg-type]


@dataclass
class PreferenceRecord:
    prompt: str | Messages
    chosen: str | Messages
    rejected: str | Messages
    margin: float | None = None
    kind: str = ""                  # built-in task: "near" or "random" negative
    where: str = ""

    @property
    def is_chat(self) -> bool:
        return not isinstance(self.prompt, str)


@dataclass
class PromptRecord:
    prompt: str | Messages
    fields: dict[str, Any] = field(default_factory=dict)
    where: str = ""

    @property
    def is_chat(self) -> bool:
        return not isinstance(self.prompt, str)


# -- reading JSONL -------------------------------------------------------------------------------

def jsonl_files(paths: list[str], where: str) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.jsonl") if q.is_file())
            if not found:
                raise UserError(f"{where}: no .jsonl files in directory {p}")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{where}: no such file or directory: {p}")
    return files


def iter_jsonl(paths: list[str], where: str):
    """(`file:line`, object) for every non-blank line; a line that is not a JSON object is an error."""
    for path in jsonl_files(paths, where):
        try:
            handle = open(path, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
        with handle:
            try:
                for n, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    at = f"{path}:{n}"
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UserError(f"{at}: not valid JSON ({exc.msg})") from None
                    if not isinstance(obj, dict):
                        raise UserError(f"{at}: expected a JSON object, got {type(obj).__name__}")
                    yield at, obj
            except UnicodeDecodeError:
                raise UserError(f"{path}: not UTF-8 text") from None


def _text_or_messages(obj: dict, key: str, at: str, what: str) -> str | Messages:
    if key not in obj:
        raise UserError(f"{at}: missing field '{key}' ({what})")
    value = obj[key]
    if isinstance(value, str):
        return value
    return check_messages(value, at, key)


def _same_format(records: list, at_kind: str) -> None:
    kinds = {r.is_chat for r in records}
    if len(kinds) > 1:
        first_chat = next(r for r in records if r.is_chat)
        first_plain = next(r for r in records if not r.is_chat)
        raise UserError(f"{at_kind}: mixes plain and chat records ({first_plain.where} is plain, "
                        f"{first_chat.where} is chat); use one format per dataset")


def _nonempty(records: list, paths: list[str], what: str) -> list:
    if not records:
        raise UserError(f"{', '.join(paths)}: no {what} records")
    return records


def read_sft(paths: list[str], where: str = "sft.data") -> list[SFTRecord]:
    need = "SFT records need prompt + completion, or messages"
    out = []
    for at, obj in iter_jsonl(paths, where):
        if "messages" in obj:
            messages = check_messages(obj["messages"], at)
            if not any(m["role"] == "assistant" for m in messages):
                raise UserError(f"{at}: 'messages' has no assistant turn to learn from")
            first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
            out.append(SFTRecord(prompt=messages[:first], messages=messages, where=at))
            continue
        prompt = _text_or_messages(obj, "prompt", at, need)
        completion = _text_or_messages(obj, "completion", at, need)
        if isinstance(prompt, str) != isinstance(completion, str):
            raise UserError(f"{at}: 'prompt' and 'completion' must both be strings or both message lists")
        out.append(SFTRecord(prompt=prompt, completion=completion, where=at))
    _same_format(out, where)
    return _nonempty(out, paths, "SFT")


def _split_prefix(chosen: Messages, rejected: Messages) -> int:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return n


def read_preferences(paths: list[str], where: str = "rm.data") -> list[PreferenceRecord]:
    need = "preference records need prompt, chosen and rejected"
    out = []
    for at, obj in iter_jsonl(paths, where):
        chosen = _text_or_messages(obj, "chosen", at, need)
        rejected = _text_or_messages(obj, "rejected", at, need)
        if "prompt" in obj:
            prompt = _text_or_messages(obj, "prompt", at, need)
        elif isinstance(chosen, list) and isinstance(rejected, list):  # implicit prompt: the shared turns
            n = _split_prefix(chosen, rejected)
            if n == 0:
                raise UserError(f"{at}: missing field 'prompt' and 'chosen'/'rejected' share no leading turns")
            prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        else:
            raise UserError(f"{at}: missing field 'prompt' ({need})")
        if len({isinstance(x, str) for x in (prompt, chosen, rejected)}) > 1:
            raise UserError(f"{at}: 'prompt', 'chosen' and 'rejected' must all be strings or all message lists")
        if not chosen or not rejected:
            raise UserError(f"{at}: 'chosen' and 'rejected' must not be empty")
        margin = obj.get("margin")
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
            raise UserError(f"{at}: 'margin' must be a number, got {margin!r}")
        out.append(PreferenceRecord(prompt, chosen, rejected, None if margin is None else float(margin), where=at))
    _same_format(out, where)
    return _nonempty(out, paths, "preference")


def read_prompts(paths: list[str], where: str = "grpo.data") -> list[PromptRecord]:
    out = []
    for at, obj in iter_jsonl(paths, where):
        prompt = _text_or_messages(obj, "prompt", at, "RL records need a prompt")
        out.append(PromptRecord(prompt, {k: v for k, v in obj.items() if k != "prompt"}, where=at))
    _same_format(out, where)
    return _nonempty(out, paths, "prompt")


def split_records(records: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, val): a seeded random `val_fraction` held out (at least one when there are two or more)."""
    if val_fraction <= 0 or len(records) < 2:
        return list(records), []
    n_val = min(len(records) - 1, max(1, round(len(records) * val_fraction)))
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


# -- the built-in task in every format ------------------------------------------------------------

def task_sft(examples: list[TaskExample], chat: bool = False) -> list[SFTRecord]:
    if chat:
        return [SFTRecord(prompt=[{"role": "user", "content": e.prompt}],
                          messages=[{"role": "user", "content": e.prompt},
                                    {"role": "assistant", "content": e.completion}],
                          where=f"task:{e.prompt}") for e in examples]
    return [SFTRecord(prompt=e.prompt, completion=e.completion, where=f"task:{e.prompt}") for e in examples]


def task_preferences(task: AdditionTask, examples: list[TaskExample], near_fraction: float,
                     seed: int) -> list[PreferenceRecord]:
    return [PreferenceRecord(p.prompt, p.chosen, p.rejected, kind=p.kind, where=f"task:{p.prompt}")
            for p in task.preference_pairs(examples, near_fraction=near_fraction, seed=seed)]


def task_prompts(examples: list[TaskExample]) -> list[PromptRecord]:
    return [PromptRecord(e.prompt, {"answer": e.answer}, where=f"task:{e.prompt}") for e in examples]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write records as JSONL (used to export the built-in task in every format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
