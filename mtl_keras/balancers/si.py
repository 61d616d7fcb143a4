"""Scale-invariant log loss."""

from __future__ import annotations

from typing import Any

from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers.base import LossBalancer
from mtl_keras.balancers.registry import register


@register("si")
class ScaleInvariant(LossBalancer):
    """Minimises the sum of the logarithms of the task losses.

    `total = Σ_k log L_k`, invariant to rescaling any task loss (studied as
    "SI" by Navon et al., Nash-MTL, ICML 2022, and by Lin et al., DB-MTL).
    Its gradient is `Σ_k ∇L_k / L_k`, so the reported weights are `1/L_k`
    (held constant). Losses are floored at `epsilon` before the logarithm.

    Args:
        epsilon: Floor on each task loss.

    Example:

    ```python
    model.compile(optimizer="adam", loss=losses, balancer="si")
    ```
    """

    def __init__(
        self, epsilon: float = 1e-8, name: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.epsilon = float(epsilon)

    def compute_weights(self, task_losses: Tensor) -> Tensor:
        return 1.0 / ops.maximum(ops.stop_gradient(task_losses), self.epsilon)

    def combine(self, task_losses: Tensor) -> tuple[Tensor, Tensor]:
        task_losses = ops.convert_to_tensor(task_losses, dtype="float32")
        weights = self.balance(task_losses)
        return ops.sum(ops.log(ops.maximum(task_losses, self.epsilon))), weights

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}
