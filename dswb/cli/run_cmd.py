"""Placeholder, being written."""
def run() -> None:
    """Run a preset."""
