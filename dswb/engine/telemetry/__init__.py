"""The run's line to its run directory, both ways.

Out: `monitor` (events, status, log lines, alerts), `system` (CPU/RAM/GPU samples on a background
thread), `mfu` (FLOPs per token, throughput and utilisation). In: `control` (pause, stop and
checkpoint commands written by viewers).
"""
