"""What users read is right: masked metrics, one meaning of `loss`,
evaluation without side effects, clear errors for bad class ids."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import mtl_keras
from mtl_keras import MISSING_LABEL, MultiTaskModel
from mtl_keras import metrics as metrics_lib
from tests._tiny import LOSSES, tiny_data, tiny_network


def _half_missing(y, seed=3):
    """Half of `a`'s class ids -1, half of `b`'s targets NaN (independently)."""
    rng = np.random.RandomState(seed)
    a, b = y["a"].copy(), y["b"].copy()
    a[rng.rand(len(a)) < 0.5] = MISSING_LABEL
    b[rng.rand(len(b)) < 0.5] = np.nan
    return {"a": a, "b": b}


def _hand_metrics(model, x, y):
    """Accuracy of `a` and MAE of `b` over the present labels only."""
    pred = model.predict(x, verbose=0)
    a_present = y["a"] != MISSING_LABEL
    b_present = ~np.isnan(y["b"][:, 0])
    accuracy = np.mean(pred["a"][a_present].argmax(-1) == y["a"][a_present])
    mae = np.mean(np.abs(pred["b"][b_present, 0] - y["b"][b_present, 0]))
    return accuracy, mae


def _compiled(**kwargs):
    model = tiny_network()
    model.compile(optimizer="sgd", loss=LOSSES,
                  metrics={"a": ["accuracy"], "b": ["mae"]}, **kwargs)
    return model


def test_evaluate_metrics_see_only_present_labels():
    x, y = tiny_data(n=96)
    y = _half_missing(y)
    model = _compiled()
    logs = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    accuracy, mae = _hand_metrics(model, x, y)
    assert logs["a_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert logs["b_mae"] == pytest.approx(mae, rel=1e-5)


def test_fit_metrics_see_only_present_labels_with_gradient_balancer():
    x, y = tiny_data(n=64)
    y = _half_missing(y)
    model = _compiled(balancer="mgda")
    # One batch, learning rate 0: the logged training metrics are those of
    # the (unchanged) model on that batch.
    model.optimizer.learning_rate.assign(0.0)
    history = model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    accuracy, mae = _hand_metrics(model, x, y)
    assert history.history["a_accuracy"][0] == pytest.approx(accuracy, abs=1e-6)
    assert history.history["b_mae"][0] == pytest.approx(mae, rel=1e-5)


def test_dense_labels_mask_per_pixel_mean_iou():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 2), name="image")
    trunk = keras.layers.Conv2D(4, 1, activation="relu", name="trunk")(inputs)
    outputs = {
        "seg": keras.layers.Conv2D(3, 1, activation="softmax", name="seg")(trunk),
        "cls": keras.layers.Dense(2, activation="softmax", name="cls")(
            keras.layers.GlobalAveragePooling2D()(trunk)),
    }
    model = MultiTaskModel(inputs, outputs, shared=trunk)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics={"seg": [keras.metrics.MeanIoU(
                      3, sparse_y_pred=False, name="miou")], "cls": ["accuracy"]})
    rng = np.random.RandomState(0)
    x = rng.randn(16, 4, 4, 2).astype("float32")
    seg = rng.randint(0, 3, size=(16, 4, 4)).astype("int32")
    seg[rng.rand(16, 4, 4) < 0.4] = MISSING_LABEL
    cls = rng.randint(0, 2, size=(16,)).astype("int32")
    logs = model.evaluate(x, {"seg": seg, "cls": cls}, verbose=0, return_dict=True)
    predicted = model.predict(x, verbose=0)["seg"].argmax(-1)
    present = seg != MISSING_LABEL
    reference = keras.metrics.MeanIoU(3)
    reference.update_state(seg[present], predicted[present])
    assert logs["seg_miou"] == pytest.approx(float(reference.result()), abs=1e-6)


def test_a_batch_without_labels_leaves_metrics_unchanged():
    x, y = tiny_data(n=64)
    model = _compiled()
    first = model.evaluate(x[:32], {"a": y["a"][:32], "b": y["b"][:32]},
                           verbose=0, return_dict=True)
    no_labels = {"a": np.full(32, MISSING_LABEL, "int32"),
                 "b": np.full((32, 1), np.nan, "float32")}
    both = model.evaluate(
        x, {"a": np.concatenate([y["a"][:32], no_labels["a"]]),
            "b": np.concatenate([y["b"][:32], no_labels["b"]])},
        batch_size=32, verbose=0, return_dict=True)
    for key in ("a_accuracy", "b_mae"):
        assert np.isfinite(both[key])
        assert both[key] == pytest.approx(first[key], rel=1e-6)


def test_weighted_metrics_multiply_mask_and_sample_weight():
    x, y = tiny_data(n=32)
    y = _half_missing(y)
    weights = np.linspace(0.5, 2.0, 32).astype("float32")
    model = tiny_network()
    model.compile(optimizer="sgd", loss=LOSSES, metrics={"b": ["mae"]},
                  weighted_metrics={"b": ["mse"]})
    logs = model.evaluate(x, y, sample_weight=weights, batch_size=32, verbose=0,
                          return_dict=True)
    pred = model.predict(x, verbose=0)["b"][:, 0]
    present = ~np.isnan(y["b"][:, 0])
    errors = pred[present] - y["b"][present, 0]
    # `metrics` ignore sample weights (as in Keras); `weighted_metrics` use them.
    assert logs["b_mae"] == pytest.approx(np.mean(np.abs(errors)), rel=1e-5)
    expected_mse = np.sum(weights[present] * errors**2) / np.sum(weights[present])
    assert logs["b_mse"] == pytest.approx(expected_mse, rel=1e-5)


class SparseCrossentropyOfMine(keras.losses.Loss):
    """A user's loss over integer class ids; its name says nothing."""

    def call(self, y_true, y_pred):
        y_true = keras.ops.cast(y_true, "int32")
        picked = keras.ops.take_along_axis(y_pred, y_true[:, None], axis=-1)[:, 0]
        return -keras.ops.log(picked + 1e-7)


