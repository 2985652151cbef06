"""Benchmarks behind `dswb bench NAME`: each module has `run(quick) -> dict` and `format_table(result) -> str`."""
