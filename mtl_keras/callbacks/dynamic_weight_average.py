"""Dynamic Weight Average (Liu, Johns & Davison, 2019)."""

from __future__ import annotations

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="mtl_keras")
class DynamicWeightAverage(keras.callbacks.Callback):
    """Sets the task weights each epoch from how fast each task loss falls.

    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
    CVPR 2019. With `L̄_k(t)` the epoch-mean (unweighted) training loss of
    task k, at the start of epoch t ≥ 2:

        r_k = L̄_k(t−1) / L̄_k(t−2)
        w_k(t) = K · exp(r_k / T) / Σ_i exp(r_i / T)

    and `w_k = 1` for the first two epochs. A task whose loss falls slowly
    gets more weight. The weights are written into the model's task weights
    (so they compose with a balancer), and the loss history is kept in the
    model's weights, so a run resumed with `BackupAndRestore` or from a
    `.keras` file continues as if uninterrupted. The current epoch's running
    means are stored after every batch, so that a callback saving the model
    at the end of an epoch saves them too, wherever it stands in the list.

    Args:
        temperature: T; larger values give more even weights (default 2).

    Example:

    ```python
    model.fit(train_ds, epochs=20,
              callbacks=[mtl_keras.callbacks.DynamicWeightAverage(2.0)])
    ```
    """

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = float(temperature)
        self._epoch_recorded = False

    def _task_weights(self):
        task_weights = getattr(self.model, "task_weights", None)
        if task_weights is None:
            raise ValueError(
                "DynamicWeightAverage needs a mtl_keras.MultiTaskModel (it "
                f"writes the model's task weights); got {type(self.model).__name__}."
            )
        return task_weights

    def on_epoch_begin(self, epoch, logs=None):
        task_weights = self._task_weights()
        if int(task_weights.epochs_recorded.numpy()) < 2:
            weights = np.ones(len(task_weights.task_names))
        else:
            history = task_weights.loss_history.numpy()
            weights = dwa_weights(history[1], history[0], self.temperature)
        task_weights.assign(weights.tolist())
        self._epoch_recorded = False

    def on_train_batch_end(self, batch, logs=None):
        # Keras' batch logs hold the epoch's running means. Recording them
        # only in `on_epoch_end` would miss a BackupAndRestore listed before
        # this callback: it saves the model first, and the resumed run then
        # lacks the epoch's losses.
        task_weights = self._task_weights()
        logs = logs or {}
        missing = [t for t in task_weights.task_names if f"{t}_loss" not in logs]
        if missing:
            raise ValueError(
                f"DynamicWeightAverage found no epoch loss for task(s) {missing} "
                "in the logs."
            )
        losses = [float(logs[f"{t}_loss"]) for t in task_weights.task_names]
        if not self._epoch_recorded:
            task_weights.record_epoch_losses(losses)
            self._epoch_recorded = True
        else:  # the same epoch: refresh its running means
            history = task_weights.loss_history
            history.assign(np.stack([history.numpy()[0], losses]))

    def get_config(self) -> dict:
        return {"temperature": self.temperature}


def dwa_weights(last_losses, previous_losses, temperature: float) -> np.ndarray:
    """`K · softmax(r / T)` with `r = last_losses / previous_losses`."""
    last = np.asarray(last_losses, dtype=np.float64)
    previous = np.asarray(previous_losses, dtype=np.float64)
    ratios = last / np.maximum(previous, 1e-12)
    logits = ratios / temperature
    exp = np.exp(logits - logits.max())
    return len(last) * exp / exp.sum()
