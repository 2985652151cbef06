"""The config sections. Every field has a type, a default and a one-line doc (`doc(...)`).

Sections map one-to-one to TOML tables: `[run]`, `[model]`, `[data]`, `[task]`, `[batching]`,
`[train]`, `[eval]`, `[checkpoint]`, `[monitor]`, `[fp8]`, `[lora]` (in `adapters.py`), the post-training
stages' `[sft]`, `[rm]`, `[dpo]`, `[ppo]`, `[grpo]` (in `posttrain.py`), `[parallel]` (in `parallel.py`), `[moe]` and `[mtp]` (in `moe.py`).
Each section is its own dataclass; a stage's `lora` field holds its `[<stage>.lora]` changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from dswb.config.adapters import LoraConfig
from dswb.config.fields import OptimSettings, doc
from dswb.config.moe import MoeConfig, MtpConfig
from dswb.config.parallel import ParallelConfig
from dswb.config.posttrain import DPOConfig, GRPOConfig, PPOConfig, RMConfig, SFTConfig

STAGES = ("pretrain", "sft", "rm", "dpo", "ppo", "grpo")  # in pipeline order
LM_STAGES = ("pretrain", "sft", "dpo", "ppo", "grpo")     # stages whose result is a causal LM

__all__ = ["Config", "OptimSettings", "STAGES", "LM_STAGES", "doc", "sections"]


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
    size: str = doc("tiny", "Built-in size when `path` is empty: Llama tiny (~1M), small (~10M), base (~100M); "
                    "moe-tiny: a DeepSeek-V3 Mixture-of-Experts (MLA, 1 shared + 8 routed experts, top-2).",
                    choices=("tiny", "small", "base", "moe-tiny"))
    path: str = doc("", "Local Hugging Face model directory to start from (overrides `size`).")
    tokenizer: str = doc("", "Local tokenizer directory; empty: the model dir's, else train a byte-level BPE (or the task's character vocabulary).")
    vocab_size: int = doc(2048, "Vocabulary size of a BPE tokenizer trained on the run's corpus (byte-level: >= 259).", min=259)
    max_seq_len: int = doc(512, "Longest sequence the model sees (position embeddings).", min=8)


@dataclass
class DataConfig:
    source: str = doc("task", "task: the built-in arithmetic task; files: `paths`.", choices=("task", "files"))
    paths: list[str] = doc(None, "Files, directories or globs: .txt, .jsonl(.gz/.zst), .parquet, `datasets` save_to_disk dirs.", factory=list)
    format: str = doc("auto", "auto (by extension), text, jsonl or parquet.", choices=("auto", "text", "jsonl", "parquet"))
    text_field: str = doc("text", "JSONL field (Parquet/Arrow column) holding the document text.")
    bad_lines: str = doc("error", "A malformed record is an error, or skipped and counted.", choices=("error", "skip"))
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
    workers: int = doc(0, "Processes that clean and tokenize a file corpus (0 = one per CPU core).", min=0)
    shard_mb: float = doc(0.0, "Text per shard (MB), the unit of parallel tokenization and of resuming (0 = auto: about 4 shards per worker, 0.25 to 64 MB).", min=0.0)
    dedup: bool = doc(True, "Drop documents whose text (after cleaning) repeats an earlier one, counted in the data report.")
    near_dedup: bool = doc(False, "Also drop near-duplicate documents (MinHash/LSH over word 5-grams).")
    near_dedup_threshold: float = doc(0.8, "Jaccard similarity from which documents count as near-duplicates.", min=0.05, max=0.99)
    near_dedup_perm: int = doc(128, "MinHash permutations (more: sharper threshold, slower).", min=16, max=1024)
    tokenizer_train_chars: int = doc(200_000_000, "A BPE trained on the corpus reads at most this many characters of it.", min=1000)


@dataclass
class TaskConfig:
    kind: str = doc("addition", "Built-in verifiable task.", choices=("addition",))
    digits: int = doc(2, "Digits per operand.", min=1, max=6)
    n_train: int = doc(9000, "Training examples.", min=1)
    n_val: int = doc(500, "Validation examples (loss and accuracy during training).", min=1)
    n_test: int = doc(500, "Held-out test examples (final exact-match accuracy).", min=1)
    seed: int = doc(-1, "Seed of the train / validation / test split (-1: run.seed).", min=-1)
    think: bool = doc(False, "Worked answers: the completion writes the column sums and carries in a "
                      "<think>...</think> block before the answer (a reasoning task).")


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
class TrainConfig(OptimSettings):
    """`[train]`: pretraining's optimisation settings."""

    compile: bool = doc(False, "torch.compile the model's decoder layers (every stage; pays off on GPUs, first steps slower).")


