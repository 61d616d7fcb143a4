"""The model-owned task weights that every training path reads."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mtl_keras")
class TaskWeights(keras.layers.Layer):
    """Holds one non-trainable weight per task, plus a short loss history.

    Compiled `loss_weights` initialise `values`; epoch-level callbacks (DWA)
    assign them through the model; every training path multiplies each task
    loss by its weight before a balancer sees it. Because they are Keras
    weights read inside the compiled step, assignments take effect without
    retracing, and they save and resume with the model (a Python float in
    `compile(loss_weights=...)` would be frozen into the graph).

    `nonfinite_tasks` flags (1.0) the tasks whose loss was not finite at the
    last step the model skipped for that reason.

    `loss_history` keeps the epoch-mean task losses of the last two epochs
    for epoch-level callbacks, so that they too resume where they stopped.

    Args:
        task_names: The task names, in the model's order.
    """

    def __init__(self, task_names, name: str = "task_weights", **kwargs):
        super().__init__(name=name, **kwargs)
        self.task_names = list(task_names)
        num_tasks = len(self.task_names)
        self.values = self.add_weight(
            shape=(num_tasks,), initializer="ones", trainable=False, name="values"
        )
        self.loss_history = self.add_weight(
            shape=(2, num_tasks), initializer="zeros", trainable=False,
            name="loss_history",
        )
        self.epochs_recorded = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="epochs_recorded"
        )
        self.nonfinite_tasks = self.add_weight(
            shape=(num_tasks,), initializer="zeros", trainable=False,
            name="nonfinite_tasks", aggregation="only_first_replica",
        )
        self.built = True

    def call(self, task_losses):
        return ops.cast(self.values, "float32") * task_losses

    def assign(self, weights) -> None:
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

    def record_epoch_losses(self, losses) -> None:
        """Pushes one epoch's mean task losses onto the two-epoch history."""
        losses = ops.convert_to_tensor(losses, dtype=self.loss_history.dtype)
        self.loss_history.assign(ops.stack([self.loss_history[1], losses]))
        self.epochs_recorded.assign(self.epochs_recorded + 1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {"name": self.name, "task_names": self.task_names}
