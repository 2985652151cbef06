"""The dashboard's view of a reasoning run (completions `<think>...</think>answer`): the RL tab's
reasoning panel (reward per source, format rate and accuracy, thinking length, unscorable
completions) and the samples' thinking, folded and unfolded with `t`; stages and samples without
reasoning look as before. Built on synthetic run directories (`dswb.tui.synthetic`)."""

from __future__ import annotations

import io

import pytest
from fixtures.tui_support import FIXTURE_RUNS, make_app, screen_text, settle
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Text

from dswb.rundir import read_events
from dswb.tui.model import RunModel
from dswb.tui.model_rl import has_reasoning_metrics, unscorable_totals
from dswb.tui.reasoning import answer_of, fold_think, has_reasoning, reward_source_names, think_size
from dswb.tui.sanitize import THINK_TEXT_LIMIT, clean_samples
from dswb.tui.screens.dashboard_keys import TAB_KEYS
from dswb.tui.synthetic import RunSpec, run_events, write_run
from dswb.tui.synthetic_rl import unscorable_steps
from dswb.tui.widgets import MetricPlot, SamplesPanel
from dswb.tui.widgets.reasoning_facts import render_reasoning, source_rows
from dswb.tui.widgets.rl_facts import render_rl_facts
from dswb.tui.widgets.samples_panel import completion_cell, render_samples

pytestmark = pytest.mark.timeout(60)

REASONING = RunSpec("20250101-180000-reasoning", stages=[("sft", 20), ("grpo", 60)], posttrain=True, reasoning=True,
                    step_s=0.2, eval_every=20, system_every=15, checkpoint_every=60, seed=7)
THINK = "We need 61+48. Add the units first: 1+8=9.\nThen the tens: 60+40=100.\nSo the sum is 109."


def render(renderable, width: int = 200) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None, record=True)
    console.print(renderable)
    return console.export_text()


def latest_samples(events: list[dict]) -> dict:
    return [e for e in events if e["kind"] == "samples"][-1]


# -- pure pieces ------------------------------------------------------------------------------
def test_fold_think_keeps_about_80_characters_cut_at_a_word_and_says_how_long():
    assert fold_think(THINK, 19) == ("We need 61+48. Add the units first: 1+8=9. Then the tens: 60+40=100. "
                                     "So the sum… (19 tokens)")
    assert fold_think("Short.", 1) == "Short. (1 token)"
    assert fold_think("  line one\n\nline two ", None) == "line one line two (18 chars)"
    assert fold_think("", 0) == "(empty) (0 tokens)"
    assert fold_think("x" * 500, 120) == "x" * 80 + "… (120 tokens)"  # no space to cut at
    assert fold_think("\x1b[2Jboom", 3) == "\ufffd[2Jboom (3 tokens)"
    assert fold_think(THINK, 19, width=20) == "We need 61+48. Add… (19 tokens)"


def test_think_size_answer_and_metric_names():
    assert think_size("abc", 1_234) == "1,234 tokens" and think_size("abc", True) == "3 chars"
    assert think_size(" abc\n", None) == "3 chars"
    assert think_size("a", None) == "1 char"
    assert think_size("abc", -1) == "3 chars" and think_size("abc", 2.0) == "3 chars"
    assert answer_of({"answer": " 42 "}) == " 42 " and answer_of({"answer": ""}) is None
    assert answer_of({"answer": None}) is None and answer_of({}) is None
    names = ["loss", "rewards/format/mean", "rewards/format/unscorable", "rewards//mean", "rewards/math/mean",
             "reasoning/format_rate", 3]
    assert reward_source_names(names) == ["format", "math"]
    assert has_reasoning(names) and not has_reasoning(["reward", "rewards/math/mean", None])


def test_clean_samples_keeps_the_thinking_and_drops_what_is_not_text_or_a_count():
    rows = clean_samples([{"prompt": "p", "completion": "c", "think": "t" * 5000, "answer": "42", "think_tokens": 7},
                          {"prompt": "p", "think": ["x"], "answer": 3, "think_tokens": 2.5},
                          {"prompt": "p", "think_tokens": -1}])
    assert rows[0]["think"].startswith("t" * THINK_TEXT_LIMIT) and "[cut" in rows[0]["think"]
    assert rows[0]["answer"] == "42" and rows[0]["think_tokens"] == 7
    assert [(r["think"], r["answer"], r["think_tokens"]) for r in rows[1:]] == [(None, None, None)] * 2


