"""`LambdaTaskWeights`: a task-weighting rule from a plain function."""

from __future__ import annotations

from collections.abc import Callable

import keras

from mtl_keras.callbacks.task_history import TaskHistory
from mtl_keras.callbacks.task_weight_callback import TaskWeightCallback


@keras.saving.register_keras_serializable(package="mtl_keras")
class LambdaTaskWeights(TaskWeightCallback):
    """A `TaskWeightCallback` whose rule is a function, like `LambdaCallback`.

    `fn(step, history)` returns `{task: weight}` for every task; `step` is
    the epoch (or, with `frequency="batch"`, the optimizer step) and
    `history` a `TaskHistory` of the monitored per-task values, kept in the
    model's weights so that resumed runs continue exactly. The weights are
    checked (every task, finite, ≥ 0) and written into the model's task
    weights.

    Args:
        fn: The rule, `fn(step, history) -> {task: weight}`.
        monitor: The per-task log entry recorded (default `"{task}_loss"`).
        frequency: `"epoch"` (default) or `"batch"`.
        history_length: How many past observations `fn` sees (default 2).
        reset_each_epoch: Whether the history restarts every epoch.

    Example:

    ```python
    def weights(epoch, history):  # warm the segmentation task up
        return {"cls": 1.0, "seg": min(1.0, epoch / 5)}

    model.fit(x, y, epochs=10,
              callbacks=[mtl_keras.callbacks.LambdaTaskWeights(weights)])
    ```
    """

    def __init__(
        self,
        fn: Callable[[int, TaskHistory], dict[str, float]],
        monitor: str | dict[str, str] | None = None,
        frequency: str = "epoch",
        history_length: int = 2,
        reset_each_epoch: bool = False,
    ) -> None:
        if not callable(fn):
            raise ValueError(f"LambdaTaskWeights needs a function, got {fn!r}.")
        super().__init__(monitor, frequency, history_length, reset_each_epoch)
        self.fn = fn

    def compute_task_weights(self, step: int,
                             history: TaskHistory) -> dict[str, float]:
        return self.fn(step, history)

    def get_config(self) -> dict:
        return {"fn": keras.saving.serialize_keras_object(self.fn),
                **super().get_config()}

    @classmethod
    def from_config(cls, config: dict) -> LambdaTaskWeights:
        config = dict(config)
        config["fn"] = keras.saving.deserialize_keras_object(config["fn"])
        return cls(**config)