@dataclass
class EvalConfig:
    every: int = doc(100, "Evaluate every N steps (and at the end); 0 = only at the end.", min=0)
    max_batches: int = doc(20, "Validation batches per evaluation.", min=1)
    task_samples: int = doc(200, "Prompts scored by exact match for the built-in task (0 = off).", min=0)
    tasks_include: list[str] = doc(None, "Directories of local lm-eval task YAML files for `eval_tasks`, like `data.paths` "
                                   "(relative to where dswb runs); only these are indexed when they hold every task.",
                                   factory=list)
    tasks_limit: int = doc(0, "Examples per lm-eval task for `eval_tasks` (0 = all).", min=0)
    tasks_num_fewshot: int = doc(-1, "Few-shot examples per lm-eval task (-1 = the task's default).", min=-1)
    tasks_batch_size: int = doc(8, "Batch size of lm-eval's model for `eval_tasks`.", min=1)


@dataclass
class CheckpointConfig:
    every: int = doc(200, "Checkpoint every N steps (also at the end and on stop); 0 = only then.", min=0)
    keep_last: int = doc(3, "Complete checkpoints kept per stage.", min=1)


@dataclass
class MonitorConfig:
    log_every: int = doc(1, "Write a metrics event every N steps.", min=1)
    system_every_s: float = doc(2.0, "Seconds between system samples (CPU, RAM, GPU).", min=0.1)
    ema: float = doc(0.9, "EMA decay of the streaming statistics.", min=0.0, max=0.9999)
    peak_tflops: float = doc(0.0, "Device peak TFLOP/s for the `mfu` metric; 0 = dense BF16 peak of a known GPU (none on CPU).", min=0.0)
    report_to: list[str] = doc(None, "Also write the run to these trackers: tensorboard, wandb, mlflow, trackio (see docs/sinks.md).", factory=list)
    report_dir: str = doc("", "Where the trackers write: empty = under the run directory (tensorboard/, mlflow/); "
                              "else a directory (TensorBoard: <dir>/<run id>) or an MLflow tracking URI.")


FP8_GRANULARITIES = ("tensor", "row", "tile", "block")


@dataclass
class Fp8Config:
    """`[fp8]`: FP8 linear layers (DeepSeek-V3 recipe by default) in every training stage."""

    enabled: bool = doc(False, "Train the model's linear layers in FP8 (embeddings, norms and the output head stay high precision).")
    backend: str = doc("auto", "FP8 GEMMs: auto (scaled_mm on FP8 GPUs, else emulated), emulated, scaled_mm, or torchao (extra).",
                       choices=("auto", "emulated", "scaled_mm", "torchao"))
    activations: str = doc("tile", "Scaling granularity of layer inputs: tensor, row, tile (1x128) or block (128x128).", choices=FP8_GRANULARITIES)
    weights: str = doc("block", "Scaling granularity of weights.", choices=FP8_GRANULARITIES)
    gradients: str = doc("tile", "Scaling granularity of output gradients.", choices=FP8_GRANULARITIES)
    scaling: str = doc("current", "current: scale from this tensor's amax; delayed: from the max of an amax history (per-tensor only).",
                       choices=("current", "delayed"))
    history_len: int = doc(16, "Amax history length per tensor (used by delayed scaling; kept in checkpoints).", min=1, max=1024)
    power_of_two: bool = doc(False, "Round scales up to powers of two (exact rescaling, as DeepSeek's later models).")
    e5m2_gradients: bool = doc(False, "Quantize gradients to E5M2 (more range, less precision) instead of E4M3.")
    min_dim: int = doc(64, "Linear layers with a dimension below this stay high precision.", min=1)
    multiple_of: int = doc(16, "Linear layers with a dimension not a multiple of this stay high precision (FP8 GEMMs need 16).", min=1)
    skip: list[str] = doc(None, "Layers kept in high precision: fnmatch patterns on the dotted module name (output heads, MoE routers).",
                          factory=lambda: ["lm_head", "*.lm_head", "*.gate", "*router*", "score", "*.score", "*v_head*", "*value_head*"])
    stats_every: int = doc(10, "Collect FP8 statistics (amax, scale, saturation, underflow) every N steps (0 = off).", min=0)
    saturation_alert_pct: float = doc(0.1, "Alert when a layer group clips this % of its non-zero values (0 = off).", min=0.0, max=100.0)
    underflow_alert_pct: float = doc(5.0, "Alert when a layer group flushes this % of its non-zero values to zero (0 = off).", min=0.0, max=100.0)
    shadow_every: int = doc(0, "Every N steps compare the FP8 loss of a held-out batch with high precision (0 = off; a multiple of stats_every).", min=0)
    shadow_alert_pct: float = doc(2.0, "Alert when that relative loss gap reaches this % (0 = off).", min=0.0)


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
    fp8: Fp8Config = field(default_factory=Fp8Config)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    moe: MoeConfig = field(default_factory=MoeConfig)
    mtp: MtpConfig = field(default_factory=MtpConfig)


def sections() -> dict[str, type]:
    return {f.name: f.default_factory().__class__ for f in fields(Config)}  # type: ignore[misc]
