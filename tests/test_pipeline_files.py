"""The pipeline table for stages trained on files: SFT shows its validation loss, DPO its reward
accuracy on held-out pairs, PPO / GRPO the mean reward of greedy completions of held-out prompts
(`val_reward`, `dswb.engine.eval.reward`); a run on the built-in task keeps its table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dswb.cli.pipeline_view import print_pipeline
from dswb.config import load_config
from dswb.engine.eval.reward import held_out_prompts, held_out_reward, mean_reward
from dswb.engine.rl.rewards import RewardScores
from dswb.rundir import RunPaths, read_events
from dswb.rundir.pipeline import COLUMNS, pick, pipeline_from_events, pipeline_rows, shown_columns
from tests.helpers import run_in_process
from tests.test_lora_local import local_model

DEMO = Path(__file__).parent / "fixtures" / "runs" / "20250101-170000-pipeline"
DEMO_TABLE = """\
pipeline
stage      state        steps   test_acc   best task_acc   rm pair_acc
──────────────────────────────────────────────────────────────────────
pretrain   finished   120/120      23.8%           25.0%             -
sft        finished     60/60      53.8%           55.0%             -
rm         finished     40/40          -               -         95.0%
ppo        finished     60/60      68.8%           70.0%             -
grpo       finished     60/60      84.8%           86.0%             -"""
# the reward of the engine test: a function of the prompt alone, so its held-out mean is known
REWARD = "def by_prompt(prompts, completions, **kwargs):\n    return [float(int(p.split('+')[0]) % 3) for p in prompts]\n"


def files_events() -> list[dict]:
    """A finished files-based SFT -> DPO -> GRPO run's events (two evaluations per stage)."""
    events: list[dict] = [{"kind": "run_start", "config": {"run": {"stages": ["sft", "dpo", "grpo"]}}}]
    evals = {"sft": [{"val_loss": 2.5, "val_ppl": 12.2}, {"val_loss": 1.25, "val_ppl": 3.5}],
             "dpo": [{"val_rewards/accuracies": 0.5}, {"val_rewards/accuracies": 0.75}],
             "grpo": [{"val_reward": 0.25}, {"val_reward": 0.625}]}
    for stage, metrics in evals.items():
        events.append({"kind": "stage_start", "stage": stage, "step": 0, "total_steps": 4})
        for step, m in zip((2, 4), metrics):
            events.append({"kind": "metrics", "stage": stage, "step": step, "metrics": {"loss": 1.0}})
            events.append({"kind": "eval", "stage": stage, "step": step, "metrics": m})
        events.append({"kind": "stage_end", "stage": stage, "step": 4, "state": "finished"})
    return events


def test_files_stages_show_their_held_out_number():
    rows = pipeline_from_events(files_events())
    by = {r.stage: r for r in rows}
    assert by["sft"].val_loss == 1.25 and by["dpo"].pref_acc == 0.75 and by["grpo"].val_reward == 0.625
    assert [r.held_out() for r in rows] == ["loss 1.250", "pref 75.0%", "reward 0.625"]
    columns = shown_columns(rows)
    assert pick(COLUMNS, columns) == ("stage", "state", "steps", "held-out")   # no empty accuracy columns
    assert pick(by["grpo"].cells(), columns) == ("grpo", "finished", "4/4", "reward 0.625")


def test_a_stage_with_an_accuracy_keeps_it_and_the_held_out_column_only_fills_the_others():
    facts = {"pretrain": {"state": "finished", "test_acc": 0.5, "val_loss": 1.0},
             "sft": {"state": "finished", "val_loss": 2.0}, "rm": {"state": "finished", "pair_acc": 0.9},
             "grpo": {"state": "running", "val_reward": math.nan}}
    rows = pipeline_rows(["pretrain", "sft", "rm", "grpo"], facts)
    assert [r.held_out() for r in rows] == ["-", "loss 2.000", "-", "-"]
    assert pick(COLUMNS, shown_columns(rows)) == ("stage", "state", "steps", "test_acc", "rm pair_acc", "held-out")
    assert shown_columns(rows[2:]) == [0, 1, 2, 3, 4, 5]   # nothing held-out: the classic columns
    assert shown_columns([]) == [0, 1, 2, 3, 4, 5]


def test_the_task_demo_table_is_unchanged(capsys):
    rows = print_pipeline(RunPaths(DEMO))
    assert all(r.held_out() == "-" for r in rows)
    assert "\n".join(line.rstrip() for line in capsys.readouterr().out.splitlines()) == DEMO_TABLE


def test_the_printed_files_table_fits_80_columns(tmp_path, capsys):
    paths = RunPaths(tmp_path)
    paths.events.write_text("".join(json.dumps(e) + "\n" for e in files_events()))
    print_pipeline(paths)
    out = capsys.readouterr().out
    assert "loss 1.250" in out and "pref 75.0%" in out and "reward 0.625" in out and "held-out" in out
    assert "test_acc" not in out and max(len(line.rstrip()) for line in out.splitlines()) <= 80


