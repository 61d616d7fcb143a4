"""In-graph K×K solvers: hand cases, exact references, XLA."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from _references import above_by_active_sets
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_keras.balancers import solvers

PROPERTY = settings(max_examples=40, deadline=None)

# Graph-mode wrappers: one trace per shape, much faster than eager loops.
_min_norm = tf.function(solvers.min_norm_simplex)
_above = tf.function(solvers.min_quadratic_above)
_project = tf.function(solvers.project_to_simplex)


def _f32(array):
    return tf.constant(np.asarray(array, "float32"))


def random_jacobian(seed, num_tasks, num_params):
    """Gaussian rows with task-dependent scales (0.1 to 3)."""
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.1, 3.0, size=(num_tasks, 1))
    return rng.normal(size=(num_tasks, num_params)) * scales


def exact_min_norm(gramian):
    """min wᵀGw on the simplex by enumerating supports (float64)."""
    num = len(gramian)
    best = np.inf
    for size in range(1, num + 1):
        for support in itertools.combinations(range(num), size):
            support = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = gramian[np.ix_(support, support)]
            kkt[:size, size] = kkt[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            weights = np.zeros(num)
            weights[support] = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:size]
            if weights.min() >= -1e-12 and abs(weights.sum() - 1) < 1e-9:
                best = min(best, weights @ gramian @ weights)
    return best


def exact_above(gramian, lower):
    """argmin vᵀGv s.t. v ≥ lower by enumerating active sets (float64)."""
    return above_by_active_sets(gramian, lower, 1e-12, 1e-10)


# --- simplex projection -----------------------------------------------------


@pytest.mark.parametrize(
    "vector, expected",
    [
        ([0.5, 2.0, -1.0], [0.0, 1.0, 0.0]),
        ([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]),
        ([1.0, 1.0], [0.5, 0.5]),
        ([0.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]),
        ([3.0, 2.5, -4.0], [0.75, 0.25, 0.0]),
    ],
)
def test_project_to_simplex_hand_cases(vector, expected):
    result = solvers.project_to_simplex(_f32(vector)).numpy()
    np.testing.assert_allclose(result, expected, atol=1e-6)


@PROPERTY
@given(st.integers(0, 10**6), st.integers(1, 7))
def test_project_to_simplex_is_the_closest_simplex_point(seed, num):
    rng = np.random.default_rng(seed)
    vector = rng.normal(size=num) * rng.uniform(0.01, 10.0)
    projected = _project(_f32(vector)).numpy().astype(float)
    assert projected.min() >= 0.0
    assert projected.sum() == pytest.approx(1.0, abs=1e-5)
    others = rng.dirichlet(np.ones(num), size=200)
    distance = np.linalg.norm(vector - projected)
    assert (np.linalg.norm(vector - others, axis=1) >= distance - 1e-5).all()


def test_project_to_simplex_batches_rows():
    rows = _f32([[0.5, 2.0, -1.0], [0.2, 0.3, 0.5]])
    result = solvers.project_to_simplex(rows).numpy()
    np.testing.assert_allclose(result, [[0, 1, 0], [0.2, 0.3, 0.5]], atol=1e-6)


# --- two-point closed form and pseudo-inverse -------------------------------


@pytest.mark.parametrize(
    "g11, g12, g22, expected",
    [
        (1.0, 0.0, 4.0, 0.8),  # orthogonal: weights ∝ 1/‖g‖²
        (1.0, 2.0, 4.0, 1.0),  # g2 = 2 g1: all weight on the shorter one
        (1.0, -1.0, 1.0, 0.5),  # opposite: the midpoint is 0
        (2.0, 2.0, 2.0, 0.5),  # identical vectors: any γ, 0.5 chosen
        (0.0, 0.0, 1.0, 1.0),  # a zero vector is the min-norm point
    ],
)
def test_min_norm_two(g11, g12, g22, expected):
    assert float(solvers.min_norm_two(g11, g12, g22)) == pytest.approx(expected)


def test_pinv_symmetric_matches_numpy_on_singular_and_zero():
    jacobian = random_jacobian(0, 4, 2)
    singular = jacobian @ jacobian.T
    result = solvers.pinv_symmetric(_f32(singular)).numpy()
    np.testing.assert_allclose(result, np.linalg.pinv(singular), atol=1e-4)
    zero = solvers.pinv_symmetric(_f32(np.zeros((3, 3)))).numpy()
    np.testing.assert_array_equal(zero, np.zeros((3, 3)))


# --- min-norm point (MGDA) ---------------------------------------------------


@pytest.mark.parametrize(
    "jacobian, expected",
    [
        ([[1, 0, 0], [0, 2, 0], [0, 0, 3]], np.array([36, 9, 4]) / 49),
        ([[1, 0], [0, 2]], [0.8, 0.2]),
        # Min-norm point (0.9, 0.3) on the segment [g1, g3]; g2 = 2·g1 unused.
        ([[1, 0], [2, 0], [0, 3]], [0.9, 0.0, 0.1]),
    ],
)
def test_min_norm_simplex_hand_cases(jacobian, expected):
    jacobian = np.asarray(jacobian, float)
    weights = _min_norm(_f32(jacobian @ jacobian.T)).numpy()
    np.testing.assert_allclose(weights, expected, atol=1e-5)


def test_min_norm_simplex_degenerate_inputs_are_finite():
    cases = [
        np.zeros((3, 3)),  # all gradients zero
        np.ones((3, 3)),  # three identical gradients
        np.array([[1.0, -1.0, 0], [-1.0, 1.0, 0], [0, 0, 1.0]]),  # opposite pair
    ]
    for gramian in cases:
        weights = _min_norm(_f32(gramian)).numpy()
        assert np.isfinite(weights).all()
        assert weights.min() >= 0 and weights.sum() == pytest.approx(1.0, abs=1e-6)
        assert weights @ gramian @ weights == pytest.approx(
            exact_min_norm(gramian), abs=1e-6
        )


@PROPERTY
@given(st.integers(0, 10**6), st.integers(3, 6), st.integers(1, 8))
def test_min_norm_simplex_is_exact(seed, num_tasks, num_params):
    jacobian = random_jacobian(seed, num_tasks, num_params)
    gramian = jacobian @ jacobian.T
    weights = _min_norm(_f32(gramian)).numpy().astype(float)
    assert weights.min() >= 0 and weights.sum() == pytest.approx(1.0, abs=1e-5)
    scale = np.trace(gramian) / num_tasks
    gap = weights @ gramian @ weights - exact_min_norm(gramian)
    assert gap <= 1e-5 * scale


# --- min vᵀGv s.t. v ≥ lower (UPGrad, DualProj) ------------------------------


def test_min_quadratic_above_hand_cases():
    identity = solvers.min_quadratic_above(_f32(np.eye(2)), _f32([1.0, -1.0]))
    np.testing.assert_allclose(identity.numpy(), [1.0, 0.0], atol=1e-6)
    # Conflicting pair: v2 is raised until (G v)_2 = 0, i.e. v2 = 0.5.
    gramian = _f32([[1.0, -1.0], [-1.0, 2.0]])
    result = solvers.min_quadratic_above(gramian, _f32([1.0, 0.0]))
    np.testing.assert_allclose(result.numpy(), [1.0, 0.5], atol=1e-6)


def test_min_quadratic_above_batches_rows():
    gramian = _f32([[1.0, -1.0], [-1.0, 2.0]])
    result = solvers.min_quadratic_above(gramian, _f32([[1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(result.numpy(), [[1.0, 0.5], [1.0, 1.0]], atol=1e-6)


@PROPERTY
@given(st.integers(0, 10**6), st.integers(2, 6), st.integers(0, 4))
def test_min_quadratic_above_matches_enumeration(seed, num_tasks, extra_params):
    # Well-conditioned UPGrad-like problems: K ≤ P, trace-normalised, +1e-4·I.
    jacobian = random_jacobian(seed, num_tasks, num_tasks + extra_params)
    gramian = jacobian @ jacobian.T
    gramian = gramian / np.trace(gramian) + 1e-4 * np.eye(num_tasks)
    lower = np.eye(num_tasks) / num_tasks
    result = _above(_f32(gramian), _f32(lower)).numpy()
    expected = np.stack([exact_above(gramian, row) for row in lower])
    # float32 against float64 with a condition number up to ~1e4: a relative
    # error of 1.2e-4 was seen (K=6, no extra parameters).
    np.testing.assert_allclose(result, expected, rtol=1e-3, atol=1e-6)


def test_min_quadratic_above_on_singular_gramian_is_feasible_and_finite():
    jacobian = random_jacobian(3, 5, 2)
    gramian = jacobian @ jacobian.T
    lower = np.eye(5) / 5
    result = _above(_f32(gramian), _f32(lower)).numpy()
    assert np.isfinite(result).all()
    assert (result >= lower - 1e-7).all()
    # KKT of the (rank-deficient) problem: G v ≥ 0 wherever v is at its bound.
    products = result @ gramian
    assert (products >= -1e-4 * np.trace(gramian)).all()


# --- Adam step, XLA ------------------------------------------------------------


def test_adam_first_step_moves_by_the_learning_rate_against_the_sign():
    gradient = _f32([2.0, -0.5, 0.0])
    zeros = tf.zeros(3)
    delta, first, second = solvers.adam_step(gradient, zeros, zeros, 1.0, 0.1)
    np.testing.assert_allclose(delta.numpy(), [-0.1, 0.1, 0.0], atol=1e-6)
    np.testing.assert_allclose(first.numpy(), [0.2, -0.05, 0.0], atol=1e-7)
    np.testing.assert_allclose(second.numpy(), [0.004, 0.00025, 0.0], atol=1e-8)


def test_solvers_compile_with_xla_and_match_eager():
    jacobian = random_jacobian(7, 4, 6)
    gramian = _f32(jacobian @ jacobian.T)
    lower = _f32(np.eye(4) / 4)

    def run(gramian, lower):
        return (
            solvers.min_norm_simplex(gramian),
            solvers.min_quadratic_above(gramian, lower),
            solvers.project_to_simplex(gramian[0]),
            solvers.pinv_symmetric(gramian),
        )

    compiled = tf.function(run, jit_compile=True)(gramian, lower)
    for eager, xla in zip(run(gramian, lower), compiled):
        np.testing.assert_allclose(xla.numpy(), eager.numpy(), rtol=1e-4, atol=1e-5)
