"""Every Gramian balancer against a float64 reference of its formula.

The balancers solve their K×K problems (eigendecompositions, inverses,
linear solves, QPs) in float64; on ill-conditioned Gramians (condition
numbers up to 1e4) their float32 weights must be within 1e-5 (relative) of
a float64 numpy answer of the same formula (METHODS.md). The references
below are written independently of the package's solvers: explicit
gradient vectors (a Cholesky factor of the Gramian) for PCGrad and GradVac,
enumeration of active sets / faces for the QPs, Newton's method without
regularisation for Nash-MTL.

Every registered name (aliases included) that resolves to a
`GramianBalancer` must have a reference here.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from _references import above_by_active_sets
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from mtl_keras import balancers, methods
from mtl_keras.balancers.base import GramianBalancer

TOLERANCE = 1e-5
MAX_CONDITION = 1e4


def random_gramian(seed: int, num_tasks: int, log_condition: float) -> np.ndarray:
    """A float32 symmetric positive definite Gramian with the given
    condition number (eigenvalues log-spaced at random between its ends),
    random eigenvectors and a random overall scale."""
    rng = np.random.default_rng(seed)
    inner = rng.uniform(0.0, log_condition, size=max(num_tasks - 2, 0))
    exponents = np.concatenate([[0.0, log_condition], inner])[:num_tasks]
    eigenvectors, _ = np.linalg.qr(rng.normal(size=(num_tasks, num_tasks)))
    gramian = (eigenvectors * 10.0**exponents) @ eigenvectors.T
    gramian = gramian / np.mean(np.diag(gramian)) * 10.0 ** rng.uniform(-2, 3)
    return ((gramian + gramian.T) / 2).astype("float32")


def relative_deviation(weights, reference) -> float:
    """`max|w − w_ref| / max|w_ref|`."""
    weights, reference = np.asarray(weights, "float64"), np.asarray(reference)
    return float(np.max(np.abs(weights - reference)) / np.max(np.abs(reference)))


# --- float64 references (one weight vector per successive call) -------------


def _normalized(gramian):
    return gramian / np.mean(np.diag(gramian))


def _faces(num):
    for size in range(1, num + 1):
        yield from (list(s) for s in itertools.combinations(range(num), size))


def min_norm_reference(gramian):
    """argmin wᵀMw over the simplex: the best KKT point over all faces."""
    num, best, best_value = len(gramian), None, np.inf
    for face in _faces(num):
        size = len(face)
        bordered = np.zeros((size + 1, size + 1))
        bordered[:size, :size] = gramian[np.ix_(face, face)]
        bordered[:size, size] = bordered[size, :size] = 1.0
        rhs = np.zeros(size + 1)
        rhs[size] = 1.0
        weights = np.zeros(num)
        weights[face] = np.linalg.solve(bordered, rhs)[:size]
        value = weights @ gramian @ weights
        if weights.min() >= -1e-12 and value < best_value:
            best, best_value = np.maximum(weights, 0.0), value
    return best


def above_reference(gramian, lower):
    """argmin vᵀGv s.t. v ≥ lower: the KKT point over all active sets."""
    return above_by_active_sets(gramian, lower, 1e-13, 1e-13)


def ref_mgda(gramian, losses):
    return [min_norm_reference(gramian)]


def ref_imtl_g(gramian, losses):
    # v = M⁻¹·sqrt(diag M), w = v / Σv (M is invertible here).
    raw = np.linalg.solve(gramian, np.sqrt(np.diag(gramian)))
    if abs(raw.sum()) < 1e-4 * np.abs(raw).sum():
        return None  # Σv ≈ 0: the weights are ill-posed
    return [raw / raw.sum()]


def ref_aligned_mtl(gramian, losses):
    # w = sqrt(λ_min)·V Λ^(-1/2) Vᵀ 1.
    eigenvalues, eigenvectors = np.linalg.eigh(gramian)
    projected = eigenvectors.T @ np.ones(len(gramian)) / np.sqrt(eigenvalues)
    return [np.sqrt(eigenvalues.min()) * eigenvectors @ projected]


def bargaining_reference(gramian):
    """α > 0 with Mα = 1/α (no regularisation): damped Newton on
    ½αᵀMα − Σ log α until the Newton decrement vanishes."""
    alpha = 1.0 / np.sqrt(np.diag(gramian))
    alpha *= np.sqrt(len(gramian) / (alpha @ gramian @ alpha))
    for _ in range(500):
        gradient = gramian @ alpha - 1.0 / alpha
        direction = np.linalg.solve(gramian + np.diag(alpha**-2.0), gradient)
        decrement = np.sqrt(max(gradient @ direction, 0.0))
        alpha = alpha - direction / (1.0 + decrement)
        if decrement < 1e-15:
            break
    np.testing.assert_allclose(alpha * (gramian @ alpha), 1.0, rtol=1e-10)
    return alpha


def ref_nash_mtl(gramian, losses, max_norm=1.0):
    alpha = bargaining_reference(gramian)
    if max_norm > 0:
        alpha = alpha * min(1.0, max_norm / np.sqrt(alpha @ gramian @ alpha))
    return [alpha]


def ref_cagrad(gramian, losses, c=0.4):
    """min_{w ∈ Δ} g_wᵀg₀ + ρ‖g_w‖, ρ = c‖g₀‖, on the normalised Gramian,
    over all faces: on a face S the stationarity conditions give
    w_S = t(μa − d) with a = M_S⁻¹1, d = M_S⁻¹(Mb)_S, a quadratic in μ
    from ‖g_w‖ = ρt and t from Σw = 1. Weights `(1/K + ρw/‖g_w‖)/(1 + c²)`."""
    gramian = _normalized(gramian)
    num = len(gramian)
    mean_products = gramian.mean(axis=1)
    radius = c * np.sqrt(gramian.mean())

    def value(w):
        return w @ mean_products + radius * np.sqrt(w @ gramian @ w)

    best, best_value = None, np.inf
    for face in _faces(num):
        block = gramian[np.ix_(face, face)]
        a = np.linalg.solve(block, np.ones(len(face)))
        d = np.linalg.solve(block, mean_products[face])
        quadratic = (a.sum(), -2.0 * d.sum(), mean_products[face] @ d - radius**2)
        for mu in np.roots(quadratic):
            if abs(mu.imag) > 0:
                continue
            direction = mu.real * a - d
            if direction.sum() <= 0:
                continue
            weights = np.zeros(num)
            weights[face] = direction / direction.sum()
            if weights.min() >= -1e-12 and value(weights) < best_value:
                best, best_value = np.maximum(weights, 0.0), value(weights)
    norm = np.sqrt(best @ gramian @ best)
    return [(1.0 / num + radius * best / norm) / (1.0 + c * c)]


def _dual_cone_gramian(gramian):
    return gramian / np.trace(gramian) + 1e-4 * np.eye(len(gramian))


def ref_upgrad(gramian, losses):
    regularized = _dual_cone_gramian(gramian)
    num = len(gramian)
    return [sum(above_reference(regularized, np.eye(num)[i] / num) for i in range(num))]


def ref_dualproj(gramian, losses):
    num = len(gramian)
    return [above_reference(_dual_cone_gramian(gramian), np.ones(num) / num)]


def ref_gradnorm(gramian, losses, alpha=1.5, learning_rate=0.025):
    # First call: weights 1, initial losses recorded (ratios 1), one Adam
    # step of sign(G_i − mean G)·‖g_i‖ (bias-corrected: −lr·g/(|g| + ε)).
    num = len(gramian)
    norms = np.sqrt(np.diag(gramian))
    gaps = norms - norms.mean()
    if np.abs(gaps).min() < 1e-3 * norms.max():
        return None  # a sign at a tie
    gradient = np.sign(gaps) * norms
    updated = np.maximum(
        1.0 - learning_rate * gradient / (np.abs(gradient) + 1e-8), 1e-3
    )
    return [np.ones(num), num * updated / updated.sum()]


def _vectors(gramian):
    """Rows g_i with g_i·g_j = M_ij (a Cholesky factor)."""
    return np.linalg.cholesky(gramian)


def _weights_of(vectors, update):
    # update = Σ w_i g_i = vectorsᵀ w.
    return np.linalg.solve(vectors.T, update)


def ref_pcgrad(gramian, losses):
    """PCGrad on explicit vectors, every task visiting the others in index
    order (`shuffle=False`)."""
    vectors = _vectors(_normalized(gramian))
    projected = vectors.copy()
    for i, j in itertools.permutations(range(len(gramian)), 2):
        inner = projected[i] @ vectors[j]
        if inner < 0:
            projected[i] -= inner / (vectors[j] @ vectors[j]) * vectors[j]
    return [_weights_of(vectors, projected.sum(axis=0))]


def ref_gradvac(gramian, losses, beta=0.01, calls=3):
    """GradVac on explicit vectors in index order, over successive calls
    with the same Gramian (the targets move between them); the ε = 1e-8 of
    the cosine and of the correction's denominator as in LibMTL."""
    vectors = _vectors(_normalized(gramian))
    num = len(gramian)
    targets = np.zeros((num, num))
    results = []
    for _ in range(calls):
        corrected = vectors.copy()
        for i, j in itertools.permutations(range(num), 2):
            own, other = np.linalg.norm(corrected[i]), np.linalg.norm(vectors[j])
            cosine = np.clip(corrected[i] @ vectors[j] / (own * other + 1e-8), -1, 1)
            target = targets[i, j]
            if cosine < target:
                target_sine = np.sqrt(1 - target**2)
                corrected[i] += (
                    own * (target * np.sqrt(1 - cosine**2) - cosine * target_sine)
                    / (other * target_sine + 1e-8) * vectors[j]
                )  # fmt: skip
            targets[i, j] += beta * (cosine - target)
        results.append(_weights_of(vectors, corrected.sum(axis=0)))
    return results


