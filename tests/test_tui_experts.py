"""The dashboard's Experts tab: Mixture-of-Experts routing statistics (`moe` events).

The model folding hand-written events per stage (latest loads, imbalance history, dead experts),
hostile `moe` events taken without an exception and without garbage kept, the heat map fitted to
any width and expert count, the tab and its key `e` on a synthetic MoE run (hidden, like its key,
on a run without `moe` events), and a snapshot of the tab (update after a deliberate change with
`pytest tests/test_tui_experts.py --snapshot-update` and look at the SVG).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from fixtures.tui_support import FIXTURE_RUNS, make_app, screen_text, settle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from dswb.rundir import RunPaths
from dswb.tui.model import RunModel
from dswb.tui.model_moe import HISTORY_CAPACITY, MAX_EXPERTS, MAX_LAYERS, PLOT_LAYERS, imbalance_series, moe_stats_every
from dswb.tui.screens.dashboard import DashboardScreen
from dswb.tui.synthetic import FIXED_T0, RunSpec, run_events, write_run
from dswb.tui.widgets import MetricPlot
from dswb.tui.widgets.experts_panel import (FIXED_WIDTH, ExpertsPanel, LoadMap, cell_layout, experts_placeholder,
                                            legend, render_caption, shade)

pytestmark = pytest.mark.timeout(60)

MOE_SPEC = RunSpec("20250101-190000-moe", stages=[("pretrain", 60), ("sft", 30)], t0=FIXED_T0 + 21600, seed=6,
                   eval_every=20, moe_every=10)


def model() -> RunModel:
    return RunModel(RunPaths(Path("/nonexistent/run")))


def layer(index: int, load: list, **fields) -> dict:
    """A `moe` event's layer; its imbalance (max/mean) from `load` when that is a list of small numbers."""
    try:
        imbalance = max(load) * len(load) / sum(load)
    except (TypeError, OverflowError, ZeroDivisionError):
        imbalance = 1.0
    entry = {"layer": index, "tokens": 1000, "load": load, "imbalance": imbalance, "entropy": 1.9,
             "entropy_max": math.log(len(load)), "gate_mean": 0.5, "dead": [], "bias": None}
    entry.update(fields)
    return entry


def moe_event(step, layers, stage="pretrain", **fields) -> dict:
    event = {"t": FIXED_T0, "kind": "moe", "stage": stage, "step": step, "family": "deepseek_v3",
             "balance": "aux_free", "experts": 8, "top_k": 2, "steps": 10, "layers": layers}
    event.update(fields)
    return event


def render(renderable, width: int = 100) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None, record=True)
    console.print(renderable)
    return console.export_text()


# -- folding -------------------------------------------------------------------------------
def test_moe_events_fold_per_stage_into_loads_imbalance_history_and_dead_experts():
    m = model()
    even, skewed = [100] * 8, [400, 100, 100, 0, 100, 0, 100, 800]
    m.ingest([{"kind": "run_start", "step": 0, "config": {"moe": {"stats_every": 10}}},
              moe_event(10, [layer(1, skewed), layer(2, even)]),
              moe_event(20, [layer(1, even), layer(2, skewed, dead=[5, 3, 3])]),
              moe_event(5, [layer(1, skewed)], stage="sft", family="qwen3_moe", balance="aux_loss", top_k=1)])
    assert m.moe_events == 3 and m.bad_events == 0
    pre, sft = m.moe["pretrain"], m.moe["sft"]
    assert (pre.family, pre.balance, pre.experts, pre.top_k, pre.steps, pre.step, pre.events) == \
        ("deepseek_v3", "aux_free", 8, 2, 10, 20, 2)
    assert [lay.layer for lay in pre.layers] == [1, 2]
    assert pre.layers[0].load == tuple(map(float, even)) and pre.layers[1].load == tuple(map(float, skewed))
    assert pre.layers[1].dead == (3, 5) and pre.layers[0].dead == ()
    assert pre.imbalance["1"].points() == ([10, 20], [4.0, 1.0])
    assert pre.imbalance["2"].points() == ([10, 20], [1.0, 4.0])
    assert pre.layers[0].entropy_share == pytest.approx(1.9 / math.log(8))
    assert (sft.family, sft.balance, sft.top_k, sft.step, sft.events) == ("qwen3_moe", "aux_loss", 1, 5, 1)
    assert list(sft.imbalance) == ["1"]
    assert moe_stats_every(m.config) == 10
    curves = imbalance_series(pre)
    assert [c[0] for c in curves] == ["layer 2", "layer 1"], "worst latest imbalance first"


