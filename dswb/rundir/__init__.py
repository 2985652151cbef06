"""The run directory: the one contract between the engine, the CLI and the TUI.

Standard library only. A run writes `runs/<run-id>/` with `config.toml`, `status.json`
(replaced atomically), `events.jsonl` (append-only), `train.log`, `checkpoints/<stage>/step-N/`,
`final/<stage>/` and `control.jsonl` (commands from viewers). Readers tolerate files that do not
exist yet and a torn last line.
"""

from dswb.rundir.control import ControlReader, send_command
from dswb.rundir.events import EventTail, EventWriter, read_events
from dswb.rundir.layout import RunPaths, create_run_dir, find_runs, new_run_id, resolve_run
from dswb.rundir.status import effective_state, read_status, write_status

__all__ = [
    "ControlReader", "EventTail", "EventWriter", "RunPaths", "create_run_dir", "effective_state",
    "find_runs", "new_run_id", "read_events", "read_status", "resolve_run", "send_command",
    "write_status",
]