#: registered name → (constructor arguments, reference). The arguments make
#: a random method deterministic (index order) or pick the reference's
#: options; everything else is the method's default.
REFERENCES = {
    "mgda": ({}, ref_mgda),
    "imtl_g": ({}, ref_imtl_g),
    "aligned_mtl": ({}, ref_aligned_mtl),
    "nash_mtl": ({}, ref_nash_mtl),
    "cagrad": ({}, ref_cagrad),
    "upgrad": ({}, ref_upgrad),
    "dualproj": ({}, ref_dualproj),
    "gradnorm": ({}, ref_gradnorm),
    "pcgrad": ({"shuffle": False}, ref_pcgrad),
    "gradvac": ({"shuffle": False}, ref_gradvac),
}


def gramian_names() -> list[str]:
    """Every method (`mtl_keras.methods`) whose balancer is a GramianBalancer,
    presets such as `mgda_ub` included."""
    return [
        method.name
        for method in methods.all_methods()
        if method.balancer is not None and issubclass(method.balancer, GramianBalancer)
    ]


def deviation(name: str, gramian32: np.ndarray, losses32: np.ndarray) -> float | None:
    """Largest relative deviation of `name`'s weights over its reference's
    calls, or None where the reference calls the problem ill-posed."""
    config, reference = REFERENCES[balancers.get(name).registered_name]
    expected = reference(gramian32.astype("float64"), losses32.astype("float64"))
    if expected is None:
        return None
    balancer = balancers.get(name, **config)
    return max(
        relative_deviation(balancer.balance(losses32, gramian32), weights)
        for weights in expected
    )


