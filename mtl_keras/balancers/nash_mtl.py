"""Nash-MTL (Navon et al., 2022): the Nash bargaining solution."""

from __future__ import annotations

from typing import Any

from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers import solvers
from mtl_keras.balancers.base import GramianBalancer
from mtl_keras.balancers.registry import register
from mtl_keras.balancers.solvers import first_argmax, update_norm


def _scaled_start(regularized, candidates):
    """The best of some positive starting points (C, K), each optimally scaled.

    Along a ray `t·β`, `f(tβ) = ½t²·βᵀGβ − K log t − Σ log β` is minimal at
    `t = sqrt(K / βᵀGβ)`, where `f = K/2 − Σ log(tβ)`: rescale every
    candidate, keep the one with the largest `Σ log`.
    """
    num = regularized.shape[0]
    quadratic = ops.sum(ops.matmul(candidates, regularized) * candidates, axis=-1)
    scaled = candidates * ops.sqrt(num / ops.maximum(quadratic, 1e-30))[:, None]
    return ops.take(scaled, first_argmax(ops.sum(ops.log(scaled), axis=-1)), axis=0)


def _newton_steps(gramian, alpha, iterations: int):
    """Damped Newton steps on `f(α) = ½αᵀGα − Σ log α` from `alpha`."""

    def newton_step(_, alpha):
        gradient = ops.matmul(gramian, alpha) - 1.0 / alpha
        hessian = gramian + ops.diag(1.0 / (alpha * alpha))
        direction = ops.solve(hessian, gradient[:, None])[:, 0]
        decrement = ops.sqrt(ops.maximum(ops.sum(gradient * direction), 0.0))
        return ops.maximum(alpha - direction / (1.0 + decrement), 1e-12)

    return ops.fori_loop(0, iterations, newton_step, alpha)


def _residual(gramian, alpha):
    """`max_k |α_k (Gα)_k − 1|`, how far α is from solving `Gα = 1/α`."""
    return ops.max(ops.abs(alpha * ops.matmul(gramian, alpha) - 1.0))


def bargaining_weights(
    gramian, starts, iterations: int = 25, reg_eps: float = 1e-6, refine: int = 6
):
    """Solves `G α = 1/α`, `α > 0`, by damped Newton steps.

    `G α = 1/α` is the stationarity condition of the strictly convex,
    self-concordant function `f(α) = ½αᵀGα − Σ log α_k`. Each step is
    `α ← α − Δ/(1 + λ)` with the Newton direction `Δ = H⁻¹∇f`,
    `H = G + diag(1/α²)` and the Newton decrement `λ = sqrt(∇fᵀΔ)`; this
    damping keeps α positive and converges from any positive start,
    quadratically near the solution (Nesterov & Nemirovski). The start is the
    best of `starts` after optimal scaling; from there, on random problems
    with K ≤ 10, fewer than 15 steps reach 1e-6 from a cold start and fewer
    than 30 from an arbitrary one.

    The `iterations` steps solve `G + reg_eps·I`, for which a solution always
    exists; its solution is off the exact one by about `reg_eps` times the
    condition number of G. `refine` more steps on G itself, from there,
    remove that bias (Newton converges quadratically from so close); their
    result is kept where it solves `G α = 1/α` better (where no solution
    exists, the regularised one is returned).

    Args:
        gramian: Tensor (K, K), normalised (unit diagonal here).
        starts: Tensor (C, K) of positive candidate starting points.
        iterations: Number of Newton steps on the regularised problem.
        reg_eps: Diagonal regularisation.
        refine: Number of Newton steps on the unregularised problem.

    Returns:
        Tensor (K,), the solution.
    """
    num = gramian.shape[0]
    regularized = gramian + reg_eps * ops.eye(num, dtype=gramian.dtype)
    start = _scaled_start(regularized, starts)
    solution = _newton_steps(regularized, start, iterations)
    if refine <= 0:
        return solution
    refined = _newton_steps(gramian, solution, refine)
    better = ops.all(ops.isfinite(refined)) & (
        _residual(gramian, refined) < _residual(gramian, solution)
    )
    return ops.where(better, refined, solution)


