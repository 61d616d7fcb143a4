"""UPGrad (Quinton & Rey, 2024): unconflicting projection of gradients."""

from __future__ import annotations

from keras import ops

from mtl_keras.balancers.base import GradientBalancer
from mtl_keras.balancers.registry import register
from mtl_keras.balancers.solvers import min_quadratic_above


def normalize_and_regularize(gramian, norm_eps: float, reg_eps: float):
    """torchjd's preprocessing: `M / trace(M) + reg_eps·I`.

    As in torchjd, a Gramian whose trace is below `norm_eps` counts as zero
    (the threshold is absolute, so it depends on the scale of the losses).
    """
    trace = ops.trace(gramian)
    normalized = ops.where(
        trace < norm_eps, 0.0, gramian / ops.where(trace < norm_eps, 1.0, trace)
    )
    return normalized + reg_eps * ops.eye(gramian.shape[0], dtype=gramian.dtype)


@register("upgrad")
class UPGrad(GradientBalancer):
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

    def __init__(
        self,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        mode: str = "params",
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(mode=mode, name=name, **kwargs)
        self.norm_eps = float(norm_eps)
        self.reg_eps = float(reg_eps)

    def compute_weights(self, task_losses, gramian):
        num = gramian.shape[0]
        regularized = normalize_and_regularize(gramian, self.norm_eps, self.reg_eps)
        lower = ops.eye(num, dtype=gramian.dtype) / num
        return ops.sum(min_quadratic_above(regularized, lower), axis=0)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "norm_eps": self.norm_eps,
            "reg_eps": self.reg_eps,
        }
