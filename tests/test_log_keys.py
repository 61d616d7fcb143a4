"""Log keys: those of `keras.Model` with the same outputs, losses and
metrics, plus the model's documented extras; values equal Keras' and the
ones computed by hand; a readable progress bar; a retry after a failed fit."""

import contextlib
import io

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtl_keras
from mtl_keras.model import MultiTaskModel
from mtl_keras.progress import TaskProgbarLogger, progress_logs

LOSSES = {
    "a": "sparse_categorical_crossentropy",
    "b": "sparse_categorical_crossentropy",
    "c": "mse",
}
LOSS_WEIGHTS = {"a": 1.0, "b": 0.5, "c": 2.0}
ROWS, BATCH = 64, 16  # equal batches: `<task>_loss` is a mean over steps


def network(cls=MultiTaskModel, seed=0):
    """Two classification heads (3 and 2 classes) and a regression head."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,), name="x")
    shared = keras.layers.Dense(12, activation="tanh", name="trunk")(inputs)
    outputs = {
        "a": keras.layers.Dense(3, activation="softmax", name="a")(shared),
        "b": keras.layers.Dense(2, activation="softmax", name="b")(shared),
        "c": keras.layers.Dense(1, name="c")(shared),
    }
    if cls is MultiTaskModel:
        return MultiTaskModel(inputs, outputs, shared=shared)
    return keras.Model(inputs, outputs)


def data(seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 6)).astype("float32")
    y = {
        "a": x[:, :3].argmax(1).astype("int32"),
        "b": (x[:, 3] > 0).astype("int32"),
        "c": (x[:, 4:5] * 2.0 + 0.5).astype("float32"),
    }
    return x, y


def ExactCount(y_true, y_pred):  # noqa: N802 - Keras logs it `exact_count`
    return keras.ops.cast(keras.ops.equal(keras.ops.round(y_pred), y_true), "float32")


def sca(name=None):
    return keras.metrics.SparseCategoricalAccuracy(name=name)


def _clone(metrics):
    """The same structure with every metric object cloned (same name)."""
    if isinstance(metrics, dict):
        return {key: _clone(value) for key, value in metrics.items()}
    if isinstance(metrics, (list, tuple)):
        return type(metrics)(_clone(value) for value in metrics)
    if isinstance(metrics, keras.metrics.Metric):
        return type(metrics).from_config(metrics.get_config())
    return metrics


def same(metrics):
    """The same metrics for both models: unnamed metric objects are named
    by Keras on creation (`sparse_categorical_accuracy_3`), so the second
    model gets clones of the first one's."""

    def both():
        ours = metrics()
        return ours, _clone(ours)

    return both


# Each case: () -> (what MultiTaskModel is given, what keras.Model is given).
METRICS = {
    "strings": same(lambda: {"a": ["accuracy"], "b": ["acc"], "c": ["mae", "mse"]}),
    "objects": same(
        lambda: {
            "a": [sca()],
            "b": [sca()],
            "c": [keras.metrics.MeanAbsoluteError(), keras.metrics.MeanSquaredError()],
        }
    ),
    "named_objects": same(
        lambda: {
            "a": [sca("accuracy")],
            "b": [sca("accuracy")],
            "c": [keras.metrics.MeanAbsoluteError(name="accuracy")],
        }
    ),
    "functions": same(
        lambda: {
            "a": [keras.metrics.sparse_categorical_accuracy],
            "c": [keras.losses.mean_absolute_error, ExactCount],
        }
    ),
    "list_per_output": same(lambda: [["accuracy"], [sca("hit")], None]),
    # Keras refuses one flat list for several outputs; MultiTaskModel gives
    # it to every task, as keras.Model given it per output.
    "flat_list": lambda: (
        ["accuracy", sca("hit")],
        {t: ["accuracy", sca("hit")] for t in "abc"},
    ),
}

