"""`CompareResult`: the runs of a comparison, summarised per method."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib

import numpy as np

from mtl_keras import scores
from mtl_keras.experiments import markdown, plot
from mtl_keras.experiments.record import SINGLE_TASK, RunRecord
from mtl_keras.experiments.summary import MethodSummary

#: Metrics shown in percent in tables and plots (and any `*accuracy`).
PERCENT_METRICS = ("accuracy", "miou", "iou", "mean_io_u")


@dataclasses.dataclass
class CompareResult:
    """The runs of a comparison, and their table and plot.

    Args:
        data_name: the suite's name.
        tasks: the task names.
        headline: `{task: (metric, higher is better)}`.
        methods: the compared methods, in order (without `SINGLE_TASK`).
        records: every finished `RunRecord`.
        settings: how the runs were trained (epochs, sizes, optimiser, ...).

    Example:

    ```python
    result = mtl_keras.compare.compare(["ew", "upgrad"], "shapes", seeds=1,
                                       epochs=1, train_size=128, test_size=64)
    print(result.to_markdown())
    best = result.ranking()[0]
    ```
    """

    data_name: str
    tasks: tuple
    headline: dict
    methods: list
    records: list
    settings: dict

    def single_task_means(self) -> dict:
        """`{task: mean headline metric}` of the single-task baselines."""
        return self._summary(SINGLE_TASK, {}).mean

    def references(self) -> dict:
        """`{task: {metric: single-task mean}}`: the references of Δm% for
        `mtl_keras.tuning.tune` or `MultiTaskScore`."""
        means = self.single_task_means()
        return {task: {self.headline[task][0]: means[task]} for task in self.tasks}

    def higher_is_better(self) -> dict:
        """`{task: {metric: higher is better}}` of the headline metrics."""
        return {task: {metric: higher}
                for task, (metric, higher) in self.headline.items()}

    def summaries(self) -> list[MethodSummary]:
        """The table rows: the single-task baselines, then each method."""
        references = self.single_task_means()
        rows = [self._summary(SINGLE_TASK, references)]
        rows += [self._summary(method, references) for method in self.methods]
        return rows

    def ranking(self) -> list[str]:
        """The methods that finished, best (lowest Δm%) first."""
        rows = [row for row in self.summaries()[1:] if not math.isnan(row.delta_m)]
        return [row.method for row in sorted(rows, key=lambda row: row.delta_m)]

    def seeds(self) -> list[int]:
        """The seeds of the records."""
        return sorted({r.seed for r in self.records})

    def metric_label(self, task: str) -> str:
        """A task's column title: `"<task> <metric>"`, `" (%)"` if in percent."""
        unit = " (%)" if self._percent(task) else ""
        return f"{task} {self.headline[task][0]}{unit}"

    def display_value(self, task: str, value: float) -> float:
        """A metric as shown: accuracies and IoUs in percent."""
        return 100.0 * value if self._percent(task) else value

    def to_markdown(self) -> str:
        """The results table in Markdown: one row per method, and Δm%."""
        return markdown.table(self)

    def plot(self, path: str | os.PathLike) -> pathlib.Path:
        """Draws the comparison to a PNG file (see `mtl_keras.experiments.plot`)."""
        return plot.draw(self, path)

    def _percent(self, task: str) -> bool:
        metric = self.headline[task][0]
        return metric in PERCENT_METRICS or metric.endswith("accuracy")

    def _ok(self, method: str) -> list[RunRecord]:
        return [r for r in self.records if r.method == method and r.error is None]

    def _summary(self, method: str, references: dict) -> MethodSummary:
        runs = self._ok(method)
        mean, std = {}, {}
        for task in self.tasks:
            values = [r.metrics[task] for r in runs if task in r.metrics]
            mean[task] = float(np.mean(values)) if values else float("nan")
            std[task] = float(np.std(values)) if values else float("nan")
        errors = tuple(f"seed {r.seed}: {r.error}" for r in self.records
                       if r.method == method and r.error is not None)
        return MethodSummary(
            method=method, mean=mean, std=std,
            num_seeds=len({r.seed for r in runs}),
            delta_m=self._delta_m(mean, references) if references else 0.0,
            seconds_per_epoch=_mean([r.seconds_per_epoch for r in runs]),
            errors=errors,
        )

    def _delta_m(self, mean: dict, references: dict) -> float:
        values = list(mean.values()) + list(references.values())
        if any(math.isnan(v) for v in values):
            return float("nan")
        directions = {task: higher for task, (_, higher) in self.headline.items()}
        return scores.delta_m(mean, references, higher_is_better=directions)


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
