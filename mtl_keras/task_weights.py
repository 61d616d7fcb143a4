"""The model-owned task weights that every training path reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from mtl_keras._typing import Tensor


@keras.saving.register_keras_serializable(package="mtl_keras")
class TaskWeights(keras.layers.Layer):
    """Holds one non-trainable weight per task, plus a short per-task history.

    Compiled `loss_weights` initialise `values`; epoch-level callbacks (DWA)
    assign them through the model; every training path multiplies each task
    loss by its weight before a balancer sees it. Because they are Keras
    weights read inside the compiled step, assignments take effect without
    retracing, and they save and resume with the model (a Python float in
    `compile(loss_weights=...)` would be frozen into the graph).

    `nonfinite_tasks` flags (1.0) the tasks whose loss was not finite at the
    last step the model skipped for that reason.

    `history` keeps what a `mtl_keras.callbacks.TaskWeightCallback` records
    (one value per task per observation: row 0 the first observation, rows
    1.. the last `HISTORY_CAPACITY`, newest last), `history_count` how many
    it recorded and `history_owner` a fingerprint of the recording callback,
    so that a rule resumes where it stopped and never reads another rule's
    values.

    Args:
        task_names: The task names, in the model's order.
    """

    #: How many past observations `history` keeps (besides the first).
    HISTORY_CAPACITY = 8

    def __init__(self, task_names: Sequence[str], name: str = "task_weights",
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.task_names = list(task_names)
        num_tasks = len(self.task_names)
        self.values = self.add_weight(
            shape=(num_tasks,), initializer="ones", trainable=False, name="values"
        )
        self.history = self.add_weight(
            shape=(self.HISTORY_CAPACITY + 1, num_tasks), initializer="zeros",
            trainable=False, name="history",
        )
        self.history_count = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="history_count"
        )
        self.history_owner = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="history_owner"
        )
        self.nonfinite_tasks = self.add_weight(
            shape=(num_tasks,), initializer="zeros", trainable=False,
            name="nonfinite_tasks", aggregation="only_first_replica",
        )
        self.built = True

    def call(self, task_losses: Tensor) -> Tensor:
        return ops.cast(self.values, "float32") * task_losses

    def assign(self, weights: Mapping[str, float] | Sequence[float]) -> None:
        """Sets the weights from a dict `{task: w}` or a sequence in order."""
        if isinstance(weights, dict):
            unknown = sorted(set(weights) - set(self.task_names))
            if unknown:
                raise ValueError(
                    f"Unknown task(s) {unknown} in task weights; the model's "
                    f"tasks are {self.task_names}."
                )
            current = self.as_dict()
            weights = [float(weights.get(t, current[t])) for t in self.task_names]
        if len(weights) != len(self.task_names):
            raise ValueError(
                f"Got {len(weights)} task weights for {len(self.task_names)} "
                f"tasks {self.task_names}."
            )
        self.values.assign(ops.convert_to_tensor(weights, dtype=self.values.dtype))

    def as_dict(self) -> dict[str, float]:
        values = ops.convert_to_numpy(self.values)
        return {task: float(v) for task, v in zip(self.task_names, values)}

    def read_history(self) -> tuple[np.ndarray, int, float]:
        """`(rows, count, owner)`: the history rows as float64, and counters."""
        rows = ops.convert_to_numpy(self.history).astype(np.float64)
        count = int(ops.convert_to_numpy(self.history_count))
        owner = float(ops.convert_to_numpy(self.history_owner))
        return rows, count, owner

    def reset_history(self, owner: float) -> None:
        """Empties the history and records who fills it next."""
        self.history.assign(ops.zeros(self.history.shape, self.history.dtype))
        self.history_count.assign(0.0)
        self.history_owner.assign(float(owner))

    def push_history(self, values: Sequence[float] | np.ndarray) -> None:
        """Appends one observation (one value per task)."""
        rows, count, _ = self.read_history()
        values = np.asarray(values, dtype=np.float64)
        if count == 0:
            rows[0] = values
        rows[1:-1] = rows[2:]
        rows[-1] = values
        self.history.assign(rows.astype("float32"))
        self.history_count.assign(float(count + 1))

    def replace_last_history(self, values: Sequence[float] | np.ndarray) -> None:
        """Overwrites the newest observation (and the first, if it is it)."""
        rows, count, _ = self.read_history()
        rows[-1] = values
        if count == 1:
            rows[0] = values
        self.history.assign(rows.astype("float32"))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict:
        return {"name": self.name, "task_names": self.task_names}
