"""The dashboard application and its factory, shared by `dswb tui` and the tests.

The app reads run directories (through follower threads that post messages) and writes only
a run's `control.jsonl`; launches are detached processes. Quitting never stops training.
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from dswb.errors import UserError
from dswb.rundir import RunPaths, resolve_run, send_command
from dswb.tui.commands import RunCommands
from dswb.tui.follower import RunFollower, RunRow, RunsScanner
from dswb.tui.launching import PresetChoice, available_presets
from dswb.tui.messages import RunsScanned, RunUpdated
from dswb.tui.screens.compare import CompareScreen
from dswb.tui.screens.confirm import ConfirmScreen
from dswb.tui.screens.dashboard import DEFAULT_REFRESH_S, DashboardScreen
from dswb.tui.screens.help import HelpScreen
from dswb.tui.screens.launch import LaunchScreen
from dswb.tui.screens.runs import RunsScreen

Launcher = Callable[[str, Path, list[str]], tuple[RunPaths, int]]


def default_launcher(preset: str, runs_root: Path, overrides: list[str]) -> tuple[RunPaths, int]:
    from dswb.launch import launch_detached  # stdlib + config only; imported when first used

    return launch_detached(preset, runs_root, overrides)


def default_resumer(run_root: Path) -> tuple[RunPaths, int]:
    from dswb.launch import resume_detached

    return resume_detached(run_root)


class DswbApp(App):
    """Runs list -> run dashboard / compare; launch form, help, palette commands."""

    CSS_PATH = "dswb.tcss"
    TITLE = "dswb"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (40, "-tall")]
    COMMANDS = App.COMMANDS | {RunCommands}
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    def __init__(self, runs_root: Path, attach: RunPaths | None = None, *,
                 clock: Callable[[], float] = time.time, poll_interval: float = 0.25,
                 scan_interval: float = 1.0, refresh_s: float = DEFAULT_REFRESH_S,
                 launcher: Launcher | None = None, resumer: Callable[[Path], tuple[RunPaths, int]] | None = None,
                 exit_after_first_frame: bool = False, root_label: str | None = None,
                 presets: Callable[[], list[PresetChoice]] | None = None) -> None:
        super().__init__()
        self.runs_root = Path(runs_root)
        self.root_label = root_label or str(runs_root)  # how the root is shown (tests pin it)
        self.presets = presets or available_presets
        self.attach = attach
        self.clock = clock
        self.poll_interval = poll_interval
        self.refresh_s = refresh_s  # a dashboard redraws at most this often
        self.launcher = launcher or default_launcher
        self.resumer = resumer or default_resumer
        self.exit_after_first_frame = exit_after_first_frame
        self.runs: list[RunRow] = []
        self.followers: dict[str, RunFollower] = {}
        self._follow_counts: dict[str, int] = {}
        self.scanner = RunsScanner(self.runs_root, self.post_message, interval=scan_interval)
        self.controls_sent: list[tuple[str, str]] = []
        self.first_frame_at: float | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        return iter(())

    def on_mount(self) -> None:
        self.scanner.active = self.attach is None
        self.scanner.start()
        if self.attach is None:
            self.push_screen(RunsScreen())
        else:  # the runs list is built when the user first goes back to it
            self.push_screen(DashboardScreen(self.attach, refresh_s=self.refresh_s))

    def screen_mounted(self) -> None:
        """Called by the runs list and the dashboard when mounted (the first frame follows)."""
        if self.exit_after_first_frame and self.first_frame_at is None:
            self.call_after_refresh(self._first_frame_drawn)

    def _first_frame_drawn(self) -> None:
        self.first_frame_at = time.time()
        self.exit()

    def on_unmount(self) -> None:
        self.stop_threads()

    def stop_threads(self) -> None:
        self.scanner.stop(timeout=1.0)
        for follower in list(self.followers.values()):
            follower.stop(timeout=1.0)
        self.followers.clear()
        self._follow_counts.clear()

    # -- followers --------------------------------------------------------------------------
    def follow(self, paths: RunPaths) -> RunFollower:
        """Start (or share) the follower thread of a run; pair with `unfollow`."""
        follower = self.followers.get(paths.run_id)
        if follower is None:
            follower = RunFollower(paths, self.post_message, interval=self.poll_interval)
            self.followers[paths.run_id] = follower
            follower.start()
        self._follow_counts[paths.run_id] = self._follow_counts.get(paths.run_id, 0) + 1
        return follower

    def unfollow(self, run_id: str) -> None:
        count = self._follow_counts.get(run_id, 0) - 1
        if count > 0:
            self._follow_counts[run_id] = count
            return
        self._follow_counts.pop(run_id, None)
        follower = self.followers.pop(run_id, None)
        if follower is not None:
            follower.stop(timeout=0)

    def on_run_updated(self, message: RunUpdated) -> None:
        follower = message.follower
        follower.acknowledge()  # before reading: a change from now on posts a new message
        if self.followers.get(follower.model.run_id) is not follower:
            return
        for screen in self.screen_stack:
            if follower.model.run_id in getattr(screen, "watched_runs", lambda: set())():
                screen.refresh_run(follower)

    def on_runs_scanned(self, message: RunsScanned) -> None:
        self.runs = message.scanner.latest()
        for screen in self.screen_stack:
            if isinstance(screen, RunsScreen):
                screen.show_rows(self.runs)

    # -- navigation ---------------------------------------------------------------------------
    def open_run(self, paths: RunPaths) -> None:
        self.push_screen(DashboardScreen(paths, refresh_s=self.refresh_s))

    def back_to_runs(self) -> None:
        """Leave a run's screen for the runs list (built now if the app opened on a run)."""
        if any(isinstance(screen, RunsScreen) for screen in self.screen_stack):
            self.pop_screen()
        else:
            self.switch_screen(RunsScreen())

    def open_compare(self, a: RunPaths, b: RunPaths) -> None:
        self.push_screen(CompareScreen(a, b))

    def action_launch(self) -> None:
        if isinstance(self.screen, LaunchScreen):
            return

        def launched(paths: RunPaths | None) -> None:
            if paths is not None:
                self.scanner.rescan()
                self.notify(f"started {paths.run_id}")
                self.open_run(paths)

        self.push_screen(LaunchScreen(self.runs_root, self.presets()), launched)

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        screen = self.screen
        sections = []
        keys = screen.help_keys() if hasattr(screen, "help_keys") else getattr(screen, "HELP", None)
        if keys:
            sections.append((_screen_title(screen), dict(keys)))
        sections.append(("Settings", {
            "refresh": f"a dashboard redraws at most every {self.refresh_s:g} s "
                       "(dswb tui --refresh SECONDS; longer is lighter over SSH)"}))
        self.push_screen(HelpScreen(sections))

    def action_open_run(self, run_id: str) -> None:
        row = next((r for r in self.runs if r.run_id == run_id), None)
        if row is not None:
            self.open_run(row.paths)

    # -- control ------------------------------------------------------------------------------
    def send_control(self, paths: RunPaths, command: str) -> None:
        """Append a command to the run's control channel; the run acts at its next step."""
        try:
            send_command(paths.root, command)
        except (UserError, OSError) as exc:
            self.notify(str(exc), severity="error")
            return
        self.controls_sent.append((paths.run_id, command))
        self.notify(f"sent {command} to {paths.run_id}")

    def confirm_stop(self, paths: RunPaths) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.send_control(paths, "stop")

        self.push_screen(ConfirmScreen(f"Stop {paths.run_id}?",
                                       "It saves a checkpoint and exits; R resumes it later."), answered)

    def resume_run(self, paths: RunPaths) -> None:
        row = next((r for r in self.runs if r.run_id == paths.run_id), None)
        state = row.state if row else "unknown"
        if state in ("running", "starting", "paused"):
            self.notify(f"{paths.run_id} is {state}; nothing to resume", severity="warning")
            return
        try:
            self.resumer(paths.root)
        except (UserError, OSError) as exc:
            self.notify(str(exc), severity="error")
            return
        self.scanner.rescan()
        self.notify(f"resuming {paths.run_id} from its last checkpoint")

    # -- command palette ----------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Launch a run", "Pick a preset, stages and overrides", self.action_launch)
        yield SystemCommand("Keys", "List every key of this screen", self.action_help)
        yield SystemCommand("Rescan runs", "Read the runs root again now", self.scanner.rescan)
        paths = getattr(screen, "paths", None)
        if isinstance(screen, DashboardScreen) and paths is not None:
            yield SystemCommand("Stop this run", "Checkpoint and exit (asks first)", lambda: self.confirm_stop(paths))
            yield SystemCommand("Pause / resume this run", "Toggle pause", screen.action_pause_resume)
            yield SystemCommand("Checkpoint this run now", "Write a checkpoint at the next step",
                                lambda: self.send_control(paths, "checkpoint"))
        if isinstance(screen, RunsScreen):
            yield SystemCommand("Compare marked runs", "Overlay the loss of two runs", screen.action_compare)


def _screen_title(screen: Screen) -> str:
    return {"RunsScreen": "Runs list", "DashboardScreen": "Run dashboard", "CompareScreen": "Compare",
            "LaunchScreen": "Launch form"}.get(type(screen).__name__, type(screen).__name__)


def create_app(runs_root: Path | str, attach: str | RunPaths | None = None, **options) -> DswbApp:
    """The dashboard for `runs_root`, opened on the run `attach` (id, unique part, path, latest).

    Raises `UserError` (one line) when `attach` names no run. `options` go to `DswbApp`
    (tests freeze the clock, speed up polling, or inject a launcher).
    """
    runs_root = Path(runs_root)
    paths = attach if isinstance(attach, RunPaths) or attach is None else resolve_run(attach, runs_root)
    return DswbApp(runs_root, paths, **options)
