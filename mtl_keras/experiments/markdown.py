"""The Markdown table of a comparison (`CompareResult.to_markdown`)."""

from __future__ import annotations

import math

from mtl_keras.experiments.summary import MethodSummary


def table(result) -> str:
    """One row per method (the single-task baselines first): each task's
    headline metric as mean ± std over seeds, Δm%, seconds per epoch and
    seeds; failed runs listed below the table.

    Args:
        result: a `CompareResult`.
    """
    header = ["method", *(result.metric_label(t) for t in result.tasks),
              "Δm% ↓", "s/epoch", "seeds"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    rows = result.summaries()
    lines += ["| " + " | ".join(_cells(result, row)) + " |" for row in rows]
    failures = [(row.method, error) for row in rows for error in row.errors]
    if failures:
        lines += ["", "Failed runs:"]
        lines += [f"- {method}, {error}" for method, error in failures]
    return "\n".join(lines)


def _cells(result, row: MethodSummary) -> list[str]:
    cells = [row.method]
    for task in result.tasks:
        digits = 2 if result.display_value(task, 1.0) == 100.0 else 4
        mean = result.display_value(task, row.mean[task])
        std = result.display_value(task, row.std[task])
        cells.append("–" if math.isnan(mean)
                     else f"{mean:.{digits}f} ± {std:.{digits}f}")
    cells.append("–" if math.isnan(row.delta_m) else f"{row.delta_m:+.2f}")
    cells.append("–" if math.isnan(row.seconds_per_epoch)
                 else f"{row.seconds_per_epoch:.1f}")
    cells.append(str(row.num_seeds) + (" (failed)" if row.errors else ""))
    return cells


def describe(record, result) -> str:
    """The progress line of one finished run."""
    what = f"{record.method} ({','.join(record.tasks)}), seed {record.seed}"
    if record.error is not None:
        return f"{what}: FAILED {record.error}"
    values = ", ".join(
        f"{task} {result.headline[task][0]} "
        f"{result.display_value(task, value):.4g}"
        for task, value in record.metrics.items()
    )
    return f"{what}: {record.seconds_per_epoch:.1f} s/epoch, test {values}"
