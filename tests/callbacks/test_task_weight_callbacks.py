"""Task-weight callbacks: hand-computed rules, shared resume test, errors.

The rules are driven by scripted logs (Keras' batch logs hold the epoch's
running means, the scripts do too) on a tiny compiled model; the resume test
trains for real and runs for every `TaskWeightCallback` subclass the package
has, found automatically.
"""

import math

import keras
import numpy as np
import pytest
from _tiny import max_weight_difference

from mtl_keras import callbacks
from mtl_keras.callbacks import (
    DynamicTaskPrioritization,
    DynamicWeightAverage,
    LambdaTaskWeights,
    LossBalancedTaskWeighting,
    TaskWeightCallback,
    TaskWeightSchedule,
)
from mtl_keras.callbacks.task_weight_schedule import scheduled_value
from mtl_keras.model import MultiTaskModel

LOSSES = {"a": "sparse_categorical_crossentropy", "b": "binary_crossentropy"}
METRICS = {"a": ["accuracy"], "b": ["accuracy"]}


def _network(seed=0):
    """Dense trunk 8→16, a 3-class head `a`, a binary head `b`."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,), name="x")
    shared = keras.layers.Dense(16, activation="tanh", name="trunk")(inputs)
    outputs = {
        "a": keras.layers.Dense(3, activation="softmax", name="a")(shared),
        "b": keras.layers.Dense(1, activation="sigmoid", name="b")(shared),
    }
    return MultiTaskModel(inputs, outputs, shared=shared)


def _compiled(balancer=None, loss_weights=None):
    model = _network()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=LOSSES,
                  metrics=METRICS, loss_weights=loss_weights, balancer=balancer,
                  run_eagerly=True)  # a few steps: cheaper than tracing
    return model


def _data(n=64, seed=1):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 8).astype("float32")
    y = {"a": x[:, :3].argmax(axis=1).astype("int32"),
         "b": (x[:, 3:4] + 0.3 * x[:, 4:5] > 0).astype("float32")}
    return x, y


# ------------------------------------------------------- scripted logs


def _running_means(batch_losses):
    """Batch logs as Keras gives them: each task loss's running mean."""
    logs, totals = [], {}
    for count, losses in enumerate(batch_losses, start=1):
        for task, value in losses.items():
            totals[task] = totals.get(task, 0.0) + value
        logs.append({f"{t}_loss": totals[t] / count for t in totals})
    return logs


def _drive(callback, epochs, val_logs=None, model=None):
    """Runs the callback's hooks over scripted batch logs; returns the task
    weights after each epoch start (and each batch at batch frequency)."""
    model = model or _compiled()
    callback.set_model(model)
    callback.on_train_begin()
    seen, step = [], 0
    for epoch, batches in enumerate(epochs):
        callback.on_epoch_begin(epoch)
        seen.append(model.get_task_weights())
        for batch, logs in enumerate(batches):
            step += 1
            model.optimizer.iterations.assign(step)
            callback.on_train_batch_end(batch, logs)
            if callback.frequency == "batch":
                seen.append(model.get_task_weights())
        epoch_logs = dict(batches[-1]) if batches else {}
        if val_logs is not None:
            callback.on_test_end(val_logs[epoch])
            epoch_logs.update({f"val_{k}": v for k, v in val_logs[epoch].items()})
        callback.on_epoch_end(epoch, epoch_logs)
    callback.on_train_end()
    return [[w["a"], w["b"]] for w in seen]


def test_dwa_against_hand_computed_weights():
    epochs = [
        [{"a_loss": 3.0, "b_loss": 9.0}, {"a_loss": 1.0, "b_loss": 2.0}],
        [{"a_loss": 0.5, "b_loss": 2.0}],
        [{"a_loss": 0.25, "b_loss": 1.0}],
        [],
    ]
    seen = _drive(DynamicWeightAverage(temperature=2.0), epochs)
    # Epoch 2: r = (0.5/1, 2/2) = (0.5, 1); w_a = 2 e^0.25 / (e^0.25 + e^0.5)
    # = 2 / (1 + e^0.25). Epoch 3: r = (0.5, 0.5), equal weights.
    w_a = 2 / (1 + math.exp(0.25))
    np.testing.assert_allclose(seen, [[1, 1], [1, 1], [w_a, 2 - w_a], [1, 1]],
                               rtol=1e-6)
    np.testing.assert_allclose(w_a, 0.8756470, rtol=1e-6)


