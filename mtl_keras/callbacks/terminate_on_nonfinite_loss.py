"""Stop training when a task loss stops being finite."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="mtl_keras")
class TerminateOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops `fit` at the first step a task loss is NaN or infinite.

    A `MultiTaskModel` never applies such a step: it skips it (no weight,
    optimizer or balancer update) and counts it in the `skipped_steps` log.
    This callback turns that policy into "stop and name the task": after
    the first skipped step it raises a `FloatingPointError` naming the tasks
    (or, with `raise_error=False`, prints them and stops training).

    Args:
        raise_error: Raise instead of setting `model.stop_training`.

    Example:

    ```python
    model.fit(ds, callbacks=[mtl_keras.callbacks.TerminateOnNonFiniteLoss()])
    ```
    """

    def __init__(self, raise_error: bool = True) -> None:
        super().__init__()
        self.raise_error = raise_error

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if not logs or float(logs.get("skipped_steps", 0.0)) == 0.0:
            return
        flags = self.model.nonfinite_tasks.numpy() > 0
        tasks = [t for t, bad in zip(self.model.task_names, flags) if bad]
        message = (
            f"Batch {batch}: the loss of task(s) {tasks} is not finite; the step "
            "was skipped. Check these tasks' labels (NaN or out-of-range values "
            "not marked as missing) and their loss and learning rate."
        )
        if self.raise_error:
            raise FloatingPointError(message)
        print(message)
        self.model.stop_training = True

    def get_config(self) -> dict:
        return {"raise_error": self.raise_error}
