"""A suite from the user's own parts: a model builder, data, losses, metrics.

`from_parts` checks the parts and picks each task's headline metric: the
first of its metrics whose direction is known (accuracies, AUC, IoU up;
errors down; see `mtl_keras.scores.DEFAULT_HIGHER_IS_BETTER`), else its loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mtl_keras import scores
from mtl_keras.suites.suite import Suite


def from_parts(
    build_model: Callable,
    train: Any,
    test: Any,
    losses: Mapping,
    metrics: Mapping | None = None,
    headline: Mapping | None = None,
    name: str = "your data",
) -> Suite:
    """A `Suite` of your own model and data.

    Args:
        build_model: `build_model(tasks) -> MultiTaskModel`, uncompiled, with
            one head per task of the tuple `tasks` (single-task baselines
            are built with one task).
        train: a batched `tf.data.Dataset` of `(x, {task: y})`, or arrays
            `(x, {task: y})` (batched by the experiment's `batch_size`).
            Missing labels are marked as for `fit` (`mtl_keras.MISSING_LABEL`,
            NaN).
        test: the data every model is scored on, in the same forms.
        losses: `{task: loss}`; its keys are the tasks.
        metrics: `{task: [metrics]}` (names or metric objects, cloned for
            every model), a function `tasks -> {task: [metrics]}`, or None.
        headline: `{task: metric}` or `{task: (metric, higher_is_better)}`
            for the tasks whose headline is not the default (the first
            metric with a known direction, else `"loss"`).
        name: what tables and plots call the data.

    Returns:
        A `Suite`.

    Example:

    ```python
    suite = from_parts(build, train_ds, test_ds,
                       losses={"cls": "sparse_categorical_crossentropy"},
                       metrics={"cls": ["accuracy"]})
    ```
    """
    if not isinstance(losses, Mapping) or not losses:
        raise ValueError(f"`losses` must be a dict {{task: loss}}; got {losses!r}.")
    tasks = tuple(sorted(losses))
    make_metrics = metrics_factory(metrics, tasks)
    return Suite(
        name=name, tasks=tasks,
        headline=headlines(make_metrics(tasks), tasks, headline),
        train=_checked_data(train, "train"), test=_checked_data(test, "test"),
        build_model=build_model, losses=dict(losses), make_metrics=make_metrics,
    )


def metrics_factory(metrics, tasks: tuple) -> Callable:
    """`tasks -> {task: [fresh metrics]}` from a dict, a function or None."""
    if metrics is None:
        return lambda chosen: {}
    if callable(metrics) and not isinstance(metrics, Mapping):
        return metrics
    if not isinstance(metrics, Mapping):
        raise ValueError("`metrics` must be a dict {task: [metrics]}, a function "
                         f"of the tasks, or None; got {type(metrics).__name__}.")
    unknown = sorted(set(metrics) - set(tasks))
    if unknown:
        raise ValueError(f"`metrics` names task(s) {unknown}, which `losses` does "
                         f"not have (tasks: {list(tasks)}).")

    def make(chosen):
        return {task: [clone_metric(m) for m in as_list(metrics[task])]
                for task in chosen if task in metrics}

    return make


def headlines(metrics: Mapping, tasks: tuple, given: Mapping | None) -> dict:
    """`{task: (metric, higher is better)}`: `given` where it names the task,
    else the first metric with a known direction, else `("loss", False)`."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(tasks))
    if unknown:
        raise ValueError(f"`headline` names task(s) {unknown}; the tasks are "
                         f"{list(tasks)}.")
    chosen = {}
    for task in tasks:
        if task in given:
            chosen[task] = _given_headline(task, given[task])
            continue
        names = [scores.metric_name(m) for m in as_list(metrics.get(task, []))]
        known = [n for n in names if n in scores.DEFAULT_HIGHER_IS_BETTER]
        metric = known[0] if known else "loss"
        chosen[task] = (metric, scores.metric_direction(task, metric))
    return chosen


def _given_headline(task: str, value) -> tuple[str, bool]:
    if isinstance(value, str):
        return value, scores.metric_direction(task, value)
    metric, higher = value
    return str(metric), bool(higher)


def _checked_data(data, what: str):
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(
            data[1], Mapping):
        inputs = tf.nest.map_structure(np.asarray, data[0])
        return inputs, {task: np.asarray(y) for task, y in data[1].items()}
    raise ValueError(f"`{what}` must be a batched tf.data.Dataset of (x, {{task: "
                     f"y}}) or arrays (x, {{task: y}}); got {type(data).__name__}.")


def clone_metric(metric):
    """A fresh copy of a metric object (a name or function as it is)."""
    if isinstance(metric, keras.metrics.Metric):
        return metric.__class__.from_config(metric.get_config())
    return metric


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]