def test_lbtw_against_hand_computed_weights():
    epochs = [
        _running_means([{"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 1.0},
                        {"a": 0.5, "b": 0.25}]),
        _running_means([{"a": 1.0, "b": 4.0}, {"a": 0.81, "b": 1.0}]),
    ]
    seen = _drive(LossBalancedTaskWeighting(alpha=0.5), epochs)
    # Epoch 0: after step 1 the ratios are (0.5, 1): sqrt → (0.7071, 1),
    # rescaled to sum 2 → (0.8284, 1.1716); after step 2 (0.25, 0.25) → 1.
    # Epoch 1 restarts from its first step (1, 4): (0.81, 0.25) → (0.9, 0.5)
    # → (1.2857, 0.7143); from epoch 0's first step it would be (0.405, 1).
    want = [[1, 1], [1, 1], [0.82842712, 1.17157288], [1, 1],
            [1, 1], [1, 1], [1.28571429, 0.71428571]]
    np.testing.assert_allclose(seen, want, rtol=1e-6)

    raw = _drive(LossBalancedTaskWeighting(alpha=0.5, normalize=False), epochs[:1])
    np.testing.assert_allclose(raw[2], [math.sqrt(0.5), 1.0], rtol=1e-6)


def test_lbtw_skipped_step_adds_no_observation():
    logs = [{"a_loss": 2.0, "b_loss": 1.0},
            {"a_loss": 2.0, "b_loss": 1.0, "skipped_steps": 1},  # not counted
            {"a_loss": 1.5, "b_loss": 1.0, "skipped_steps": 1}]  # step 3: (1, 1)
    seen = _drive(LossBalancedTaskWeighting(alpha=1.0, normalize=False), [logs])
    np.testing.assert_allclose(seen, [[1, 1], [1, 1], [1, 1], [0.5, 1]], rtol=1e-6)


def test_dtp_against_hand_computed_weights():
    val_logs = [{"a_accuracy": 0.5, "b_accuracy": 0.9},
                {"a_accuracy": 0.7, "b_accuracy": 1.0},
                {"a_accuracy": 0.7, "b_accuracy": 1.0}]
    epochs = [[{"a_loss": 1.0, "b_loss": 1.0}]] * 3
    dtp = DynamicTaskPrioritization("val_{task}_accuracy", gamma=2.0, alpha=0.5)
    seen = _drive(dtp, epochs, val_logs)
    # Epoch 1: κ = (0.5, 0.9): w = −(1−κ)² log κ = (0.25·ln 2, 0.01·(−ln 0.9)).
    # Epoch 2: κ̄ = 0.5·(0.7, 1.0) + 0.5·(0.5, 0.9) = (0.6, 0.95).
    want = [[1, 1],
            [0.25 * math.log(2), -0.01 * math.log(0.9)],
            [-0.16 * math.log(0.6), -0.0025 * math.log(0.95)]]
    np.testing.assert_allclose(seen, want, rtol=1e-5)
    np.testing.assert_allclose(want[1], [0.17328680, 0.0010536052], rtol=1e-6)


def test_dtp_clips_the_kpi_away_from_0_and_1():
    dtp = DynamicTaskPrioritization({"a": "val_a_accuracy", "b": "val_b_accuracy"})
    seen = _drive(dtp, [[{}], [{}]], [{"a_accuracy": 0.0, "b_accuracy": 1.0}] * 2)
    assert np.all(np.isfinite(seen))
    np.testing.assert_allclose(seen[1][0], -math.log(1e-6), rtol=1e-5)
    assert 0 <= seen[1][1] < 1e-11


def test_schedules_against_hand_computed_values():
    piecewise = {"type": "piecewise", "boundaries": [2, 4], "values": [0, 0.5, 1]}
    linear = {"type": "linear", "initial": 0.0, "final": 1.0, "duration": 4,
              "start": 1}
    cosine = {"type": "cosine", "initial": 1.0, "final": 0.0, "duration": 2}
    steps = range(7)
    assert [scheduled_value(piecewise, s) for s in steps] == [0, 0, .5, .5, 1, 1, 1]
    assert [scheduled_value(linear, s) for s in steps] == [0, 0, .25, .5, .75, 1, 1]
    np.testing.assert_allclose([scheduled_value(cosine, s) for s in steps],
                               [1, 0.5, 0, 0, 0, 0, 0], atol=1e-12)
    assert scheduled_value(2.5, 3) == 2.5


def test_schedule_by_epoch_and_by_step_keeps_unlisted_tasks():
    model = _compiled(loss_weights={"a": 0.7, "b": 1.0})
    schedule = TaskWeightSchedule({"b": {"type": "linear", "initial": 0.0,
                                         "final": 1.0, "duration": 2}})
    seen = _drive(schedule, [[{}]] * 3, model=model)
    np.testing.assert_allclose(seen, [[0.7, 0], [0.7, 0.5], [0.7, 1]], rtol=1e-6)

    by_step = TaskWeightSchedule(
        {"a": {"type": "piecewise", "boundaries": [2], "values": [0.0, 3.0]}},
        frequency="batch")
    seen = _drive(by_step, [[{}, {}], [{}]])  # optimizer steps 0 | 1, 2 | 3
    np.testing.assert_allclose(np.array(seen)[:, 0], [0, 0, 3, 3, 3])


def test_lambda_sees_its_history():
    calls = []

    def rule(step, history):
        calls.append((step, history.count, history.values.copy()))
        return history.ones()

    epochs = [[{"a_loss": float(e), "b_loss": 10.0 + e}] for e in range(1, 5)]
    _drive(LambdaTaskWeights(rule, history_length=3), epochs)
    assert [(s, c) for s, c, _ in calls] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    np.testing.assert_allclose(calls[3][2], [[1, 11], [2, 12], [3, 13]])


def test_batch_observations_are_the_losses_of_each_step():
    """In a real fit, a batch rule sees each step's own task losses (the
    model is frozen, lr 0, so each batch's loss can be recomputed)."""
    model = _network()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=LOSSES,
                  run_eagerly=True)
    seen = []

    def rule(step, history):
        if history.count:
            seen.append(history.values[-1].copy())
        return history.ones()

    x, y = _data(56)  # batches of 16, 16, 16 and 8
    model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0,
              callbacks=[LambdaTaskWeights(rule, frequency="batch")])
    want = [model.compute_task_losses({t: v[i:i + 16] for t, v in y.items()},
                                      model(x[i:i + 16])).numpy()
            for i in range(0, 56, 16)]
    np.testing.assert_allclose(seen, want, rtol=1e-5)
    assert np.ptp(np.array(want)[:, 0]) > 1e-3  # the batches differ


