"""The model's task-weight state, each part in its own class: `TaskWeights`
(the weights only), `TaskWeightHistory` (what task-weight callbacks record)
and `NonFiniteTasks` (the flags of a skipped step); one weight check; the
callbacks' rule named apart from a balancer's `compute_weights`."""

import io
import json
import zipfile

import h5py
import keras
import numpy as np
import pytest
from _tiny import LOSSES, tiny_data, tiny_network

from mtl_keras.callbacks import DynamicWeightAverage, TaskWeightCallback
from mtl_keras.task_weight_history import TaskWeightHistory
from mtl_keras.task_weights import TaskWeights, check_task_weight


def test_task_weights_hold_the_weights_only():
    model = tiny_network()
    assert [v.name for v in model.task_weights.variables] == ["values"]
    assert len(model.task_weight_history.variables) == 3
    assert model.nonfinite_tasks is model.nonfinite_flags.values


@pytest.mark.parametrize(
    "value, message",
    [
        (-1.0, "must be finite"),
        (float("nan"), "must be finite"),
        (float("inf"), "must be finite"),
        (1e39, "must be finite"),
        ("heavy", "must be a number"),
        (None, "must be a number"),
    ],
)
def test_one_check_for_every_task_weight(value, message):
    with pytest.raises(ValueError, match=f"weight of task 'b' {message}"):
        check_task_weight("b", value)
    model = tiny_network()
    # compile, set_task_weights and TaskWeights.assign all use it.
    with pytest.raises(ValueError, match=f"weight of task 'b' {message}"):
        model.compile(optimizer="sgd", loss=LOSSES, loss_weights={"a": 1.0, "b": value})
    with pytest.raises(ValueError, match=f"weight of task 'b' {message}"):
        model.set_task_weights({"b": value})
    with pytest.raises(ValueError, match=f"weight of task 'b' {message}"):
        TaskWeights(["a", "b"]).assign([1.0, value])
    assert check_task_weight("b", np.float32(0.25)) == 0.25


def test_the_history_keeps_the_first_and_the_last_observations():
    history = TaskWeightHistory(["a", "b"])
    history.reset(owner=5.0)
    for i in range(TaskWeightHistory.CAPACITY + 2):
        history.push([i, -i])
    rows, count, owner = history.read()
    assert (count, owner) == (TaskWeightHistory.CAPACITY + 2, 5.0)
    np.testing.assert_array_equal(rows[0], [0, 0])
    np.testing.assert_array_equal(rows[1:, 0], np.arange(2, 10))
    history.replace_last([100, 100])
    np.testing.assert_array_equal(history.read()[0][-1], [100, 100])


def test_the_old_rule_name_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="compute_task_weights"):

        class Old(TaskWeightCallback):
            def compute_weights(self, step, history):
                return {"a": 1.0, "b": 0.5 * (step + 1)}

    assert Old().compute_task_weights(1, None) == {"a": 1.0, "b": 1.0}


def _as_file_before_the_split(path, legacy_path):
    """Rewrites a `.keras` file as mtl_keras 0.2.0 wrote it: the history's
    three variables and the non-finite flags among the task weights'."""
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    buffer = io.BytesIO(files["model.weights.h5"])
    with h5py.File(buffer, "r+") as weights:
        moved = [weights[f"task_weight_history/vars/{i}"][()] for i in range(3)]
        moved.append(weights["nonfinite_flags/vars/0"][()])
        del weights["task_weight_history"], weights["nonfinite_flags"]
        for i, value in enumerate(moved, start=1):
            weights["task_weights/vars"].create_dataset(str(i), data=value)
    files["model.weights.h5"] = buffer.getvalue()
    json.loads(files["config.json"])  # unchanged
    with zipfile.ZipFile(legacy_path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def test_a_file_saved_before_the_split_resumes_exactly(tmp_path):
    x, y = tiny_data(n=64)

    def fit(model, epochs, initial_epoch=0):
        model.fit(
            x,
            y,
            batch_size=16,
            epochs=epochs,
            initial_epoch=initial_epoch,
            shuffle=False,
            verbose=0,
            callbacks=[DynamicWeightAverage()],
        )

    def compiled():
        model = tiny_network()
        model.compile(optimizer="adam", loss=LOSSES, balancer="uw")
        return model

    straight = compiled()
    fit(straight, 5)
    first = compiled()
    fit(first, 3)
    first.nonfinite_flags.values.assign([1.0, 0.0])
    first.save(str(tmp_path / "new.keras"))
    _as_file_before_the_split(str(tmp_path / "new.keras"), str(tmp_path / "old.keras"))
    resumed = keras.models.load_model(str(tmp_path / "old.keras"))
    rows, count, owner = resumed.task_weight_history.read()
    want_rows, want_count, want_owner = first.task_weight_history.read()
    np.testing.assert_array_equal(rows, want_rows)
    assert (count, owner) == (want_count, want_owner) and count > 0
    np.testing.assert_array_equal(resumed.nonfinite_tasks, [1.0, 0.0])
    fit(resumed, 5, initial_epoch=3)

    def state(model):
        return (
            model.trainable_weights
            + model.task_weights.weights
            + model.task_weight_history.weights
        )

    for a, b in zip(state(straight), state(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
