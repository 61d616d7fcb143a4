"""DualProj (Quinton & Rey, 2024): projects the mean onto the dual cone."""

from __future__ import annotations

from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers.dual_cone import DualConeBalancer
from mtl_keras.balancers.registry import register
from mtl_keras.balancers.solvers import min_quadratic_above


@register("dualproj")
class DualProj(DualConeBalancer):
    """Projects the mean gradient onto the dual cone of the task gradients.

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024
    (torchjd's `DualProj`). One QP in weight space,

        w = argmin_{w ≥ 1/K} wᵀ G w,      G = M / trace(M) + reg_eps·I,

    so `wᵀJ` is the projection of the mean gradient onto `{x : J x ≥ 0}` and
    conflicts with no task. Solved in-graph by `solvers.min_quadratic_above`.

    Args:
        norm_eps: Below this trace the Gramian counts as zero (torchjd).
        reg_eps: Added to the diagonal of the normalised Gramian (torchjd).
        mode: `"params"` or `"rep"`, see `GradientBalancer`.

    Example:

    ```python
    balancer = mtl_keras.balancers.DualProj()
    jacobian = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
    balancer.update_direction([1.0, 1.0], jacobian)  # [0.5563, 1.1109, 1.1109]
    ```
    """

    def compute_weights(self, task_losses: Tensor, gramian: Tensor) -> Tensor:
        num = gramian.shape[0]
        regularized = self.regularized_gramian(gramian)
        lower = ops.ones((num,), dtype=gramian.dtype) / num
        return min_quadratic_above(regularized, lower)
