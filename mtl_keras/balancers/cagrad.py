"""CAGrad (Liu et al., 2021)."""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers import solvers
from mtl_keras.balancers.base import GramianBalancer
from mtl_keras.balancers.registry import register
from mtl_keras.balancers.solvers import (
    first_argmin,
    min_norm_simplex,
    normalize_gramian,
    pinv_symmetric,
    project_to_simplex,
    update_norm,
)

_EPS = 1e-8
#: Up to this many tasks CAGrad's dual is solved exactly over all 2^K − 1
#: faces of the simplex (63 small linear systems at K = 6, one batched op).
EXACT_MAX_TASKS = 6
# Smallest ‖g_w‖ used to scale the correction (unit mean squared gradient norm).
_NORM_FLOOR = 1e-4


def _objective(gramian, mean_products, radius, weights):
    """`F(w) = g_wᵀg₀ + ρ‖g_w‖` for each row of `weights` (B, K)."""
    linear = ops.sum(weights * mean_products, axis=-1)
    squared = ops.sum(ops.matmul(weights, gramian) * weights, axis=-1)
    return linear + radius * ops.sqrt(ops.maximum(squared, 0.0))


def _face_solutions(gramian, mean_products, radius, supports):
    """The stationary points of F on the faces `supports` (F, K) of 0/1.

    On a face S, with `n = ‖g_w‖ = ρ·s`, the stationarity conditions are the
    bordered linear system `[[G_S, 1], [1ᵀ, 0]]·[w; μ] = [−s·(G b)_S; 1]`,
    whose solution is affine in s: `w = a + s·v` (`a`, at s = 0, is the
    face's min-norm point). Then `‖g_w‖² = ρ²s²` is a quadratic equation in
    s; its two roots and `a` give three candidates per face: (F, 3, K), and
    the scales s (F, 3), the min-norm point's set to 1.
    """
    num = gramian.shape[0]
    support = ops.cast(supports, gramian.dtype)
    pairs = support[:, :, None] * support[:, None, :]
    block = (
        gramian[None] * pairs
        + (1.0 - support)[:, :, None] * ops.eye(num, dtype=gramian.dtype)[None]
    )
    top = ops.concatenate([block, support[:, :, None]], axis=2)
    bottom = ops.concatenate([support, ops.zeros_like(support[:, :1])], axis=1)
    inverse = pinv_symmetric(ops.concatenate([top, bottom[:, None]], axis=1))
    offset = inverse[:, :num, num]
    slope = -ops.einsum(
        "fij,fj->fi", inverse[:, :num, :num], mean_products[None] * support
    )

    def form(a, b):
        return ops.sum(a * ops.matmul(b, gramian), axis=-1)

    quad = form(slope, slope) - radius * radius
    half_linear = form(offset, slope)
    constant = form(offset, offset)
    root = ops.sqrt(ops.maximum(half_linear * half_linear - quad * constant, 0.0))
    # Numerically stable roots of quad·s² + 2·half_linear·s + constant = 0.
    pivot = -(half_linear + ops.where(half_linear >= 0.0, root, -root))
    first = pivot / ops.where(ops.abs(quad) > _EPS, quad, _EPS)
    second = constant / ops.where(ops.abs(pivot) > _EPS, pivot, _EPS)
    scales = ops.stack([first, second], axis=1)  # (F, 2)
    roots = offset[:, None] + scales[:, :, None] * slope[:, None]
    candidates = ops.concatenate([roots, offset[:, None]], axis=1)
    return candidates, ops.concatenate([scales, ops.ones_like(first)[:, None]], 1)


def _best_candidate(gramian, mean_products, radius, candidates, scales):
    """The feasible candidate (rows of (N, K)) with the smallest F, and F."""
    feasible = ops.all(candidates >= -1e-6, axis=-1) & (scales > 0.0)
    candidates = ops.maximum(candidates, 0.0)
    candidates = candidates / ops.maximum(ops.sum(candidates, -1, keepdims=True), _EPS)
    values = _objective(gramian, mean_products, radius, candidates)
    values = ops.where(feasible & ops.isfinite(values), values, float("inf"))
    best = first_argmin(values)
    return ops.take(candidates, best, axis=0), ops.take(values, best)


