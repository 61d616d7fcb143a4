"""IMTL-G (Liu et al., 2021): impartial gradient weighting."""

from __future__ import annotations

from typing import Any

from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers import solvers
from mtl_keras.balancers.base import GramianBalancer
from mtl_keras.balancers.registry import register
from mtl_keras.balancers.solvers import normalize_gramian, pinv_symmetric


@register("imtl_g")
class IMTLG(GramianBalancer):
    """Weights whose update has equal projections on every unit task gradient.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021. The
    update `d = Σ w_k g_k` should satisfy `d·g_k/‖g_k‖ = const` for all k and
    `Σ w_k = 1`. Since `d·g_k = (M w)_k`, this is `M w ∝ sqrt(diag(M))`; the
    robust closed form (as in torchjd) is

        v = pinv(M) · sqrt(diag(M)),      w = v / Σ v,

    with a pseudo-inverse that drops eigenvalues below `rtol·λ_max`, so
    parallel or zero gradients give finite weights (the minimum-norm
    solution). When `Σ v` vanishes (for instance two exactly opposite
    gradients, where only `d = 0` has equal projections), the mean weights
    `1/K` are returned instead.

    Args:
        rtol: Relative cut-off of the pseudo-inverse.
        mode: `"params"` or `"rep"`, see `GradientBalancer`.

    Example:

    ```python
    balancer = mtl_keras.balancers.IMTLG()
    balancer.balance([1.0, 1.0], [[1.0, 0.0], [0.0, 4.0]])  # [2/3, 1/3]
    ```
    """

    solve_dtype = solvers.SOLVE_DTYPE

    def __init__(
        self,
        rtol: float = 1e-6,
        mode: str = "params",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, name=name, **kwargs)
        self.rtol = float(rtol)

    def compute_weights(self, task_losses: Tensor, gramian: Tensor) -> Tensor:
        gramian = normalize_gramian(gramian)
        norms = ops.sqrt(ops.maximum(ops.diagonal(gramian), 0.0))
        raw = ops.matmul(pinv_symmetric(gramian, self.rtol), norms)
        total = ops.sum(raw)
        usable = ops.abs(total) > 1e-6 * ops.sum(ops.abs(raw))
        uniform = ops.ones_like(raw) / raw.shape[0]
        return ops.where(usable, raw / ops.where(usable, total, 1.0), uniform)

    def get_config(self) -> dict:
        return {**super().get_config(), "rtol": self.rtol}
