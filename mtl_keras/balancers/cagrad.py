"""CAGrad (Liu et al., 2021)."""

from __future__ import annotations

from keras import ops

from mtl_keras.balancers.base import GramianBalancer
from mtl_keras.balancers.registry import register
from mtl_keras.balancers.solvers import (
    min_norm_simplex,
    normalize_gramian,
    pinv_symmetric,
    project_to_simplex,
    update_norm,
)

_EPS = 1e-8
# Smallest ‖g_w‖ used to scale the correction (unit mean squared gradient norm).
_NORM_FLOOR = 1e-4


def _objective(gramian, mean_products, radius, weights):
    """`F(w) = g_wᵀg₀ + ρ‖g_w‖` for each row of `weights` (B, K)."""
    linear = ops.sum(weights * mean_products, axis=-1)
    squared = ops.sum(ops.matmul(weights, gramian) * weights, axis=-1)
    return linear + radius * ops.sqrt(ops.maximum(squared, 0.0))


def _face_solutions(gramian, mean_products, radius, weights):
    """The two exact stationary points of F on the face `weights` lies on.

    On a face S, with `n = ‖g_w‖ = ρ·s`, the stationarity conditions are the
    bordered linear system `[[G_S, 1], [1ᵀ, 0]]·[w; μ] = [−s·(G b)_S; 1]`,
    whose solution is affine in s: `w = a + s·v`. Then `‖g_w‖² = ρ²s²` is a
    quadratic equation in s; its two roots give the candidates (2, K).
    """
    num = gramian.shape[0]
    support = ops.cast(weights > 1e-6, gramian.dtype)
    block = gramian * ops.outer(support, support) + ops.diag(1.0 - support)
    top = ops.concatenate([block, support[:, None]], axis=1)
    bottom = ops.concatenate([support, ops.zeros((1,))])[None]
    inverse = pinv_symmetric(ops.concatenate([top, bottom], axis=0))
    offset = inverse[:num, num]
    slope = -ops.matmul(inverse[:num, :num], mean_products * support)
    quad = ops.sum(slope * ops.matmul(gramian, slope)) - radius * radius
    half_linear = ops.sum(offset * ops.matmul(gramian, slope))
    constant = ops.sum(offset * ops.matmul(gramian, offset))
    root = ops.sqrt(ops.maximum(half_linear * half_linear - quad * constant, 0.0))
    # Numerically stable roots of quad·s² + 2·half_linear·s + constant = 0.
    pivot = -(half_linear + ops.where(half_linear >= 0.0, root, -root))
    first = pivot / ops.where(ops.abs(quad) > _EPS, quad, _EPS)
    second = constant / ops.where(ops.abs(pivot) > _EPS, pivot, _EPS)
    scales = ops.stack([first, second])[:, None]
    return offset[None] + scales * slope[None], scales[:, 0]


def _polish(gramian, mean_products, radius, weights):
    """Replaces `weights` by an exact face solution if feasible and better."""
    candidates, scales = _face_solutions(gramian, mean_products, radius, weights)
    feasible = ops.all(candidates >= -1e-6, axis=-1) & (scales > 0.0)
    candidates = ops.maximum(candidates, 0.0)
    candidates = candidates / ops.maximum(ops.sum(candidates, -1, keepdims=True), _EPS)
    values = _objective(gramian, mean_products, radius, candidates)
    values = ops.where(feasible & ops.isfinite(values), values, float("inf"))
    best = ops.argmin(values)
    current = _objective(gramian, mean_products, radius, weights[None])[0]
    better = ops.take(values, best) <= current
    return ops.where(better, ops.take(candidates, best, axis=0), weights)