def test_a_different_rule_starts_a_fresh_history():
    model = _compiled()
    _drive(DynamicWeightAverage(), [[{"a_loss": 1.0, "b_loss": 2.0}]] * 3,
           model=model)
    counts = []
    _drive(LambdaTaskWeights(lambda step, h: counts.append(h.count) or h.ones()),
           [[{"a_loss": 1.0, "b_loss": 2.0}]], model=model)
    assert counts == [0]
    # The same rule continues it (a second fit of the same run).
    again = []
    _drive(LambdaTaskWeights(lambda step, h: again.append(h.count) or h.ones()),
           [[{"a_loss": 1.0, "b_loss": 2.0}]], model=model)
    assert again == [1]


# ---------------------------------------------------------- bad input


@pytest.mark.parametrize("weights, message", [
    ({"a": -1.0, "b": 1.0}, "task 'a'"),
    ({"a": 1.0, "b": float("nan")}, "task 'b'"),
    ({"a": 1.0, "b": float("inf")}, "task 'b'"),
    ({"a": 1.0}, r"missing \['b'\]"),
    ({"a": 1.0, "b": 1.0, "c": 1.0}, r"unknown \['c'\]"),
    ({"a": 1.0, "b": "heavy"}, "task 'b'"),
])
def test_bad_weights_name_the_task(weights, message):
    with pytest.raises(ValueError, match=message):
        _drive(LambdaTaskWeights(lambda step, history: weights), [[{}]])