def _polish(gramian, mean_products, radius, weights):
    """Replaces `weights` by an exact solution on its face if better."""
    support = ops.cast(weights > 1e-6, gramian.dtype)[None]
    candidates, scales = _face_solutions(gramian, mean_products, radius, support)
    best, value = _best_candidate(
        gramian,
        mean_products,
        radius,
        ops.reshape(candidates, (-1, weights.shape[0])),
        ops.reshape(scales, (-1,)),
    )
    current = _objective(gramian, mean_products, radius, weights[None])[0]
    return ops.where(value <= current, best, weights)


def _all_faces(num: int) -> np.ndarray:
    """The 2^K − 1 faces of the simplex as 0/1 rows (K, smallest first)."""
    codes = np.arange(1, 2**num)
    return ((codes[:, None] >> np.arange(num)[None]) & 1).astype("float32")


def _exact_small(gramian, mean_products, radius):
    """The exact optimum for few tasks: every face's stationary points and
    min-norm point, the best feasible one (loop-free)."""
    num = gramian.shape[0]
    candidates, scales = _face_solutions(
        gramian, mean_products, radius, ops.convert_to_tensor(_all_faces(num))
    )
    return _best_candidate(
        gramian,
        mean_products,
        radius,
        ops.reshape(candidates, (-1, num)),
        ops.reshape(scales, (-1,)),
    )[0]


def cagrad_simplex_weights(gramian, c: float, iterations: int = 300):
    """Solves CAGrad's dual problem `min_{w ∈ Δ} g_wᵀg₀ + c‖g₀‖·‖g_w‖`.

    Up to `EXACT_MAX_TASKS` tasks the optimum is found exactly and without
    a loop: it is a stationary point of F on some face of the simplex, or
    the min-norm point of one (where `g_w = 0`), and `_face_solutions`
    gives them all in closed form. With more tasks: accelerated projected
    gradient on the simplex with the step `n/(ρ·λ_max)` (the local
    curvature of `ρ‖g_w‖` is at most `ρ·λ_max/‖g_w‖`), then an exact solve
    on the face found; the min-norm point is kept instead if it does better.

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
    if num <= EXACT_MAX_TASKS:
        return _exact_small(gramian, mean_products, radius), radius
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

    Up to 6 tasks the small problem is solved exactly in closed form over
    every face of the simplex (no loop: on the reference network the solve
    is invisible next to a backward pass); with more tasks by accelerated
    projected gradient with a curvature-adapted step, then solved exactly
    on the face found. Either way the answer matches a generic solver (the
    reference uses scipy's SLSQP, torchjd a conic solver) to float32
    accuracy.

    Defaults: `c = 0.4` as the paper uses on NYUv2 and Cityscapes; LibMTL's
    default is `c = 0.5`. torchjd's `CAGrad(c)` equals `rescale=0`.

    Args:
        c: Radius factor of the ball around the mean gradient (≥ 0).
        rescale: 0, 1 or 2, see above.
        iterations: Projected-gradient iterations of the inner solver
            (more than 6 tasks).
        mode: `"params"` or `"rep"`, see `GradientBalancer`.

    Example:

    ```python
    balancer = mtl_keras.balancers.CAGrad(c=0.5)
    balancer.balance([1.0, 1.0], [[1.0, 0.0], [0.0, 1.0]])  # [0.6, 0.6]
    ```
    """

    solve_dtype = solvers.SOLVE_DTYPE

    def __init__(
        self,
        c: float = 0.4,
        rescale: int = 1,
        iterations: int = 300,
        mode: str = "params",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, name=name, **kwargs)
        if c < 0:
            raise ValueError(f"CAGrad: c must be non-negative, got {c}.")
        if rescale not in (0, 1, 2):
            raise ValueError(f"CAGrad: rescale must be 0, 1 or 2, got {rescale}.")
        self.c = float(c)
        self.rescale = int(rescale)
        self.iterations = int(iterations)

    def compute_weights(self, task_losses: Tensor, gramian: Tensor) -> Tensor:
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
