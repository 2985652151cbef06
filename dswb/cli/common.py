"""Options shared by several commands, defined once as typed aliases, the output helpers every
command prints through (safe text, numbers, tables, JSON), and `resolve_model` (`RUN[:stage]` or a
model directory, for `dswb eval` and `dswb export`)."""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Sequence

import typer

from dswb.errors import EXIT_USER_ERROR, UserError
from dswb.rundir.events import json_safe
from dswb.rundir.layout import is_model_dir, resolve_run
from dswb.util import fmt

RunsRoot = Annotated[Path, typer.Option("--runs-root", help="Directory holding run directories.",
                                        envvar="DSWB_RUNS_ROOT")]
RunRef = Annotated[str, typer.Argument(help="Run id, unique part of it, a path, or `latest`.")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON to this path.")]

DEFAULT_RUNS_ROOT = Path("runs")
TEXT_LIMIT = 300          # characters of a string from a run file shown in a line or cell
NAME_LIMIT = 60           # metric and stage names in tables
JSON_TEXT_LIMIT = 10_000  # strings in --json output
JSON_DEPTH_LIMIT = 32
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """`text` cut to `limit` characters, with a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [cut: {len(text):,} chars]"


def safe_text(value: Any, limit: int = TEXT_LIMIT) -> str:
    """Any value from a run file as one printable line: control characters (escape sequences,
    newlines) replaced by '?', lone surrogates replaced, cut to `limit` with a marker."""
    text = value if isinstance(value, str) else str(value)
    text = clip(text, limit)
    return _CONTROL.sub("?", text).encode("utf-8", "replace").decode("utf-8")


def fmt_num(value: Any, missing: str = "-") -> str:
    """A number for a CLI line or table: `dswb.util.fmt.fmt_num` in its compact form (`12.3k`,
    `3.00e-04`, `2.346`), `missing` for None, anything that is not a number as safe text."""
    return fmt.fmt_num(value, compact=True, missing=missing, text=lambda v: safe_text(v, NAME_LIMIT))


def json_view(value: Any, depth: int = 0) -> Any:
    """`value` made safe for --json output: standard JSON (no NaN/Inf), strings cut with a
    marker, nesting cut at `JSON_DEPTH_LIMIT`."""
    if isinstance(value, str):
        return safe_text(value, JSON_TEXT_LIMIT) if len(value) > JSON_TEXT_LIMIT else value
    if isinstance(value, (dict, list, tuple)) and depth >= JSON_DEPTH_LIMIT:
        return "... [cut: nested too deep]"
    if isinstance(value, dict):
        return {str(k)[:JSON_TEXT_LIMIT]: json_view(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_view(v, depth + 1) for v in value]
    return json_safe(value)


def echo_json(value: Any) -> None:
    """Print `value` as indented JSON through `json_view`."""
    typer.echo(json.dumps(json_view(value), indent=1, default=str))


def user_errors(command: Callable) -> Callable:
    """Report a `UserError` as one `error: ...` line on stderr and exit 2 (also under CliRunner)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper


def resolve_model(target: str, runs_root: Path) -> Path:
    """A model directory (a full model or a LoRA adapter), or `RUN[:stage]` (default: the run's last
    finished stage), for `dswb eval` and `dswb export`."""
    path = Path(target).expanduser()
    if is_model_dir(path):
        return path
    ref, sep, stage = target.rpartition(":") if ":" in target else (target, "", "")
    paths = resolve_run(ref if sep else target, runs_root)
    finished = [p for p in sorted((paths.root / "final").glob("*")) if is_model_dir(p)]
    if stage:
        chosen = paths.final(stage)
        if not is_model_dir(chosen):
            have = ", ".join(p.name for p in finished) or "none"
            raise UserError(f"{target}: run {paths.run_id} has no final '{stage}' model (finished: {have})")
        return chosen
    if not finished:
        raise UserError(f"{target}: run {paths.run_id} has no final model yet")
    order = {s: i for i, s in enumerate(("pretrain", "sft", "rm", "dpo", "ppo", "grpo"))}
    lm = [p for p in finished if p.name != "rm"] or finished
    return max(lm, key=lambda p: (order.get(p.name, -1), p.stat().st_mtime))


def disk_errors(command: Callable) -> Callable:
    """Report a full disk (`DiskFull`, ENOSPC) as one `error: ...` line naming the path and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OSError as exc:
            from dswb.rundir.space import disk_full_error, is_disk_full

            if not is_disk_full(exc):
                raise
            typer.echo(f"error: {disk_full_error(exc, [Path.cwd()])}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[int] = (),
                title: str | None = None, wrap: bool = False) -> None:
    """A plain rich table (no colour off a TTY; cells are never read as markup)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", show_edge=False,
                  pad_edge=False, title_style="bold")
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if i in numeric else "left", no_wrap=not wrap)
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    console.print(table)
