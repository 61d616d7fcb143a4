"""MGDA and MGDA-UB (Sener & Koltun, 2018)."""

from __future__ import annotations

from typing import Any

from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers import solvers
from mtl_keras.balancers.base import GramianBalancer
from mtl_keras.balancers.registry import register
from mtl_keras.balancers.solvers import min_norm_simplex

_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def gradient_normalizers(task_losses, gramian, normalization: str):
    """The per-task scales `n_k` that MGDA divides the gradients by.

    `"none"`: 1; `"l2"`: `‖g_k‖`; `"loss"`: `L_k`; `"loss+"`: `L_k·‖g_k‖`, as
    in Sener & Koltun's `gradient_normalizers`. A zero scale (zero gradient
    or zero loss) is replaced by 1, which leaves that gradient as it is.
    """
    norms = ops.sqrt(ops.maximum(ops.diagonal(gramian), 0.0))
    if normalization == "none":
        scales = ops.ones_like(task_losses)
    elif normalization == "l2":
        scales = norms
    elif normalization == "loss":
        scales = task_losses
    else:
        scales = task_losses * norms
    return ops.where(scales > 1e-12, scales, 1.0)


@register("mgda")
class MGDA(GramianBalancer):
    """Multiple-gradient descent: the min-norm point of the task gradients.

    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018. With normalised gradients `ĝ_k = g_k / n_k`, it solves

        λ = argmin_{λ ∈ simplex} ‖Σ_k λ_k ĝ_k‖²  =  argmin λᵀ M̂ λ,
        M̂_ij = M_ij / (n_i n_j),

    and returns `w_k = λ_k / n_k`, so that the update `wᵀJ = Σ λ_k ĝ_k` is
    the min-norm point itself (as LibMTL applies it). With `rescale=False`
    it returns `λ` itself, put on the raw losses as Sener & Koltun's
    training script does; the two differ only when
    `normalization != "none"`. The solver is Frank–Wolfe with exact line
    search (closed form for two tasks) followed by exact active-set rounds,
    all in-graph (see `solvers.min_norm_simplex`).

    `mode="rep"` gives MGDA-UB: the gradients are taken over the shared
    representation (also available as the name `"mgda_ub"`).

    Args:
        normalization: `"none"` (default), `"l2"`, `"loss"` or `"loss+"`.
        iterations: Frank–Wolfe iterations (Sener's code caps them at 250).
        rescale: Whether the weights are `λ_k / n_k` (True, the default) or
            `λ_k` (False, the reference training script's choice).
        mode: `"params"` or `"rep"`, see `GradientBalancer`.

    Example:

    ```python
    balancer = mtl_keras.balancers.MGDA()
    balancer.balance([1.0, 1.0], [[1.0, 0.0], [0.0, 4.0]])  # [0.8, 0.2]
    ```
    """

    solve_dtype = solvers.SOLVE_DTYPE

    def __init__(
        self,
        normalization: str = "none",
        iterations: int = 250,
        rescale: bool = True,
        mode: str = "params",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, name=name, **kwargs)
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"MGDA: normalization must be one of {_NORMALIZATIONS}, got "
                f"{normalization!r}."
            )
        self.normalization = normalization
        self.iterations = int(iterations)
        self.rescale = bool(rescale)

    def compute_weights(self, task_losses: Tensor, gramian: Tensor) -> Tensor:
        scales = gradient_normalizers(task_losses, gramian, self.normalization)
        normalized = gramian / ops.outer(scales, scales)
        weights = min_norm_simplex(normalized, self.iterations)
        return weights / scales if self.rescale else weights

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "normalization": self.normalization,
            "iterations": self.iterations,
            "rescale": self.rescale,
        }
