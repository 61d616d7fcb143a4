"""`SearchResult`: what a search returns, and its text table."""

from __future__ import annotations

import dataclasses
import math

import keras_tuner as kt


@dataclasses.dataclass
class SearchResult:
    """What `search` and `tune` return.

    Attributes:
        objective: The objective name (`val_delta_m`, ...).
        best_score: The best trial's score: its best epoch's objective value
            (KerasTuner's convention).
        best_hyperparameters: The best trial's active hyperparameter values.
        best_task_weights: Its task weights, `{task: w}` (`None` if DWA set
            them during training).
        best_balancer: Its method name (`None` when none was searched).
        trials: One row per trial, in trial order: `trial`, `status`,
            `score` and the active hyperparameter values.
        direction: `"min"` (the scores) or `"max"` (an objective such as
            `val_cls_accuracy`).
        tuner: The KerasTuner tuner (`tuner.get_best_models()`, ...).
        best_method_config: The best method's searched constructor
            arguments (e.g. `{"c": 0.4}` for CAGrad), for
            `mtl_keras.compare.method_parts(best_balancer, config)`.
        references: `{task: {metric: value}}`, the single-task values the
            trials were scored against (None: the scale-free score).

    Example:

    ```python
    print(result.summary())
    model.compile(..., loss_weights=result.best_task_weights)
    ```
    """

    objective: str
    best_score: float
    best_hyperparameters: dict
    best_task_weights: dict | None
    best_balancer: str | None
    trials: list[dict]
    direction: str = "min"
    tuner: kt.Tuner | None = dataclasses.field(default=None, repr=False)
    best_method_config: dict = dataclasses.field(default_factory=dict)
    references: dict | None = None

    def summary(self) -> str:
        """A text table of the trials, best first, and the best weights."""
        sign = 1.0 if self.direction == "min" else -1.0
        rows = sorted(self.trials, key=lambda row: _score_key(row, sign))
        columns = ["trial", "score", "status"]
        for row in rows:
            columns += [k for k in row if k not in columns and not _internal(k)]
        cells = [[_format(row.get(c)) for c in columns] for row in rows]
        widths = [max(len(c), *(len(r[i]) for r in cells))
                  for i, c in enumerate(columns)]

        def line(values):
            return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True))

        better = "lower" if self.direction == "min" else "higher"
        lines = [f"Search objective: {self.objective} ({better} is better), "
                 f"{len(rows)} trial(s)", "", line(columns),
                 line(["-" * w for w in widths]), *(line(r) for r in cells)]
        lines += ["", f"Best score: {_format(self.best_score)}"]
        if self.best_balancer is not None:
            lines.append(f"Best balancer: {self.best_balancer}")
        weights = ("set by DWA" if self.best_task_weights is None else ", ".join(
            f"{t}={w:.4g}" for t, w in self.best_task_weights.items()))
        lines.append(f"Best task weights: {weights}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _internal(column: str) -> bool:
    return column.startswith("tuner/") and column != "tuner/epochs"


def _score_key(row: dict, sign: float):
    score = row.get("score")
    missing = score is None or math.isnan(score)
    return (missing, 0.0 if missing else sign * score)


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
