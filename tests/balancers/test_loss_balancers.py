"""Loss balancers: hand-computed totals and weights, learning, registry."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from _tiny import LOSSES, tiny_data, tiny_network
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_keras import balancers

LOSS_VALUES = np.array([0.5, 2.0, 4.0], "float32")


def _total_and_weights(balancer, losses=LOSS_VALUES):
    total, weights = balancer.combine(losses)
    return float(total), weights.numpy()


def test_static_is_plain_sum():
    total, weights = _total_and_weights(balancers.Static())
    assert total == pytest.approx(6.5)
    np.testing.assert_array_equal(weights, [1, 1, 1])


@pytest.mark.parametrize(
    "form, expected_weights, expected_regularizer",
    [
        ("standard", 0.5 * np.exp(0.5), 0.5 * 3 * -0.5),
        ("kendall_keras", np.exp(0.5), 3 * -0.5),
        ("positive", 0.5, 3 * np.log(2.0)),
    ],
)
def test_uncertainty_forms(form, expected_weights, expected_regularizer):
    balancer = balancers.UncertaintyWeighting(form=form)
    total, weights = _total_and_weights(balancer)
    np.testing.assert_allclose(weights, [expected_weights] * 3, rtol=1e-6)
    expected_total = expected_weights * LOSS_VALUES.sum() + expected_regularizer
    assert total == pytest.approx(expected_total, rel=1e-6)


def test_uncertainty_optimum_is_the_loss():
    # d/ds [0.5 exp(-s) L + 0.5 s] = 0  <=>  exp(s) = L.
    balancer = balancers.UncertaintyWeighting()
    losses = tf.constant(LOSS_VALUES)
    balancer.build_for_tasks(["a", "b", "c"])
    optimizer = keras.optimizers.SGD(0.5)
    for _ in range(300):
        with tf.GradientTape() as tape:
            total = balancer.total_loss(losses)
        grads = tape.gradient(total, balancer.trainable_variables)
        optimizer.apply(grads, balancer.trainable_variables)
    np.testing.assert_allclose(
        np.exp(balancer.log_variances.numpy()), LOSS_VALUES, rtol=1e-3
    )


def test_imtl_l_optimum_scales_losses_to_one():
    balancer = balancers.IMTLL()
    balancer.build_for_tasks(["a", "b", "c"])
    optimizer = keras.optimizers.SGD(0.2)
    for _ in range(400):
        with tf.GradientTape() as tape:
            total = balancer.total_loss(tf.constant(LOSS_VALUES))
        grads = tape.gradient(total, balancer.trainable_variables)
        optimizer.apply(grads, balancer.trainable_variables)
    weights = balancer.balance(LOSS_VALUES).numpy()
    np.testing.assert_allclose(weights * LOSS_VALUES, [1, 1, 1], rtol=1e-3)


def test_gls_total_is_geometric_mean_and_weights_give_its_gradient():
    balancer = balancers.GeometricLossStrategy()
    losses = tf.Variable(LOSS_VALUES)
    with tf.GradientTape() as tape:
        total, weights = balancer.combine(losses)
    assert float(total) == pytest.approx((0.5 * 2.0 * 4.0) ** (1 / 3), rel=1e-6)
    np.testing.assert_allclose(
        tape.gradient(total, losses).numpy(), weights.numpy(), rtol=1e-5
    )


def test_si_total_is_sum_of_logs_and_weights_give_its_gradient():
    balancer = balancers.ScaleInvariant()
    losses = tf.Variable(LOSS_VALUES)
    with tf.GradientTape() as tape:
        total, weights = balancer.combine(losses)
    assert float(total) == pytest.approx(np.log(LOSS_VALUES).sum(), rel=1e-6)
    np.testing.assert_allclose(weights.numpy(), 1 / LOSS_VALUES, rtol=1e-6)
    np.testing.assert_allclose(
        tape.gradient(total, losses).numpy(), 1 / LOSS_VALUES, rtol=1e-5
    )


def test_rlw_weights_on_simplex_random_and_reproducible():
    first = balancers.RandomLossWeighting(seed=3)
    draws = [first.balance(LOSS_VALUES).numpy() for _ in range(50)]
    for weights in draws:
        assert weights.min() > 0 and weights.sum() == pytest.approx(1.0, rel=1e-6)
    assert np.std([w[0] for w in draws]) > 0.05
    again = balancers.RandomLossWeighting(seed=3)
    np.testing.assert_allclose(again.balance(LOSS_VALUES).numpy(), draws[0])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.01, 100.0), min_size=2, max_size=5))
def test_loss_balancers_are_permutation_equivariant(values):
    losses = np.array(values, "float32")
    permutation = np.roll(np.arange(len(values)), 1)
    for balancer in (balancers.GeometricLossStrategy(), balancers.ScaleInvariant()):
        weights = balancer.balance(losses).numpy()
        permuted = type(balancer)().balance(losses[permutation]).numpy()
        np.testing.assert_allclose(permuted, weights[permutation], rtol=1e-5)


@pytest.mark.parametrize("name", ["static", "uw", "rlw", "gls", "si", "imtl_l"])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_loss_balancer_trains_tiny_model(name, jit_compile):
    x, y = tiny_data(128)
    model = tiny_network()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=LOSSES,
        balancer=name,
        jit_compile=jit_compile,
    )
    history = model.fit(x, y, epochs=4, batch_size=32, verbose=0).history
    for task in ("a", "b"):
        assert history[f"{task}_loss"][-1] < history[f"{task}_loss"][0]
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)


def test_uw_log_variances_move_during_training():
    x, y = tiny_data(128)
    model = tiny_network()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSSES, balancer="uw")
    before = model.balancer.log_variances.numpy().copy()
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert np.abs(model.balancer.log_variances.numpy() - before).min() > 1e-3


def test_registry_resolves_names_aliases_and_configs():
    assert isinstance(balancers.get("UW"), balancers.UncertaintyWeighting)
    assert isinstance(balancers.get("imtl-l"), balancers.IMTLL)
    assert isinstance(balancers.get("ew"), balancers.Static)
    balancer = balancers.UncertaintyWeighting(form="positive")
    assert balancers.get(balancer) is balancer
    rebuilt = balancers.get(balancers.serialize(balancer))
    assert rebuilt.form == "positive"
    config = {"class_name": "mgda-ub", "config": {"normalization": "l2"}}
    aliased = balancers.get(config)
    assert (aliased.mode, aliased.normalization) == ("rep", "l2")
    with pytest.raises(ValueError, match="Valid names: .*gls"):
        balancers.get("gradient-surgery")
    with pytest.raises(TypeError):
        balancers.get(3)


def test_balancer_rebuilt_for_other_task_count_is_refused():
    balancer = balancers.UncertaintyWeighting()
    balancer.build_for_tasks(["a", "b"])
    with pytest.raises(ValueError, match="built for 2 tasks"):
        balancer.build_for_tasks(["a", "b", "c"])
