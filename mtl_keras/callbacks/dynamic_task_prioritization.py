"""Dynamic Task Prioritization (Guo et al., 2018)."""

from __future__ import annotations

import keras
import numpy as np

from mtl_keras.callbacks.task_history import TaskHistory
from mtl_keras.callbacks.task_weight_callback import TaskWeightCallback

#: How far the KPI is kept from 0 and 1: log κ and (1 − κ)^γ stay finite.
KPI_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="mtl_keras")
class DynamicTaskPrioritization(TaskWeightCallback):
    """DTP: more weight to the tasks that perform worst, focal-loss style.

    Guo, Haque, Huang, Yeung & Fei-Fei, "Dynamic Task Prioritization for
    Multitask Learning", ECCV 2018. Each task has a key performance
    indicator κ_k in [0, 1] (higher is better, e.g. validation accuracy or
    mIoU), smoothed as in the paper by a moving average

        κ̄_k(τ) = α · κ_k(τ) + (1 − α) · κ̄_k(τ − 1),   κ̄_k(0) = κ_k(0)

    and the weight of task k for the next epoch is the focal loss of κ̄_k:

        w_k = −(1 − κ̄_k) ** γ · log(κ̄_k)

    with κ̄ clipped to [ε, 1 − ε] (`KPI_EPSILON`). A task far from its
    target gets a large weight; a task near perfect, a weight near 0.
    Weights are 1 until the first KPI is known (after the first epoch).

    Args:
        kpis: The KPI of each task, as logged: a dict `{task: log key}`
            (`{"cls": "val_cls_accuracy", "seg": "val_seg_miou"}`) or a
            template (`"val_{task}_accuracy"`). Validation entries need
            `validation_data`; values must lie in [0, 1].
        gamma: The task-level focusing parameter γ ≥ 0 (default 1; 0 gives
            `−log κ̄`).
        alpha: The weight α in (0, 1] of the newest KPI in the moving
            average (default 1: no smoothing).

    Example:

    ```python
    dtp = mtl_keras.callbacks.DynamicTaskPrioritization(
        {"cls": "val_cls_accuracy", "seg": "val_seg_miou"})
    model.fit(x, y, validation_data=(x_val, y_val), epochs=10, callbacks=[dtp])
    ```
    """

    history_length = 1

    def __init__(self, kpis: str | dict[str, str], gamma: float = 1.0,
                 alpha: float = 1.0) -> None:
        super().__init__(monitor=kpis)
        if not gamma >= 0:
            raise ValueError(f"gamma must be ≥ 0, got {gamma}.")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}.")
        self.gamma = float(gamma)
        self.alpha = float(alpha)

    def observe(self, values: np.ndarray, history: TaskHistory) -> np.ndarray:
        for task, value in zip(history.tasks, values):
            if not 0 <= value <= 1:
                raise ValueError(
                    f"DynamicTaskPrioritization: the KPI of task '{task}' "
                    f"({self._keys[task]}) is {value}, outside [0, 1]. Name a "
                    "metric in [0, 1] where higher is better (accuracy, mIoU, "
                    "AUC, ...).")
        if history.count == 0:
            return values
        return self.alpha * values + (1 - self.alpha) * history.values[-1]

    def compute_task_weights(self, step: int,
                             history: TaskHistory) -> dict[str, float]:
        if history.count == 0:
            return history.ones()
        kpi = np.clip(history.values[-1], KPI_EPSILON, 1 - KPI_EPSILON)
        weights = -((1 - kpi) ** self.gamma) * np.log(kpi)
        return dict(zip(history.tasks, weights))

    def get_config(self) -> dict:
        return {"kpis": self.monitor, "gamma": self.gamma, "alpha": self.alpha}