def test_a_row_without_thinking_looks_as_before():
    sample = {"prompt": "1+1=", "completion": "2\n", "think": None, "answer": "2"}
    assert completion_cell(sample) == Text("2⏎", style="cyan") == completion_cell(sample, unfold=True)
    event = {"stage": "grpo", "step": 10, "samples": [sample]}
    assert render(render_samples(event, 3)) == render(render_samples(event, 3, unfold=True))
    assert "thinking" not in render(render_samples(event, 3))


def test_a_row_with_thinking_shows_its_answer_then_the_thinking_folded_or_in_full():
    sample = {"prompt": "What is 61+48?", "completion": f"<think>{THINK}</think>109", "think": THINK,
              "answer": "109", "think_tokens": 19}
    folded = completion_cell(sample).plain
    assert folded == f"answer 109\nthink {fold_think(THINK, 19)}"
    unfolded = completion_cell(sample, unfold=True).plain
    assert unfolded == f"answer 109\nthink (19 tokens)\n{THINK}"
    never_closed = completion_cell({**sample, "answer": ""}).plain
    assert never_closed.startswith("answer none (the thinking never closed)\nthink We need")
    text = render(render_samples({"stage": "grpo", "step": 60, "samples": [sample]}, 6))
    assert "t: unfold the thinking" in text and "So the sum… (19 tokens)" in text and "is 109." not in text
    text = render(render_samples({"stage": "grpo", "step": 60, "samples": [sample]}, 6, unfold=True))
    assert "t: fold the thinking" in text and "Then the tens: 60+40=100." in text and "So the sum is 109." in text


def test_reasoning_facts_highlight_unscorable_completions_only_when_there_are_some():
    metrics = {"reasoning/format_rate": 0.925, "reasoning/accuracy": 0.61, "reasoning/think_mean_tokens": 212.0,
               "reasoning/think_max_tokens": 1024, "rewards/format/mean": 0.925, "rewards/format/unscorable": 0,
               "rewards/math/mean": 0.61, "rewards/math/unscorable": 3}
    assert source_rows(metrics, {"math": 17}) == [("format", "0.925", 0, 0), ("math", "0.61", 3, 17)]
    text = render(render_reasoning(metrics, {"math": 17}))
    for needle in ("format rate     92.5%", "accuracy        0.61", "mean 212  max 1,024",
                   "unscorable now", "in stage"):
        assert needle in text, needle
    table = render_reasoning(metrics, {"math": 17}).renderables[1]
    counts = [cell for column in table.columns[2:] for cell in column._cells if isinstance(cell, Text)]
    assert {(c.plain, str(c.style)) for c in counts} >= {("3", "bold red"), ("17", "bold red"), ("-", "dim")}
    healthy = render(render_reasoning({**metrics, "rewards/math/unscorable": 0}, {}))
    assert "unscorable" not in healthy and "math" in healthy
    assert "3 unscorable" in render(render_rl_facts(metrics)) and "unscorable" not in render(render_rl_facts(
        {**metrics, "rewards/math/unscorable": 0}))
    assert render(render_reasoning({}, None)).strip() == "no reasoning metrics yet"


def test_the_model_knows_a_reasoning_stage_and_its_unscorable_completions():
    model = RunModel(__import__("dswb.rundir", fromlist=["RunPaths"]).RunPaths(FIXTURE_RUNS / "none"))
    model.ingest(run_events(REASONING))
    assert has_reasoning_metrics(model.stages["grpo"]) and not has_reasoning_metrics(model.stages["sft"])
    assert unscorable_totals(model.stages["grpo"]) == {"format": 0, "accuracy": 3 * len(unscorable_steps(60))}
    latest = model.samples[-1]["samples"]
    assert [s["think"] is not None for s in latest] == [True, True, True, False]
    assert latest[2]["answer"] is None and latest[0]["think_tokens"] == 19


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
                 st.sampled_from(["x" * 70_000, "\x1b]0;pwned\x07", "a\nb\rc", ""]), st.lists(st.integers())))
