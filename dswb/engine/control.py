"""What a running stage checks between steps: control commands from viewers and signals.

SIGINT (Ctrl-C) and SIGTERM ask for a clean stop: the loop checkpoints at the next step
boundary and the run ends `stopped`. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import signal
from pathlib import Path

from dswb.rundir.control import ControlReader


class RunControl:
    def __init__(self, run_root: Path) -> None:
        self._reader = ControlReader(run_root)
        self.stop_requested = False
        self.stop_reason = ""
        self.paused = False
        self.checkpoint_requested = False
        self.acted: list[str] = []
        self._previous = {}

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore_signal_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

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