def test_every_gramian_balancer_has_a_reference():
    names = gramian_names()
    assert {"mgda", "mgda_ub", "upgrad", "nash_mtl"} <= set(names)
    registered = {balancers.get(name).registered_name for name in names}
    assert registered == set(REFERENCES)


@pytest.mark.parametrize("name", gramian_names())
@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    num_tasks=st.integers(2, 7),
    log_condition=st.floats(0.0, np.log10(MAX_CONDITION)),
)
def test_weights_match_the_float64_reference(name, seed, num_tasks, log_condition):
    gramian = random_gramian(seed, num_tasks, log_condition)
    losses = (
        np.random.default_rng(seed + 1).uniform(0.1, 3.0, num_tasks).astype("float32")
    )
    found = deviation(name, gramian, losses)
    assert found is None or found <= TOLERANCE, (
        f"{name}: {found:.2e} from float64 (condition {10**log_condition:.0f})"
    )


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_worst_condition_is_within_tolerance(num_tasks):
    for name in gramian_names():
        for seed in range(3):
            gramian = random_gramian(seed, num_tasks, np.log10(MAX_CONDITION))
            losses = np.ones(num_tasks, "float32")
            found = deviation(name, gramian, losses)
            assert found is None or found <= TOLERANCE, (name, seed, found)


