"""Multi-token prediction (`[mtp]`, docs/mtp.md): the loss and the weight schedule by hand, the modules on
Llama, DeepSeek-V3 (MoE) and Qwen3, the training term, and on the real engine: metrics, a bitwise resume,
the saved files (`mtp.safetensors`, DeepSeek's layout), an SFT stage that picks the weights up, the bench."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

from dswb.config.moe import MtpConfig
from dswb.engine.checkpoint.mtp import MTP_FILE, load_mtp, save_pretrained_with_mtp
from dswb.engine.data.batches.collate import collate_padded
from dswb.engine.data.records.tokenizer import build_char_tokenizer
from dswb.engine.model.build import build_model
from dswb.engine.model.mtp import (MtpModules, attach, final_hidden, late_start, mtp_loss_sum, mtp_of, mtp_targets,
                                   mtp_weight)
from dswb.engine.train.mtp import MtpTraining, mtp_metrics, mtp_transforms
from dswb.engine.train.step import forward_loss_sum, forward_loss_sums, lm_backward
from dswb.errors import UserError
from dswb.rundir import read_events, read_status
from tests.helpers import run_in_process, tiny_config
from tests.test_resume_faults import StopAtStep

CPU = torch.device("cpu")


# -- formulas ---------------------------------------------------------------------------------------

def test_mtp_loss_sum_by_hand():
    labels = torch.tensor([[0, 1, 2, -100, 0]])
    d1 = torch.zeros(1, 4, 3)                                  # depth 1: position i scores labels[i + 2]
    d1[0, 1] = torch.tensor([9.0, -9.0, 5.0])                  # target labels[3] = -100: not scored
    d1[0, 2] = torch.tensor([0.0, 0.0, math.log(2)])           # target 0: -log(1 / 4)
    d1[0, 3] = torch.tensor([7.0, 7.0, 7.0])                   # no target (i + 2 = 5 is past the end)
    d2 = torch.zeros(1, 3, 3)                                  # depth 2: position i scores labels[i + 3]
    d2[0, 1] = torch.tensor([math.log(3), 0.0, 0.0])           # target 0: -log(3 / 5)
    sums, counts = mtp_loss_sum([d1, d2], labels)
    assert [int(c) for c in counts] == [2, 1]
    assert float(sums[0]) == pytest.approx(math.log(3) + math.log(4), rel=1e-6)   # position 0: uniform on 3
    assert float(sums[1]) == pytest.approx(math.log(5 / 3), rel=1e-6)


def test_packed_documents_do_not_predict_across_their_boundary():
    labels = torch.tensor([[-100, 1, 2, -100, 1]])
    positions = torch.tensor([[0, 1, 2, 0, 1]])                # a second document from position 3
    assert mtp_targets(labels, 1).tolist() == [[2, -100, 1]]
    assert mtp_targets(labels, 1, positions).tolist() == [[2, -100, -100]]
    sums, counts = mtp_loss_sum([torch.zeros(1, 4, 3)], labels, positions)
    assert int(counts[0]) == 1 and float(sums[0]) == pytest.approx(math.log(3), rel=1e-6)


def test_weight_schedule():
    assert [mtp_weight(s, 10, 0.3, 0.1, 0.7) for s in range(10)] == [0.3] * 7 + [0.1] * 3
    assert late_start(10, 0.7) == 7 and late_start(12, 0.3) == 4
    assert {mtp_weight(s, 10, 0.3, 0.1, 1.0) for s in range(10)} == {0.3}    # late_from 1: never
    assert {mtp_weight(s, 10, 0.3, 0.1, 0.0) for s in range(10)} == {0.1}    # 0: from the start


# -- modules ----------------------------------------------------------------------------------------

def _model(size: str, depth: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    model, _ = build_model(size, "", build_char_tokenizer(), 32)
    return attach(model, MtpModules(model, depth)), model.mtp


@pytest.mark.parametrize("size", ["tiny", "moe-tiny"])
def test_modules_shapes_hidden_state_and_causality(size):
    model, mtp = _model(size, depth=2)
    ids = torch.randint(3, 14, (2, 9))
    with torch.no_grad(), final_hidden(model) as hidden:
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    assert torch.equal(hidden[-1], out.hidden_states[-1])      # h^0: after the final norm
    with torch.no_grad():
        logits = mtp(model, hidden[-1], ids)
        assert [tuple(x.shape) for x in logits] == [(2, 8, 16), (2, 7, 16)]
        changed = ids.clone()
        changed[:, 6] = (ids[:, 6] + 1 - 3) % 11 + 3           # token 6 changes: depth k sees it from position 6 - k
        with final_hidden(model) as h2:
            model(input_ids=changed, use_cache=False)
        again = mtp(model, h2[-1], changed)
    for k, (a, b) in enumerate(zip(logits, again), start=1):
        assert torch.allclose(a[:, :6 - k], b[:, :6 - k], atol=1e-6), k
        assert not torch.allclose(a[:, 6 - k], b[:, 6 - k]), k
    assert mtp_of(model) is mtp and all(k.startswith("mtp.layers.") for k in model.state_dict() if "mtp" in k)
    own = {p.data_ptr() for p in mtp.parameters()}
    assert not own & {p.data_ptr() for n, p in model.named_parameters() if not n.startswith("mtp.")}
    if size == "moe-tiny":                                     # the last layer is MoE: so is the MTP block
        assert type(mtp.layers[0].block.mlp).__name__ == "DeepseekV3MoE"


def test_qwen3_block_is_built_past_the_models_layer_types():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    mtp = attach(model, MtpModules(model, 1)).mtp
    ids = torch.randint(0, 16, (1, 6))
    with torch.no_grad(), final_hidden(model) as hidden:
        model(input_ids=ids, use_cache=False)
        assert mtp(model, hidden[-1], ids)[0].shape == (1, 5, 16)


def test_training_term_is_lambda_over_depth_times_mean_times_main_targets():
    model, mtp = _model("tiny", depth=2)
    mtp.loss_weight = 0.3
    batch = collate_padded([[1, 5, 6, 7, 8, 9, 2], [1, 9, 8, 2]], pad_id=0)
    total, main = forward_loss_sums(model, batch, None, CPU)
    assert torch.equal(main, forward_loss_sum(model, batch, None, CPU))   # evaluation: the main loss only
    sums, counts = mtp.tally[0]
    means = sums / counts
    assert batch.n_target == 9 and counts.tolist() == [7, 5]   # depth k loses k targets a row
    assert float((total - main).detach()) == pytest.approx(0.3 / 2 * float(means.sum()) * batch.n_target, rel=1e-5)
    assert mtp_metrics(mtp)["mtp_loss"] == pytest.approx(float(means.mean()), rel=1e-6)
    mtp.tally.clear()
    model.zero_grad()
    reported = lm_backward(model, [batch], CPU, None)
    assert reported == pytest.approx(float(main.detach()) / batch.n_target, rel=1e-6)   # `loss`: the main loss
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mtp.parameters() if p.dim() > 1)


def test_refusals_and_lora():
    model, _ = _model("tiny")
    for mode in ("fsdp", "pipeline"):
        with pytest.raises(UserError, match=f"mode = '{mode}'"):
            MtpTraining(MtpConfig(depth=1), 10).apply(model, SimpleNamespace(parallel=SimpleNamespace(mode=mode)), CPU)
    lines = []
    config = SimpleNamespace(mtp=MtpConfig(depth=1))
    assert mtp_transforms(config, 10, None, True, lines.append) == [] and "LoRA" in lines[0]
    assert len(mtp_transforms(config, 10, None, False, lines.append)) == 1
    assert mtp_transforms(SimpleNamespace(mtp=MtpConfig(depth=0)), 10, None, False, lines.append) == []


def test_deepseek_layout_is_written_where_transformers_ignores_it(tmp_path):
    """transformers' DeepSeek-V3 ignores `model.layers.61.*` on load: a 61-layer model gets DeepSeek's layout."""
    cfg = DeepseekV3Config(vocab_size=32, hidden_size=16, intermediate_size=32, moe_intermediate_size=8,
                           num_hidden_layers=61, num_attention_heads=2, num_key_value_heads=2, n_shared_experts=1,
                           n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=61,
                           q_lora_rank=8, kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4,
                           max_position_embeddings=32, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(cfg)
    mtp = attach(model, MtpModules(model, 1)).mtp
    save_pretrained_with_mtp(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert torch.equal(f.get_tensor("model.layers.61.eh_proj.weight"), mtp.layers[0].eh_proj.weight)
    assert not any(k.startswith("mtp.") for k in keys)
    assert {f"model.layers.61.{k}" for k in ("enorm.weight", "hnorm.weight", "shared_head.norm.weight",
                                              "shared_head.head.weight", "embed_tokens.weight",
                                              "self_attn.q_a_proj.weight", "mlp.gate.weight",
                                              "mlp.experts.0.gate_proj.weight", "input_layernorm.weight")} <= keys
    assert json.loads((tmp_path / "config.json").read_text())["num_nextn_predict_layers"] == 1
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    fresh = MtpModules(loaded, 1)
    assert "depth 1 from" in load_mtp(fresh, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(mtp.state_dict().values(), fresh.state_dict().values()))


# -- the real engine --------------------------------------------------------------------------------

MTP_RUN = ["mtp.depth=1", "mtp.late_from=0.3", 'run.stages=["pretrain", "sft"]', "sft.steps=3", "sft.lr=1e-3",
           "sft.warmup_steps=1", "sft.grad_accum=1"]


def _final_tensors(run_dir: Path, stage: str) -> dict[str, torch.Tensor]:
    final = run_dir / "final" / stage
    return {**load_file(str(final / "model.safetensors")),
            **{f"mtp:{k}": v for k, v in load_file(str(final / MTP_FILE)).items()}}


def test_pretraining_with_mtp_resumes_bitwise_saves_a_plain_model_and_sft_picks_it_up(tmp_path):
    cfg = tiny_config(*MTP_RUN)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert run_in_process(cfg, straight) == 0
    assert run_in_process(cfg, interrupted, reporter=StopAtStep(interrupted, 5)) == 130
    assert read_status(interrupted / "status.json")["step"] == 5
    assert run_in_process(cfg, interrupted, resume=True) == 0

    for stage in ("pretrain", "sft"):
        a, b = _final_tensors(straight, stage), _final_tensors(interrupted, stage)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    metrics = [(e["stage"], e["step"], e["metrics"]) for e in read_events(straight / "events.jsonl", ("metrics",))]
    resumed = [(e["stage"], e["step"], e["metrics"]) for e in read_events(interrupted / "events.jsonl", ("metrics",))]
    pick = lambda rows: {(s, n): (m["loss"], m["mtp_loss"], m["mtp_weight"]) for s, n, m in rows}  # noqa: E731
    assert pick(metrics) == pick(resumed)
    weights = [m["mtp_weight"] for s, _, m in metrics if s == "pretrain"]
    assert weights == [0.3] * 4 + [0.1] * 8                    # late_from 0.3 of 12 steps: from step 5
    assert all(m["mtp_loss"] > 0 and m["mtp_loss"] != m["loss"] for _, _, m in metrics)

    logs = [e["message"] for e in read_events(straight / "events.jsonl", ("log",))]
    assert any(line.startswith("mtp: depth 1, +") and "(fresh)" in line and "then 0.1 from step 5" in line
               for line in logs)
    assert any("depth 1 from" in line and "pretrain/mtp.safetensors" in line for line in logs)    # SFT
    final = straight / "final" / "pretrain"
    assert not any("mtp" in k for k in load_file(str(final / "model.safetensors")))
    model, info = AutoModelForCausalLM.from_pretrained(final, output_loading_info=True)
    assert type(model).__name__ == "LlamaForCausalLM" and not info["missing_keys"] and not info["unexpected_keys"]
    with safe_open(str(final / MTP_FILE), "pt") as f:
        assert f.metadata()["depth"] == "1" and f.metadata()["deepseek_layout"] == "false"
    assert "mtp.safetensors" in json.loads((final / "dswb_manifest.json").read_text())["files"]


def test_moe_tiny_pretrains_with_mtp_and_saves_it_beside_the_model(tmp_path):
    run = tmp_path / "moe"
    assert run_in_process(tiny_config("model.size=moe-tiny", "mtp.depth=1", "train.steps=3", "checkpoint.every=0",
                                      "eval.task_samples=0"), run) == 0
    final = run / "final" / "pretrain"
    model, info = AutoModelForCausalLM.from_pretrained(final, output_loading_info=True)
    assert type(model).__name__ == "DeepseekV3ForCausalLM" and not info["missing_keys"] and not info["unexpected_keys"]
    # 4 layers: transformers ignores only `model.layers.61.*`, so no DeepSeek layout (it would load as unexpected)
    assert not any(k.startswith("model.layers.4.") for k in load_file(str(final / "model.safetensors")))
    assert json.loads((final / "config.json").read_text())["num_nextn_predict_layers"] == 0   # its default: 1
    with safe_open(str(final / MTP_FILE), "pt") as f:
        assert "layers.0.block.mlp.gate.weight" in f.keys() and f.metadata()["model_type"] == "deepseek_v3"


def test_bench_smoke(tmp_path):
    from dswb.bench.mtp import format_table, run

    result = run(quick=True, size="tiny", steps=2, workdir=tmp_path)
    mean = result["mean"]
    assert set(mean["plain"]["val_loss"]) == set(mean["mtp"]["val_loss"]) == {1, 2}
    assert 0.0 <= mean["mtp"]["accept_true"] <= 1.0 and 0.0 <= mean["mtp"]["accept_main"] <= 1.0
    assert result["trials"][0]["mtp"]["positions"] > 0
    assert "accept_main" in format_table(result)
