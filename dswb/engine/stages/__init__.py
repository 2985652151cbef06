"""Training stages, one module each, chained by `dswb.engine.runner`.

A stage is a function `run(ctx: StageContext) -> str` returning its final state
(`finished`, `stopped` or `failed`) and writing `final/<stage>/` when it finishes.
"""