def test_reasoning_views_take_any_value(value):
    rows = [{"think": value, "answer": value, "think_tokens": value}, {"think": "t", "answer": value,
                                                                      "think_tokens": value}]
    for unfold in (False, True):
        render(render_samples({"samples": rows}, 1, unfold=unfold), width=100)
    render(render_reasoning({"reasoning/format_rate": value, "rewards/a/mean": value, "rewards/a/unscorable": value},
                            {"a": value}), width=100)
    assert isinstance(fold_think(value, value), str) and isinstance(think_size(value, value), str)
    clean_samples(rows)


# -- the app ----------------------------------------------------------------------------------
async def test_rl_tab_reasoning_panel_and_samples_thinking(tmp_path):
    paths = write_run(tmp_path, REASONING)
    app = make_app(tmp_path, attach=REASONING.run_id)
    async with app.run_test(size=(200, 60)) as pilot:
        await settle(pilot)
        screen = app.screen
        await pilot.press(TAB_KEYS["rl"])
        await settle(pilot)
        assert screen.query_one("#rl-reasoning").display
        for plot_id in ("plot-reasoning-rewards", "plot-reasoning-format", "plot-reasoning-think"):
            assert screen.query_one(f"#{plot_id}", MetricPlot).points_drawn > 0, plot_id
        labels = {plot_id: [series[0] for series in screen.query_one(f"#{plot_id}", MetricPlot).source()[0]]
                  for plot_id in ("plot-reasoning-rewards", "plot-reasoning-format", "plot-reasoning-think")}
        assert labels == {"plot-reasoning-rewards": ["format", "accuracy"],
                          "plot-reasoning-format": ["format", "accuracy"], "plot-reasoning-think": ["mean", "max"]}
        text = screen_text(app)
        for needle in ("reward by source", "format rate & accuracy", "thinking length (tokens)", "format rate",
                       "thinking tokens", "unscorable now", "in stage", "sampling rounds", "groups kept"):
            assert needle in text, needle

        await pilot.press(TAB_KEYS["samples"])
        await settle(pilot)
        latest = latest_samples(read_events(paths.events))["samples"]
        first = latest[0]
        text = screen_text(app)
        assert "t Thinking" in text, "the footer offers the key"
        assert f"answer {first['answer']}" in text and f"({first['think_tokens']} tokens)" in text
        assert "answer none (the thinking never closed)" in text
        assert latest[3]["completion"] in text, "a row without thinking shows its completion"
        last_line = first["think"].splitlines()[-1]
        assert last_line not in text
        await pilot.press("t")
        await settle(pilot)
        assert screen.query_one(SamplesPanel).unfold
        text = screen_text(app)
        assert last_line in text and "t: fold the thinking" in text
        await pilot.press("t")
        await settle(pilot)
        assert last_line not in screen_text(app)

        await pilot.press(TAB_KEYS["alerts"])
        await settle(pilot)
        assert "Thinking" not in screen_text(app), "the key is offered on the samples only"
        assert "reward_unscorable" in screen_text(app), "a generic alert"
        await pilot.press("question_mark")
        await settle(pilot)
        assert "unfold the thinking of each completion" in screen_text(app)


async def test_runs_without_reasoning_show_no_reasoning_panel_and_no_thinking_key():
    app = make_app(FIXTURE_RUNS, attach="pipeline")
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        screen = app.screen
        await pilot.press(TAB_KEYS["rl"])
        await settle(pilot)
        assert not screen.query_one("#rl-reasoning").display
        assert "format rate" not in screen_text(app)
        await pilot.press(TAB_KEYS["samples"])
        await settle(pilot)
        before = screen_text(app)
        assert "Thinking" not in before and "thinking" not in before
        await pilot.press("t")
        await settle(pilot)
        assert not screen.query_one(SamplesPanel).unfold and screen_text(app) == before
        await pilot.press("question_mark")
        await settle(pilot)
        assert "unfold the thinking" not in screen_text(app)