def test_missing_monitored_entry_names_the_task():
    callback = LambdaTaskWeights(lambda s, h: h.ones(), monitor="{task}_auc")
    with pytest.raises(ValueError, match="'a_auc' for task 'a'"):
        _drive(callback, [[{"a_loss": 1.0, "b_loss": 1.0}]])


def test_dtp_errors():
    dtp = DynamicTaskPrioritization("val_{task}_loss")
    with pytest.raises(ValueError, match=r"task 'a' \(val_a_loss\) is 2.0"):
        _drive(dtp, [[{}]], [{"a_loss": 2.0, "b_loss": 0.5}])
    with pytest.raises(ValueError, match="validation_data"):
        _drive(DynamicTaskPrioritization("val_{task}_accuracy"), [[{}]])
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        _drive(DynamicTaskPrioritization({"a": "val_a_accuracy"}), [[{}]])
    with pytest.raises(ValueError, match="gamma"):
        DynamicTaskPrioritization("val_{task}_accuracy", gamma=-1.0)


@pytest.mark.parametrize("spec, message", [
    ({"b": {"type": "step"}}, "task 'b' has type 'step'"),
    ({"b": {"type": "linear", "initial": 0.0}}, r"task 'b' misses \['duration'"),
    ({"b": {"type": "piecewise", "boundaries": [1], "values": [1]}},
     "task 'b' needs one value more"),
    ({"b": -2.0}, "weight of task 'b' must be finite .* got -2.0"),
])
def test_bad_schedules_name_the_task(spec, message):
    with pytest.raises(ValueError, match=message):
        TaskWeightSchedule(spec)


def test_argument_errors():
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['c'\]"):
        _drive(TaskWeightSchedule({"c": 1.0}), [[{}]])
    with pytest.raises(ValueError, match="frequency='epoch'"):
        LambdaTaskWeights(lambda s, h: {}, monitor="val_{task}_loss",
                          frequency="batch")
    with pytest.raises(ValueError, match="history_length"):
        LambdaTaskWeights(lambda s, h: {}, history_length=99)
    with pytest.raises(ValueError, match="{task}"):
        LambdaTaskWeights(lambda s, h: {}, monitor="val_accuracy")


# ------------------------------------------ every subclass resumes exactly


@keras.saving.register_keras_serializable(package="mtl_keras_tests")
def _inverse_loss_rule(step, history):
    """More weight to the task with the larger last loss (registered, so
    that `LambdaTaskWeights.get_config` round-trips)."""
    if history.count == 0:
        return history.ones()
    last = history.values[-1]
    return dict(zip(history.tasks, 2 * last / last.sum()))


#: One factory per TaskWeightCallback subclass. A subclass without one fails
#: `test_every_task_weight_callback_resumes_exactly`: add it here.
FACTORIES = {
    DynamicWeightAverage: lambda: DynamicWeightAverage(temperature=0.5),
    DynamicTaskPrioritization: lambda: DynamicTaskPrioritization(
        "val_{task}_accuracy", gamma=2.0, alpha=0.5),
    LossBalancedTaskWeighting: lambda: LossBalancedTaskWeighting(alpha=0.5),
    TaskWeightSchedule: lambda: TaskWeightSchedule(
        {"b": {"type": "cosine", "initial": 0.2, "final": 1.0, "duration": 3}}),
    LambdaTaskWeights: lambda: LambdaTaskWeights(_inverse_loss_rule),
}


def _all_subclasses(cls):
    for subclass in cls.__subclasses__():
        yield subclass
        yield from _all_subclasses(subclass)


def _task_weight_callback_classes():
    exported = [getattr(callbacks, name) for name in callbacks.__all__]
    found = {c for c in exported if isinstance(c, type)
             and issubclass(c, TaskWeightCallback)}
    found |= {c for c in _all_subclasses(TaskWeightCallback)
              if c.__module__.startswith("mtl_keras.")}
    found.discard(TaskWeightCallback)
    return sorted(found, key=lambda c: c.__name__)


