"""`MultiTaskScore`: one combined validation score per epoch, in `logs`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import keras

from mtl_keras import scores


class MultiTaskScore(keras.callbacks.Callback):
    """Writes a combined multi-task score into the epoch logs.

    With `references` (single-task values of some metrics of every task) it
    writes Δm% (`mtl_keras.scores.delta_m`, Maninis et al. 2019) as
    `val_delta_m`, computed from the logged `val_<task>_<metric>` values.
    Without references it writes the scale-free
    `val_geometric_mean_loss = (Π_k val_<task>_loss)^(1/K)`
    (`mtl_keras.scores.geometric_mean_loss`). Both are lower-is-better.

    Because the value is put into `logs`, every callback after this one sees
    it: `EarlyStopping(monitor="val_delta_m")`, `ModelCheckpoint`,
    KerasTuner's objective, and `TensorBoard` (under `validation/`, as
    `epoch_delta_m`). Keras runs callbacks in list order and does not sort
    them, so put `MultiTaskScore` **before** those callbacks in the list;
    `mtl_keras.tuning.MultiTaskHyperModel` does it for you.

    Args:
        references: `{task: {metric_name: single_task_value}}` for every
            task of the model, with the metric names as they appear in the
            logs after the task prefix (`"accuracy"` for `val_cls_accuracy`;
            `"loss"` scores the task loss). `None`: the scale-free score.
        higher_is_better: Directions of the referenced metrics, as in
            `mtl_keras.scores.delta_m` (by metric name, by task, or a bool);
            common Keras names are known already.
        prefix: Prefix of the logs read and written: `"val_"` (the default)
            scores the validation data, `""` the training data.

    Example:

    ```python
    score = mtl_keras.callbacks.MultiTaskScore(
        references={"cls": {"accuracy": 0.90}, "seg": {"miou": 0.60}})
    model.fit(train_ds, validation_data=val_ds, epochs=20, callbacks=[
        score,  # first: the callbacks below read `val_delta_m`
        keras.callbacks.EarlyStopping("val_delta_m", patience=3),
        keras.callbacks.TensorBoard("runs/exp1"),
    ])
    ```
    """

    def __init__(self, references: Mapping | None = None,
                 higher_is_better: Mapping | None = None,
                 prefix: str = "val_") -> None:
        super().__init__()
        self.references = _check_references(references, higher_is_better)
        self.higher_is_better = higher_is_better
        self.prefix = prefix

    @property
    def name(self) -> str:
        """The log key this callback writes."""
        return score_name(self.references is not None, self.prefix)

    def on_train_begin(self, logs: dict | None = None) -> None:
        task_names = getattr(self.model, "task_names", None)
        if task_names is None:
            raise ValueError(
                "MultiTaskScore scores the tasks of a mtl_keras.MultiTaskModel; "
                f"got {type(self.model).__name__}."
            )
        self.check_tasks(task_names)

    def check_tasks(self, task_names: Sequence[str]) -> None:
        """Raises unless the references name exactly the tasks `task_names`."""
        if self.references is None:
            return
        references = self.references
        missing = sorted(set(task_names) - set(references))
        unknown = sorted(set(references) - set(task_names))
        if missing or unknown:
            raise ValueError(
                f"MultiTaskScore references name the tasks {sorted(references)} "
                f"but the model's tasks are {sorted(task_names)}: without a "
                f"reference {missing}, unknown {unknown}. Δm needs a reference "
                "for every task."
            )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        logs[self.name] = self.score(logs)

    def score(self, logs: dict) -> float:
        """The score of one epoch's `logs`."""
        if self.references is None:
            losses = {t: self._read(logs, f"{t}_loss") for t in self.model.task_names}
            return scores.geometric_mean_loss(losses)
        values = {
            task: {m: self._read(logs, f"{task}_{m}") for m in task_refs}
            for task, task_refs in self.references.items()
        }
        return scores.delta_m(values, self.references, self.higher_is_better)

    def _read(self, logs: dict, key: str) -> float:
        name = self.prefix + key
        if name not in logs:
            hint = (" Pass `validation_data` to fit." if self.prefix == "val_"
                    and not any(k.startswith("val_") for k in logs) else "")
            raise ValueError(
                f"MultiTaskScore needs {name!r} in the epoch logs, which have "
                f"{sorted(logs)}.{hint}"
            )
        return float(logs[name])

    def get_config(self) -> dict:
        return {
            "references": self.references,
            "higher_is_better": self.higher_is_better,
            "prefix": self.prefix,
        }


def score_name(with_references: bool, prefix: str = "val_") -> str:
    """The log key of the score: `val_delta_m` or `val_geometric_mean_loss`."""
    return prefix + ("delta_m" if with_references else "geometric_mean_loss")


def _check_references(references, higher_is_better) -> dict | None:
    """Validates references up front, so a bad one fails before training."""
    if references is None:
        return None
    if not isinstance(references, dict) or not references:
        raise ValueError(
            "`references` must be a dict {task: {metric_name: value}}; got "
            f"{references!r}."
        )
    checked = {}
    for task, task_refs in references.items():
        if not isinstance(task_refs, dict) or not task_refs:
            raise ValueError(
                f"`references[{task!r}]` must be a dict {{metric_name: value}} "
                f"naming the logged metric (e.g. {{'accuracy': 0.9}}); got "
                f"{task_refs!r}."
            )
        checked[task] = {}
        for metric, value in task_refs.items():
            value = float(value)
            if value == 0.0 or not math.isfinite(value):
                raise ValueError(
                    f"The reference of metric {metric!r} of task {task!r} is "
                    f"{value}: Δm divides by it, it must be finite and non-zero."
                )
            scores.metric_direction(task, metric, higher_is_better)
            checked[task][metric] = value
    return checked

