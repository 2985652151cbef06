"""Placeholder, being written."""
def watch() -> None:
    """Follow a run's events."""
