"""Random loss weighting (Lin et al., 2022)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers.base import LossBalancer
from mtl_keras.balancers.registry import register


@register("rlw")
class RandomLossWeighting(LossBalancer):
    """Draws fresh random task weights at every step.

    Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test
    for Multi-Task Learning", TMLR 2022: `w = softmax(ε)`, `ε ~ N(0, I_K)`,
    so the weights lie on the simplex (they sum to 1, as in LibMTL).

    The random stream is a `keras.random.SeedGenerator`, whose state is a
    weight of this layer: a resumed run draws the same weights as an
    uninterrupted one.

    Args:
        seed: Seed of the random stream.

    Example:

    ```python
    model.compile(optimizer="adam", loss=losses, balancer="rlw")
    ```
    """

    def __init__(
        self, seed: int | None = None, name: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def compute_weights(self, task_losses: Tensor) -> Tensor:
        noise = keras.random.normal(
            ops.shape(task_losses), seed=self.seed_generator, dtype="float32"
        )
        return ops.softmax(noise)

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed}