class FakeSampler:
    """Two-token completions `"a<i>"` of prompt i; records how it was asked to sample."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def generate(self, prompts, **kwargs):
        self.calls.append({"prompts": prompts, **kwargs})
        n = len(prompts)
        return SimpleNamespace(completion_ids=torch.tensor([[7, i] for i in range(n)]), lengths=torch.full((n,), 2),
                               ended=torch.ones(n, dtype=torch.bool), prompt_index=torch.arange(n))


class FakeTokenizer:
    def batch_decode(self, ids, skip_special_tokens=True):
        return [f"a{row[1]}" for row in ids]


def test_held_out_reward_is_the_mean_of_the_scorable_greedy_completions():
    records = [SimpleNamespace(prompt=f"p{i}", fields={"answer": str(i)}) for i in range(5)]
    held = held_out_prompts(records, [[1, i] for i in range(5)], [False] * 5, cap=4)
    assert [r.prompt for r in held.records] == ["p0", "p1", "p2", "p3"] and len(held.prompt_ids) == 4
    seen = []

    def reward(inputs):
        seen.append(inputs)
        values = [1.0, 0.0, math.nan, 0.5]   # the third completion is unscorable: left out
        return RewardScores(total=torch.tensor(values), per_source={"f": torch.tensor(values)})

    sampler = FakeSampler()
    value = held_out_reward(sampler, reward, FakeTokenizer(), held, max_new_tokens=3, stop_ids=[2])
    assert value == pytest.approx(0.5)
    call = sampler.calls[0]
    assert call["temperature"] == 0.0 and call["samples_per_prompt"] == 1 and call["max_new_tokens"] == 3
    assert seen[0].completions == ["a0", "a1", "a2", "a3"] and seen[0].columns == {"answer": ["0", "1", "2", "3"]}
    assert mean_reward(torch.tensor([math.nan, math.nan])) is None
    assert held_out_reward(sampler, reward, FakeTokenizer(), held_out_prompts([], [], []), max_new_tokens=3,
                           stop_ids=[2]) is None


@pytest.mark.timeout(300)
def test_a_files_based_sft_dpo_grpo_run_shows_loss_accuracy_and_held_out_reward(tmp_path, capsys):
    from dswb.engine.data.records.posttrain import read_prompts, split_records

    model = local_model(tmp_path / "my-model")
    sums = [(a, b) for a in range(10, 30) for b in (1, 2)]
    write = lambda name, rows: (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))  # noqa: E731
    write("sft.jsonl", [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a, b in sums])
    write("prefs.jsonl", [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a, b in sums])
    write("prompts.jsonl", [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in sums])
    (tmp_path / "my_rewards.py").write_text(REWARD)
    config = load_config(None, [
        'run.stages=["sft", "dpo", "grpo"]', "data.source=files", f'model.path="{model}"', "model.max_seq_len=32",
        f'sft.data=["{tmp_path / "sft.jsonl"}"]', f'dpo.data=["{tmp_path / "prefs.jsonl"}"]',
        f'grpo.data=["{tmp_path / "prompts.jsonl"}"]', f'grpo.rewards=["{tmp_path / "my_rewards.py"}:by_prompt"]',
        "sft.val_fraction=0.2", "dpo.val_fraction=0.2", "grpo.val_fraction=0.25", "run.threads=1",
        "sft.steps=2", "sft.grad_accum=1", "sft.warmup_steps=1", "dpo.steps=2", "dpo.grad_accum=1",
        "dpo.batch_size=4", "dpo.warmup_steps=1", "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=2",
        "grpo.max_new_tokens=3", "grpo.warmup_steps=1", "batching.max_tokens=512", "eval.every=1",
        "eval.max_batches=1", "checkpoint.every=0"])
    run = tmp_path / "run"
    assert run_in_process(config, run) == 0
    evals = [e for e in read_events(run / "events.jsonl", ("eval",))]
    grpo = [e["metrics"]["val_reward"] for e in evals if e["stage"] == "grpo"]
    assert len(grpo) == 2   # at step 1 (periodic) and at the end
    held = split_records(read_prompts([str(tmp_path / "prompts.jsonl")], "grpo.data"), 0.25, config.run.seed)[1]
    expected = sum(float(int(r.prompt.split("+")[0]) % 3) for r in held) / len(held)
    assert len(held) == 10 and grpo == [pytest.approx(expected)] * 2

    capsys.readouterr()
    rows = print_pipeline(RunPaths(run), "finished")
    by = {r.stage: r for r in rows}
    last = {}
    for e in evals:
        last.setdefault(e["stage"], {}).update(e["metrics"])
    assert by["sft"].val_loss == last["sft"]["val_loss"] and by["dpo"].pref_acc == last["dpo"]["val_rewards/accuracies"]
    assert by["grpo"].val_reward == grpo[-1]
    assert all(r.test_acc is None and r.best_task_acc is None for r in rows)
    out = capsys.readouterr().out
    for cell in (f"loss {by['sft'].val_loss:.3f}", f"pref {100 * by['dpo'].pref_acc:.1f}%",
                 f"reward {by['grpo'].val_reward:.3f}"):
        assert cell in out, out
