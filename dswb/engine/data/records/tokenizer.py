"""Tokenizers: train a byte-level BPE, build the built-in task's character vocabulary, load one.

Every tokenizer returned is a transformers fast tokenizer that `save_pretrained` writes and
`AutoTokenizer.from_pretrained(dir)` reads back offline. The ones built here have the special
tokens `<|pad|>` (id 0), `<|bos|>` (1), `<|eos|>` (2); calling them with the default
`add_special_tokens=True` prepends `<|bos|>` (as Llama tokenizers do), which is the format the
model is trained on. The data pipeline itself always encodes with `add_special_tokens=False` and
adds bos/eos explicitly, so a user-supplied tokenizer behaves the same.

Nothing here downloads: `HF_HUB_OFFLINE=1` is the default and loading is `local_files_only`.
Progress bars (tqdm) are off so they never garble a terminal dashboard.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from dswb.errors import UserError  # noqa: E402

hf_logging.disable_progress_bar()

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
SPECIALS = [PAD, BOS, EOS]
TASK_ALPHABET = "0123456789+="


def _bos_post_processor() -> processors.TemplateProcessing:
    return processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                         special_tokens=[(BOS, SPECIALS.index(BOS))])


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE with at most `vocab_size` tokens (fewer if the corpus is small).

    Byte-level means every string is encodable (no unknown token). Use `len(tokenizer)` for the
    model's vocabulary size.
    """
    if vocab_size < len(SPECIALS) + 256:
        raise UserError(f"model.vocab_size: a byte-level BPE needs at least {len(SPECIALS) + 256} tokens, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = _bos_post_processor()
    return _wrap(tok)


def build_char_tokenizer(alphabet: str = TASK_ALPHABET, words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """One token per character of `alphabet` after pad/bos/eos and `<|unk|>` (16 tokens for the task),
    then one per entry of `words` (e.g. `<think>`), added as normal tokens: one id each, and
    decoding keeps them (`skip_special_tokens` drops only special ones).

    Characters outside the alphabet (spaces included) encode as `<|unk|>`; decoding joins the
    characters with nothing in between.
    """
    chars = list(dict.fromkeys(alphabet))
    if not chars:
        raise ValueError("empty alphabet")
    vocab = {token: i for i, token in enumerate(SPECIALS + [UNK] + chars + list(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = _bos_post_processor()
    tok.add_special_tokens(SPECIALS + [UNK])
    if words:
        tok.add_tokens([AddedToken(w, special=False, normalized=False) for w in words])
    return _wrap(tok)


def has_tokenizer(directory: str | Path) -> bool:
    """Whether `directory` holds tokenizer files (as a model directory may)."""
    d = Path(directory)
    return any((d / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def load_tokenizer(path: str | Path, where: str = "model.tokenizer") -> Any:
    """Load a local tokenizer directory; make sure it has eos and pad (pad falls back to eos)."""
    d = Path(path).expanduser()
    if not d.is_dir():
        raise UserError(f"{where}: no such tokenizer directory: {path}")
    if not has_tokenizer(d):
        raise UserError(f"{where}: {path} holds no tokenizer files (tokenizer.json / tokenizer_config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds; report one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{where}: cannot load tokenizer from {path}: {first}") from None
    if tok.eos_token_id is None:
        raise UserError(f"{where}: tokenizer at {path} has no eos token")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_identity(tok: Any) -> str:
    """A sha256 of the tokenizer's full serialized form and special tokens (for cache keys)."""
    backend = getattr(tok, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
    specials = json.dumps([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id])
    return hashlib.sha256((body + specials).encode("utf-8")).hexdigest()


def encode_batch(tok: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens, in one fast batched call."""
    if not texts:
        return []
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]
    return tok(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def tokenizer_from_json(text: str) -> PreTrainedTokenizerFast:
    """Rebuild a tokenizer made here (BPE or character) from its `tokenizer.json` text."""
    return _wrap(Tokenizer.from_str(text))


def tokenizer_json(tok: Any) -> str:
    """The serialized `tokenizer.json` text of a fast tokenizer."""
    return tok.backend_tokenizer.to_str()
