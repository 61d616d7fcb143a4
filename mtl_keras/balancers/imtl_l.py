"""IMTL-L: the loss-balancing half of IMTL (Liu et al., 2021)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers.base import LossBalancer
from mtl_keras.balancers.registry import register


@register("imtl_l")
class IMTLL(LossBalancer):
    """Learns a scale per task so every scaled loss stays near a constant.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021:
    `total = Σ_k exp(s_k)·L_k − s_k`, with learnable `s` starting at 0.
    Minimising over `s_k` gives `exp(s_k)·L_k = 1`.

    Args:
        initial_scale: Start value of `s`.

    Example:

    ```python
    model.compile(optimizer="adam", loss=losses, balancer="imtl_l")
    ```
    """

    def __init__(
        self, initial_scale: float = 0.0, name: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.initial_scale = float(initial_scale)

    def build_state(self, num_tasks: int) -> None:
        initial = self.initial_scale
        self.log_scales = self.add_weight(
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(initial),
            trainable=True,
            name="log_scales",
        )

    def compute_weights(self, task_losses: Tensor) -> Tensor:
        return ops.exp(ops.cast(self.log_scales, "float32"))

    def regularizer(self) -> Tensor:
        return -ops.sum(ops.cast(self.log_scales, "float32"))

    def get_config(self) -> dict:
        return {**super().get_config(), "initial_scale": self.initial_scale}
