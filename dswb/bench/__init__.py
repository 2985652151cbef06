"""Benchmarks behind `dswb bench NAME`: each module has `run(...) -> dict` and `format_table(result) -> str`.

They sit above the engine and the dashboard and import them inside functions, so that
`dswb --help` stays light.
"""
