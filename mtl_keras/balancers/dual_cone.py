"""What UPGrad and DualProj share: the dual cone of the task gradients."""

from __future__ import annotations

from typing import Any

from keras import ops

from mtl_keras.balancers import solvers
from mtl_keras.balancers.base import GramianBalancer


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


class DualConeBalancer(GramianBalancer):
    """Base of the methods that project onto the dual cone `{x : J x ≥ 0}`.

    In weight space the projection of `Jᵀu` is `Jᵀv` with
    `v = argmin_{v ≥ u} vᵀ G v` and `G = M / trace(M) + reg_eps·I`
    (Quinton & Rey 2024, Proposition 1); subclasses choose the `u`s.

    Args:
        norm_eps: Below this trace the Gramian counts as zero (torchjd).
        reg_eps: Added to the diagonal of the normalised Gramian (torchjd).
        mode: `"params"` or `"rep"`, see `GradientBalancer`.
    """

    solve_dtype = solvers.SOLVE_DTYPE

    def __init__(
        self,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        mode: str = "params",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, name=name, **kwargs)
        self.norm_eps = float(norm_eps)
        self.reg_eps = float(reg_eps)

    def regularized_gramian(self, gramian):
        """`G`, the normalised and regularised Gramian the QPs use."""
        return normalize_and_regularize(gramian, self.norm_eps, self.reg_eps)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "norm_eps": self.norm_eps,
            "reg_eps": self.reg_eps,
        }
