"""How much of an optimizer step the current forward pass is: the weight of its router losses.

The router losses (auxiliary, sequence-wise, z-loss) are computed inside the model's forward pass and
reach the gradients through the routers' backward, not through the stage's loss. Each backward site
says what share of the step its micro-batch is (`with loss_share(n_micro / n_step):` the same weight
its own loss gets), so that the router losses of a step with gradient accumulation weigh what they
would in one big batch. Outside any such block a forward pass counts as a whole step.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

_shares: list[float] = [1.0]


@contextmanager
def loss_share(fraction: float) -> Iterator[None]:
    _shares.append(float(fraction))
    try:
        yield
    finally:
        _shares.pop()


def current_share() -> float:
    return _shares[-1]
