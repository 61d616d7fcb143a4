"""The public gradient engine: `mtl_keras.engine.balanced_gradients`."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

import mtl_keras
from mtl_keras import engine
from mtl_keras.balancers.base import GramianBalancer
from mtl_keras.engine import tensorflow as tf_engine


class FixedWeights(GramianBalancer):
    """A gradient balancer that always returns the same weights."""

    def __init__(self, weights, **kwargs):
        super().__init__(**kwargs)
        self.fixed = list(weights)

    def compute_weights(self, task_losses, gramian):
        return ops.convert_to_tensor(self.fixed, "float32")


def _network(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    trunk = keras.layers.Dense(4, activation="tanh")
    features = trunk(inputs)
    heads = [keras.layers.Dense(1), keras.layers.Dense(2)]
    model = keras.Model(inputs, [features] + [h(features) for h in heads])
    heads_vars = [v for h in heads for v in h.trainable_variables]
    x = np.random.default_rng(seed).normal(size=(8, 3)).astype("float32")
    return model, trunk.trainable_variables, heads_vars, x


def _losses(outputs, x):
    _, first, second = outputs
    return ops.stack([ops.mean((first - x[:, :1]) ** 2),
                      ops.mean((second - x[:, 1:]) ** 2)])


@pytest.mark.parametrize("regularized", [False, True])
@pytest.mark.parametrize("rep", [False, True])
def test_fixed_weights_equal_the_gradient_of_the_weighted_sum(rep, regularized):
    model, shared, heads, x = _network()
    weights = np.float32([0.3, 1.7])
    with tf.GradientTape(persistent=True) as tape:
        outputs = model(x)
        task_losses = _losses(outputs, x)
        # A penalty on a shared and on a head variable, as regularizers add.
        regularization = (0.5 * ops.sum(shared[0] ** 2) + 0.7 * ops.sum(heads[0] ** 2)
                          if regularized else None)
        weighted_sum = ops.sum(weights * task_losses)
        if regularized:
            weighted_sum = weighted_sum + regularization
    result = engine.balanced_gradients(
        tape, task_losses, shared, heads, FixedWeights(weights, mode="rep" if rep
                                                       else "params"),
        representation=outputs[0] if rep else None, regularization=regularization)
    expected = tape.gradient(weighted_sum, shared + heads)
    assert len(result.grads) == len(expected)
    for got, want in zip(result.grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.weights, weights)
    assert bool(result.balanced)
    assert np.all(result.finite_tasks)


def test_gramian_and_diagnostics_match_the_task_gradients():
    model, shared, heads, x = _network(1)
    with tf.GradientTape(persistent=True) as tape:
        task_losses = _losses(model(x), x)
    rows = [engine.core.flatten(tape.gradient(
        task_losses, shared, output_gradients=np.eye(2, dtype="float32")[k]))
        for k in range(2)]
    result = engine.balanced_gradients(tape, task_losses, shared, heads, "mgda")
    jacobian = np.stack(rows)
    np.testing.assert_allclose(result.gramian, jacobian @ jacobian.T, rtol=1e-5)
    norms = np.linalg.norm(jacobian, axis=1)
    values = [float(v) for v in engine.diagnostics(result.gramian)]
    cosine = jacobian[0] @ jacobian[1] / (norms[0] * norms[1])
    np.testing.assert_allclose(values, [*norms, cosine], rtol=1e-4)
    assert engine.diagnostic_names(["a", "b"]) == [
        "grad_norm/a", "grad_norm/b", "grad_cos/a/b"]
    # MGDA's weights lie on the simplex.
    np.testing.assert_allclose(np.sum(result.weights), 1.0, rtol=1e-5)


def test_loss_scale_scales_every_gradient_and_not_the_weights():
    model, shared, heads, x = _network(2)
    with tf.GradientTape(persistent=True) as tape:
        outputs = model(x)
        task_losses = _losses(outputs, x)
        regularization = 0.1 * ops.sum(shared[0] ** 2)
    plain = engine.balanced_gradients(tape, task_losses, shared, heads, "upgrad",
                                      regularization=regularization)
    scaled = engine.balanced_gradients(tape, task_losses, shared, heads, "upgrad",
                                       regularization=regularization,
                                       loss_scale=8.0)
    np.testing.assert_allclose(scaled.weights, plain.weights, rtol=1e-5)
    for got, want in zip(scaled.grads, plain.grads):
        np.testing.assert_allclose(got, 8.0 * np.asarray(want), rtol=1e-4,
                                   atol=1e-6)


def test_non_finite_task_is_flagged_and_not_balanced():
    model, shared, heads, x = _network(3)
    balancer = mtl_keras.balancers.get("nash_mtl")
    with tf.GradientTape(persistent=True) as tape:
        task_losses = _losses(model(x), x) * ops.convert_to_tensor([1.0, np.inf])
    result = engine.balanced_gradients(tape, task_losses, shared, heads, balancer)
    assert not bool(result.balanced)
    np.testing.assert_array_equal(result.finite_tasks, [True, False])
    np.testing.assert_allclose(result.weights, [1.0, 1.0])
    np.testing.assert_allclose(result.gramian, np.zeros((2, 2)))


def test_errors_name_the_fix():
    model, shared, heads, x = _network()
    with tf.GradientTape(persistent=True) as tape:
        task_losses = _losses(model(x), x)
    with pytest.raises(ValueError, match="total_loss"):
        engine.balanced_gradients(tape, task_losses, shared, heads, "uw")
    with pytest.raises(ValueError, match="representation="):
        engine.balanced_gradients(tape, task_losses, shared, heads, "mgda_ub")
    with pytest.raises(ValueError, match="'loop', 'pfor' or 'gramian'"):
        engine.balanced_gradients(tape, task_losses, shared, heads, "mgda",
                                  jacobian="vmap")


def _docstring_example(steps):
    source = tf_engine.balanced_gradients.__doc__
    block = re.search(r"```python\n(.*?)```", source, re.S).group(1)
    lines = block.splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    code = "\n".join(line[indent:] for line in lines)
    assert "range(3)" in code
    namespace = {}
    exec(code.replace("range(3)", f"range({steps})"), namespace)
    model, x, y = namespace["model"], namespace["x"], namespace["y"]
    return sum(float(np.mean((o - t) ** 2)) for o, t in zip(model(x), y))


def test_docstring_example_runs_and_lowers_the_loss():
    assert _docstring_example(30) < 0.8 * _docstring_example(0)


def test_multitaskmodel_uses_the_engine(monkeypatch):
    # The model's step skips the public function's checks (compile made
    # them) and runs what it runs after them.
    calls = []
    original = tf_engine._balanced_gradients

    def spy(*args):
        calls.append(args[9])  # jacobian=
        return original(*args)

    monkeypatch.setattr(tf_engine, "_balanced_gradients", spy)
    inputs = keras.Input((3,))
    features = keras.layers.Dense(4)(inputs)
    model = mtl_keras.MultiTaskModel(
        inputs, {"a": keras.layers.Dense(1)(features),
                 "b": keras.layers.Dense(1)(features)})
    model.compile("sgd", loss="mse", balancer="pcgrad", run_eagerly=True)
    x = np.ones((4, 3), "float32")
    model.fit(x, {"a": np.ones((4, 1)), "b": np.zeros((4, 1))}, epochs=1,
              verbose=0)
    assert calls == ["loop"]


@pytest.mark.parametrize("name", [
    n for n in mtl_keras.balancers.available()
    if isinstance(mtl_keras.balancers.get(n), mtl_keras.balancers.GradientBalancer)
    and n != "mgda_ub"])
def test_stateless_update_is_pure_and_matches_the_stateful_call(name):
    rng = np.random.default_rng(0)
    losses = np.float32([0.5, 1.0, 2.0])
    jacobians = rng.normal(size=(2, 3, 4)).astype("float32")
    stateful = mtl_keras.balancers.get(name)
    stateful.build_for_tasks(["a", "b", "c"])
    stateful.build_for_jacobian(4)
    pure = type(stateful).from_config(stateful.get_config())
    pure.build_for_tasks(["a", "b", "c"])
    pure.build_for_jacobian(4)
    pure.set_state(stateful.get_state())  # same seeds
    for jacobian in jacobians:
        before = [np.array(v) for v in pure.get_state()]
        update, _, new_state = pure.stateless_update(
            pure.get_state(), losses, ops.convert_to_tensor(jacobian))
        for old, now in zip(before, pure.get_state()):
            np.testing.assert_array_equal(old, now)  # nothing assigned
        pure.set_state(new_state)
        expected = stateful.update_direction(losses, jacobian)
        np.testing.assert_allclose(update, expected, rtol=1e-5, atol=1e-6)
        for got, want in zip(pure.get_state(), stateful.get_state()):
            np.testing.assert_allclose(got, want, rtol=1e-6)


def test_diagnostics_follow_the_names_for_many_tasks():
    rng = np.random.default_rng(0)
    jacobian = rng.normal(size=(5, 7)).astype("float32")
    jacobian[3] = 0.0  # a vanishing gradient: norm 0, cosines 0
    names = engine.diagnostic_names([f"t{k}" for k in range(5)])
    values = np.asarray(engine.diagnostics(jacobian @ jacobian.T))
    norms = np.linalg.norm(jacobian, axis=1)
    for name, value in zip(names, values, strict=True):
        if name.startswith("grad_norm/t"):
            np.testing.assert_allclose(value, norms[int(name[-1])], rtol=1e-5)
            continue
        a, b = (int(task[-1]) for task in name[len("grad_cos/"):].split("/"))
        want = 0.0 if 3 in (a, b) else (
            jacobian[a] @ jacobian[b] / (norms[a] * norms[b]))
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-6)
    assert len(engine.diagnostics(jacobian @ jacobian.T, cosines=False)) == 5


def test_famo_measures_the_update_on_the_steps_own_forward_pass():
    """FAMO compares the batch's losses before and after the step: the second
    pass must be the step's training-mode pass (same dropout masks, batch
    statistics) and change no state. With the model held still (SGD at rate
    0) the two losses are then equal, the logits stay 0 and batch norm's
    moving statistics are those of one update per step. (Inference mode
    here moved the logits by ~0.1 in four steps and, on MultiMNIST with
    dropout, let one task's weight collapse.)"""
    import _jax_checks

    largest_logit, batch_norm_gap = _jax_checks.check_famo_post_step()
    assert largest_logit == 0.0
    assert batch_norm_gap == 0.0


def test_gradients_finite_reads_every_element():
    core = engine.core
    finite = [np.ones((2, 3), "float32"), np.full((4,), -2.0, "float32")]
    assert bool(core.gradients_finite(finite))
    for bad in (np.nan, np.inf, -np.inf):
        grads = [finite[0], np.array([1.0, bad, 3.0, 4.0], "float32")]
        assert not bool(core.gradients_finite(grads)), bad
    # +inf in one tensor and -inf in another: the sum is NaN, still caught.
    assert not bool(core.gradients_finite(
        [np.array([np.inf], "float32"), np.array([-np.inf], "float32")]))
    # float16 gradients are summed in float32 (60000 × 4 overflows float16).
    assert bool(core.gradients_finite([np.full((4,), 6e4, "float16")]))
    # An Embedding's gradient (IndexedSlices) on TensorFlow.
    sparse = tf.IndexedSlices(tf.constant([[1.0, np.nan]]), tf.constant([0]),
                              tf.constant([3, 2]))
    assert not bool(core.gradients_finite([sparse]))


def test_column_chunks_by_hand(monkeypatch):
    from mtl_keras.engine import core

    monkeypatch.setattr(core, "MIN_CHUNK", 4)
    monkeypatch.setattr(core, "CHUNKS_PER_JACOBIAN", 3)
    # 13 columns in about 3 chunks: chunks of ceil(13 / 3) = 5, per value.
    assert core.column_chunks([10, 3]) == [(0, 0, 5), (0, 5, 5), (1, 0, 3)]
    # The floor: never chunks below MIN_CHUNK columns.
    assert core.column_chunks([6]) == [(0, 0, 4), (0, 4, 2)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 200_000), min_size=1, max_size=6))