def cagrad_simplex_weights(gramian, c: float, iterations: int = 300):
    """Solves CAGrad's dual problem `min_{w ∈ Δ} g_wᵀg₀ + c‖g₀‖·‖g_w‖`.

    Accelerated projected gradient on the simplex with the step `n/(ρ·λ_max)`
    (the local curvature of `ρ‖g_w‖` is at most `ρ·λ_max/‖g_w‖`), then an
    exact solve on the face found (see `_face_solutions`); the min-norm
    point is kept instead if it does better (the case `g_w = 0`).

    Args:
        gramian: Tensor (K, K), already normalised.
        c: The radius factor of CAGrad.
        iterations: Projected-gradient iterations.

    Returns:
        `(w, radius)`: the weights (K,) and `ρ = c‖g₀‖`.
    """
    num = gramian.shape[0]
    mean_products = ops.mean(gramian, axis=1)  # G·b with b = 1/K
    radius = c * ops.sqrt(ops.maximum(ops.mean(gramian), 0.0))
    largest = ops.maximum(ops.max(ops.eigh(gramian)[0]), _EPS)

    def fista_step(_, state):
        weights, momentum_weights, t = state
        products = ops.matmul(gramian, momentum_weights)
        norm = ops.sqrt(ops.maximum(ops.sum(products * momentum_weights), 0.0) + _EPS)
        gradient = mean_products + radius * products / norm
        step = norm / ops.maximum(radius * largest, _EPS)
        new_weights = project_to_simplex(momentum_weights - step * gradient)
        new_t = 0.5 * (1.0 + ops.sqrt(1.0 + 4.0 * t * t))
        extrapolated = new_weights + ((t - 1.0) / new_t) * (new_weights - weights)
        return new_weights, extrapolated, new_t

    start = ops.ones((num,), dtype=gramian.dtype) / num
    one = ops.ones((), dtype=gramian.dtype)
    weights, _, _ = ops.fori_loop(0, iterations, fista_step, (start, start, one))
    weights = _polish(gramian, mean_products, radius, weights)
    # When 0 is in the hull, F may be minimal (0) at g_w = 0, where the step
    # above shrinks with ‖g_w‖; the exact min-norm point reaches it.
    min_norm = min_norm_simplex(gramian, iterations=50)
    values = _objective(gramian, mean_products, radius, ops.stack([weights, min_norm]))
    return ops.where(values[1] < values[0], min_norm, weights), radius


@register("cagrad")
class CAGrad(GramianBalancer):
    """Conflict-averse gradient descent.

    Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021. With `g₀` the mean gradient and `ρ = c‖g₀‖`, the update
    maximises the worst task improvement in the ball `‖d − g₀‖ ≤ ρ`. Its
    dual is solved in-graph over the simplex,

        w = argmin_{w ∈ Δ} g_wᵀg₀ + ρ‖g_w‖,     g_w = Σ_k w_k g_k,

    and `d = g₀ + (ρ/‖g_w‖)·g_w`, divided by `1 + c²` when `rescale=1` (the
    authors' default), by `1 + c` when `rescale=2`, kept as is when
    `rescale=0`. The returned weights are the coefficients of d:
    `(1/K + ρ·w_k/‖g_w‖) / scale`. When `‖g_w‖` is below 1e-4 times the
    root-mean-square gradient norm (0 is in the convex hull and the dual
    optimum is at `g_w ≈ 0`, where the correction's direction is undefined
    and its coefficients explode), the correction is dropped and d is the
    mean gradient (LibMTL divides by `‖g_w‖ + 1e-8`, torchjd returns zero
    weights there).

    The small problem is solved by accelerated projected gradient with a
    curvature-adapted step, then solved exactly on the face found, so the
    answer matches a generic solver (the reference uses scipy's SLSQP,
    torchjd a conic solver) to float32 accuracy.

    Defaults: `c = 0.4` as the paper uses on NYUv2 and Cityscapes; LibMTL's
    default is `c = 0.5`. torchjd's `CAGrad(c)` equals `rescale=0`.

    Args:
        c: Radius factor of the ball around the mean gradient (≥ 0).
        rescale: 0, 1 or 2, see above.
        iterations: Projected-gradient iterations of the inner solver.
        mode: `"params"` or `"rep"`, see `GradientBalancer`.

    Example:

    ```python
    balancer = mtl_keras.balancers.CAGrad(c=0.5)
    balancer.balance([1.0, 1.0], [[1.0, 0.0], [0.0, 1.0]])  # [0.6, 0.6]
    ```
    """

    def __init__(
        self,
        c: float = 0.4,
        rescale: int = 1,
        iterations: int = 300,
        mode: str = "params",
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(mode=mode, name=name, **kwargs)
        if c < 0:
            raise ValueError(f"CAGrad: c must be non-negative, got {c}.")
        if rescale not in (0, 1, 2):
            raise ValueError(f"CAGrad: rescale must be 0, 1 or 2, got {rescale}.")
        self.c = float(c)
        self.rescale = int(rescale)
        self.iterations = int(iterations)

    def compute_weights(self, task_losses, gramian):
        gramian = normalize_gramian(gramian)
        num = gramian.shape[0]
        weights, radius = cagrad_simplex_weights(gramian, self.c, self.iterations)
        # Below the floor the dual optimum sits at g_w ≈ 0, where the
        # correction's direction is undefined: keep the mean gradient.
        norm = update_norm(weights, gramian)
        usable = norm > _NORM_FLOOR
        correction = ops.where(usable, radius / ops.where(usable, norm, 1.0), 0.0)
        coefficients = 1.0 / num + correction * weights
        scale = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        return coefficients / scale

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "c": self.c,
            "rescale": self.rescale,
            "iterations": self.iterations,
        }
