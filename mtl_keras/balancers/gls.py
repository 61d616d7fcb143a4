"""Geometric loss strategy (Chennupati et al., 2019)."""

from __future__ import annotations

from typing import Any

from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers.base import LossBalancer
from mtl_keras.balancers.registry import register


@register("gls")
class GeometricLossStrategy(LossBalancer):
    """Minimises the geometric mean of the task losses.

    Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation and
    Geometric Loss Strategy for Multi-Task Learning", CVPR-W 2019:
    `total = (Π_k L_k)^(1/K)`.

    Its gradient is `Σ_k G/(K·L_k)·∇L_k` with `G` the geometric mean, so the
    reported weights are `G/(K·L_k)` (held constant). The product is computed
    as `exp(mean(log L))` for stability; losses are floored at `epsilon`.

    Args:
        epsilon: Floor on each task loss before the logarithm.

    Example:

    ```python
    model.compile(optimizer="adam", loss=losses, balancer="gls")
    ```
    """

    def __init__(
        self, epsilon: float = 1e-8, name: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.epsilon = float(epsilon)

    def _geometric_mean(self, task_losses):
        return ops.exp(ops.mean(ops.log(ops.maximum(task_losses, self.epsilon))))

    def compute_weights(self, task_losses: Tensor) -> Tensor:
        task_losses = ops.stop_gradient(task_losses)
        num_tasks = ops.cast(ops.shape(task_losses)[0], "float32")
        floored = ops.maximum(task_losses, self.epsilon)
        return self._geometric_mean(task_losses) / (num_tasks * floored)

    def combine(self, task_losses: Tensor) -> tuple[Tensor, Tensor]:
        task_losses = ops.convert_to_tensor(task_losses, dtype="float32")
        weights = self.balance(task_losses)
        return self._geometric_mean(task_losses), weights

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}
