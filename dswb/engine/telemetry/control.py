"""What a running stage checks between steps: control commands from viewers and signals.

SIGINT (Ctrl-C) and SIGTERM ask for a clean stop: the loop checkpoints at the next step
boundary and the run ends `stopped`. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import signal
from pathlib import Path

from dswb.rundir.control import ControlReader


class SignalHandlers:
    """Installs `self._on_signal` for SIGINT and SIGTERM, and puts the previous handlers back."""

    _previous: dict

    def install_signal_handlers(self) -> None:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore_signal_handlers(self) -> None:
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        raise NotImplementedError


class RunControl(SignalHandlers):
    def __init__(self, run_root: Path) -> None:
        self._reader = ControlReader(run_root)
        self.stop_requested = False
        self.stop_reason = ""
        self.paused = False
        self.checkpoint_requested = False
        self.acted: list[str] = []

    def _on_signal(self, signum, frame) -> None:
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_requested = True
        self.stop_reason = signal.Signals(signum).name

    def poll(self) -> list[str]:
        """Read new commands and update the flags; returns the commands seen."""
        commands = self._reader.poll()
        for cmd in commands:
            if cmd == "stop":
                self.stop_requested, self.stop_reason = True, "control"
            elif cmd == "pause":
                self.paused = True
            elif cmd == "resume":
                self.paused = False
            elif cmd == "checkpoint":
                self.checkpoint_requested = True
        return commands
