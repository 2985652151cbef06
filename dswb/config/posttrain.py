"""Config sections of the post-training stages: `[sft]`, `[rm]`, `[dpo]`, `[ppo]`, `[grpo]`.

Each section carries its own optimisation settings (`OptimSettings`, the same fields as `[train]`)
with defaults for real models (SFT: those of the blog's sketch the project started from, see the
README; TRL's for the rest, except `rm.lr`: 1e-5 here, 1e-4 in TRL's RewardConfig, a gentler start
for a scalar head on a model already fine-tuned), plus what the stage needs. The built-in task's presets set small-model
values. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

from dswb.config.fields import OptimSettings, doc

INIT_DOC = ("Model to start from: empty = the latest language model of this run (else `model.path`); "
            "a stage of this run (`sft`); `RUN:stage` (another run's final model); or a model or adapter directory.")
DATA_DOC = ("JSONL files or directories in this stage's format; empty with data.source = 'task': "
            "the built-in task's own records.")


@dataclass
class StageSettings(OptimSettings):
    """What every post-training stage has besides its optimiser: where it starts, its data."""

    betas: list[float] = doc(None, "AdamW betas (torch's and TRL's default).", factory=lambda: [0.9, 0.999])
    weight_decay: float = doc(0.0, "AdamW weight decay (not applied to norms and biases); TRL's default is 0.", min=0.0)
    init: str = doc("", INIT_DOC)
    data: list[str] = doc(None, DATA_DOC, factory=list)
    val_fraction: float = doc(0.05, "Fraction of the records held out for evaluation (files only).", min=0.0, max=0.5)
    eval_every: int = doc(-1, "Evaluate every N steps; 0 = only at the end; -1 = `eval.every`.", min=-1)
    stop_at_task_acc: float = doc(0.0, "End the stage early once an evaluation's held-out task accuracy reaches "
                                  "this (built-in task; 0 = off): lands a model in a target band.", min=0.0, max=1.0)
    max_records: int = doc(0, "Train on the first N training records only (0 = all): e.g. a cold start on a few "
                           "worked answers.", min=0)


@dataclass
class SFTConfig(StageSettings):
    """`[sft]`: supervised fine-tuning on prompt/completion or chat records."""

    steps: int = doc(5000, "Optimizer steps.", min=1)
    lr: float = doc(2e-5, "Peak learning rate.", min=0.0)
    warmup_steps: int = doc(1000, "Linear warmup steps.", min=0)
    schedule: str = doc("linear", "Decay after warmup.", choices=("cosine", "linear", "constant"))
    min_lr_ratio: float = doc(0.0, "Final learning rate as a fraction of `lr`.", min=0.0, max=1.0)
    grad_accum: int = doc(4, "Micro-batches per optimizer step (loss weighted by tokens across them).", min=1)
    weight_decay: float = doc(0.01, "AdamW weight decay (the SFT default of the blog's sketch; not applied to "
                              "norms and biases).", min=0.0)
    loss_on: str = doc("completion", "Tokens that carry the loss: the completion / assistant turns only, or all.",
                       choices=("completion", "all"))
    template: str = doc("auto", "Chat template for `messages` records: auto (the tokenizer's, else dswb's default), "
                        "default (dswb's), or a path to a Jinja file.")


@dataclass
class RMConfig(StageSettings):
    """`[rm]`: a reward model (a scalar head on the base model) trained on preference pairs."""

    steps: int = doc(1000, "Optimizer steps.", min=1)
    lr: float = doc(1e-5, "Peak learning rate.", min=0.0)
    warmup_steps: int = doc(100, "Linear warmup steps.", min=0)
    schedule: str = doc("linear", "Decay after warmup.", choices=("cosine", "linear", "constant"))
    min_lr_ratio: float = doc(0.0, "Final learning rate as a fraction of `lr`.", min=0.0, max=1.0)
    batch_size: int = doc(32, "Preference pairs per micro-batch.", min=1)
    center_coef: float = doc(0.0, "Centering term coef * mean((r_chosen + r_rejected)^2); 0.01 is typical.", min=0.0)
    near_fraction: float = doc(0.5, "Built-in task: share of rejected answers that are near misses.", min=0.0, max=1.0)


@dataclass
class DPOConfig(StageSettings):
    """`[dpo]`: direct preference optimisation against a frozen reference."""

    steps: int = doc(1000, "Optimizer steps.", min=1)
    lr: float = doc(1e-6, "Peak learning rate.", min=0.0)
    warmup_steps: int = doc(100, "Linear warmup steps.", min=0)
    schedule: str = doc("linear", "Decay after warmup.", choices=("cosine", "linear", "constant"))
    min_lr_ratio: float = doc(0.0, "Final learning rate as a fraction of `lr`.", min=0.0, max=1.0)
    batch_size: int = doc(16, "Preference pairs per micro-batch.", min=1)
    beta: float = doc(0.1, "Strength of the implicit KL to the reference.", min=1e-6)
    loss: str = doc("sigmoid", "sigmoid (DPO), ipo, or robust (rDPO: an unbiased loss under `label_smoothing` "
                    "flipped labels).", choices=("sigmoid", "ipo", "robust"))
    label_smoothing: float = doc(0.0, "Assumed share of flipped labels: conservative DPO (cDPO) with the sigmoid "
                                 "loss, rDPO's noise rate with the robust loss.", min=0.0, max=0.49)
    ref: str = doc("", "Reference model: empty = the stage's starting model; else as `init`.")
    precompute_ref: bool = doc(True, "Compute the reference log-probs once before training (no reference model "
                               "in memory while training).")
    near_fraction: float = doc(0.5, "Built-in task: share of rejected answers that are near misses.", min=0.0, max=1.0)


@dataclass
class RLSettings(StageSettings):
    """What PPO and GRPO share: reward sources, rollouts, KL to the reference, health thresholds."""

    rewards: list[str] = doc(None, "Reward sources: `exact_match` (the answer equals the record's `answer`), "
                             "`format` (think/answer format), `math` (the answer equals `answer` mathematically, "
                             "math-verify), `length` (overlong shaping), `rm` (this run's reward model), `rm:DIR` "
                             "(a reward-model directory), `module:function` or `file.py:function`.",
                             factory=list)
    reward_weights: list[float] = doc(None, "Weight of each reward source (empty: 1.0 each).", factory=list)
    rewards_workers: int = doc(1, "Worker processes (spawned) that run reward functions and the format / math "
                               "rules under `rewards_timeout_s`; 0 = in the trainer, with no time limit.", min=0)
    rewards_timeout_s: float = doc(60.0, "Time limit of one reward call in a worker: a call that hangs, raises or "
                                   "crashes leaves its completions unscorable (left out of the update).", min=0.1)
    think_tags: list[str] = doc(None, "Opening and closing tags of the thinking (format reward, answer "
                                "extraction, reasoning metrics).", factory=lambda: ["<think>", "</think>"])
    format_regex: str = doc("", "The format reward: a completion must also match this regex in full (DOTALL); "
                            "empty = the tags rule alone.")
    length_reward: str = doc("overlong", "The `length` source: overlong (DAPO's soft overlong punishment) or "
                             "linear (-length / max_new_tokens).", choices=("overlong", "linear"))
    overlong_buffer: int = doc(0, "DAPO's buffer: the last N tokens before max_new_tokens where the length reward "
                               "falls linearly from 0 to -1 (0 = a quarter of max_new_tokens).", min=0)
    prompts_per_step: int = doc(16, "Prompts sampled per iteration.", min=1)
    max_new_tokens: int = doc(64, "Longest completion; one that reaches it without eos is truncated.", min=1)
    temperature: float = doc(1.0, "Sampling temperature (log-probs are taken at the same temperature).", min=0.0)
    top_p: float = doc(1.0, "Nucleus sampling: keep the smallest set of tokens with this much probability.",
                       min=0.01, max=1.0)
    minibatches: int = doc(1, "Optimizer steps per pass over one rollout batch.", min=1)
    kl_estimator: str = doc("k1", "Per-token KL estimator to the reference: k1 (log ratio) or k3.", choices=("k1", "k3"))
    samples_every: int = doc(10, "Record a few rollouts as a `samples` event every N iterations (0 = off).", min=0)
    rollout_batch: int = doc(0, "Rows generated per forward batch (0 = all at once).", min=0)
    alert_kl: float = doc(1.0, "Alert when the mean per-token KL exceeds this.", min=0.0)
    alert_clip_ratio: float = doc(0.3, "Alert when the clipped share of tokens exceeds this.", min=0.0, max=1.0)
    alert_approx_kl: float = doc(0.1, "Alert when approx-KL between old and new policy exceeds this.", min=0.0)
    alert_ratio_max: float = doc(10.0, "Alert when an importance ratio exceeds this.", min=1.0)


@dataclass
class PPOConfig(RLSettings):
    """`[ppo]`: PPO with a value model, GAE and a per-token KL penalty (TRL's defaults)."""

    steps: int = doc(200, "Iterations (rollout + updates).", min=1)
    lr: float = doc(3e-6, "Peak learning rate (policy and value model).", min=0.0)
    warmup_steps: int = doc(0, "Linear warmup iterations.", min=0)
    schedule: str = doc("linear", "Decay after warmup.", choices=("cosine", "linear", "constant"))
    min_lr_ratio: float = doc(0.0, "Final learning rate as a fraction of `lr`.", min=0.0, max=1.0)
    temperature: float = doc(0.7, "Sampling temperature (log-probs are taken at the same temperature).", min=0.0)
    epochs: int = doc(4, "PPO epochs over each rollout batch.", min=1)
    kl_coef: float = doc(0.05, "Per-token KL penalty coefficient.", min=0.0)
    cliprange: float = doc(0.2, "Policy ratio clip range.", min=0.0)
    cliprange_value: float = doc(0.2, "Value clip range around the old values.", min=0.0)
    vf_coef: float = doc(0.1, "Weight of the value loss.", min=0.0)
    gamma: float = doc(1.0, "Discount.", min=0.0, max=1.0)
    lam: float = doc(0.95, "GAE lambda.", min=0.0, max=1.0)
    whiten_advantages: bool = doc(True, "Normalise advantages over the batch (masked mean/std).")
    missing_eos_penalty: float = doc(0.0, "Subtracted from the score of completions that never end.", min=0.0)
    value_init: str = doc("", "Value model: empty = this run's reward model if it has one, else the policy; "
                          "else as `init` (a reward-model or causal-LM directory).")


@dataclass
class GRPOConfig(RLSettings):
    """`[grpo]`: group-relative policy optimisation (and RLOO / REINFORCE++ advantages)."""

    steps: int = doc(200, "Iterations (rollout + updates).", min=1)
    lr: float = doc(1e-6, "Peak learning rate.", min=0.0)
    warmup_steps: int = doc(0, "Linear warmup iterations.", min=0)
    schedule: str = doc("constant", "Decay after warmup.", choices=("cosine", "linear", "constant"))
    min_lr_ratio: float = doc(0.0, "Final learning rate as a fraction of `lr`.", min=0.0, max=1.0)
    kl_estimator: str = doc("k3", "Per-token KL estimator to the reference: k1 (log ratio) or k3.", choices=("k1", "k3"))
    group_size: int = doc(8, "Completions sampled per prompt (G).", min=2)
    epsilon: float = doc(0.2, "Lower clip of the ratio (1 - epsilon).", min=0.0)
    epsilon_high: float = doc(0.2, "Upper clip of the ratio (1 + epsilon_high); DAPO uses 0.28.", min=0.0)
    beta: float = doc(0.0, "KL penalty to the reference (0: no reference model is loaded).", min=0.0)
    num_iterations: int = doc(1, "Passes over each rollout batch (> 1 reuses it with importance ratios).", min=1)
    loss_type: str = doc("dapo", "Loss aggregation: grpo (per sequence), dapo / bnpo (per token), dr_grpo "
                         "(constant normaliser).", choices=("grpo", "dapo", "bnpo", "dr_grpo"))
    scale_rewards: str = doc("group", "Divide advantages by the reward std of the group, of the batch, or not at all.",
                             choices=("group", "batch", "none"))
    advantage: str = doc("grpo", "Advantage estimator: grpo (group-normalised), rloo (leave-one-out) or "
                         "reinforce_pp (REINFORCE++ with a group baseline, batch-normalised).",
                         choices=("grpo", "rloo", "reinforce_pp"))
    mask_truncated: bool = doc(False, "Exclude completions that hit max_new_tokens from the loss.")
    drop_zero_variance: bool = doc(False, "Leave groups without signal (all rewards equal, or fewer than 2 scorable) "
                                   "out of the loss (their KL term too); they still count in the sequence "
                                   "normaliser.")
    dynamic_sampling: bool = doc(False, "DAPO's dynamic sampling: keep generating until the batch holds "
                                 "`prompts_per_step` groups whose raw rewards vary.")
    dynamic_sampling_tries: int = doc(4, "Most generation rounds per iteration with dynamic_sampling (then the "
                                      "iteration trains on the groups it has).", min=1)


# -- cross-field checks (called by `dswb.config.load.validate`) ---------------------------------

RULE_SOURCES = ("exact_match", "format", "math", "length")


def parse_reward_source(spec: str) -> tuple[str, str]:
    """A built-in rule (`exact_match`, `format`, `math`, `length`) -> ("rule", name); `rm` -> ("rm", "");
    `rm:DIR` -> ("rm", DIR); `module:function` / `path/file.py:function` -> ("python", spec).
    Raises ValueError otherwise."""
    spec = spec.strip()
    if spec in RULE_SOURCES:
        return "rule", spec
    if spec == "rm":
        return "rm", ""
    if spec.startswith("rm:"):
        if not spec[3:].strip():
            raise ValueError("`rm:` needs a directory after the colon")
        return "rm", spec[3:].strip()
    module, sep, function = spec.rpartition(":")
    if sep and module and function.isidentifier():
        return "python", spec
    raise ValueError("expected exact_match, format, math, length, rm, rm:DIR, module:function or file.py:function")


def check_stage_order(stages: list[str], order: tuple[str, ...]) -> str | None:
    """An error message when `stages` repeats a stage or breaks the pipeline order, else None."""
    seen = set()
    for stage in stages:
        if stage in seen:
            return f"'{stage}' appears twice"
        seen.add(stage)
    positions = [order.index(s) for s in stages if s in order]
    if positions != sorted(positions):
        return f"stages must keep the pipeline order {' -> '.join(order)}"
    return None


def validate_posttrain(config, where: str) -> None:
    """Checks of the post-training sections that involve more than one field (raise `UserError`)."""
    from dswb.errors import UserError

    stages = config.run.stages
    for name in ("sft", "rm", "dpo", "ppo", "grpo"):
        section = getattr(config, name)
        if name not in stages:
            continue
        if len(section.betas) != 2 or not all(0 <= b < 1 for b in section.betas):
            raise UserError(f"{where}: {name}.betas: expected two numbers in [0, 1), got {section.betas}")
        if section.data == [] and config.data.source != "task":
            raise UserError(f"{where}: {name}.data: give this stage's JSONL files (data.source is not 'task')")
    if "dpo" in stages and config.dpo.loss == "ipo" and config.dpo.label_smoothing > 0:
        raise UserError(f"{where}: dpo.label_smoothing applies to the sigmoid and robust losses, not ipo")
    for name in ("ppo", "grpo"):
        if name not in stages:
            continue
        section = getattr(config, name)
        if not section.rewards:
            raise UserError(f"{where}: {name}.rewards: {name.upper()} needs at least one reward source, "
                            f"e.g. rewards = [\"exact_match\"] (or rm, rm:DIR, module:function)")
        for i, spec in enumerate(section.rewards):
            try:
                kind, arg = parse_reward_source(spec)
            except ValueError as exc:
                raise UserError(f"{where}: {name}.rewards[{i}]: {spec!r}: {exc}") from None
            if kind == "rm" and not arg and "rm" not in stages[:stages.index(name)]:
                raise UserError(f"{where}: {name}.rewards[{i}]: 'rm' is this run's reward model, but the rm "
                                f"stage does not run before {name} (add it to run.stages or use rm:DIR)")
            if kind == "rule" and arg == "exact_match" and config.data.source != "task":
                raise UserError(f"{where}: {name}.rewards[{i}]: exact_match needs the built-in task "
                                f"(data.source = 'task') or records with an `answer` field: use a function")
        if section.reward_weights and len(section.reward_weights) != len(section.rewards):
            raise UserError(f"{where}: {name}.reward_weights: {len(section.reward_weights)} weights for "
                            f"{len(section.rewards)} reward sources")
        if len(section.think_tags) != 2 or not all(t.strip() for t in section.think_tags) \
                or section.think_tags[0] == section.think_tags[1]:
            raise UserError(f"{where}: {name}.think_tags: expected two different non-empty tags "
                            f"(opening, closing), got {section.think_tags}")
        if section.format_regex:
            import re
            try:
                re.compile(section.format_regex)
            except re.error as exc:
                raise UserError(f"{where}: {name}.format_regex: not a regular expression: {exc}") from None
        if section.temperature == 0 and name == "grpo":
            raise UserError(f"{where}: grpo.temperature: 0 (greedy) makes every completion of a group the same: "
                            f"no signal")
    if "grpo" in stages and config.grpo.epsilon_high < config.grpo.epsilon:
        raise UserError(f"{where}: grpo.epsilon_high ({config.grpo.epsilon_high}) must be >= grpo.epsilon "
                        f"({config.grpo.epsilon})")