def test_column_chunks_cover_every_column_once(sizes):
    from mtl_keras.engine import core

    chunks = core.column_chunks(sizes)
    largest = max(core.MIN_CHUNK, -(-sum(sizes) // core.CHUNKS_PER_JACOBIAN))
    for v, size in enumerate(sizes):
        mine = [(start, n) for w, start, n in chunks if w == v]
        assert [start for start, _ in mine] == list(range(0, size, largest))
        assert sum(n for _, n in mine) == size
        assert all(0 < n <= largest for _, n in mine)


def test_task_rows_gramian_and_update_in_chunks_match_numpy():
    # A value of 40 000 columns (over MIN_CHUNK) is split in chunks.
    rng = np.random.default_rng(0)
    rows = [[rng.normal(size=40_000), rng.normal(size=7)] for _ in range(3)]
    jacobian = np.stack([np.concatenate(row) for row in rows])
    weights = np.array([0.5, -1.0, 2.0])
    as_tensors = [[tf.constant(g, "float32") for g in row] for row in rows]
    gramian = tf_engine.gramian_of_rows(as_tensors).numpy()
    update = tf_engine.combine_task_rows(tf.constant(weights, "float32"), as_tensors)
    want = jacobian @ jacobian.T  # float32 sums of 40 000 terms: scale-relative
    np.testing.assert_allclose(gramian, want, atol=1e-6 * np.abs(want).max())
    np.testing.assert_allclose(np.concatenate([u.numpy() for u in update]),
                               weights @ jacobian, rtol=1e-4, atol=1e-4)
