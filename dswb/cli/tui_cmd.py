"""Placeholder, being written."""
def tui() -> None:
    """Open the dashboard."""