def test_imbalance_comes_from_the_load_when_the_event_has_none_and_history_rewinds_on_resume():
    m = model()
    m.ingest([moe_event(step, [layer(1, [300, 100, 100, 300, 100, 100, 100, 100], imbalance=None)])
              for step in (10, 20, 30)])
    assert m.moe["pretrain"].layers[0].imbalance == pytest.approx(2.0)
    m.ingest([moe_event(20, [layer(1, [100] * 8)])])  # resumed from a checkpoint at step 10
    assert m.moe["pretrain"].imbalance["1"].points() == ([10, 20], [2.0, 1.0])


def test_history_is_bounded_and_only_the_worst_layers_are_plotted():
    m = model()
    m.ingest([moe_event(step, [layer(i, [100 + 10 * i] + [100] * 7) for i in range(1, 9)])
              for step in range(1, 4 * HISTORY_CAPACITY)])
    moe = m.moe["pretrain"]
    assert all(h.stored() <= HISTORY_CAPACITY + 2 for h in moe.imbalance.values())
    curves = imbalance_series(moe)
    assert [c[0] for c in curves] == [f"layer {i}" for i in (8, 7, 6, 5)][:PLOT_LAYERS]
    assert all(c[3] and len(c[1]) == len(c[2]) for c in curves)


# -- hostile events ----------------------------------------------------------------------------
NAN = float("nan")
HOSTILE = [
    ("layers not a list", moe_event(10, {"1": [1, 2]}), False),
    ("layers a string", moe_event(10, "layers"), False),
    ("layers missing", {"kind": "moe", "stage": "pretrain", "step": 10}, False),
    ("empty layers", moe_event(10, []), False),
    ("step a string", moe_event("10", [layer(1, [1] * 8)]), False),
    ("no step", moe_event(None, [layer(1, [1] * 8)]), False),
    ("every layer junk", moe_event(10, [None, 5, "x", [1], {"layer": "1"}, {"layer": -1}, {"layer": True}]), False),
    ("stage not a string", moe_event(10, [layer(1, [1] * 8)], stage={"x": 1}), False),
    ("load of the wrong length", moe_event(10, [layer(1, [1] * 7)]), True),
    ("negative load", moe_event(10, [layer(1, [5, -1, 5, 5, 5, 5, 5, 5])]), True),
    ("NaN and null in the load", moe_event(10, [layer(1, [NAN, None, 5, 5, 5, 5, 5, 5])]), True),
    ("strings in the load", moe_event(10, [layer(1, ["5"] * 8)]), True),
    ("giant load", moe_event(10, [layer(1, [10 ** 400] * 8)]), True),
    ("bools in the load", moe_event(10, [layer(1, [True] * 8)]), True),
    ("a million experts", moe_event(10, [layer(1, [1] * 10 ** 6)], experts=10 ** 6), True),
    ("experts a string", moe_event(10, [layer(1, [1] * 8)], experts="8", top_k="2"), True),
    ("top-k above the experts", moe_event(10, [layer(1, [1] * 8)], top_k=99), True),
    ("junk figures", moe_event(10, [layer(1, [1] * 8, imbalance="x", entropy=1e308, entropy_max=-1, gate_mean=NAN,
                                             tokens=-5, dead=[3, "4", 99, -1, 2.0, None, True], bias=[1, 2])]), True),
    ("imbalance beyond the expert count", moe_event(10, [layer(1, [1] * 8, imbalance=1e9)]), True),
    ("hostile text", moe_event(10, [layer(1, [1] * 8)], family="\x1b]0;pwned\x07" + "f" * 70_000, balance=["a"]), True),
    ("many layers", moe_event(10, [layer(i, [1] * 8) for i in range(100_000)]), True),
    ("repeated layer index", moe_event(10, [layer(1, [1] * 8), layer(1, [2] * 8)]), True),
]


