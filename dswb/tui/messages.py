"""Messages the background threads post to the app (they never touch widgets)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from dswb.tui.follower import RunFollower, RunsScanner


class RunUpdated(Message):
    """A followed run has new events or a new status; read `follower.model` under its lock.

    At most one is waiting per follower: the follower posts again only after the app has
    called `follower.acknowledge()`, so a newer update replaces a waiting one.
    """

    def __init__(self, follower: "RunFollower") -> None:
        super().__init__()
        self.follower = follower


class RunsScanned(Message):
    """The runs root was scanned; the newest rows are `scanner.latest()`."""

    def __init__(self, scanner: "RunsScanner") -> None:
        super().__init__()
        self.scanner = scanner