def test_a_custom_loss_over_class_ids_is_masked_like_keras_sparse_losses():
    x, y = tiny_data(n=64)
    y = _half_missing(y)
    losses = {}
    for loss in ("sparse_categorical_crossentropy", SparseCrossentropyOfMine()):
        model = tiny_network()
        model.compile(optimizer="sgd", loss={"a": loss, "b": "mse"})
        losses[type(loss).__name__] = model.evaluate(
            x, y, verbose=0, return_dict=True)["a_loss"]
    assert len(losses) == 2
    assert np.isfinite(list(losses.values())).all()
    first, second = losses.values()
    assert first == pytest.approx(second, rel=1e-5)


def test_delta_m_on_masked_data_matches_hand_computed_metrics():
    x, y = tiny_data(n=96)
    y = _half_missing(y)
    model = _compiled()
    references = {"a": {"accuracy": 0.9}, "b": {"mae": 0.2}}
    score = mtl_keras.callbacks.MultiTaskScore(references=references)
    model.optimizer.learning_rate.assign(0.0)
    history = model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0,
                        callbacks=[score])
    accuracy, mae = _hand_metrics(model, x, y)
    expected = metrics_lib.delta_m(
        {"a": {"accuracy": accuracy}, "b": {"mae": mae}}, references)
    assert history.history["val_delta_m"][0] == pytest.approx(expected, rel=1e-4)


# ------------------------------------------------------------------ loss


def test_val_loss_is_the_task_weighted_sum_whatever_the_balancer():
    x, y = tiny_data(n=64)
    for balancer in ("uw", "rlw", "pcgrad"):
        model = tiny_network(regularized=True)
        model.compile(optimizer="sgd", loss=LOSSES, balancer=balancer,
                      loss_weights={"a": 2.0, "b": 0.5})
        logs = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
        regularization = float(sum(np.sum(loss) for loss in model.losses))
        expected = 2.0 * logs["a_loss"] + 0.5 * logs["b_loss"] + regularization
        assert logs["loss"] == pytest.approx(expected, rel=1e-5), balancer
        assert "balanced_loss" not in logs


def test_training_loss_is_the_task_weighted_sum_and_balanced_loss_is_logged():
    x, y = tiny_data(n=64)
    model = tiny_network()
    model.compile(optimizer="sgd", loss=LOSSES, balancer="uw",
                  loss_weights={"a": 2.0, "b": 0.5})
    model.optimizer.learning_rate.assign(0.0)
    logs = model.fit(x, y, batch_size=64, epochs=1, verbose=0).history
    expected = 2.0 * logs["a_loss"][0] + 0.5 * logs["b_loss"][0]
    assert logs["loss"][0] == pytest.approx(expected, rel=1e-5)
    # UW at its initial log-variances (s = 0 here): Σ 0.5·w·L + 0.5·s differs.
    assert logs["balanced_loss"][0] != pytest.approx(logs["loss"][0], rel=1e-3)


@pytest.mark.parametrize(
    "balancer", ["rlw", "pcgrad", "graddrop", "uw", "famo", "nash_mtl"])
def test_evaluation_changes_no_balancer_state(balancer):
    x, y = tiny_data(n=64)
    finals = []
    for validation in (None, (x, y)):
        model = tiny_network()
        model.compile(optimizer="sgd", loss=LOSSES, balancer=balancer)
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                  validation_data=validation)
        finals.append([np.array(v) for v in model.weights])
    for with_validation, without in zip(*finals):
        np.testing.assert_array_equal(with_validation, without)


