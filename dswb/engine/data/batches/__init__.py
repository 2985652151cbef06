"""Samples to batches: the padded-token planner, collation, the resumable stream, preference pairs."""