def check_kept(m: RunModel) -> None:
    """What the model kept has the shapes the panel expects."""
    for moe in m.moe.values():
        assert isinstance(moe.family, str) and len(moe.family) < 80 and moe.family.isprintable()
        assert moe.experts is None or 1 <= moe.experts <= MAX_EXPERTS
        assert moe.top_k is None or 1 <= moe.top_k <= (moe.experts or MAX_EXPERTS)
        assert 0 < len(moe.layers) <= MAX_LAYERS and len(moe.imbalance) <= MAX_LAYERS
        assert len({lay.layer for lay in moe.layers}) == len(moe.layers)
        for lay in moe.layers:
            width = len(lay.load) or moe.experts or MAX_EXPERTS
            assert isinstance(lay.layer, int) and lay.layer >= 0
            assert lay.load == () or moe.experts is None or len(lay.load) == moe.experts
            assert all(isinstance(x, float) and 0 <= x < 2 ** 53 for x in lay.load)
            assert lay.imbalance is None or 0 <= lay.imbalance <= width * (1 + 1e-9)
            assert lay.entropy_share is None or 0 <= lay.entropy_share <= 1
            assert all(isinstance(i, int) and 0 <= i < width for i in lay.dead)
            assert list(lay.dead) == sorted(set(lay.dead))
            assert lay.bias is None or (len(lay.bias) == width and all(math.isfinite(b) for b in lay.bias))
        for history in moe.imbalance.values():
            assert all(math.isfinite(y) for y in history.points()[1])


@pytest.mark.parametrize("name, event, usable", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_moe_events_never_raise_and_keep_only_clean_values(name, event, usable):
    m = model()
    m.ingest([event])
    assert m.moe_events == (1 if usable else 0) and m.bad_events == (0 if usable else 1)
    check_kept(m)
    for moe in m.moe.values():
        for width in (1, 20, 80, 200):
            render(render_caption(moe), width)
            render(LoadMap(moe.layers, moe.experts), width)
        imbalance_series(moe)


def test_hostile_values_are_left_out_and_the_rest_kept():
    m = model()
    m.ingest([HOSTILE[17][1], HOSTILE[8][1]])  # junk figures, then a load of the wrong length
    lay = m.moe["pretrain"].layers[0]
    assert lay.load == () and lay.layer == 1 and lay.imbalance is not None
    m = model()
    m.ingest([HOSTILE[17][1]])
    lay = m.moe["pretrain"].layers[0]
    assert (lay.imbalance, lay.entropy, lay.gate_mean, lay.tokens, lay.bias) == (1.0, None, None, None, None)
    assert lay.entropy_max == pytest.approx(math.log(8)) and lay.dead == (2, 3)
    m = model()
    m.ingest([HOSTILE[15][1]])  # experts "8": inferred from the loads
    moe = m.moe["pretrain"]
    assert moe.experts == 8 and moe.top_k is None
    m.ingest([HOSTILE[20][1]])  # 100k layers
    assert len(moe.layers) == MAX_LAYERS and moe.top_k == 2
    assert moe.skipped == 100_000 - MAX_LAYERS and "malformed layer entries left out" in render(render_caption(moe))
    m = model()
    m.ingest([HOSTILE[19][1]])
    family = m.moe["pretrain"].family
    assert "\x1b" not in family and "\x07" not in family and family.endswith("KiB]"), "neutralised and cut"


MOE_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.sampled_from([10 ** 400, 2 ** 63]),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5))
LAYER = st.one_of(MOE_VALUES, st.fixed_dictionaries({}, optional={
    "layer": MOE_VALUES, "tokens": MOE_VALUES, "imbalance": MOE_VALUES, "entropy": MOE_VALUES,
    "entropy_max": MOE_VALUES, "gate_mean": MOE_VALUES,
    "load": st.one_of(MOE_VALUES, st.lists(MOE_VALUES, max_size=10), st.lists(st.integers(0, 50), min_size=8, max_size=8)),
    "dead": st.one_of(MOE_VALUES, st.lists(MOE_VALUES, max_size=6)),
    "bias": st.one_of(MOE_VALUES, st.lists(MOE_VALUES, max_size=9))}))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({"kind": st.just("moe")}, optional={
    "stage": st.one_of(st.sampled_from(["pretrain", "sft"]), MOE_VALUES), "step": MOE_VALUES, "family": MOE_VALUES,
    "balance": MOE_VALUES, "experts": MOE_VALUES, "top_k": MOE_VALUES, "steps": MOE_VALUES,
    "layers": st.one_of(MOE_VALUES, st.lists(LAYER, max_size=5))}), max_size=6))
