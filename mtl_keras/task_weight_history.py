"""`TaskWeightHistory`: what task-weight callbacks record, in the model."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mtl_keras._task_state import TaskState


@keras.saving.register_keras_serializable(package="mtl_keras")
class TaskWeightHistory(TaskState):
    """A short per-task history, kept in the model's weights.

    What a `mtl_keras.callbacks.TaskWeightCallback` records (one value per
    task per observation): `rows[0]` the first observation, `rows[1:]` the
    last `CAPACITY`, newest last; `count` how many were recorded and `owner`
    a fingerprint of the recording callback, so that a rule resumes where it
    stopped (`.keras` files, `BackupAndRestore`) and never reads another
    rule's values. `MultiTaskModel` holds one as `model.task_weight_history`.

    Args:
        task_names: The task names, in the model's order.
        name: The layer name.

    Example:

    ```python
    history = TaskWeightHistory(["a", "b"])
    history.reset(owner=7.0)
    history.push([0.5, 2.0])
    rows, count, owner = history.read()  # count 1, owner 7.0
    ```
    """

    #: How many past observations are kept (besides the first).
    CAPACITY = 8

    def __init__(self, task_names, name: str = "task_weight_history", **kwargs):
        super().__init__(task_names, name=name, **kwargs)
        num_tasks = len(self.task_names)
        self.rows = self.add_weight(
            shape=(self.CAPACITY + 1, num_tasks),
            initializer="zeros",
            trainable=False,
            name="history",
        )
        self.count = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="history_count"
        )
        self.owner = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="history_owner"
        )
        self.built = True

    def read(self) -> tuple[np.ndarray, int, float]:
        """`(rows, count, owner)`: the rows as float64, and the counters."""
        rows = ops.convert_to_numpy(self.rows).astype(np.float64)
        count = int(ops.convert_to_numpy(self.count))
        owner = float(ops.convert_to_numpy(self.owner))
        return rows, count, owner

    def reset(self, owner: float) -> None:
        """Empties the history and records who fills it next."""
        self.rows.assign(ops.zeros(self.rows.shape, self.rows.dtype))
        self.count.assign(0.0)
        self.owner.assign(float(owner))

    def push(self, values) -> None:
        """Appends one observation (one value per task)."""
        rows, count, _ = self.read()
        values = np.asarray(values, dtype=np.float64)
        if count == 0:
            rows[0] = values
        rows[1:-1] = rows[2:]
        rows[-1] = values
        self.rows.assign(rows.astype("float32"))
        self.count.assign(float(count + 1))

    def replace_last(self, values) -> None:
        """Overwrites the newest observation (and the first, if it is it)."""
        rows, count, _ = self.read()
        rows[-1] = values
        if count == 1:
            rows[0] = values
        self.rows.assign(rows.astype("float32"))
