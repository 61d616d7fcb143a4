"""The figure of a comparison (`CompareResult.plot`)."""

from __future__ import annotations

import math
import os
import pathlib

from mtl_keras.experiments.record import SINGLE_TASK

_MARKERS = "osD^vPX<>"


def draw(result, path: str | os.PathLike) -> pathlib.Path:
    """Draws a comparison to a PNG file.

    Two tasks: one metric against the other, a point per method with error
    bars (std over seeds), the single-task means as dashed lines. More
    tasks: a bar chart of Δm% per method.

    Args:
        result: a `CompareResult`.
        path: the PNG file (its folder is created).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Plotting needs matplotlib: pip install matplotlib (or, from a clone of "
            "mtl_keras, pip install '.[plot]')."
        ) from error

    figure = Figure(figsize=(7, 5.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    rows = [
        row
        for row in result.summaries()
        if not any(math.isnan(v) for v in row.mean.values())
    ]
    if len(result.tasks) == 2:
        _scatter(result, axes, rows)
    else:
        _bars(axes, rows)
    axes.set_title(
        f"{result.data_name}: {result.settings.get('epochs', '?')} "
        f"epochs, {len(result.seeds())} seed(s)"
    )
    figure.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def matplotlib_colors(count: int) -> list:
    """`count` distinct colours (matplotlib's tab20 when tab10 runs out)."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(index % palette.N) for index in range(count)]


def _scatter(result, axes, rows) -> None:
    first, second = result.tasks
    colors = matplotlib_colors(len(rows))
    for index, row in enumerate(rows):
        x = result.display_value(first, row.mean[first])
        y = result.display_value(second, row.mean[second])
        if row.method == SINGLE_TASK:
            axes.axvline(x, linestyle="--", color="gray", linewidth=1)
            axes.axhline(
                y, linestyle="--", color="gray", linewidth=1, label="single-task"
            )
            continue
        axes.errorbar(
            x,
            y,
            xerr=result.display_value(first, row.std[first]),
            yerr=result.display_value(second, row.std[second]),
            fmt=_MARKERS[index % len(_MARKERS)],
            color=colors[index],
            capsize=3,
            elinewidth=0.8,
            alpha=0.8,
        )
        axes.annotate(
            row.method, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    axes.margins(0.1)  # room for the labels of the outermost points
    axes.set_xlabel(result.metric_label(first))
    axes.set_ylabel(result.metric_label(second))
    if any(row.method == SINGLE_TASK for row in rows):
        axes.legend(loc="best")


def _bars(axes, rows) -> None:
    rows = [row for row in rows if row.method != SINGLE_TASK]
    axes.bar([row.method for row in rows], [row.delta_m for row in rows])
    axes.axhline(0.0, color="gray", linestyle="--", linewidth=1)
    axes.set_ylabel("Δm% vs single-task (lower is better)")
    axes.tick_params(axis="x", rotation=45)
