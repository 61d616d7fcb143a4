"""`TaskWeightSchedule`: task weights as a function of the epoch or step."""

from __future__ import annotations

import math

import keras

from mtl_keras.callbacks.task_history import TaskHistory
from mtl_keras.callbacks.task_weight_callback import TaskWeightCallback
from mtl_keras.task_weights import check_task_weight

_KEYS = {
    "constant": {"value"},
    "piecewise": {"boundaries", "values"},
    "linear": {"initial", "final", "duration"},
    "cosine": {"initial", "final", "duration"},
}
_OPTIONAL = {"linear": {"start"}, "cosine": {"start"}}


@keras.saving.register_keras_serializable(package="mtl_keras")
class TaskWeightSchedule(TaskWeightCallback):
    """Task weights that follow a schedule per task, from a plain dict.

    Each task maps to a number (a constant weight) or a dict:

    - `{"type": "piecewise", "boundaries": [b1, ..., bn], "values":
      [v0, ..., vn]}`: `v0` before step `b1`, `vi` from `bi` on;
    - `{"type": "linear", "initial": a, "final": b, "duration": d,
      "start": s}`: `a` until `s`, then linearly to `b` at `s + d`, then `b`;
    - `{"type": "cosine", ...}` (same keys): from `a` to `b` along half a
      cosine, `b + (a − b) · (1 + cos(π p)) / 2` with `p` the progress.

    A task left out keeps the weight it had when training started (its
    compiled `loss_weights`). The step is the epoch, or with
    `frequency="batch"` the optimizer step.

    Args:
        schedules: `{task: number or schedule dict}`.
        frequency: `"epoch"` (default) or `"batch"`.

    Example:

    ```python
    warm_up = mtl_keras.callbacks.TaskWeightSchedule(
        {"aux": {"type": "linear", "initial": 0.0, "final": 1.0, "duration": 5}})
    model.fit(x, y, epochs=20, callbacks=[warm_up])
    ```
    """

    history_length = 0

    def __init__(self, schedules: dict, frequency: str = "epoch") -> None:
        super().__init__(frequency=frequency)
        if not isinstance(schedules, dict) or not schedules:
            raise ValueError(
                "TaskWeightSchedule needs a dict {task: weight or schedule dict}, "
                f"got {schedules!r}.")
        self.schedules = {
            task: _checked(task, spec) for task, spec in schedules.items()}
        self._fixed: dict[str, float] = {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        task_names = self._task_weights().task_names
        unknown = sorted(set(self.schedules) - set(task_names), key=str)
        if unknown:
            raise ValueError(
                f"TaskWeightSchedule has schedules for unknown task(s) {unknown}; "
                f"the model's tasks are {task_names}.")
        current = self._task_weights().as_dict()
        self._fixed = {t: w for t, w in current.items() if t not in self.schedules}

    def compute_task_weights(self, step: int,
                             history: TaskHistory) -> dict[str, float]:
        weights = dict(self._fixed)
        for task, spec in self.schedules.items():
            weights[task] = scheduled_value(spec, step)
        return weights

    def get_config(self) -> dict:
        return {"schedules": self.schedules, "frequency": self.frequency}


def scheduled_value(spec, step: int) -> float:
    """The value of one task's schedule (a number or a dict) at `step`."""
    if not isinstance(spec, dict):
        return float(spec)
    kind = spec["type"]
    if kind == "constant":
        return float(spec["value"])
    if kind == "piecewise":
        index = sum(step >= boundary for boundary in spec["boundaries"])
        return float(spec["values"][index])
    progress = (step - spec.get("start", 0)) / spec["duration"]
    progress = min(max(progress, 0.0), 1.0)
    initial, final = float(spec["initial"]), float(spec["final"])
    if kind == "linear":
        return initial + (final - initial) * progress
    return final + (initial - final) * (1 + math.cos(math.pi * progress)) / 2


def _checked(task, spec):
    """The schedule of `task`, or a ValueError naming the task and the fix."""
    if not isinstance(spec, dict):
        _check_weight(task, spec)
        return float(spec)
    kind = spec.get("type")
    if kind not in _KEYS:
        raise ValueError(
            f"The schedule of task '{task}' has type {kind!r}; use one of "
            f"{sorted(_KEYS)} (key 'type').")
    given = set(spec) - {"type"}
    missing = sorted(_KEYS[kind] - given)
    unknown = sorted(given - _KEYS[kind] - _OPTIONAL.get(kind, set()))
    if missing or unknown:
        raise ValueError(
            f"The {kind} schedule of task '{task}' misses {missing} and has "
            f"unknown keys {unknown}; it takes {sorted(_KEYS[kind])} "
            f"(optional {sorted(_OPTIONAL.get(kind, set()))}).")
    if kind == "piecewise":
        boundaries = list(spec["boundaries"])
        if len(spec["values"]) != len(boundaries) + 1:
            raise ValueError(
                f"The piecewise schedule of task '{task}' needs one value more "
                f"than boundaries; got {len(spec['values'])} values for "
                f"{len(boundaries)} boundaries.")
        if boundaries != sorted(boundaries):
            raise ValueError(
                f"The piecewise schedule of task '{task}' needs increasing "
                f"boundaries, got {boundaries}.")
        for value in spec["values"]:
            _check_weight(task, value)
    elif kind == "constant":
        _check_weight(task, spec["value"])
    else:
        _check_weight(task, spec["initial"])
        _check_weight(task, spec["final"])
        if not spec["duration"] > 0:
            raise ValueError(
                f"The {kind} schedule of task '{task}' needs a duration > 0, "
                f"got {spec['duration']}.")
    return dict(spec)


def _check_weight(task, value) -> None:
    check_task_weight(task, value, source="TaskWeightSchedule")
