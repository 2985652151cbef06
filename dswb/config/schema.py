"""The config sections. Every field has a type, a default and a one-line doc (`doc(...)`).

Sections map one-to-one to TOML tables: `[run]`, `[model]`, `[data]`, `[task]`, `[batching]`,
`[train]`, `[eval]`, `[checkpoint]`, `[monitor]`. Later stages (SFT, RM, PPO, GRPO, FP8,
scale-out) add their own sections here, each with its own dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

STAGES = ("pretrain",)


def doc(default: Any, text: str, choices: tuple | None = None, min: float | None = None,
        max: float | None = None, factory: Any = None) -> Any:
    """A dataclass field with documentation and validation bounds in its metadata."""
    meta = {"doc": text, "choices": choices, "min": min, "max": max}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    name: str = doc("run", "Human name of the run; the run id is `<timestamp>-<name>`.")
    seed: int = doc(0, "Seed for model init, data order and sampling.", min=0)
    stages: list[str] = doc(None, "Stages to run in order.", factory=lambda: ["pretrain"])
    device: str = doc("auto", "Where to train: auto (cuda if present), cpu or cuda.",
                      choices=("auto", "cpu", "cuda"))
    precision: str = doc("auto", "auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16.",
                         choices=("auto", "fp32", "bf16"))
    threads: int = doc(0, "CPU threads for torch (0 = torch's default).", min=0)


@dataclass
class ModelConfig:
    size: str = doc("tiny", "Built-in Llama size when `path` is empty: tiny (~1M), small (~10M), base (~100M).",
                    choices=("tiny", "small", "base"))
    path: str = doc("", "Local Hugging Face model directory to start from (overrides `size`).")
    tokenizer: str = doc("", "Local tokenizer directory; empty: the model dir's, else train a byte-level BPE (or the task's character vocabulary).")
    vocab_size: int = doc(2048, "Vocabulary size of a BPE tokenizer trained on the run's corpus (byte-level: >= 259).", min=259)
    max_seq_len: int = doc(512, "Longest sequence the model sees (position embeddings).", min=8)


@dataclass
class DataConfig:
    source: str = doc("task", "task: the built-in arithmetic task; files: `paths`.", choices=("task", "files"))
    paths: list[str] = doc(None, "Text (.txt) or JSONL (.jsonl) files or directories of them.", factory=list)
    format: str = doc("auto", "auto (by extension), text or jsonl.", choices=("auto", "text", "jsonl"))
    text_field: str = doc("text", "JSONL field holding the document text.")
    bad_lines: str = doc("error", "A malformed line is an error, or skipped and counted.", choices=("error", "skip"))
    clean: bool = doc(True, "Apply the cleaning rules below.")
    strip_html: bool = doc(True, "Replace HTML tags with a space.")
    strip_urls: bool = doc(True, "Replace URLs with a space.")
    strip_special: bool = doc(True, "Replace characters that are not word, space or punctuation.")
    chunk_size: int = doc(512, "Tokens per chunk when splitting long documents.", min=2)
    chunk_overlap: int = doc(50, "Tokens shared by consecutive chunks.", min=0)
    min_chunk: int = doc(256, "Chunks shorter than this are dropped (a whole short document is kept).", min=1)
    val_fraction: float = doc(0.05, "Fraction of documents held out for evaluation loss.", min=0.0, max=0.5)
    cache_dir: str = doc("", "Tokenized-data cache; empty: `<runs-root>/.cache`.")
    tokenize_batch: int = doc(1000, "Documents per fast-tokenizer batch.", min=1)


@dataclass
class TaskConfig:
    kind: str = doc("addition", "Built-in verifiable task.", choices=("addition",))
    digits: int = doc(2, "Digits per operand.", min=1, max=6)
    n_train: int = doc(9000, "Training examples.", min=1)
    n_val: int = doc(500, "Validation examples (loss and accuracy during training).", min=1)
    n_test: int = doc(500, "Held-out test examples (final exact-match accuracy).", min=1)


@dataclass
class BatchingConfig:
    max_tokens: int = doc(8192, "Padded-token budget per micro-batch: batch_size x longest <= max_tokens.", min=1)
    mode: str = doc("bucket", "bucket: length-grouped padded batches; pack: concatenate documents into rows; fixed: a fixed batch size.",
                    choices=("bucket", "pack", "fixed"))
    batch_size: int = doc(32, "Samples per batch in `fixed` mode.", min=1)
    megabatch: int = doc(64, "Length sorting (and packing) happens within shuffled windows of megabatch x max_tokens tokens.", min=1)
    oversize: str = doc("truncate", "A sample longer than the budget is truncated, rejected, or (pack mode only) split into pieces; all counted.",
                        choices=("truncate", "reject", "split"))
    seq_len_warmup_steps: int = doc(0, "Curriculum: the longest sequence grows linearly over this many steps (0 = off).", min=0)
    seq_len_warmup_start: int = doc(64, "Longest sequence at step 0 when the warmup is on.", min=2)
    prefetch: int = doc(2, "Batches prepared ahead in a background thread.", min=0)


@dataclass
class OptimSettings:
    """Optimisation settings every training stage has: `[train]` (pretraining) and each
    post-training section (`[sft]`, `[rm]`, ...) carry their own copy, with their own defaults."""

    steps: int = doc(1000, "Optimizer steps.", min=1)
    lr: float = doc(3e-4, "Peak learning rate.", min=0.0)
    min_lr_ratio: float = doc(0.1, "Final learning rate as a fraction of `lr`.", min=0.0, max=1.0)
    schedule: str = doc("cosine", "Decay after warmup.", choices=("cosine", "linear", "constant"))
    warmup_steps: int = doc(100, "Linear warmup steps.", min=0)
    weight_decay: float = doc(0.01, "AdamW weight decay (not applied to norms and biases).", min=0.0)
    betas: list[float] = doc(None, "AdamW betas.", factory=lambda: [0.9, 0.95])
    eps: float = doc(1e-8, "AdamW epsilon.", min=0.0)
    grad_accum: int = doc(1, "Micro-batches per optimizer step (loss weighted by tokens across them).", min=1)
    clip_grad: float = doc(1.0, "Max global gradient norm (0 = off).", min=0.0)
    max_bad_steps: int = doc(5, "Non-finite losses in a row before the run fails.", min=1)


@dataclass
class TrainConfig(OptimSettings):
    """`[train]`: pretraining's optimisation settings."""


@dataclass
class EvalConfig:
    every: int = doc(100, "Evaluate every N steps (and at the end); 0 = only at the end.", min=0)
    max_batches: int = doc(20, "Validation batches per evaluation.", min=1)
    task_samples: int = doc(200, "Prompts scored by exact match for the built-in task (0 = off).", min=0)


@dataclass
class CheckpointConfig:
    every: int = doc(200, "Checkpoint every N steps (also at the end and on stop); 0 = only then.", min=0)
    keep_last: int = doc(3, "Complete checkpoints kept per stage.", min=1)


@dataclass
class MonitorConfig:
    log_every: int = doc(1, "Write a metrics event every N steps.", min=1)
    system_every_s: float = doc(2.0, "Seconds between system samples (CPU, RAM, GPU).", min=0.1)
    ema: float = doc(0.9, "EMA decay of the streaming statistics.", min=0.0, max=0.9999)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


def sections() -> dict[str, type]:
    return {f.name: f.default_factory().__class__ for f in fields(Config)}  # type: ignore[misc]
