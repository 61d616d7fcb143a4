"""Dynamic Weight Average (Liu, Johns & Davison, 2019)."""

from __future__ import annotations

import keras
import numpy as np

from mtl_keras.callbacks.task_history import TaskHistory
from mtl_keras.callbacks.task_weight_callback import TaskWeightCallback


@keras.saving.register_keras_serializable(package="mtl_keras")
class DynamicWeightAverage(TaskWeightCallback):
    """Sets the task weights each epoch from how fast each task loss falls.

    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
    CVPR 2019. With `L̄_k(t)` the epoch-mean (unweighted) training loss of
    task k, at the start of epoch t ≥ 2:

        r_k = L̄_k(t−1) / L̄_k(t−2)
        w_k(t) = K · exp(r_k / T) / Σ_i exp(r_i / T)

    and `w_k = 1` for the first two epochs. A task whose loss falls slowly
    gets more weight. A `TaskWeightCallback`: the weights compose with a
    balancer, and the loss history resumes with the model.

    Args:
        temperature: T; larger values give more even weights (default 2).

    Example:

    ```python
    model.fit(train_ds, epochs=20,
              callbacks=[mtl_keras.callbacks.DynamicWeightAverage(2.0)])
    ```
    """

    history_length = 2

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = float(temperature)

    def compute_task_weights(self, step: int,
                             history: TaskHistory) -> dict[str, float]:
        if history.count < 2:
            return history.ones()
        previous, last = history.values[-2:]
        return dict(zip(history.tasks, dwa_weights(last, previous, self.temperature)))

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
