"""The base of the model's per-task state layers (private)."""

from __future__ import annotations

import keras


class TaskState(keras.layers.Layer):
    """Non-trainable per-task state that a `MultiTaskModel` holds and saves.

    Subclasses create their weights in `__init__` after this one. A `.keras`
    file saved when `TaskWeights` held this state has nothing stored for the
    layer: `TaskWeights.load_own_variables` hands the values over, so the
    empty store is skipped here.

    Args:
        task_names: The task names, in the model's order.
        name: The layer name.
    """

    def __init__(self, task_names, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.task_names = list(task_names)

    def load_own_variables(self, store):
        if not store.keys():
            return
        super().load_own_variables(store)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {"name": self.name, "task_names": self.task_names}
