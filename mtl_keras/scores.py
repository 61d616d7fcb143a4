"""Multi-task scores: one number that says how good a multi-task model is.

(Keras metrics, which accumulate over batches, are elsewhere:
`mtl_keras.MaskedMetric`; this module scores finished runs.)

- `delta_m`: Δm% of Maninis, Radosavovic & Kokkinos, "Attentive
  Single-Tasking of Multiple Tasks", CVPR 2019 — the mean relative change of
  every task's metrics against single-task reference values. Lower is better.
- `geometric_mean_loss`: a scale-free score when no reference values exist,
  the geometric mean of the per-task losses. Lower is better.
- `metric_direction` and `metric_name`: whether higher values of a logged
  metric are better, and the log name Keras gives a metric identifier.

Both take plain Python numbers (for example a `History` or `logs` entry), so
they can score any run, during training (`mtl_keras.callbacks.MultiTaskScore`)
or after it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import keras

#: Directions of common Keras metric names (True: higher is better), used
#: when `higher_is_better` does not name a metric.
DEFAULT_HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "acc": True,
    "binary_accuracy": True,
    "categorical_accuracy": True,
    "sparse_categorical_accuracy": True,
    "top_k_categorical_accuracy": True,
    "sparse_top_k_categorical_accuracy": True,
    "auc": True,
    "precision": True,
    "recall": True,
    "f1_score": True,
    "miou": True,
    "mean_io_u": True,
    "iou": True,
    "r2_score": True,
    "loss": False,
    "mae": False,
    "mse": False,
    "rmse": False,
    "mape": False,
    "mean_absolute_error": False,
    "mean_squared_error": False,
    "root_mean_squared_error": False,
    "mean_absolute_percentage_error": False,
}

#: Internal metric key of the `{task: value}` form (one unnamed metric).
_SINGLE = None


def delta_m(metrics: Mapping, references: Mapping,
            higher_is_better: Mapping | None = None) -> float:
    """Δm%: the mean relative change against single-task references.

    Maninis et al., CVPR 2019 (as used by MTAN, Nash-MTL, FAMO, ...). With
    `M_k,j` the j-th metric of task k, `M_k,j^single` its single-task
    reference and `l_k,j = 1` where higher is better (0 otherwise):

        Δm = (1/K) Σ_k (1/J_k) Σ_j (−1)^{l_k,j} (M_k,j − M_k,j^single)
                                               / M_k,j^single × 100

    i.e. the metrics of a task are averaged first, then the tasks. Lower is
    better; 0 means "as good as the single-task models" and −5 means 5 %
    better on average. (LibMTL's Δp has the opposite sign.) A reference of
    0 has no relative change and is refused.

    Args:
        metrics: The multi-task model's values, `{task: {metric: value}}`,
            or `{task: value}` for one metric per task.
        references: The single-task values, in the same form. They decide
            what is scored: every task of `metrics` needs a reference, and
            every referenced metric a value.
        higher_is_better: The direction of each metric: a bool for all of
            them; a dict by metric name (`{"accuracy": True, "mae": False}`);
            a dict by task, each a bool or a dict by metric name (the only
            form for `{task: value}` inputs); or `None`. Names it does not
            give are looked up in `DEFAULT_HIGHER_IS_BETTER`.

    Returns:
        Δm in percent, a Python float (NaN if a metric is NaN).

    Example:

    ```python
    delta_m({"cls": {"accuracy": 0.93}, "depth": {"rmse": 0.55}},
            references={"cls": {"accuracy": 0.90}, "depth": {"rmse": 0.50}},
            higher_is_better={"accuracy": True, "rmse": False})
    # ((−1)·(0.03/0.90) + (0.05/0.50)) / 2 × 100 = 3.33
    ```
    """
    values = _by_task(metrics, "metrics")
    refs = _by_task(references, "references")
    _check_same_tasks(values, refs)
    task_changes = []
    for task, task_refs in refs.items():
        changes = []
        for metric, reference in task_refs.items():
            value = _metric_value(values, task, metric)
            sign = -1.0 if metric_direction(task, metric, higher_is_better) else 1.0
            relative = (value - reference) / _nonzero(task, metric, reference)
            changes.append(sign * relative)
        task_changes.append(sum(changes) / len(changes))
    return 100.0 * sum(task_changes) / len(task_changes)


def geometric_mean_loss(task_losses: Mapping[str, float]) -> float:
    """The geometric mean of the task losses, `(Π_k L_k)^(1/K)`.

    A scale-free way to rank runs when no single-task references exist:
    multiplying one task's loss by a constant (another unit, a summed
    instead of averaged loss) multiplies the score of every run by the same
    factor, so the ranking does not change, and a 10 % lower loss on any one
    task lowers the score by the same factor whatever that task's scale.
    Like Δm it measures relative changes; unlike it, it needs no reference.
    Lower is better. Losses must be positive (a zero loss gives 0).

    Args:
        task_losses: `{task: loss}`, the (unweighted) per-task losses.

    Example:

    ```python
    geometric_mean_loss({"cls": 0.5, "seg": 2.0})  # sqrt(0.5 × 2.0) = 1.0
    ```
    """
    if not task_losses:
        raise ValueError("geometric_mean_loss needs at least one task loss.")
    losses = {task: float(loss) for task, loss in task_losses.items()}
    negative = sorted(task for task, loss in losses.items() if loss < 0)
    if negative:
        raise ValueError(
            f"geometric_mean_loss needs non-negative losses; task(s) {negative} "
            f"have {[losses[t] for t in negative]}."
        )
    if any(loss == 0.0 for loss in losses.values()):
        return 0.0
    return math.exp(sum(math.log(loss) for loss in losses.values()) / len(losses))


def metric_direction(task: str, metric: str | None,
                     higher_is_better: Mapping | None = None) -> bool:
    """Whether higher values of `metric` of `task` are better.

    Looks in `higher_is_better` (see `delta_m`) by task, then by metric name,
    then in `DEFAULT_HIGHER_IS_BETTER`; raises if none of them knows.
    """
    if isinstance(higher_is_better, bool):
        return higher_is_better
    given = higher_is_better or {}
    if task in given and isinstance(given[task], bool):
        return given[task]
    if task in given and isinstance(given[task], Mapping) and metric in given[task]:
        return bool(given[task][metric])
    if metric is not _SINGLE and metric in given:
        return bool(given[metric])
    if metric is not _SINGLE and metric in DEFAULT_HIGHER_IS_BETTER:
        return DEFAULT_HIGHER_IS_BETTER[metric]
    what = f"metric {metric!r} of task {task!r}" if metric else f"task {task!r}"
    raise ValueError(
        f"Unknown direction for {what}: say whether higher is better with "
        f"higher_is_better={{{(metric or task)!r}: True}} (or False)."
    )


def _by_task(scores: Mapping, what: str) -> dict[str, dict]:
    """`{task: {metric: value}}` from either input form, values as floats."""
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError(
            f"`{what}` must be a non-empty dict {{task: {{metric: value}}}} or "
            f"{{task: value}}; got {scores!r}."
        )
    by_task = {}
    for task, value in scores.items():
        if isinstance(value, Mapping):
            if not value:
                raise ValueError(f"`{what}` has no metric for task {task!r}.")
            by_task[task] = {metric: float(v) for metric, v in value.items()}
        else:
            by_task[task] = {_SINGLE: float(value)}
    return by_task


def _check_same_tasks(values: dict, refs: dict) -> None:
    unreferenced = sorted(set(values) - set(refs))
    if unreferenced:
        raise ValueError(
            f"No single-task reference for task(s) {unreferenced}: Δm averages "
            f"over every task, so `references` needs them too (it has "
            f"{sorted(refs)})."
        )
    missing = sorted(set(refs) - set(values))
    if missing:
        raise ValueError(
            f"`metrics` has no value for task(s) {missing} named in "
            f"`references` (it has {sorted(values)})."
        )
    for task, task_values in values.items():
        extra = sorted(set(task_values) - set(refs[task]), key=str)
        if extra:
            raise ValueError(
                f"No single-task reference for metric(s) {extra} of task "
                f"{task!r}: give one in `references[{task!r}]` or leave the "
                "metric out of `metrics`."
            )


def _metric_value(values: dict, task: str, metric) -> float:
    if metric not in values[task]:
        raise ValueError(
            f"`metrics[{task!r}]` has no value for {metric!r}, which "
            f"`references[{task!r}]` scores."
        )
    return values[task][metric]


def _nonzero(task: str, metric, reference: float) -> float:
    if reference == 0.0:
        what = f"metric {metric!r} of task {task!r}" if metric else f"task {task!r}"
        raise ValueError(
            f"The reference value of {what} is 0: Δm divides by it. Use a "
            "metric whose single-task value is not 0."
        )
    return reference


def metric_name(metric: Any) -> str:
    """The name `keras.Model.compile` logs a metric identifier under (after
    the `<task>_` prefix).

    A string is its own name (`"accuracy"`), a metric object has its `name`,
    a metric function its `__name__` and any other callable its class name,
    both in snake case (as Keras' `compile` names them).

    Args:
        metric: a metric as given to `compile(metrics=...)`.

    Example:

    ```python
    metric_name(keras.metrics.MeanAbsoluteError())  # "mean_absolute_error"
    metric_name("accuracy")                         # "accuracy"
    ```
    """
    if isinstance(metric, str):
        return metric
    if isinstance(metric, type) and issubclass(metric, keras.metrics.Metric):
        return metric().name  # a class: Keras instantiates it
    if isinstance(getattr(metric, "name", None), str):
        return metric.name
    return _snake_case(getattr(metric, "__name__", type(metric).__name__))


def _snake_case(name: str) -> str:
    """`CamelCase` to `camel_case`, with the rules of Keras' object names."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
