"""Aligned-MTL (Senushkin et al., 2023)."""

from __future__ import annotations

from typing import Any

from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers import solvers
from mtl_keras.balancers.base import GramianBalancer
from mtl_keras.balancers.registry import register
from mtl_keras.balancers.solvers import normalize_gramian

_SCALE_MODES = ("min", "median", "rmse")


def _retained_scale(eigenvalues, retained, scale_mode: str):
    """The eigenvalue `σ` the aligned gradients are scaled to."""
    count = ops.sum(ops.cast(retained, "int32"))
    if scale_mode == "min":
        return ops.min(ops.where(retained, eigenvalues, float("inf")))
    if scale_mode == "median":
        # torch.median's convention: the lower of the two middle values.
        ascending = ops.sort(ops.where(retained, eigenvalues, float("inf")))
        return ops.take(ascending, ops.maximum(count - 1, 0) // 2)
    total = ops.sum(ops.where(retained, eigenvalues, 0.0))
    return total / ops.cast(ops.maximum(count, 1), eigenvalues.dtype)


@register("aligned_mtl")
class AlignedMTL(GramianBalancer):
    """Aligns the task gradients into an orthogonal, equal-norm system.

    Senushkin et al., "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023. With the eigendecomposition `M = V Λ Vᵀ`, keeping
    the eigenvalues above `rtol·λ_max` (the rank of the gradient system),

        B = sqrt(σ) · V Λ^(-1/2) Vᵀ,     w = B·1,

    so that the rows of `B J` are orthogonal with norm `sqrt(σ)`, and the
    update `wᵀJ` is their sum (as in the authors' code and LibMTL; torchjd
    averages them, which is `w/K`). `σ` is the smallest retained eigenvalue
    (`scale_mode="min"`, default), their lower median (`"median"`) or their
    mean (`"rmse"`), as in the authors' code.

    The authors truncate at `λ_max·K·ε` with ε the float32 machine epsilon;
    float32 eigenvalues of a singular Gramian are only accurate to about
    `ε·λ_max`, so the default `rtol=1e-5` is a little wider, which keeps
    parallel or duplicated gradients from blowing up.

    Args:
        scale_mode: `"min"`, `"median"` or `"rmse"`.
        rtol: Relative eigenvalue cut-off.
        mode: `"params"` or `"rep"`, see `GradientBalancer`.

    Example:

    ```python
    balancer = mtl_keras.balancers.AlignedMTL()
    balancer.balance([1.0, 1.0], [[1.0, 0.0], [0.0, 4.0]])  # [1.0, 0.5]
    ```
    """

    solve_dtype = solvers.SOLVE_DTYPE

    def __init__(
        self,
        scale_mode: str = "min",
        rtol: float = 1e-5,
        mode: str = "params",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, name=name, **kwargs)
        if scale_mode not in _SCALE_MODES:
            raise ValueError(
                f"AlignedMTL: scale_mode must be one of {_SCALE_MODES}, got "
                f"{scale_mode!r}."
            )
        self.scale_mode = scale_mode
        self.rtol = float(rtol)

    def compute_weights(self, task_losses: Tensor, gramian: Tensor) -> Tensor:
        gramian = normalize_gramian(gramian)
        eigenvalues, eigenvectors = ops.eigh(gramian)
        retained = eigenvalues > ops.maximum(self.rtol * ops.max(eigenvalues), 1e-12)
        inverse_sqrt = ops.where(
            retained, 1.0 / ops.sqrt(ops.where(retained, eigenvalues, 1.0)), 0.0
        )
        scale = _retained_scale(eigenvalues, retained, self.scale_mode)
        scale = ops.where(ops.any(retained), ops.sqrt(scale), 0.0)
        # B·1 = sqrt(σ) V Λ^(-1/2) Vᵀ 1.
        projected_ones = ops.sum(eigenvectors, axis=0) * inverse_sqrt
        return scale * ops.matmul(eigenvectors, projected_ones)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "scale_mode": self.scale_mode,
            "rtol": self.rtol,
        }