def test_generated_moe_events_never_raise(events):
    m = model()
    m.ingest(events)
    assert m.moe_events + m.bad_events == len(events)
    check_kept(m)
    for moe in m.moe.values():
        render(render_caption(moe), 60)
        render(LoadMap(moe.layers, moe.experts), 60)


# -- the heat map ----------------------------------------------------------------------------
def test_shades_and_their_legend():
    assert [shade(r)[0] for r in (0.0, 0.3, 1.0, 2.0, 3.5)] == ["·", "░", "▒", "▓", "█"]
    text = legend().plain
    for label in ("· 0", "░ <0.5x", "▒ ~1x", "▓ >1.5x", "█ >3x"):
        assert label in text
    assert "8 experts per cell" in legend(8).plain


@pytest.mark.parametrize("experts", [8, 64, 256, 512])
@pytest.mark.parametrize("width", [60, 80, 200])
def test_many_experts_are_binned_to_fit_the_width(experts, width):
    load = [10.0] * experts
    load[experts - 1] = 0.0
    load[1] = 50.0
    m = model()
    m.ingest([moe_event(10, [layer(i, load, dead=[experts - 1]) for i in range(3)], experts=experts)])
    text = render(LoadMap(m.moe["pretrain"].layers, experts), width)
    assert all(len(line) <= width for line in text.splitlines())
    group, cell_width = cell_layout(experts, width - FIXED_WIDTH)
    assert ("experts per cell" in text) == (group > 1)
    row = next(line for line in text.splitlines() if line.strip().startswith("0 "))
    assert "█" in row and str(experts - 1) in row  # the hot expert shows, the dead one is listed


def test_placeholders_say_why_there_is_nothing():
    assert "no Mixture-of-Experts layers" in experts_placeholder(False, "pretrain", 10)
    assert "every moe.stats_every = 10 steps" in experts_placeholder(False, "pretrain", 10)
    assert "for stage sft yet" in experts_placeholder(True, "sft", None)
    assert "turns them off" in experts_placeholder(False, "pretrain", 0)
    assert moe_stats_every({"moe": {"stats_every": "10"}}) is None and moe_stats_every([]) is None


# -- the dashboard ---------------------------------------------------------------------------
def moe_run(tmp_path: Path, upto: int | None = None) -> Path:
    root = tmp_path / "runs"
    write_run(root, MOE_SPEC, upto=upto)
    return root


def sft_started_index() -> int:
    """How many events the run has up to its sft stage's start (before its first `moe` event)."""
    events = run_events(MOE_SPEC)
    return next(i for i, e in enumerate(events) if e["kind"] == "stage_start" and e["stage"] == "sft") + 3


async def test_e_shows_the_experts_tab_stage_by_stage(tmp_path):
    app = make_app(moe_run(tmp_path, upto=sft_started_index()), attach=MOE_SPEC.run_id)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        assert "Experts" in screen_text(app) and "e Experts" in screen_text(app), "the tab and its key show"
        assert "e" in screen.help_keys()
        await pilot.press("e")
        await settle(pilot)
        assert screen.query_one("#tabs").active == "experts"
        text = screen_text(app)
        assert "no Mixture-of-Experts statistics for stage sft yet" in text, "sft has no moe event yet"
        await pilot.press("left_square_bracket")
        await settle(pilot)
        text = screen_text(app)
        for needle in ("deepseek_v3 · balance aux_free · 8 experts, top-2 · 3 MoE layers", "step 60", "imbalance",
                       "▒ ~1x", "dead"):
            assert needle in text, needle
        assert screen.query_one(ExpertsPanel).query_one("#experts-plot", MetricPlot).points_drawn > 0
        assert screen.query_one("#tabs").active == "experts"
        await pilot.press("1")
        await settle(pilot)
        assert screen.query_one("#tabs").active == "overview"


async def test_no_experts_tab_or_key_without_moe_events():
    app = make_app(FIXTURE_RUNS, attach="finished")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("e")
        await settle(pilot)
        screen = app.screen
        assert screen.query_one("#tabs").active == "overview"
        text = screen_text(app)
        assert "Experts" not in text and "e Experts" not in text
        assert "e" not in screen.help_keys()


def test_experts_tab_snapshot(snap_compare, tmp_path):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("e")
        await settle(pilot)

    app = make_app(moe_run(tmp_path), attach=MOE_SPEC.run_id)
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
