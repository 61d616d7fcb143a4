"""Small in-graph solvers for the K×K problems of gradient balancers.

Everything here is written with `keras.ops` and runs at most a fixed number of
iterations (no data-dependent Python control flow), so it works eagerly, in a
`tf.function` and under `jit_compile=True`. K is small (2 to a few dozen):
the routines favour exactness and robustness (no NaN on zero, parallel or
opposite gradients) over asymptotic speed.

The two quadratic programs are finished by an *active-set* method (Wolfe's
min-norm-point algorithm, Lawson–Hanson for the box): each round solves the
problem restricted to a guessed support exactly, through a pseudo-inverse so
that singular Gramians are harmless, and either accepts that point, steps
towards it until a coordinate leaves the support, or adds the most violating
coordinate. Iterates stay feasible and never get worse, so stopping after a
fixed number of rounds is safe; on small problems a few rounds reach the
exact solution.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
from keras import ops

_TINY = 1e-12
# Optimality tolerance of the active-set rounds, at unit Gramian scale.
_KKT_TOL = 1e-7


#: The dtype gradient balancers solve their K×K problems in (see
#: `GramianBalancer.solve_dtype`): float32 loses up to ~1e-4 (relative) of
#: the weights on a Gramian of condition number 1e3–1e4 (TensorFlow's float32
#: `eigh` alone 1.5e-4 on the smallest eigenvalue); float64 costs nothing
#: noticeable at K×K.
SOLVE_DTYPE = "float64"


@contextlib.contextmanager
def float64_scope() -> Iterator[None]:
    """Lets the enclosed code compute in float64 on every backend.

    TensorFlow needs nothing. JAX truncates float64 to float32 unless its
    x64 mode is on; it is switched on for the enclosed code only (JAX's
    thread-local `enable_x64` context, which also holds while a `jit`
    function is traced), so the user's global setting is left alone.
    """
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    enable_x64 = getattr(jax, "enable_x64", None)
    if enable_x64 is None:  # older JAX: still experimental
        enable_x64 = importlib.import_module("jax.experimental").enable_x64
    with enable_x64(True):
        yield


def solve_in(dtype: str | None, function: Callable[..., Any], *tensors: Any) -> Any:
    """`function(*tensors)` computed in `dtype`, its (nested) float results
    returned in float32.

    The inputs are cast to `dtype` (after `stop_gradient`: the K×K solves
    are constants to the model's gradient) inside `float64_scope`; with
    `dtype=None` the function runs on the inputs as they are.

    Args:
        dtype: `"float64"`, `"float32"` or None.
        function: The computation, e.g. a balancer's `compute_weights`.
        *tensors: Its tensor arguments.

    Returns:
        The function's output, floating tensors cast to float32.

    Example:

    >>> solve_in("float64", lambda m: keras.ops.eigh(m)[0], [[2.0, 1.0], [1.0, 2.0]])
    [1., 3.]
    """
    if dtype is None:
        return function(*tensors)
    scope = float64_scope() if dtype == "float64" else contextlib.nullcontext()
    with scope:
        cast = [
            ops.cast(ops.stop_gradient(ops.convert_to_tensor(t)), dtype)
            for t in tensors
        ]
        outputs = function(*cast)
        return keras.tree.map_structure(_to_float32, outputs)


def _to_float32(value: Any) -> Any:
    if "float" in keras.backend.standardize_dtype(getattr(value, "dtype", "int32")):
        return ops.cast(value, "float32")
    return value


def first_argmin(values):
    """The first index of the minimum along the last axis (int32).

    `ops.argmin`, written as a reduction: JAX lowers its `argmin` with the
    integer width of the x64 setting in force at lowering time, which is not
    the one of a `float64_scope` traced inside a jitted step (the step is
    lowered after the scope has closed). A NaN row gives its last index.
    """
    num = values.shape[-1]
    smallest = ops.min(values, axis=-1, keepdims=True)
    index = ops.arange(num, dtype="int32")
    found = ops.min(ops.where(values == smallest, index, num), axis=-1)
    return ops.minimum(found, num - 1)


def first_argmax(values):
    """The first index of the maximum along the last axis (int32), see
    `first_argmin`."""
    return first_argmin(-values)


def normalize_gramian(gramian):
    """Divides a Gramian by its mean diagonal (returns it unchanged if zero).

    The problems below are invariant to a global rescaling of the gradients;
    working at unit scale makes their tolerances meaningful.
    """
    scale = ops.mean(ops.diagonal(gramian))
    return gramian / ops.where(scale > _TINY, scale, 1.0)


def update_norm(weights, gramian):
    """`‖wᵀJ‖ = sqrt(wᵀ M w)`, the norm of the update the weights give."""
    squared = ops.sum(weights * ops.matmul(gramian, weights))
    return ops.sqrt(ops.maximum(squared, 0.0))


def pinv_symmetric(matrix, rtol: float = 1e-6):
    """Pseudo-inverse of a (batch of) symmetric matrices.

    Eigenvalues with `|λ| ≤ rtol · max|λ|` are treated as zero, so the result
    is finite for any input, singular or zero.

    Args:
        matrix: Tensor of shape (..., K, K), symmetric.
        rtol: Relative cut-off for small eigenvalues.

    Example:

    >>> pinv_symmetric(keras.ops.convert_to_tensor([[2.0, 0.0], [0.0, 0.0]]))
    [[0.5, 0.], [0., 0.]]
    """
    eigenvalues, eigenvectors = ops.eigh(matrix)
    magnitude = ops.abs(eigenvalues)
    cutoff = rtol * ops.max(magnitude, axis=-1, keepdims=True)
    keep = magnitude > ops.maximum(cutoff, _TINY)
    inverse = ops.where(keep, 1.0 / ops.where(keep, eigenvalues, 1.0), 0.0)
    scaled = eigenvectors * ops.expand_dims(inverse, -2)
    return ops.matmul(scaled, ops.swapaxes(eigenvectors, -1, -2))


def project_to_simplex(vectors):
    """Euclidean projection of each row onto the probability simplex.

    The sort-based algorithm of Held, Wolfe & Crowder (1974), see also Duchi
    et al. (2008): `w = max(v − θ, 0)` with θ chosen so that `Σ w = 1`, which
    is `θ = max_j (Σ_{i≤j} u_i − 1) / j` for `u` sorted in decreasing order
    (Condat, 2016).

    Args:
        vectors: Tensor of shape (..., K).

    Returns:
        Tensor of the same shape, non-negative, each row summing to 1.

    Example:

    >>> project_to_simplex(keras.ops.convert_to_tensor([0.5, 2.0, -1.0]))
    [0., 1., 0.]
    """
    vectors = ops.convert_to_tensor(vectors)
    descending = ops.flip(ops.sort(vectors, axis=-1), axis=-1)
    counts = ops.arange(1, vectors.shape[-1] + 1, dtype=vectors.dtype)
    thresholds = (ops.cumsum(descending, axis=-1) - 1.0) / counts
    theta = ops.max(thresholds, axis=-1, keepdims=True)
    return ops.maximum(vectors - theta, 0.0)


def min_norm_two(g11, g12, g22):
    """Closed-form min-norm point of the segment between two vectors.

    Returns γ such that `‖γ·g₁ + (1−γ)·g₂‖` is minimal over γ ∈ [0, 1], given
    the inner products `g11 = ‖g₁‖²`, `g12 = g₁·g₂`, `g22 = ‖g₂‖²`:
    `γ = clip((g22 − g12) / ‖g₁ − g₂‖², 0, 1)`, and 0.5 when g₁ = g₂.
    (Sener & Koltun's code clips to [0.001, 0.999]; the exact clip is used
    here.)
    """
    distance = g11 + g22 - 2.0 * g12
    safe = ops.where(distance > _TINY, distance, 1.0)
    gamma = ops.where(distance > _TINY, (g22 - g12) / safe, 0.5)
    return ops.clip(gamma, 0.0, 1.0)


def _masked_block(gramian, support):
    """G on the support's rows/columns, the identity elsewhere (batched)."""
    mask = ops.expand_dims(support, -1) * ops.expand_dims(support, -2)
    return gramian * mask + ops.eye(
        gramian.shape[-1], dtype=gramian.dtype
    ) * ops.expand_dims(1.0 - support, -1)


def _box_reduced(gramian, linear, support):
    """argmin of `½xᵀGx + linearᵀx` with `x = 0` off the support."""
    rhs = ops.expand_dims(-linear * support, -1)
    solution = ops.matmul(pinv_symmetric(_masked_block(gramian, support)), rhs)
    return ops.squeeze(solution, -1)


def _simplex_reduced(gramian, linear, support):
    """argmin of `½xᵀGx + linearᵀx` with `Σx = 1` and `x = 0` off the support.

    Solves the bordered KKT system `[[G_S, 1], [1ᵀ, 0]]·[x; μ] = [−c; 1]`.
    """
    batch, num = support.shape[0], support.shape[-1]
    column = ops.expand_dims(support, -1)
    top = ops.concatenate([_masked_block(gramian, support), column], axis=-1)
    bottom = ops.concatenate(
        [support, ops.zeros((batch, 1), dtype=support.dtype)], axis=-1
    )
    bordered = ops.concatenate([top, ops.expand_dims(bottom, 1)], axis=1)
    rhs = ops.concatenate(
        [-linear * support, ops.ones((batch, 1), dtype=support.dtype)], axis=-1
    )
    solution = ops.matmul(pinv_symmetric(bordered), ops.expand_dims(rhs, -1))
    return ops.squeeze(solution, -1)[:, :num]


def _active_set(gramian, linear, points, rounds: int, on_simplex: bool):
    """Active-set rounds for `min ½xᵀGx + linearᵀx` over `x ≥ 0` (and `Σx = 1`).

    `points` (B, K) must be feasible; one problem per row. Each round either
    accepts the exact minimiser on the current support (then adds the
    coordinate whose gradient violates optimality most), or, if that
    minimiser leaves the orthant, moves towards it until a coordinate hits
    zero and drops that coordinate.
    """
    reduced = _simplex_reduced if on_simplex else _box_reduced
    num = gramian.shape[-1]

    def one_round(_, state):
        points, support = state
        target = reduced(gramian, linear, support)
        leaving = (support > 0) & (target <= _TINY)
        inside = ~ops.any(leaving, axis=-1, keepdims=True)

        # Major step: accept the target, add the most violating coordinate.
        gradient = ops.matmul(target, gramian) + linear
        if on_simplex:
            level = ops.sum(target * gradient, axis=-1, keepdims=True)
        else:
            level = ops.zeros_like(gradient[:, :1])
        violation = ops.where(support > 0, 0.0, level - gradient)
        worst = first_argmax(violation)
        add = ops.one_hot(worst, num, dtype=points.dtype) * ops.cast(
            ops.max(violation, axis=-1, keepdims=True) > _KKT_TOL, points.dtype
        )
        major_support = ops.maximum(support, add)

        # Minor step: go towards the target until the first coordinate hits 0.
        gap = points - target
        ratio = ops.where(leaving, points / ops.where(gap > _TINY, gap, 1.0), 1.0)
        ratio = ops.where(leaving & (gap <= _TINY), 0.0, ratio)
        step = ops.clip(ops.min(ratio, axis=-1, keepdims=True), 0.0, 1.0)
        minor_points = ops.maximum(points + step * (target - points), 0.0) * support
        first_out = ops.one_hot(first_argmin(ratio), num, dtype=points.dtype)
        minor_support = support * ops.cast(minor_points > _TINY, points.dtype)
        minor_support = minor_support * (1.0 - first_out)

        new_points = ops.where(inside, ops.maximum(target, 0.0) * support, minor_points)
        if on_simplex:
            total = ops.sum(new_points, axis=-1, keepdims=True)
            new_points = new_points / ops.where(total > _TINY, total, 1.0)
        new_support = ops.where(inside, major_support, minor_support)
        return new_points, new_support

    def unchanged(points, support, new_points, new_support):
        return ops.logical_and(
            ops.all(ops.equal(points, new_points)),
            ops.all(ops.equal(support, new_support)),
        )

    def not_done(round_index, points, support, done):
        return ops.logical_and(round_index < rounds, ops.logical_not(done))

    def guarded_round(round_index, points, support, done):
        new_points, new_support = one_round(round_index, (points, support))
        done = unchanged(points, support, new_points, new_support)
        return round_index + 1, new_points, new_support, done

    # A round is a function of (points, support) alone: once a round leaves
    # them unchanged every later round would too, so stopping there gives
    # exactly the result of all `rounds` rounds (at K = 32 UPGrad's 3K
    # rounds of K batched eigendecompositions cost more than the backward
    # passes; most problems settle in a few).
    support = ops.cast(points > _TINY, points.dtype)
    start = (
        ops.convert_to_tensor(0, "int32"),
        points,
        support,
        ops.convert_to_tensor(False),
    )
    _, points, _, _ = ops.while_loop(not_done, guarded_round, start)
    return points


def _best_pair_start(gramian):
    """The best two-task solution, used to start Frank–Wolfe (as Sener does)."""
    num = gramian.shape[0]
    diag = ops.diagonal(gramian)
    gii = ops.expand_dims(diag, 1)
    gjj = ops.expand_dims(diag, 0)
    gamma = min_norm_two(gii, gramian, gjj)
    cost = (
        gamma * gamma * gii
        + 2.0 * gamma * (1.0 - gamma) * gramian
        + (1.0 - gamma) ** 2 * gjj
    )
    cost = ops.where(ops.eye(num) > 0, float("inf"), cost)
    flat = first_argmin(ops.reshape(cost, (-1,)))
    first, second = flat // num, flat % num
    pair_gamma = ops.reshape(gamma, (-1,))[flat]
    return pair_gamma * ops.one_hot(first, num, dtype=gramian.dtype) + (
        1.0 - pair_gamma
    ) * ops.one_hot(second, num, dtype=gramian.dtype)


def min_norm_simplex(gramian, iterations: int = 250, rounds: int | None = None):
    """Weights of the min-norm point of the convex hull of the task gradients.

    Solves `min_{w ∈ Δ} wᵀ G w` (Sener & Koltun, 2018): Frank–Wolfe with
    exact line search, started from the best pair of tasks, for a fixed
    number of iterations (Sener's code stops earlier once the change is below
    1e-5; extra iterations at the optimum change nothing), then `rounds` of
    Wolfe's active-set method, which make the answer exact when Frank–Wolfe
    has only come close. For K = 2 the closed form is used.

    Args:
        gramian: Tensor (K, K), the Gramian `J Jᵀ` of the task gradients.
        iterations: Number of Frank–Wolfe iterations.
        rounds: Number of active-set rounds, default `2K`.

    Returns:
        Tensor (K,) on the simplex. When several weightings give the same
        min-norm point (0 in the hull, parallel gradients), any one of them.

    Example:

    >>> min_norm_simplex(keras.ops.convert_to_tensor([[1.0, 0.0], [0.0, 4.0]]))
    [0.8, 0.2]
    """
    gramian = normalize_gramian(ops.convert_to_tensor(gramian))
    num = gramian.shape[0]
    if num == 1:
        return ops.ones((1,), dtype=gramian.dtype)
    if num == 2:
        gamma = min_norm_two(gramian[0, 0], gramian[0, 1], gramian[1, 1])
        return ops.stack([gamma, 1.0 - gamma])
    diag = ops.diagonal(gramian)

    def frank_wolfe_step(_, weights):
        gradient = ops.matmul(gramian, weights)
        vertex = first_argmin(gradient)
        gamma = min_norm_two(
            ops.sum(weights * gradient), gradient[vertex], diag[vertex]
        )
        return gamma * weights + (1.0 - gamma) * ops.one_hot(
            vertex, num, dtype=gramian.dtype
        )

    weights = ops.fori_loop(0, iterations, frank_wolfe_step, _best_pair_start(gramian))
    rounds = 2 * num if rounds is None else rounds
    linear = ops.zeros((1, num), dtype=gramian.dtype)
    return _active_set(gramian, linear, weights[None], rounds, on_simplex=True)[0]


def min_quadratic_above(gramian, lower, rounds: int | None = None):
    """Solves `min_v vᵀ G v  s.t.  v ≥ lower` for each row of `lower`.

    This is the dual form of projecting `Jᵀ·lower` onto the dual cone of the
    task gradients (Quinton & Rey, 2024, Prop. 1), used by UPGrad and
    DualProj. With `v = lower + x` it is the non-negative QP
    `min_{x ≥ 0} ½xᵀGx + xᵀ(G·lower)`, solved from `x = 0` by a fixed number
    of Lawson–Hanson active-set rounds, each an exact solve on the current
    support. `G` should be positive definite (add a small multiple of I);
    with a singular `G` the result is still finite and feasible.

    Args:
        gramian: Tensor (K, K), symmetric positive (semi-)definite.
        lower: Tensor (K,) or (B, K), the lower bounds (one problem per row).
        rounds: Number of active-set rounds, default `3K`.

    Returns:
        Tensor of the shape of `lower`.

    Example:

    >>> gramian = keras.ops.convert_to_tensor([[1.0, -1.0], [-1.0, 2.0]])
    >>> min_quadratic_above(gramian, keras.ops.convert_to_tensor([1.0, 0.0]))
    [1., 0.5]
    """
    gramian = normalize_gramian(ops.convert_to_tensor(gramian))
    lower = ops.convert_to_tensor(lower, dtype=gramian.dtype)
    single = len(lower.shape) == 1
    lower = lower[None] if single else lower
    rounds = 3 * gramian.shape[0] if rounds is None else rounds
    offset = ops.matmul(lower, gramian)
    excess = _active_set(
        gramian, offset, ops.zeros_like(lower), rounds, on_simplex=False
    )
    result = lower + excess
    return result[0] if single else result


def adam_step(
    gradient,
    first_moment,
    second_moment,
    step,
    learning_rate: float,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-8,
):
    """One Adam update (Kingma & Ba, 2015) with bias correction.

    Args:
        gradient: The gradient.
        first_moment: The first-moment estimate before this step.
        second_moment: The second-moment estimate before this step.
        step: The 1-based index of this step (float tensor).
        learning_rate: Adam's step size.
        beta_1: Decay of the first moment.
        beta_2: Decay of the second moment.
        epsilon: Added to the denominator.

    Returns:
        `(delta, first_moment, second_moment)`: the change to add to the
        parameters and the new moments.
    """
    first_moment = beta_1 * first_moment + (1.0 - beta_1) * gradient
    second_moment = beta_2 * second_moment + (1.0 - beta_2) * gradient * gradient
    corrected_first = first_moment / (1.0 - beta_1**step)
    corrected_second = second_moment / (1.0 - beta_2**step)
    delta = -learning_rate * corrected_first / (ops.sqrt(corrected_second) + epsilon)
    return delta, first_moment, second_moment


def adam_update(balancer: Any, gradient: Any) -> Any:
    """One `adam_step` on a balancer's own Adam state: reads and assigns its
    `first_moment`, `second_moment` and `step_counter` variables (FAMO,
    GradNorm) at its `learning_rate`.

    Args:
        balancer: The balancer that holds the Adam state.
        gradient: The gradient of the balancer's own parameters.

    Returns:
        The change to add to those parameters.
    """
    step = ops.convert_to_tensor(balancer.step_counter) + 1.0
    delta, first, second = adam_step(
        gradient,
        ops.convert_to_tensor(balancer.first_moment),
        ops.convert_to_tensor(balancer.second_moment),
        step,
        balancer.learning_rate,
    )
    balancer.first_moment.assign(first)
    balancer.second_moment.assign(second)
    balancer.step_counter.assign(step)
    return delta
