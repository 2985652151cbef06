"""`dswb data prepare PRESET`: run only the data stage and print the data report.

It reads, cleans, deduplicates, tokenizes and chunks the preset's corpus into the shared
tokenized-data cache (`<runs-root>/.cache`, or `data.cache_dir`), so a later `dswb run` of the
same preset starts training at once; it shows a progress bar (documents, MB, tokens, ETA) and
writes a run directory with `data-report.json` and the `data_progress` / `data_report` events.
Ctrl-C stops it; running it again resumes from the last complete shard.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Optional, TextIO

import typer

from dswb.cli.common import DEFAULT_RUNS_ROOT, JsonOut, RunsRoot, user_errors
from dswb.errors import UserError
from dswb.util.atomic import write_atomic, write_json_atomic
from dswb.util.fmt import fmt_duration

app = typer.Typer(help="Prepare training data and report on it.", no_args_is_help=True)

STAGE = "data"


def progress_line(event: dict) -> str:
    """One line for a `data_progress` event: phase, percent, documents, MB, tokens, ETA."""
    phase = event.get("phase", "?")
    parts = [f"{phase:<9}{event.get('fraction', 0.0):5.0%}"]
    if event.get("documents") is not None:
        parts.append(f"{event['documents']:,} docs")
    if event.get("mb") is not None:
        elapsed = event.get("elapsed_s") or 0
        rate = f" ({event['mb'] / elapsed:,.1f} MB/s)" if elapsed > 0 else ""
        parts.append(f"{event['mb']:,.1f} MB{rate}")
    if event.get("tokens"):
        parts.append(f"{event['tokens']:,} tokens")
    if event.get("duplicates"):
        parts.append(f"{event['duplicates']:,} dups")
    parts.append(f"ETA {fmt_duration(event.get('eta_s'), clock=True)}")
    return "  ".join(parts)


class ProgressPrinter:
    """A progress bar redrawn in place on a terminal; a plain line every `every_s` otherwise."""

    def __init__(self, out: TextIO = sys.stdout, tty: bool | None = None, every_s: float = 5.0) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.every_s = every_s
        self._last = 0.0
        self._phase = None
        self._drawn = False

    def __call__(self, event: dict) -> None:
        phase_changed = event.get("phase") != self._phase
        if self.tty:
            if phase_changed and self._drawn:
                self.out.write("\n")
            width = shutil.get_terminal_size((100, 20)).columns
            frac = float(event.get("fraction") or 0.0)
            bar = f"[{'#' * int(20 * frac)}{'-' * (20 - int(20 * frac))}] "
            self.out.write("\r\x1b[2K" + (bar + progress_line(event))[: width - 1])
            self.out.flush()
            self._drawn = True
        else:
            now = time.monotonic()
            if phase_changed or now - self._last >= self.every_s or event.get("fraction") == 1.0:
                self._last = now
                print(progress_line(event), file=self.out, flush=True)
        self._phase = event.get("phase")

    def close(self) -> None:
        if self.tty and self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False


@app.command("prepare")
@user_errors
def prepare(
    preset: Annotated[Optional[str], typer.Argument(help="Preset name or TOML file.")] = None,
    overrides: Annotated[list[str], typer.Option("--set", "-s", help="Override a field: SECTION.KEY=VALUE (repeatable).")] = [],
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=0, help="Worker processes (data.workers; 0 = one per core).")] = None,
    runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Exact run directory (default: RUNS_ROOT/<time>-<name>-data).")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="Plain progress lines instead of a progress bar.")] = False,
    json_path: JsonOut = None,
) -> None:
    """Prepare a preset's data only (read, clean, dedup, tokenize, chunk) and print the data report.

    Examples: `dswb data prepare presets/pretrain-local.toml --set data.paths='["corpus/"]'`,
    `dswb data prepare smoke --set data.source=files --set data.paths='["c.jsonl.gz"]' -w 4`
    """
    from dswb.config import config_to_toml, load_config
    from dswb.config.load import config_to_dict
    from dswb.presets import find_preset
    from dswb.rundir.layout import create_run_dir, new_run_id
    from dswb.rundir.status import new_status

    if preset is None and not overrides:
        raise UserError("give a preset (e.g. `dswb data prepare presets/pretrain-local.toml`) or --set overrides")
    extra = [f"data.workers={workers}"] if workers is not None else []
    config = load_config(find_preset(preset) if preset is not None else None, list(overrides) + extra)
    target = run_dir if run_dir is not None else runs_root / new_run_id(f"{config.run.name}-data", runs_root)
    if (target / "config.toml").exists():
        raise UserError(f"{target}: a run already exists there")
    paths = create_run_dir(target)
    write_atomic(paths.config, config_to_toml(config), fsync=False)

    from dswb.engine.data.corpus.events import publish_report
    from dswb.engine.data.corpus.pipeline import prepare_data
    from dswb.engine.data.corpus.report import format_report
    from dswb.engine.telemetry.monitor import Monitor

    monitor = Monitor(paths, new_status(STAGE, 0))
    monitor.emit("run_start", None, 0, run_id=paths.run_id, config=config_to_dict(config), argv=sys.argv,
                 resumed=False, pid=os.getpid())
    monitor.write_status(force=True, state="running", stage=STAGE)
    printer = ProgressPrinter(tty=False if plain else None)

    def on_progress(event: dict) -> None:
        monitor.emit("data_progress", STAGE, 0, **event)
        printer(event)

    def log(message: str) -> None:
        printer.close()
        monitor.log(message, stage=STAGE)
        typer.echo(message)

    typer.echo(f"run directory: {paths.root}")
    cache_root = Path(config.data.cache_dir) if config.data.cache_dir else paths.root.parent / ".cache"
    state, error = "failed", None
    try:
        data = prepare_data(config, cache_root, log, progress=on_progress)
        printer.close()
        report = publish_report(monitor, STAGE, paths.root, data.stats)
        typer.echo(format_report(report))
        typer.echo(f"wrote {paths.root / 'data-report.json'}"
                   + (" (from the cache)" if data.stats.get("cache_hit") else ""))
        if json_path is not None:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(json_path, report, fsync=False, indent=1, default=str)
        state = "finished"
    except UserError as exc:
        error = str(exc)
        raise
    except KeyboardInterrupt:
        state, error = "stopped", "interrupted; run the same command again to resume from the last complete shard"
        printer.close()
        typer.echo(error, err=True)
        raise typer.Exit(130) from None
    finally:
        printer.close()
        monitor.write_status(force=True, state=state, error=error, ended=time.time())
        monitor.emit("run_end", None, 0, state=state, error=error)
        monitor.close()