CLASSES = _task_weight_callback_classes()
EPOCHS = 4
STOP_AFTER = 1  # epoch at whose end the first run is interrupted


class _Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == STOP_AFTER:
            raise RuntimeError("interrupted")


def _fit(model, callback_list, initial_epoch=0):
    x, y = _data()
    validation = _data(32, seed=2)
    return model.fit(x, y, validation_data=validation, epochs=EPOCHS,
                     initial_epoch=initial_epoch, batch_size=16, shuffle=False,
                     verbose=0, callbacks=callback_list).history


def _weight_difference(history, want_history) -> float:
    return max(
        float(np.abs(np.subtract(history[f"{t}_weight"],
                                 want_history[f"{t}_weight"][STOP_AFTER + 1:])).max())
        for t in ("a", "b"))


def test_discovery_finds_the_built_in_rules():
    assert set(FACTORIES) <= set(CLASSES)


def _factory(cls):
    assert cls in FACTORIES, (
        f"{cls.__name__} is a TaskWeightCallback without a factory in "
        "tests/callbacks/test_task_weight_callbacks.py FACTORIES: add one, so that its "
        "resume is tested.")
    return FACTORIES[cls]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_task_weight_callback_resumes_exactly(cls, tmp_path):
    factory = _factory(cls)
    want_model = _compiled()
    want_history = _fit(want_model, [factory()])
    want = [v.numpy() for v in want_model.weights]
    later = np.array([want_history[f"{t}_weight"][STOP_AFTER + 1:] for t in "ab"])
    assert np.ptp(later) > 1e-3, f"{cls.__name__}'s weights never change here"

    # Interrupted with BackupAndRestore *before* the rule (it saves first).
    interrupted = _compiled()
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(interrupted, [keras.callbacks.BackupAndRestore(str(tmp_path / "b")),
                           factory(), _Crash()])

    resumed = _compiled()
    history = _fit(resumed, [factory(),
                             keras.callbacks.BackupAndRestore(str(tmp_path / "b"))])
    assert len(history["loss"]) == EPOCHS - STOP_AFTER - 1
    differences = {"backup": _weight_difference(history, want_history)}

    path = tmp_path / "interrupted.keras"
    interrupted.save(path)
    loaded = keras.models.load_model(path)
    history = _fit(loaded, [factory()], initial_epoch=STOP_AFTER + 1)
    differences["keras"] = _weight_difference(history, want_history)
    all_variables = max(float(np.abs(v.numpy() - w).max())
                        for model in (resumed, loaded)
                        for v, w in zip(model.weights, want))
    print(f"\n{cls.__name__}: max |Δ task weight| {differences}, "
          f"max |Δ any model variable| {all_variables:.3g}")

    for model in (resumed, loaded):
        assert len(model.weights) == len(want)
        for variable, value in zip(model.weights, want):
            np.testing.assert_allclose(variable.numpy(), value, rtol=1e-5,
                                       atol=1e-6, err_msg=variable.path)
    assert max(differences.values()) < 1e-5


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_task_weight_callback_has_a_config(cls):
    callback = _factory(cls)()
    config = callback.get_config()
    assert type(callback).from_config(config).get_config() == config


def test_task_weights_scale_the_losses_the_balancer_sees():
    """A rule's weights act exactly as compiled `loss_weights` do: before
    the balancer (here UW, whose learned log-variances see them)."""
    weights = {"a": 0.25, "b": 2.0}
    x, y = _data()

    def trained(model, callback_list=()):
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0,
                  callbacks=list(callback_list))
        return model

    compiled = trained(_compiled("uw", loss_weights=weights))
    by_rule = trained(_compiled("uw"), [LambdaTaskWeights(lambda s, h: weights)])
    unweighted = trained(_compiled("uw"))
    assert max_weight_difference(compiled, by_rule) < 1e-6
    assert max_weight_difference(unweighted, by_rule) > 1e-3
    assert by_rule.get_task_weights() == pytest.approx(weights)
