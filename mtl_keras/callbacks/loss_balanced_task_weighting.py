"""Loss-Balanced Task Weighting (Liu, Liang & Gitter, 2019)."""

from __future__ import annotations

import keras
import numpy as np

from mtl_keras.callbacks.task_history import TaskHistory
from mtl_keras.callbacks.task_weight_callback import TaskWeightCallback


@keras.saving.register_keras_serializable(package="mtl_keras")
class LossBalancedTaskWeighting(TaskWeightCallback):
    """LBTW: weights from each task loss relative to its initial loss.

    Liu, Liang & Gitter, "Loss-Balanced Task Weighting to Reduce Negative
    Transfer in Multi-Task Learning", AAAI 2019 (student abstract). With
    `L_k(t)` the loss of task k at step t and `L_k(0)` its loss at the first
    step of the epoch (as in the authors' code):

        w_k(t) = (L_k(t) / L_k(0)) ** alpha

    rescaled to sum to K (`normalize=True`, as the authors' code does). A
    task whose loss has fallen far gets less weight, which limits negative
    transfer from tasks that are already learnt. Weights are 1 at the first
    step of each epoch.

    As a callback it sees a step's losses after the step: the weights
    computed from step t's losses apply from step t + 1 on (the paper
    weighs step t's own loss). With `steps_per_execution=n`, `L_k(t)` is
    the mean over the last n steps.

    Args:
        alpha: The exponent α ≥ 0 (default 0.5, the paper's value; 0 gives
            equal weights).
        normalize: Rescale the weights to sum to the number of tasks.

    Example:

    ```python
    model.fit(x, y, epochs=10,
              callbacks=[mtl_keras.callbacks.LossBalancedTaskWeighting(0.5)])
    ```
    """

    frequency = "batch"
    history_length = 1
    reset_each_epoch = True

    def __init__(self, alpha: float = 0.5, normalize: bool = True) -> None:
        super().__init__()
        if not alpha >= 0:
            raise ValueError(f"alpha must be ≥ 0, got {alpha}.")
        self.alpha = float(alpha)
        self.normalize = bool(normalize)

    def compute_task_weights(self, step: int,
                             history: TaskHistory) -> dict[str, float]:
        if history.count == 0:
            return history.ones()
        ratios = history.values[-1] / np.maximum(history.first, 1e-12)
        weights = np.maximum(ratios, 0.0) ** self.alpha
        if self.normalize:
            weights = len(weights) * weights / max(weights.sum(), 1e-12)
        return dict(zip(history.tasks, weights))

    def get_config(self) -> dict:
        return {"alpha": self.alpha, "normalize": self.normalize}
