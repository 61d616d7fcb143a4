"""MultiTaskModel: equivalence with keras.Model, masking, logs, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from _tiny import LOSSES, max_weight_difference, tiny_data, tiny_network

from mtl_keras.model import MultiTaskModel
from mtl_keras.task_losses import MISSING_LABEL


def _fit(model, x, y, epochs=3, **compile_kwargs):
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSSES, **compile_kwargs)
    return model.fit(x, y, epochs=epochs, batch_size=16, shuffle=False, verbose=0)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_without_balancer_trains_exactly_like_keras_model(jit_compile):
    x, y = tiny_data()
    weights = {"a": 1.0, "b": 0.3}
    ours = tiny_network(regularized=True)
    theirs = tiny_network(keras.Model, regularized=True)
    ours_history = _fit(ours, x, y, loss_weights=weights, jit_compile=jit_compile)
    theirs_history = _fit(theirs, x, y, loss_weights=weights, jit_compile=jit_compile)
    assert max_weight_difference(ours, theirs) < 1e-6
    np.testing.assert_allclose(
        ours_history.history["loss"], theirs_history.history["loss"], rtol=1e-5
    )
    np.testing.assert_allclose(
        ours_history.history["b_loss"], theirs_history.history["b_loss"], rtol=1e-5
    )


def test_sample_weights_match_keras():
    x, y = tiny_data()
    sample_weight = {
        "a": np.linspace(0, 1, 64).astype("float32"),
        "b": np.linspace(1, 0, 64).astype("float32"),
    }
    ours, theirs = tiny_network(), tiny_network(keras.Model)
    for model in (ours, theirs):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSSES)
        model.fit(
            x,
            y,
            sample_weight=sample_weight,
            epochs=2,
            batch_size=16,
            shuffle=False,
            verbose=0,
        )
    assert max_weight_difference(ours, theirs) < 1e-6


def test_logs_carry_unweighted_task_losses_and_weights():
    x, y = tiny_data()
    history = _fit(tiny_network(), x, y, loss_weights={"a": 2.0, "b": 0.5})
    logs = history.history
    assert logs["a_weight"] == [2.0] * 3 and logs["b_weight"] == [0.5] * 3
    model = tiny_network()
    model.compile(loss=LOSSES)
    predictions = model.predict(x, verbose=0)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy()(
        y["a"], predictions["a"]
    )
    evaluated = model.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(evaluated["a_loss"], float(cross_entropy), rtol=1e-5)


def test_validation_logs_omit_training_only_diagnostics():
    x, y = tiny_data()
    model = tiny_network()
    model.compile(optimizer="sgd", loss=LOSSES, balancer="mgda")
    history = model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0)
    logs = history.history
    assert {"grad_norm/a", "grad_cos/a/b", "skipped_steps", "a_weight"} <= set(logs)
    assert {"val_a_loss", "val_b_loss"} <= set(logs)
    # Task weights too: evaluation applies no balancer.
    assert not [
        key
        for key in logs
        if key.startswith(("val_grad", "val_skipped", "val_balanced"))
    ]
    assert "val_a_weight" not in logs and "val_b_weight" not in logs


def test_masked_labels_contribute_nothing():
    x, y = tiny_data()
    labelled = np.arange(64) % 3 != 0
    masked = {
        "a": np.where(labelled, y["a"], MISSING_LABEL).astype("int32"),
        "b": np.where(labelled[:, None], y["b"], np.nan).astype("float32"),
    }
    model = tiny_network()
    model.compile(loss=LOSSES)
    full = model.compute_task_losses(
        {k: v[labelled] for k, v in y.items()}, model(x[labelled])
    )
    with_missing = model.compute_task_losses(masked, model(x))
    np.testing.assert_allclose(with_missing.numpy(), full.numpy(), rtol=1e-6)


def test_gradients_ignore_masked_samples():
    x, y = tiny_data()
    labelled = np.arange(64) % 2 == 0
    masked = {
        "a": np.where(labelled, y["a"], MISSING_LABEL).astype("int32"),
        "b": np.where(labelled[:, None], y["b"], np.nan).astype("float32"),
    }
    model = tiny_network()
    model.compile(loss=LOSSES)

    def gradient(inputs, labels):
        with tf.GradientTape() as tape:
            losses = model.compute_task_losses(labels, model(inputs))
            total = tf.reduce_sum(losses)
        return tape.gradient(total, model.trainable_variables)

    subset = gradient(x[labelled], {k: v[labelled] for k, v in y.items()})
    for got, want in zip(gradient(x, masked), subset):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("balancer", [None, "uw", "pcgrad"])
def test_batch_without_any_label_for_a_task_trains_without_nan(balancer):
    x, y = tiny_data()
    y = {"a": np.full(64, MISSING_LABEL, "int32"), "b": y["b"]}
    model = tiny_network()
    history = _fit(model, x, y, balancer=balancer)
    assert history.history["a_loss"] == [0.0] * 3
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)
    assert history.history["b_loss"][-1] < history.history["b_loss"][0]


def test_sample_weight_zero_masks_a_task():
    x, y = tiny_data()
    model = tiny_network()
    model.compile(loss=LOSSES)
    sample_weight = {"a": np.zeros(64, "float32"), "b": np.ones(64, "float32")}
    losses = model.compute_task_losses(y, model(x), sample_weight)
    assert float(losses[0]) == 0.0 and float(losses[1]) > 0.0


def test_segmentation_pixels_can_be_missing():
    loss = keras.losses.SparseCategoricalCrossentropy()
    from mtl_keras.task_losses import masked_task_loss

    logits = tf.nn.softmax(tf.random.normal((2, 4, 4, 3), seed=1))
    labels = np.random.RandomState(0).randint(0, 3, (2, 4, 4)).astype("int32")
    ignored = labels.copy()
    ignored[:, :2] = MISSING_LABEL
    expected = loss(labels[:, 2:], logits[:, 2:])
    got = masked_task_loss(loss, ignored, logits)
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-6)


def test_task_weights_are_model_state_read_without_retracing():
    x, y = tiny_data()
    model = tiny_network()
    _fit(model, x, y, epochs=1)
    model.set_task_weights({"b": 0.0})
    before = model.get_weights()
    history = model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert history.history["b_weight"] == [0.0]
    # With b's weight 0, b's head receives no gradient.
    b_kernel = [v.path for v in model.trainable_variables].index("b/kernel")
    np.testing.assert_array_equal(model.get_weights()[b_kernel], before[b_kernel])


def test_dict_outputs_required():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="dict"):
        MultiTaskModel(inputs, keras.layers.Dense(1)(inputs))


def test_mismatched_task_names_are_named():
    model = tiny_network()
    with pytest.raises(ValueError, match=r"unknown \['c'\].*missing \['b'\]"):
        model.compile(loss={"a": "mse", "c": "mse"})
    with pytest.raises(ValueError, match=r"loss_weights.*unknown \['z'\]"):
        model.compile(loss=LOSSES, loss_weights={"a": 1.0, "z": 2.0})
    with pytest.raises(ValueError, match=r"metrics.*unknown \['q'\]"):
        model.compile(loss=LOSSES, metrics={"q": ["accuracy"]})


def test_labels_for_unknown_or_missing_task_are_named():
    x, y = tiny_data()
    model = tiny_network()
    model.compile(loss=LOSSES)
    with pytest.raises(ValueError, match=r"labels.*unknown \['c'\]"):
        model.fit(x, {**y, "c": y["b"]}, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"no entry for task\(s\) \['b'\]"):
        model.fit(x, {"a": y["a"]}, epochs=1, verbose=0)


def test_wrong_label_shape_names_the_task():
    x, y = tiny_data()
    model = tiny_network()
    model.compile(loss=LOSSES)
    with pytest.raises(ValueError, match=r"Task 'b': labels have shape \(batch, 5\)"):
        model.fit(
            x, {"a": y["a"], "b": np.zeros((64, 5), "float32")}, epochs=1, verbose=0
        )
    with pytest.raises(ValueError, match=r"Task 'a'.*integer class ids of shape"):
        model.fit(
            x, {"a": np.zeros((64, 7), "int32"), "b": y["b"]}, epochs=1, verbose=0
        )


def test_unknown_balancer_lists_available():
    model = tiny_network()
    with pytest.raises(ValueError, match=r"Unknown method 'nope'.*pcgrad.*uw"):
        model.compile(loss=LOSSES, balancer="nope")
    with pytest.raises(ValueError, match=r"Did you mean 'upgrad'"):
        model.compile(loss=LOSSES, balancer="UP-grd")
    with pytest.raises(ValueError, match=r"callback method.*DynamicWeightAverage"):
        model.compile(loss=LOSSES, balancer="dwa")


def test_gradient_balancer_without_shared_tensor_uses_shared_variables():
    x, y = tiny_data()
    model = tiny_network(with_shared=False)
    model.compile(loss=LOSSES)
    assert [v.path for v in model.shared_variables] == ["trunk/kernel", "trunk/bias"]
    with pytest.raises(ValueError, match="shared="):
        model.compile(loss=LOSSES, balancer="mgda_ub")


def test_serving_model_has_no_training_state():
    model = tiny_network()
    model.compile(loss=LOSSES, balancer="uw")
    serving = model.serving_model()
    paths = [v.path for v in serving.weights]
    assert not any("task_weights" in p or "uncertainty" in p for p in paths)
    x, _ = tiny_data(4)
    for task, value in serving(x).items():
        np.testing.assert_allclose(value, model(x)[task])
