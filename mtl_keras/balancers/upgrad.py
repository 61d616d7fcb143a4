"""UPGrad (Quinton & Rey, 2024): unconflicting projection of gradients."""

from __future__ import annotations

from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers.dual_cone import DualConeBalancer
from mtl_keras.balancers.registry import register
from mtl_keras.balancers.solvers import min_quadratic_above


@register("upgrad")
class UPGrad(DualConeBalancer):
    """Averages the projections of each task gradient onto the dual cone.

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024
    (torchjd's `UPGrad`). Each `g_i` (scaled by 1/K) is projected onto the
    dual cone `{x : J x ≥ 0}` of the task gradients, and the projections are
    summed. In weight space (their Proposition 1), the projection of `Jᵀu`
    is `Jᵀv` with

        v = argmin_{v ≥ u} vᵀ G v,      G = M / trace(M) + reg_eps·I,

    so the weights are `Σ_i v_i` with `u = e_i / K`. Since every `Jᵀv_i` is
    in the dual cone, the update never conflicts with a task gradient:
    `g_k · (wᵀJ) ≥ 0` for all k (up to the regularisation). The K small QPs
    are solved in-graph and exactly by active-set rounds
    (`solvers.min_quadratic_above`) instead of torchjd's quadprog.

    Args:
        norm_eps: Below this trace the Gramian counts as zero (torchjd).
        reg_eps: Added to the diagonal of the normalised Gramian (torchjd).
        mode: `"params"` or `"rep"`, see `GradientBalancer`.

    Example:

    ```python
    balancer = mtl_keras.balancers.UPGrad()
    jacobian = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
    balancer.update_direction([1.0, 1.0], jacobian)  # [0.2929, 1.9004, 1.9004]
    ```
    """

    def compute_weights(self, task_losses: Tensor, gramian: Tensor) -> Tensor:
        num = gramian.shape[0]
        regularized = self.regularized_gramian(gramian)
        lower = ops.eye(num, dtype=gramian.dtype) / num
        return ops.sum(min_quadratic_above(regularized, lower), axis=0)
