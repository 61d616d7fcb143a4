"""`NonFiniteTasks`: which tasks were not finite at the last skipped step."""

from __future__ import annotations

import keras
from keras import ops

from mtl_keras._task_state import TaskState


@keras.saving.register_keras_serializable(package="mtl_keras")
class NonFiniteTasks(TaskState):
    """Flags (1.0) the tasks whose loss or gradient was not finite at the
    last step the model skipped for that reason.

    `MultiTaskModel` records them every step (`model.nonfinite_tasks`);
    `mtl_keras.callbacks.TerminateOnNonFiniteLoss` names them.

    Args:
        task_names: The task names, in the model's order.
        name: The layer name.

    Example:

    ```python
    flags = NonFiniteTasks(["a", "b"])
    flags.record(keras.ops.convert_to_tensor([True, False]))  # False: skipped
    flags.values  # [0., 1.]
    ```
    """

    def __init__(self, task_names, name: str = "nonfinite_tasks", **kwargs):
        super().__init__(task_names, name=name, **kwargs)
        self.values = self.add_weight(
            shape=(len(self.task_names),),
            initializer="zeros",
            trainable=False,
            name="nonfinite_tasks",
            aggregation="only_first_replica",
        )
        self.built = True

    def record(self, finite_tasks):
        """Flags the tasks of a skipped step (some task not finite); returns
        whether all are finite (the flags of a finite step are kept)."""
        finite = ops.all(finite_tasks)
        not_finite = 1.0 - ops.cast(finite_tasks, self.values.dtype)
        self.values.assign(
            ops.where(finite, ops.convert_to_tensor(self.values), not_finite)
        )
        return finite
