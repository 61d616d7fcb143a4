"""Static (equal) weighting."""

from __future__ import annotations

from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers.base import LossBalancer
from mtl_keras.balancers.registry import register


@register("static")
class Static(LossBalancer):
    """Every task weighted 1: the total is the plain sum of the task losses.

    `total = Σ_k L_k`, where `L_k` already carries the model's task weight
    (from `compile(loss_weights=...)` or an epoch-level callback), so this is
    exactly what `keras.Model` does with `loss_weights`. As in LibMTL's equal
    weighting, it is a sum, not a mean. Also available as `"ew"`/`"equal"`.

    Example:

    ```python
    model.compile(optimizer="adam", loss=losses, balancer="static")
    ```
    """

    def compute_weights(self, task_losses: Tensor) -> Tensor:
        return ops.ones_like(task_losses)