# ------------------------------------------------------------ bad labels


@pytest.mark.parametrize("balancer", [None, "pcgrad"])
def test_class_ids_out_of_range_raise_value_error_naming_the_task(balancer):
    x, y = tiny_data(n=32)
    y["a"][5] = 7
    model = tiny_network()
    model.compile(optimizer="sgd", loss=LOSSES, balancer=balancer)
    with pytest.raises(ValueError, match=r"Task 'a': got class id 7 .*\[0, 3\)"):
        model.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="Task 'a'"):
        model.evaluate(x, y, verbose=0)


def test_missing_label_stays_allowed_and_fractional_ids_are_refused():
    x, y = tiny_data(n=32)
    y["a"][:4] = MISSING_LABEL
    model = tiny_network()
    model.compile(optimizer="sgd", loss=LOSSES)
    model.fit(x, y, epochs=1, verbose=0)
    fractional = {"a": y["a"].astype("float32") + 0.5, "b": y["b"]}
    with pytest.raises(ValueError, match="Task 'a': got class id .*whole numbers"):
        model.evaluate(x, fractional, verbose=0)


def test_dwa_as_a_balancer_name_points_to_the_callback():
    model = tiny_network()
    with pytest.raises(ValueError, match="DynamicWeightAverage"):
        model.compile(optimizer="sgd", loss=LOSSES, balancer="dwa")


# --------------------------------------------------------------- compile


def test_diagnostics_option_and_unambiguous_cosine_names():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    shared = keras.layers.Dense(8, name="trunk")(inputs)
    outputs = {name: keras.layers.Dense(1, name=name)(shared)
               for name in ("left_eye", "left", "eye")}
    x = np.random.RandomState(0).randn(16, 4).astype("float32")
    y = {name: x[:, :1] for name in outputs}
    keys = {}
    for diagnostics in ("all", "norms", "none"):
        model = MultiTaskModel(inputs, outputs, shared=shared)
        model.compile(optimizer="sgd", loss="mse", balancer="mgda",
                      diagnostics=diagnostics)
        logs = model.fit(x, y, epochs=1, verbose=0).history
        keys[diagnostics] = {k for k in logs if k.startswith("grad_")}
    assert keys["all"] == {
        "grad_norm/left_eye", "grad_norm/left", "grad_norm/eye",
        "grad_cos/eye/left", "grad_cos/eye/left_eye", "grad_cos/left/left_eye"}
    assert keys["norms"] == {"grad_norm/left_eye", "grad_norm/left", "grad_norm/eye"}
    assert keys["none"] == set()


def test_import_under_an_unsupported_backend_names_the_backends():
    env = {**os.environ, "KERAS_BACKEND": "numpy"}
    keras_alone = subprocess.run([sys.executable, "-c", "import keras"], env=env,
                                 capture_output=True, text=True, timeout=120)
    if keras_alone.returncode != 0:  # Keras' numpy backend imports jax
        pytest.skip("Keras cannot start its numpy backend here: "
                    + keras_alone.stderr.strip().splitlines()[-1])
    result = subprocess.run([sys.executable, "-c", "import mtl_keras"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "'numpy'" in result.stderr and "tensorflow" in result.stderr


@pytest.mark.parametrize("balancer", ["none", "mgda"])
def test_masked_losses_and_metrics_under_mirrored_strategy_equal_one_device(
        tmp_path, balancer):
    here = os.path.dirname(__file__)
    out = tmp_path / "logs.json"
    result = subprocess.run(
        [sys.executable, os.path.join(here, "_masked_metrics_worker.py"), balancer,
         str(out)], cwd=here, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    logs = json.loads(out.read_text())
    for run in ("mirrored", "single"):
        for key in ("a_accuracy", "b_mae"):
            assert logs[run]["evaluate"][key] == pytest.approx(
                logs[run]["by_hand"][key], rel=1e-5), (run, key)
            # Learning rate 0: training sees the same model as evaluation.
            assert logs[run]["fit"][key] == pytest.approx(
                logs[run]["by_hand"][key], rel=1e-5), (run, key)
    # Losses, metrics and updates of 2 replicas equal one device's, missing
    # labels included: each replica divides by the mean present count.
    for stage in ("fit", "evaluate"):
        for key, value in logs["single"][stage].items():
            assert logs["mirrored"][stage][key] == pytest.approx(value, rel=1e-5)
    for mirrored, single in zip(logs["mirrored"]["weights"], logs["single"]["weights"]):
        np.testing.assert_allclose(mirrored, single, rtol=1e-5, atol=1e-6)
