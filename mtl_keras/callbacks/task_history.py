"""What a `TaskWeightCallback` has recorded so far, as its rule sees it."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TaskHistory:
    """The per-task values a `TaskWeightCallback` recorded, newest last.

    One observation holds one value per task: the monitored log entry (by
    default `<task>_loss`), an epoch mean at epoch frequency, the mean over
    the steps since the previous observation at batch frequency. The values
    live in the model's weights, so a resumed run sees the same history.

    Attributes:
        tasks: The task names, in the model's order (the column order).
        values: Array `(n, K)`: the last `n ≤ history_length` observations,
            oldest first; `n = 0` before the first one.
        first: Array `(K,)`: the first observation since the history was
            reset (start of training, or of each epoch for rules with
            `reset_each_epoch`), or `None`.
        count: How many observations were recorded since then.

    Example:

    ```python
    def rule(step, history):
        if history.count == 0:
            return {task: 1.0 for task in history.tasks}
        return dict(zip(history.tasks, history.values[-1] / history.first))
    ```
    """

    tasks: tuple[str, ...]
    values: np.ndarray
    first: np.ndarray | None
    count: int

    def latest(self) -> dict[str, float] | None:
        """The newest observation as `{task: value}`, or `None`."""
        if len(self.values) == 0:
            return None
        return {task: float(v) for task, v in zip(self.tasks, self.values[-1])}

    def ones(self) -> dict[str, float]:
        """Weight 1 for every task: what most rules return before any data."""
        return {task: 1.0 for task in self.tasks}
