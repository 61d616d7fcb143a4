"""`TaskBoard`: the TensorBoard callback with per-task dashboards."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary

from mtl_keras import engine

TASK_LOSSES = "Task losses"
TASK_WEIGHTS = "Task weights"
TASK_METRICS = "Task metrics"
GRADIENT_NORMS = "Gradient norms"
GRADIENT_COSINES = "Gradient cosines"


@keras.saving.register_keras_serializable(package="mtl_keras")
class TaskBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` plus a per-task custom-scalars layout.

    Everything `TensorBoard` writes is written the same way: every log key
    `k` becomes the scalar `epoch_k` of the `train/` run (and of the
    `validation/` run for `val_k`). On top of it, at the end of the first
    epoch `TaskBoard` writes once a layout for TensorBoard's "Custom Scalars"
    dashboard, built from the task names (`model.task_names`, or the output
    names of a plain multi-output `keras.Model`) and the logged keys:

    - "Task losses": one chart per task, `<task>_loss`, training and
      validation on the same chart.
    - "Task weights": one chart, one line per task: the weight each step
      applied (`<task>_weight`, static weight × balancer weight; logged in
      training only).
    - "Task metrics": one chart per task metric (`<task>_<metric>`).
    - "Gradient norms" and "Gradient cosines": `grad_norm/<task>` and
      `grad_cos/<a>/<b>`, when the model logs them (gradient balancers).
      TensorBoard's own Scalars tab also puts each kind in one section.

    With an integer `update_freq=N`, the `TensorBoard` callback also writes
    every log key as `batch_<key>` every N training batches; the layout then
    gets the same charts at batch granularity in categories marked
    "(batches)". Unlike `TensorBoard`, the epoch summaries are written even
    when an epoch's last step is not a multiple of N (in Keras 3.15 they are
    silently dropped then, see tensorflow/tensorboard#4975).

    On the JAX backend `TaskBoard` works the same: Keras' `TensorBoard` and
    the layout both write with `tf.summary` (TensorFlow is installed with
    `mtl_keras`).

    Args:
        log_dir: The folder TensorBoard reads (`tensorboard --logdir`).
        **kwargs: Any other `keras.callbacks.TensorBoard` argument
            (`update_freq`, `histogram_freq`, `write_graph`, ...).

    Example:

    ```python
    model.fit(train_ds, validation_data=val_ds, epochs=20,
              callbacks=[mtl_keras.callbacks.TaskBoard("logs/run1")])
    # then: tensorboard --logdir logs   (tab "Custom Scalars")
    ```
    """

    def __init__(self, log_dir: str = "logs", **kwargs: Any) -> None:
        super().__init__(log_dir=log_dir, **kwargs)
        self._tensorboard_kwargs = dict(kwargs)
        self._task_names: list[str] | None = None
        self._layout_written = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._task_names = model_task_names(self.model)
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # With an integer `update_freq`, TensorBoard leaves the last batch's
        # `record_if` condition active here, which would drop these summaries.
        with self.summary.record_if(True):
            if logs and not self._layout_written:
                self._write_layout(logs)
            super().on_epoch_end(epoch, logs)

    def _write_layout(self, logs: dict) -> None:
        log_keys = [key.removeprefix("val_") for key in logs]
        layout = task_layout(
            self._task_names, log_keys, batch_level=self.update_freq != "epoch"
        )
        # A writer of our own into the run's "train" folder, beside the one
        # TensorBoard writes: TensorBoard reads every event file of a run.
        writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        with writer.as_default():
            tf.summary.experimental.write_raw_pb(
                custom_scalar_summary.pb(layout).SerializeToString(), step=0
            )
        writer.close()
        self._layout_written = True

    def get_config(self) -> dict:
        return {"log_dir": self.log_dir, **self._tensorboard_kwargs}

    @classmethod
    def from_config(cls, config: dict) -> TaskBoard:
        return cls(**config)