@pytest.mark.parametrize("seed", range(4))
def test_unclipped_nash_mtl_is_the_exact_bargaining_solution(seed):
    gramian = random_gramian(seed, 4, np.log10(MAX_CONDITION))
    weights = balancers.get("nash_mtl", max_norm=0.0).balance(
        np.ones(4, "float32"), gramian
    )
    expected = bargaining_reference(gramian.astype("float64"))
    assert relative_deviation(weights, expected) <= TOLERANCE


JAX_CHILD = """
import json, os, sys
os.environ["KERAS_BACKEND"] = "jax"
sys.path[:0] = [{tests!r}, {helpers!r}, {root!r}]
import jax
import jax.numpy as jnp
import numpy as np
import test_float64_solves as t
from mtl_keras import balancers

found = {{}}
for name in t.gramian_names():
    config, reference = t.REFERENCES[balancers.get(name).registered_name]
    for seed in range(2):
        gramian = t.random_gramian(seed, 4, np.log10(t.MAX_CONDITION))
        losses = np.ones(4, "float32")
        expected = reference(gramian.astype("float64"), losses.astype("float64"))
        if expected is None:
            continue
        balancer = balancers.get(name, **config)
        balancer.build_for_tasks(list("abcd"))
        state, step = balancer.get_state(), jax.jit(balancer.stateless_balance)
        for weights in expected:
            result, state = step(state, losses, gramian)
            found[name] = max(found.get(name, 0.0),
                              t.relative_deviation(result, weights))
            assert result.dtype == jnp.float32, result.dtype
print(json.dumps({{"deviations": found, "x64": bool(jax.config.jax_enable_x64),
                  "default": str(jnp.ones(1).dtype)}}))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX not installed")
def test_jax_solves_in_float64_inside_jit_and_leaves_x64_off():
    here = pathlib.Path(__file__).resolve().parent  # tests/balancers
    script = JAX_CHILD.format(
        tests=str(here), helpers=str(here.parent), root=str(here.parents[1]))
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True,
        env=env, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "float64 requested" not in done.stderr  # nothing truncated
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["x64"] is False and result["default"] == "float32"
    deviations = result["deviations"]
    assert set(deviations) == set(gramian_names())
    assert max(deviations.values()) <= TOLERANCE, deviations


class _Recorder(GramianBalancer):
    """Records the dtype it computes in; counts its calls in a float32 weight."""

    def build_state(self, num_tasks):
        self.calls = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="calls"
        )

    def compute_weights(self, task_losses, gramian):
        self.seen = keras.backend.standardize_dtype(gramian.dtype)
        self.calls.assign(self.calls + 1.0)
        return task_losses / ops.sqrt(ops.diagonal(gramian))


@pytest.mark.parametrize("solve_dtype", [None, "float32", "float64"])
def test_solve_dtype_is_what_compute_weights_sees(solve_dtype):
    balancer = _Recorder()
    if solve_dtype is not None:
        balancer.solve_dtype = solve_dtype
    gramian = np.array([[4.0, 1.0], [1.0, 1.0]], "float32")
    weights = balancer.balance(np.array([1.0, 3.0], "float32"), gramian)
    assert balancer.seen == (solve_dtype or "float32")
    assert keras.backend.standardize_dtype(weights.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(weights), [0.5, 3.0])
    assert float(balancer.calls.numpy()) == 1.0  # the state still assigns


def test_user_gramian_balancers_default_to_float32():
    assert GramianBalancer.solve_dtype is None
    assert balancers.get("upgrad").solve_dtype == "float64"
