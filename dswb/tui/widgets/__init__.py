"""The dashboard's widgets, one per module; each takes plain values through `show(...)`."""

from dswb.tui.widgets.alerts_panel import AlertsPanel
from dswb.tui.widgets.batching_panel import BatchingPanel
from dswb.tui.widgets.eval_table import EvalTable
from dswb.tui.widgets.fp8_panel import Fp8Panel
from dswb.tui.widgets.log_tail import LogTail
from dswb.tui.widgets.metric_plot import MetricPlot
from dswb.tui.widgets.pipeline_table import PipelineTable
from dswb.tui.widgets.reasoning_facts import ReasoningFacts
from dswb.tui.widgets.rl_facts import RlFacts
from dswb.tui.widgets.run_header import HeaderInfo, RunHeader
from dswb.tui.widgets.run_progress import RunProgress
from dswb.tui.widgets.run_summary import RunSummary
from dswb.tui.widgets.runs_table import RunsTable
from dswb.tui.widgets.samples_panel import SamplesPanel
from dswb.tui.widgets.stats_table import StatsTable
from dswb.tui.widgets.system_panel import SystemPanel

__all__ = ["AlertsPanel", "BatchingPanel", "EvalTable", "Fp8Panel", "HeaderInfo", "LogTail", "MetricPlot",
           "PipelineTable", "ReasoningFacts", "RlFacts", "RunHeader", "RunProgress", "RunSummary", "RunsTable",
           "SamplesPanel", "StatsTable", "SystemPanel"]