WEIGHTED = {
    "weighted_same_names": same(
        lambda: {
            "metrics": {"a": ["accuracy"]},
            "weighted_metrics": {"a": ["accuracy"], "c": ["mae"]},
        }
    ),
    "weighted_flat_list_of_one_object": lambda: (
        {"weighted_metrics": [sca("hit")]},
        {"weighted_metrics": {t: [sca("hit")] for t in "abc"}},
    ),
}


def _compile_and_fit(model, metric_kwargs, sample_weight=None):
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=LOSSES,
        loss_weights=LOSS_WEIGHTS,
        **metric_kwargs,
    )
    x, y = data()
    x_val, y_val = data(seed=2)
    return model.fit(
        x,
        y,
        sample_weight=sample_weight,
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        validation_data=(x_val, y_val),
    ).history


def _assert_same_logs(ours, theirs, extras):
    assert set(ours) == set(theirs) | set(extras), sorted(
        set(ours) ^ (set(theirs) | set(extras))
    )
    for key, values in theirs.items():
        np.testing.assert_allclose(ours[key], values, rtol=2e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("case", sorted(METRICS))
def test_history_keys_and_values_are_keras_model_s(case):
    ours_metrics, theirs_metrics = METRICS[case]()
    ours = network()
    ours_logs = _compile_and_fit(ours, {"metrics": ours_metrics})
    theirs_logs = _compile_and_fit(network(keras.Model), {"metrics": theirs_metrics})
    if case == "functions":
        assert {"c_mean_absolute_error", "c_exact_count"} <= set(ours_logs)
    extras = ours.extra_log_names()
    assert extras == ["a_weight", "b_weight", "c_weight", "skipped_steps"]
    assert ours.extra_log_names(validation=True) == []
    _assert_same_logs(ours_logs, theirs_logs, extras)
    assert ours_logs["b_weight"] == [0.5, 0.5] and ours_logs["skipped_steps"] == [0, 0]
    assert "accuracy" not in ours_logs and "val_accuracy" not in ours_logs


@pytest.mark.parametrize("case", sorted(WEIGHTED))
def test_weighted_metrics_keys_and_values_are_keras_model_s(case):
    ours_kwargs, theirs_kwargs = WEIGHTED[case]()
    sample_weight = np.linspace(0.0, 2.0, ROWS).astype("float32")
    ours = network()
    ours_logs = _compile_and_fit(ours, ours_kwargs, sample_weight)
    theirs_logs = _compile_and_fit(network(keras.Model), theirs_kwargs, sample_weight)
    _assert_same_logs(ours_logs, theirs_logs, ours.extra_log_names())


@pytest.mark.parametrize("case", sorted(METRICS))
def test_evaluate_keys_and_values_are_keras_model_s(case):
    x, y = data(seed=3)
    results = []
    for cls, metrics in zip((MultiTaskModel, keras.Model), METRICS[case]()):
        model = network(cls)
        model.compile(
            optimizer="sgd", loss=LOSSES, loss_weights=LOSS_WEIGHTS, metrics=metrics
        )
        results.append(
            model.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
        )
    _assert_same_logs(*results, extras=())


def test_named_metric_objects_hold_their_own_task_s_values_by_hand():
    """Two tasks, `SparseCategoricalAccuracy(name="accuracy")` on both:
    each key holds its task's accuracy, computed here from the outputs."""
    model = network()
    model.compile(
        optimizer="sgd",
        loss=LOSSES,
        metrics={"a": [sca("accuracy")], "b": [sca("accuracy")]},
    )
    x, y = data(seed=4)
    logs = model.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    predictions = model.predict(x, verbose=0)
    for task in ("a", "b"):
        want = np.mean(predictions[task].argmax(1) == y[task])
        assert logs[f"{task}_accuracy"] == pytest.approx(want, abs=1e-6)
        ce = -np.log(predictions[task][np.arange(ROWS), y[task]])
        assert logs[f"{task}_loss"] == pytest.approx(ce.mean(), rel=1e-5)
    mse = np.mean((predictions["c"] - y["c"]) ** 2)
    assert logs["c_loss"] == pytest.approx(mse, rel=1e-5)
    assert logs["loss"] == pytest.approx(
        logs["a_loss"] + logs["b_loss"] + logs["c_loss"], rel=1e-5
    )
    names = model.metrics_names
    assert len(names) == len(set(names)) and "accuracy" not in names
    assert set(logs) == {
        "loss",
        "a_loss",
        "b_loss",
        "c_loss",
        "a_accuracy",
        "b_accuracy",
    }


def test_a_metric_object_given_to_every_task_is_one_per_task():
    shared = sca("accuracy")
    model = network()
    model.compile(optimizer="sgd", loss=LOSSES, metrics=[shared])
    x, y = data(seed=5)
    logs = model.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    predictions = model.predict(x, verbose=0)
    for task in ("a", "b"):
        want = np.mean(predictions[task].argmax(1) == y[task])
        assert logs[f"{task}_accuracy"] == pytest.approx(want, abs=1e-6)


def test_balancer_extras_are_documented_and_training_only():
    model = network()
    model.compile(
        optimizer="sgd", loss=LOSSES, balancer="upgrad", metrics={"a": ["accuracy"]}
    )
    assert model.extra_log_names() == [
        "a_weight",
        "b_weight",
        "c_weight",
        "skipped_steps",
        "balanced_loss",
        "grad_norm/a",
        "grad_norm/b",
        "grad_norm/c",
        "grad_cos/a/b",
        "grad_cos/a/c",
        "grad_cos/b/c",
    ]
    x, y = data()
    logs = model.fit(
        x, y, batch_size=BATCH, epochs=1, verbose=0, validation_data=data(seed=2)
    ).history
    keras_keys = {"loss", "a_loss", "b_loss", "c_loss", "a_accuracy"}
    assert set(logs) == (
        keras_keys | {f"val_{k}" for k in keras_keys} | set(model.extra_log_names())
    )
    # The weight the step applied: a balancer's, not the static 1.0.
    assert logs["a_weight"][0] != pytest.approx(1.0)


def test_diagnostic_names_are_unambiguous_for_any_task_names():
    names = mtl_keras.engine.diagnostic_names(["a/b", "c", "a", "b/c", "50%"])
    assert len(set(names)) == len(names)
    assert "grad_cos/a%2Fb/c" in names and "grad_cos/a/b%2Fc" in names
    assert "grad_norm/50%25" in names
    assert all(n.startswith(("grad_norm/", "grad_cos/")) for n in names)


# ------------------------------------------------------------ progress bar


def test_progress_logs_hide_extras_and_zero_skipped_steps():
    logs = {
        "loss": 1.0,
        "a_loss": 0.5,
        "a_accuracy": 0.3,
        "a_weight": 0.7,
        "grad_norm/a": 2.0,
        "skipped_steps": 0.0,
    }
    hidden = ["a_weight", "grad_norm/a"]
    assert list(progress_logs(logs, hidden)) == ["loss", "a_loss", "a_accuracy"]
    assert "skipped_steps" in progress_logs({**logs, "skipped_steps": 1.0}, hidden)
    assert progress_logs(logs, (), show_skipped=True) == logs
    assert "val_a_weight" not in progress_logs({"val_a_weight": 1.0}, hidden)


def _printed_fit(compile_kwargs, callbacks=None, verbose=1, y=None):
    model = network()
    model.compile(
        optimizer="sgd", loss=LOSSES, metrics={"a": ["accuracy"]}, **compile_kwargs
    )
    x, labels = data()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        history = model.fit(
            x,
            y or labels,
            batch_size=BATCH,
            epochs=1,
            shuffle=False,
            verbose=verbose,
            callbacks=callbacks,
        )
    return out.getvalue(), history.history


def test_progress_bar_shows_losses_and_metrics_only():
    printed, history = _printed_fit({"balancer": "upgrad"})
    for key in ("loss", "a_loss", "b_loss", "c_loss", "a_accuracy"):
        assert f" {key}: " in printed
    for key in (
        "a_weight",
        "grad_norm/a",
        "grad_cos/a/b",
        "balanced_loss",
        "skipped_steps",
    ):
        assert key not in printed
        assert key in history  # still logged


def test_progress_diagnostics_show_the_extras():
    printed, _ = _printed_fit({"balancer": "upgrad", "progress_diagnostics": True})
    for key in ("a_weight", "grad_norm/a", "grad_cos/a/b", "balanced_loss"):
        assert f" {key}: " in printed
    printed, _ = _printed_fit({}, callbacks=[TaskProgbarLogger(diagnostics=True)])
    assert " a_weight: " in printed and " skipped_steps: " in printed


def test_progress_bar_shows_skipped_steps_once_a_step_was_skipped():
    _, y = data()
    y = {**y, "c": y["c"].copy()}
    y["c"][:BATCH] = np.inf  # the first step is skipped
    printed, history = _printed_fit({}, y=y, verbose=2)
    assert history["skipped_steps"] == [1.0]
    assert " skipped_steps: 1" in printed


def test_a_progbar_logger_of_the_user_is_kept():
    printed, _ = _printed_fit({}, callbacks=[keras.callbacks.ProgbarLogger()])
    assert " a_weight: " in printed  # Keras' own bar shows every key


# ------------------------------------------------------------ retry


def _bad_labels():
    x, y = data()
    return x, {"a": y["a"], "b_typo": y["b"], "c": y["c"]}


@pytest.mark.parametrize("balancer", [None, "pcgrad"])
def test_retry_after_a_failed_fit_on_a_label_typo(balancer):
    model = network()
    model.compile(
        optimizer="sgd", loss=LOSSES, balancer=balancer, metrics={"a": ["accuracy"]}
    )
    x, bad = _bad_labels()
    with pytest.raises(ValueError, match=r"unknown \['b_typo'\], missing \['b'\]"):
        model.fit(x, bad, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((x, bad)).batch(BATCH)
    with pytest.raises(ValueError, match="b_typo"):
        model.fit(dataset, verbose=0)
    logs = model.fit(*data(), batch_size=BATCH, verbose=0).history
    assert np.isfinite(logs["loss"]).all()


def test_wrong_label_shape_fails_before_tracing():
    model = network()
    model.compile(optimizer="sgd", loss=LOSSES)
    x, y = data()
    with pytest.raises(ValueError, match="Task 'c': labels have shape"):
        model.fit(x, {**y, "c": np.zeros((ROWS, 4), "float32")}, verbose=0)
    assert model.fit(x, y, verbose=0).history["loss"]


@pytest.mark.parametrize("balancer", [None, "pcgrad"])
def test_retry_after_a_step_that_failed_in_its_trace(balancer):
    """With the check before tracing switched off, the label typo fails
    inside the traced step; the next fit must build a new step (TensorFlow
    refuses to create variables on a second trace of the same function)."""
    model = network()
    # The masked metrics create their variables in the first trace.
    model.compile(
        optimizer="sgd", loss=LOSSES, balancer=balancer, metrics={"a": ["accuracy"]}
    )
    model._check_data = lambda x, y=None: None  # only the in-step check
    x, bad = _bad_labels()
    with pytest.raises(ValueError, match="b_typo"):
        model.fit(x, bad, batch_size=BATCH, verbose=0)
    logs = model.fit(*data(), batch_size=BATCH, verbose=0).history
    assert np.isfinite(logs["loss"]).all()
    assert model.evaluate(*data(), verbose=0, return_dict=True)["loss"] > 0