@register("nash_mtl")
class NashMTL(GramianBalancer):
    """Weights from the Nash bargaining solution `M α = 1/α`.

    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022. The
    update `d = Σ α_k g_k` maximises `Σ log(g_k·d)` in a ball; its weights
    satisfy `α_k (M α)_k = 1` for every k. For two tasks this is
    `α_k = 1/(‖g_k‖·sqrt(1 + cos θ))`: the sum of the normalised gradients.

    In-graph solver: with `γ = ‖g‖∘α` the equation becomes `C γ = 1/γ` on
    the correlation matrix `C_ij = cos(g_i, g_j)`, which does not depend on
    the gradients' scales (the reference scales M by its Frobenius norm
    instead). It is solved exactly by damped Newton steps on
    `C + reg_eps·I`, then on C itself (which removes the regularisation's
    bias, about `reg_eps` times C's condition number; see
    `bargaining_weights`), in float64, started from the
    better of the previous weights (warm start) and `γ = 1`, so that
    `M α = 1/α` holds for the raw M. The reference runs up to 20
    convex-concave iterations with a cone solver (cvxpy/ECOS) and stops
    early; both aim at the same solution.

    Degenerate cases: a task whose gradient vanishes does not constrain the
    problem; it is solved as if its gradient were orthogonal to the others
    with their root-mean-square norm, which keeps its weight finite. When no
    bargaining solution exists (0 in the convex hull, e.g. opposite
    gradients), only the regularisation would hold the weights up and they
    would explode; then, like the reference whose solver fails there, the
    previous weights are kept (ones at the first step).

    `max_norm > 0` clips the update to `‖d‖ ≤ max_norm` (reference default
    1) by scaling the weights: `α ← α·min(1, max_norm/sqrt(αᵀMα))`. Unlike
    the reference, which clips only the shared parameters' gradient, the
    scale therefore also applies to the task heads; in `mode="rep"` the norm
    is that of the representation gradient. `max_norm=0` disables it.

    The reference's speed-up, recomputing the weights every N steps only,
    is `compile(update_every=N)` (`mtl_keras.engine.UpdateEvery`): in
    between, the engine runs one backward pass of `Σ α_k L_k` with the last
    weights, as the reference does (the clip of `max_norm` applies on
    refresh steps).

    Args:
        max_norm: Clip of the update norm, 0 to disable.
        iterations: Newton steps per solve.
        reg_eps: Diagonal regularisation of the correlation matrix.
        mode: `"params"` or `"rep"`, see `GradientBalancer`.

    Example:

    ```python
    balancer = mtl_keras.balancers.NashMTL(max_norm=0.0)
    balancer.balance([1.0, 1.0], [[1.0, 0.0], [0.0, 4.0]])  # [1.0, 0.5]
    ```
    """

    solve_dtype = solvers.SOLVE_DTYPE

    def __init__(
        self,
        max_norm: float = 1.0,
        iterations: int = 25,
        reg_eps: float = 1e-6,
        mode: str = "params",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, name=name, **kwargs)
        self.max_norm = float(max_norm)
        self.iterations = int(iterations)
        self.reg_eps = float(reg_eps)

    def build_state(self, num_tasks: int) -> None:
        self.last_weights = self.add_weight(
            shape=(num_tasks,),
            initializer="zeros",
            trainable=False,
            name="last_weights",
        )

    def _solve(self, gramian):
        num = gramian.shape[0]
        squared_norms = ops.diagonal(gramian)
        vanishing = squared_norms <= 1e-12 * ops.max(squared_norms)
        keep = 1.0 - ops.cast(vanishing, gramian.dtype)
        # A vanishing gradient is treated as orthogonal to the others, with
        # their root-mean-square norm (1 if every gradient vanishes).
        kept = ops.sum(keep)
        mean_square = ops.sum(squared_norms * keep) / ops.maximum(kept, 1.0)
        typical = ops.sqrt(ops.where(kept > 0, mean_square, 1.0))
        norms = ops.where(vanishing, typical, ops.sqrt(squared_norms))
        correlation = gramian / ops.outer(norms, norms)
        correlation = correlation * ops.outer(keep, keep) + ops.diag(1.0 - keep)

        previous = ops.cast(self.last_weights.value, gramian.dtype)
        has_previous = ops.all(previous > 0.0) & ops.all(ops.isfinite(previous))
        ones = ops.ones((num,), dtype=gramian.dtype)
        # α solves M α = 1/α iff γ = ‖g‖∘α solves C γ = 1/γ.
        warm = ops.where(has_previous, previous * norms, ones)
        solution = bargaining_weights(
            correlation, ops.stack([warm, ones]), self.iterations, self.reg_eps
        )
        # Without the regularisation, γ_k (Cγ)_k = 1; where the unregularised
        # product falls far below it, only reg_eps holds the solution up.
        products = solution * ops.matmul(correlation, solution)
        degenerate = ops.any(products < 0.5)
        fallback = ops.where(has_previous, previous, ones)
        return ops.where(degenerate, fallback, solution / norms)

    def compute_weights(self, task_losses: Tensor, gramian: Tensor) -> Tensor:
        weights = self._solve(gramian)
        self.last_weights.assign(weights)
        if self.max_norm > 0:
            norm = ops.maximum(update_norm(weights, gramian), 1e-20)
            weights = weights * ops.minimum(1.0, self.max_norm / norm)
        return weights

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "max_norm": self.max_norm,
            "iterations": self.iterations,
            "reg_eps": self.reg_eps,
        }
