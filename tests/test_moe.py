"""Mixture-of-Experts balancing and routing statistics (dswb.engine.moe) on hand values and real models:
the formulas, the bias acting on the choice only, the router losses reaching the gradients through the
hooks, statistics equal to hand counts, a run that balances, resumes bitwise and saves its bias."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, MixtralConfig, MixtralForCausalLM

from dswb.engine.moe.balance import aux_loss, bias_update, routing_probs, seq_aux_loss, z_loss
from dswb.engine.moe.hooks import LossWeights, RouterHooks
from dswb.engine.moe.monitor import MoeMonitor, plan_moe
from dswb.engine.moe.routers import find_routers
from dswb.engine.moe.share import loss_share
from dswb.engine.moe.stats import DeadTracker, collapsed_expert, imbalance, imbalance_rising
from dswb.errors import UserError
from dswb.rundir import read_events
from tests.helpers import run_in_process, tiny_config
from tests.test_resume_faults import StopAtStep

MOE = ["model.size=moe-tiny", "moe.balance=aux_free", "moe.bias_update_speed=0.01", "moe.stats_every=2"]


def moe_tiny(seed: int = 0):
    from dswb.engine.model.build import moe_tiny_config
    from transformers import DeepseekV3ForCausalLM

    torch.manual_seed(seed)
    return DeepseekV3ForCausalLM(moe_tiny_config(64, 32, 1, 2, 0))


def tiny_mixtral():
    torch.manual_seed(0)
    return MixtralForCausalLM(MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                            num_experts_per_tok=2, max_position_embeddings=64))


# ---- formulas on hand values ------------------------------------------------------------------------

def test_bias_update_moves_towards_the_mean_load():
    new = bias_update(torch.tensor([0.0, 0.5, 0.0, -0.5]), torch.tensor([10, 2, 6, 6]), 0.1)
    assert torch.allclose(new, torch.tensor([-0.1, 0.6, 0.0, -0.5]))


def test_aux_loss_on_hand_values_and_as_transformers_computes_it():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    chosen = torch.tensor([[0, 1], [1, 2]])
    # f = [1/2, 2/2, 1/2], P = [0.4, 0.4, 0.2]: 3 * (0.2 + 0.4 + 0.1)
    assert float(aux_loss(probs, chosen)) == pytest.approx(2.1)
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    torch.manual_seed(1)
    logits = torch.randn(40, 8)
    top = torch.topk(torch.softmax(logits, -1), 2, dim=-1).indices
    assert float(aux_loss(routing_probs(logits, "softmax"), top)) == pytest.approx(
        float(load_balancing_loss_func((logits,), 8, 2)), rel=1e-6)


def test_padding_is_left_out_of_the_aux_loss():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.0, 0.0, 1.0]])
    chosen = torch.tensor([[0, 1], [1, 2], [2, 0]])
    assert float(aux_loss(probs, chosen, torch.tensor([True, True, False]))) == pytest.approx(2.1)


def test_sequence_wise_loss_on_hand_values():
    # two sequences of two tokens, 4 experts, top-1; sequence 2's second token is padding
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.0, 0.0], [0.25] * 4])
    chosen = torch.tensor([[0], [3], [1], [2]])
    mask = torch.tensor([True, True, True, False])
    # seq 1: f = 4/(1*2) * [1, 0, 0, 1] = [2, 0, 0, 2], P = [0.25, 0.25, 0.25, 0.25] -> 1.0
    # seq 2: f = 4/(1*1) * [0, 1, 0, 0], P = [0.5, 0.5, 0, 0] -> 2.0
    assert float(seq_aux_loss(probs, chosen, batch=2, mask=mask)) == pytest.approx(1.5)


def test_z_loss_on_hand_values():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert float(z_loss(logits)) == pytest.approx((math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2)


def test_statistics_helpers():
    assert imbalance([30, 10, 10, 10]) == pytest.approx(2.0) and imbalance([0, 0]) == 1.0
    assert collapsed_expert([90, 5, 5, 0], tokens=50, share=0.8) == 0      # top-2: 100 assignments, 50 tokens
    assert collapsed_expert([30, 30, 20, 20], tokens=50, share=0.8) is None
    assert imbalance_rising([1.1, 1.1, 1.9, 2.0], window=2, rise=0.5)
    assert not imbalance_rising([1.0, 1.0, 1.4, 1.4], window=2, rise=0.3)   # below the floor
    dead = DeadTracker()
    for load in ([1, 0, 2], [1, 0, 0], [0, 0, 1]):
        dead.update(3, load)
    assert dead.dead(3, after=2) == [1] and dead.dead(3, after=3) == [1] and dead.dead(3, after=4) == []


# ---- the bias and the hooks on real routers --------------------------------------------------------------

def test_the_bias_changes_which_experts_are_chosen_never_the_gate_weights():
    router = find_routers(moe_tiny())[0].module
    hidden = torch.randn(50, 64)
    with torch.no_grad():
        logits, gates, chosen = router(hidden)
        router.e_score_correction_bias[5] = 10.0
        logits_b, gates_b, chosen_b = router(hidden)
    assert torch.equal(logits, logits_b)
    assert (chosen_b == 5).any(dim=1).all() and not torch.equal(chosen, chosen_b)
    scores = torch.sigmoid(logits_b)
    expected = scores.gather(1, chosen_b)
    assert torch.allclose(gates_b, expected / expected.sum(dim=1, keepdim=True))
    assert gates_b.max() < 1.0      # expert 5's weight is its unbiased score's share, not the bias


def test_statistics_equal_counts_by_hand_with_padding_left_out():
    model = moe_tiny()
    routers = find_routers(model)
    seen = []
    handles = [r.module.register_forward_hook(lambda m, a, out: seen.append(out[2].detach().clone()))
               for r in routers]
    hooks = RouterHooks(model, routers, LossWeights(), collect=True)
    ids = torch.randint(3, 64, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    model.train()
    model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    keep = mask.reshape(-1).bool()
    assert int(keep.sum()) == 18
    for counts, chosen in zip(hooks.counts, seen):
        by_hand = torch.zeros(8, dtype=torch.int64)
        for token in chosen[keep]:
            for e in token:
                by_hand[e] += 1
        assert torch.equal(counts.load, by_hand) and torch.equal(counts.step_load, by_hand)
        assert float(counts.stats[0]) == 18
    with torch.no_grad():                   # evaluation, rollouts: not counted
        model(input_ids=ids, attention_mask=mask)
    assert int(hooks.counts[0].load.sum()) == 36
    hooks.remove()
    for h in handles:
        h.remove()


def test_router_losses_reach_the_gradients_through_the_hooks():
    """The gradient with the hooks' aux + sequence-wise + z losses equals the gradient of the main loss
    plus those losses written out by hand, weighted by the micro-batch's share of the step."""
    ids = torch.randint(3, 64, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    weights = LossWeights(aux=0.1, seq_aux=0.05, z=0.01)

    def main_loss(model):
        return model(input_ids=ids, attention_mask=mask).logits.float().pow(2).mean()

    hooked = moe_tiny()
    routers = find_routers(hooked)
    hooks = RouterHooks(hooked, routers, weights, collect=True)
    hooked.train()
    with loss_share(0.25):
        main_loss(hooked).backward()

    plain = moe_tiny()
    outputs = []
    for r in find_routers(plain):
        r.module.register_forward_hook(lambda m, a, out: outputs.append(out))
    plain.train()
    loss = main_loss(plain)
    keep = mask.reshape(-1).bool()
    extra = 0.0
    for logits, _, chosen in outputs:
        probs = routing_probs(logits, "sigmoid")
        extra = extra + (weights.aux * aux_loss(probs, chosen, keep) + weights.seq_aux * seq_aux_loss(probs, chosen, 2, keep)
                         + weights.z * z_loss(logits, keep))
    (loss + 0.25 * extra / len(outputs)).backward()
    for (name, a), b in zip(hooked.named_parameters(), plain.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-7, rtol=1e-5), name
    gate = routers[0].module.weight.grad
    assert gate is not None and float(gate.abs().sum()) > 0
    hooks.remove()


def test_aux_free_is_refused_where_the_router_has_no_bias_and_auto_picks_aux_loss():
    cfg = tiny_config("moe.balance=aux_free").moe
    with pytest.raises(UserError, match="aux_free: mixtral routers have no correction bias"):
        plan_moe(tiny_mixtral(), cfg)
    plan = plan_moe(tiny_mixtral(), tiny_config().moe)
    assert plan.balance == "aux_loss" and plan.weights.aux == pytest.approx(0.001)   # Mixtral's router_aux_loss_coef
    assert plan_moe(moe_tiny(), tiny_config().moe).balance == "aux_free"
    from dswb.engine.model.build import llama_config
    from transformers import LlamaForCausalLM
    assert plan_moe(LlamaForCausalLM(llama_config("tiny", 64, 32, 1, 2, 0)), cfg) is None


class Recorder:
    def __init__(self):
        self.events, self.alerts = [], []

    def emit(self, kind, stage, step, **fields):
        self.events.append({"kind": kind, "step": step, **fields})

    def alert(self, stage, step, code, message, explain, level="warning"):
        self.alerts.append((step, code, message))


def test_monitor_alerts_once_on_collapse_and_dead_experts():
    """A router forced onto two experts: collapse and dead experts are each raised once while they last."""
    model = moe_tiny()
    for r in find_routers(model):
        r.bias.copy_(torch.tensor([5.0, 5.0] + [0.0] * 6))
    cfg = tiny_config("moe.balance=none", "moe.stats_every=1", "moe.dead_after=2", "moe.collapse_share=0.9").moe
    rec = Recorder()
    monitor = MoeMonitor(model, plan_moe(model, cfg), cfg, rec, "pretrain")
    model.train()
    for step in range(1, 5):
        model(input_ids=torch.randint(3, 64, (2, 8))).logits.sum().backward()
        monitor.after_step(step)
    moe = [e for e in rec.events if e["kind"] == "moe"]
    assert [e["step"] for e in moe] == [1, 2, 3, 4]
    layer = moe[-1]["layers"][0]
    assert layer["load"][:2] == [16, 16] and sum(layer["load"][2:]) == 0 and layer["imbalance"] == pytest.approx(4.0)
    assert layer["dead"] == [2, 3, 4, 5, 6, 7]
    codes = [code for _, code, _ in rec.alerts]
    assert codes.count("moe_collapse") == 1 and codes.count("moe_dead_experts") == 1
    assert "layer 1 expert" in next(m for _, c, m in rec.alerts if c == "moe_collapse")
    assert monitor.metrics()["moe/dead"] == 18.0
    # hovering at the threshold raises nothing new; clear for imbalance_window (5) points, it raises again
    def collapse(present, step):
        monitor._raise(step, "moe_collapse", frozenset({(1, 0)} if present else ()), "", lambda s: "again")
    for step, present in enumerate([True, False, True, False, False, False, False, False, True], start=5):
        collapse(present, step)
    assert [(step, code) for step, code, _ in rec.alerts if code == "moe_collapse"][1:] == [(13, "moe_collapse")]


# ---- real runs -----------------------------------------------------------------------------------------

def test_aux_free_run_with_mtp_balances_resumes_bitwise_and_saves_its_bias(tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_config(*MOE, "moe.seq_aux_alpha=0.001", "mtp.depth=1")   # MTP's block is an MoE layer too
    straight = tmp_path / "straight"
    assert run_in_process(cfg, straight) == 0
    interrupted = tmp_path / "interrupted"
    assert run_in_process(cfg, interrupted, reporter=StopAtStep(interrupted, 5)) == 130
    assert run_in_process(cfg, interrupted, resume=True) == 0
    a = load_file(str(straight / "final" / "pretrain" / "model.safetensors"))
    b = load_file(str(interrupted / "final" / "pretrain" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bias = a["model.layers.1.mlp.gate.e_score_correction_bias"]
    assert float(bias.abs().max()) > 0

    events = read_events(straight / "events.jsonl", ("moe", "metrics", "log"))
    moe = [e for e in events if e["kind"] == "moe"]
    assert [e["step"] for e in moe] == [2, 4, 6, 8, 10, 12]
    assert all([x["layer"] for x in e["layers"]] == [1, 2, 3, 4] and e["balance"] == "aux_free" for e in moe)
    mtp = load_file(str(straight / "final" / "pretrain" / "mtp.safetensors"))
    mtp_bias = [k for k in mtp if k.endswith("e_score_correction_bias")]
    assert mtp_bias and float(mtp[mtp_bias[0]].abs().max()) > 0     # the MTP block's router is balanced too
    resumed = load_file(str(interrupted / "final" / "pretrain" / "mtp.safetensors"))
    assert mtp.keys() == resumed.keys() and all(torch.equal(mtp[k], resumed[k]) for k in mtp)
    assert moe[-1]["layers"][0]["bias"] == pytest.approx(bias.tolist(), abs=1e-6)
    for e in moe:   # every token counted K times
        assert all(sum(x["load"]) == 2 * x["tokens"] > 0 for x in e["layers"])
    logged = [e["metrics"] for e in events if e["kind"] == "metrics" and "moe/imbalance" in e["metrics"]]
    assert logged and all("moe/seq_aux_loss" in m and "moe/hook_ms" in m for m in logged)
    assert any("moe: deepseek_v3, 4 MoE layers x 8 routed experts, top-2; balance aux_free" in e.get("message", "")
               for e in events if e["kind"] == "log")

    model = AutoModelForCausalLM.from_pretrained(straight / "final" / "pretrain", local_files_only=True)
    assert torch.equal(model.model.layers[1].mlp.gate.e_score_correction_bias, bias)
    info = json.loads((straight / "final" / "pretrain" / "config.json").read_text())
    assert info["model_type"] == "deepseek_v3"


def test_every_stage_balances_and_watches_an_moe_model(tmp_path):
    """pretrain -> SFT -> RM -> DPO -> PPO -> GRPO on moe-tiny: `moe` events in every stage, and the
    aux-free bias moves in every stage (the reward model too) and is kept in its final model."""
    from safetensors.torch import load_file

    from tests.test_posttrain_stages import STAGE_SETTINGS

    stages = ["pretrain", "sft", "rm", "dpo", "ppo", "grpo"]
    overrides = [f"run.stages={json.dumps(stages)}"] + [s for stage in stages[1:] for s in STAGE_SETTINGS[stage]]
    run_dir = tmp_path / "run"
    assert run_in_process(tiny_config(*overrides, *MOE, "moe.stats_every=1", "train.steps=6"), run_dir) == 0
    moe = read_events(run_dir / "events.jsonl", ("moe",))
    assert {e["stage"] for e in moe} == set(stages)
    key = "model.layers.1.mlp.gate.e_score_correction_bias"
    biases = [load_file(str(run_dir / "final" / s / "model.safetensors"))[key] for s in stages]
    for before, after, stage in zip(biases, biases[1:], stages[1:]):
        assert not torch.equal(before, after), stage
    for stage in ("ppo", "grpo"):   # one bias update per iteration, from its training forward passes only
        events = [e for e in moe if e["stage"] == stage]
        assert [e["step"] for e in events] == list(range(1, len(events) + 1))
        assert all(x["tokens"] > 0 for e in events for x in e["layers"])


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_a_local_softmax_moe_model_trains_with_the_auxiliary_loss(tmp_path, family):
    """A Qwen3-MoE / Mixtral directory (`model.path`): `auto` balancing is the auxiliary loss with the
    model config's own coefficient, reported with the routing statistics of its layers."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from dswb.engine.data.records.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, num_experts_per_tok=2, max_position_embeddings=64,
                  router_aux_loss_coef=0.02, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = (Qwen3MoeForCausalLM(Qwen3MoeConfig(num_experts=4, moe_intermediate_size=16, **common))
             if family == "qwen3_moe" else MixtralForCausalLM(MixtralConfig(num_local_experts=4, **common)))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    run_dir = tmp_path / "run"
    assert run_in_process(tiny_config(f"model.path={tmp_path / 'model'}", "moe.stats_every=2", "train.steps=4"),
                          run_dir) == 0
    events = read_events(run_dir / "events.jsonl", ("moe", "metrics", "log"))
    moe = [e for e in events if e["kind"] == "moe"]
    assert [e["step"] for e in moe] == [2, 4]
    assert all(e["family"] == family and e["balance"] == "aux_loss" and [x["layer"] for x in e["layers"]] == [0, 1]
               and all(x["bias"] is None for x in e["layers"]) for e in moe)
    assert any(f"moe: {family}, 2 MoE layers x 4 routed experts, top-2; balance aux_loss (coef 0.02)" in
               e.get("message", "") for e in events if e["kind"] == "log")
    assert [e["metrics"]["moe/aux_loss"] > 0 for e in events if e["kind"] == "metrics" and "moe/aux_loss" in e["metrics"]] \
        == [True, True]
