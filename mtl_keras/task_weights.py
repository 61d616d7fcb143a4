"""The model-owned task weights that every training path reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from mtl_keras._typing import Tensor


def check_task_weight(task: str, value, source: str | None = None) -> float:
    """A task weight as a float, or a `ValueError` naming the task: the one
    check of every task weight (compile's `loss_weights`,
    `set_task_weights`, task-weight callbacks and schedules).

    A NaN or infinite weight turns every update non-finite while the task
    losses stay finite; a negative one makes the model maximise a loss; the
    weights are float32 variables, so 1e39 would be stored as inf.

    Args:
        task: The task's name (named in the error).
        value: The weight.
        source: Who gave it (named in the error), e.g. a callback's class.

    Example:

    ```python
    check_task_weight("seg", 0.5)  # 0.5
    ```
    """
    prefix = f"{source}: " if source else ""
    message = (f"{prefix}The weight of task '{task}' must be a number, got "
               f"{type(value).__name__}: {value!r}.")
    if isinstance(value, (str, bytes)):
        raise ValueError(message)
    try:
        value = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(message) from error
    if not 0 <= value <= float(np.finfo("float32").max):
        raise ValueError(
            f"{prefix}The weight of task '{task}' must be finite (in float32) "
            f"and ≥ 0, got {value}. Use 0 to switch a task off.")
    return value


@keras.saving.register_keras_serializable(package="mtl_keras")
class TaskWeights(keras.layers.Layer):
    """Holds one non-trainable weight per task.

    Compiled `loss_weights` initialise `values`; epoch-level callbacks (DWA)
    assign them through the model; every training path multiplies each task
    loss by its weight before a balancer sees it. Because they are Keras
    weights read inside the compiled step, assignments take effect without
    retracing, and they save and resume with the model (a Python float in
    `compile(loss_weights=...)` would be frozen into the graph). Every
    assigned weight is checked (`check_task_weight`).

    What task-weight callbacks record lives in `TaskWeightHistory`, the
    flags of non-finite tasks in `mtl_keras.nonfinite.NonFiniteTasks`.

    Args:
        task_names: The task names, in the model's order.

    Example:

    ```python
    weights = TaskWeights(["a", "b"])
    weights.assign({"b": 0.5})
    weights.as_dict()  # {"a": 1.0, "b": 0.5}
    ```
    """

    def __init__(self, task_names: Sequence[str], name: str = "task_weights",
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.task_names = list(task_names)
        self.values = self.add_weight(
            shape=(len(self.task_names),), initializer="ones", trainable=False,
            name="values"
        )
        # Where the values a 0.2.0 file saved here besides the weights go
        # (the history's three variables, then the non-finite flags).
        object.__setattr__(self, "legacy_variables", None)
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
            weights = [weights.get(t, current[t]) for t in self.task_names]
        if len(weights) != len(self.task_names):
            raise ValueError(
                f"Got {len(weights)} task weights for {len(self.task_names)} "
                f"tasks {self.task_names}."
            )
        weights = [check_task_weight(t, w) for t, w in zip(self.task_names, weights)]
        self.values.assign(ops.convert_to_tensor(weights, dtype=self.values.dtype))

    def as_dict(self) -> dict[str, float]:
        values = ops.convert_to_numpy(self.values)
        return {task: float(v) for task, v in zip(self.task_names, values)}

    def load_own_variables(self, store: Any) -> None:
        legacy = self.legacy_variables
        if legacy is not None and len(store.keys()) == 1 + len(legacy):
            # A file saved by mtl_keras 0.2.0, when this layer also held the
            # callbacks' history and the non-finite flags.
            self.values.assign(store["0"])
            for i, variable in enumerate(legacy, start=1):
                variable.assign(store[f"{i}"])
            return
        super().load_own_variables(store)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict:
        return {"name": self.name, "task_names": self.task_names}