def model_task_names(model) -> list[str]:
    """The task names of a `MultiTaskModel`, or a multi-output model's outputs."""
    task_names = getattr(model, "task_names", None)
    if task_names:
        return list(task_names)
    output_names = list(getattr(model, "output_names", None) or [])
    if len(output_names) < 2:
        raise ValueError(
            "TaskBoard draws one chart per task, so it needs a model with "
            "several named outputs (a mtl_keras.MultiTaskModel, or a "
            "keras.Model with a dict of outputs); this model has outputs "
            f"{output_names}. Use keras.callbacks.TensorBoard for it."
        )
    return output_names


def group_log_keys(task_names: Sequence[str], log_keys: Iterable[str]) -> dict:
    """Sorts training log keys into the TaskBoard groups.

    Args:
        task_names: The task names.
        log_keys: Log keys without the `val_` prefix, e.g. `"cls_loss"`.

    Returns:
        A dict with `"losses"` and `"weights"` (`{task: key}`), `"metrics"`
        (`{task: [key, ...]}`), `"grad_norms"` and `"grad_cosines"` (lists of
        keys). Keys that belong to no task (`loss`, `learning_rate`) are left
        out. A key is given to the longest task name it starts with, so tasks
        `a` and `a_b` do not share `a_b_loss`.
    """
    groups = {"losses": {}, "weights": {}, "metrics": {}, "grad_norms": [],
              "grad_cosines": []}
    diagnostics = set(engine.diagnostic_names(task_names))
    by_length = sorted(task_names, key=len, reverse=True)
    for key in dict.fromkeys(log_keys):
        if key in diagnostics:
            group = "grad_norms" if key.startswith("grad_norm/") else "grad_cosines"
            groups[group].append(key)
            continue
        task = next((t for t in by_length if key.startswith(f"{t}_")), None)
        if task is None:
            continue
        suffix = key[len(task) + 1:]
        if suffix == "loss":
            groups["losses"][task] = key
        elif suffix == "weight":
            groups["weights"][task] = key
        else:
            groups["metrics"].setdefault(task, []).append(key)
    return groups


def task_layout(
    task_names: Sequence[str], log_keys: Iterable[str], batch_level: bool = False
) -> layout_pb2.Layout:
    """The custom-scalars layout of `TaskBoard`.

    Args:
        task_names: The task names, in display order.
        log_keys: The logged keys, without the `val_` prefix.
        batch_level: Also lay out the `batch_<key>` scalars that
            `TensorBoard(update_freq=N)` writes, in categories titled
            "... (batches)", collapsed by default.

    Returns:
        A `layout_pb2.Layout`. Each chart plots the tags matching its regexes
        in every run, so a chart of `^epoch_cls_loss$` shows the `train` and
        the `validation` curve. Groups with no logged key are left out.
    """
    groups = group_log_keys(task_names, log_keys)
    categories = _categories(groups, task_names, "epoch", "", closed=False)
    if batch_level:
        categories += _categories(groups, task_names, "batch", " (batches)",
                                  closed=True)
    return layout_pb2.Layout(category=categories)


def _categories(groups, task_names, prefix, title_suffix, closed):
    """The layout categories of one granularity (`prefix` "epoch" or "batch")."""

    def chart(title, keys):
        tags = [f"^{re.escape(f'{prefix}_{key}')}$" for key in keys]
        return layout_pb2.Chart(
            title=title, multiline=layout_pb2.MultilineChartContent(tag=tags)
        )

    losses, weights, metrics = groups["losses"], groups["weights"], groups["metrics"]
    charts = {
        TASK_LOSSES: [chart(t, [losses[t]]) for t in task_names if t in losses],
        TASK_WEIGHTS: [chart("weights", [weights[t] for t in task_names
                                         if t in weights])],
        TASK_METRICS: [chart(f"{t}: {key[len(t) + 1:]}", [key])
                       for t in task_names for key in metrics.get(t, [])],
        GRADIENT_NORMS: [chart("grad_norm", groups["grad_norms"])],
        GRADIENT_COSINES: [chart("grad_cos", groups["grad_cosines"])],
    }
    return [
        layout_pb2.Category(title=title + title_suffix, chart=chart_list,
                            closed=closed)
        for title, chart_list in charts.items()
        if any(c.multiline.tag for c in chart_list)
    ]
