"""Metric points gathered during one `RunModel.ingest` batch, so each history is extended once.

`metrics` events add one step of every metric they carry; `flush()` hands each history its
queued points in one `SeriesHistory.extend`. Consecutive events of a stage usually name the
same metrics, so the queue columns for a set of names are looked up once and reused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dswb.tui.history import SeriesHistory, series_history
from dswb.tui.sanitize import MAX_SERIES

if TYPE_CHECKING:
    from dswb.tui.model_stage import StageModel


class PendingPoints:
    """Points queued per history until `flush()`; new histories get `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._pending: dict[SeriesHistory, tuple[list, list]] = {}
        self._columns_key: tuple | None = None  # the metric names (and stage) `_columns` are for
        self._columns: list = []

    def flush(self) -> None:
        for history, (xs, ys) in self._pending.items():
            history.extend(xs, ys)
        self._pending.clear()
        self._columns_key = None

    def add(self, series: dict, stage: StageModel | None, step: int, metrics: dict) -> None:
        """Queue one step of every metric for its history. Consecutive events of a stage usually
        name the same metrics: their columns are looked up once and reused."""
        key = (id(series), tuple(metrics))
        if key != self._columns_key:
            self._columns = [self._column(series, stage, name) for name in metrics]
            self._columns_key = key
        for column, value in zip(self._columns, metrics.values()):
            if column is not None:
                column[0].append(step)
                column[1].append(value)

    def _column(self, series: dict, stage: StageModel | None, name: str) -> tuple[list, list] | None:
        history = series_history(series, name, self.capacity, MAX_SERIES)
        if history is None:
            if stage is not None:
                stage.dropped_series += 1
            return None
        column = self._pending.get(history)
        if column is None:
            column = self._pending[history] = ([], [])
        return column
