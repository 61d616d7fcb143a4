"""The options of a comparison, grouped by what they are about.

`compare(..., **options)` takes any field of these dataclasses as a keyword;
`split_options` sorts the keywords into them and refuses unknown ones.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from mtl_keras import balancers


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """How every run trains.

    Args:
        epochs: training epochs of every run.
        batch_size: the batch size of data given as arrays.
        learning_rate: Adam's (initial) learning rate.
        curves: also score the test data after every epoch and keep the
            per-epoch metrics in each record.
    """

    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    curves: bool = False


@dataclasses.dataclass(frozen=True)
class SuiteOptions:
    """Which built-in suite data (see `mtl_keras.suites.load`)."""

    train_size: int | None = None
    test_size: int | None = None
    data_dir: str | os.PathLike | None = None
    architecture: str = "hard"
    protocol: str | None = None


@dataclasses.dataclass(frozen=True)
class RunLog:
    """Where finished runs are appended, and whether to resume from it.

    Args:
        log_path: a JSON lines file; each finished run is appended to it.
        resume: skip the runs already in `log_path` (trained with the same
            settings; other settings raise).
        extra_settings: more entries of the settings every logged run must
            share to be resumed.
    """

    log_path: str | os.PathLike | None = None
    resume: bool = False
    extra_settings: dict | None = None


@dataclasses.dataclass(frozen=True)
class Hooks:
    """Functions called while a comparison runs.

    Args:
        progress: called with one line per finished run; None for silence.
        on_record: called with the result so far after every finished run.
        before_run: called with `(method, seed)` before each run trains.
    """

    progress: Callable[[str], None] | None = print
    on_record: Callable | None = None
    before_run: Callable[[str, int], None] | None = None


@dataclasses.dataclass(frozen=True)
class MethodOverrides:
    """Methods trained otherwise than their name says; their names need not
    be registered.

    Args:
        method_loss_weights: `{method: {task: weight}}`: static weights and
            no balancer (e.g. tuned weights).
        method_balancers: `{method: function returning a balancer}` (e.g. a
            registered method with other arguments).
    """

    method_loss_weights: dict[str, dict] = dataclasses.field(default_factory=dict)
    method_balancers: dict[str, Callable[[], balancers.Balancer]] = (
        dataclasses.field(default_factory=dict))


_GROUPS = (TrainOptions, SuiteOptions, RunLog, Hooks, MethodOverrides)


def split_options(options: dict, groups: tuple = _GROUPS,
                  caller: str = "compare()") -> dict[type, Any]:
    """`{group class: instance}` from flat keywords: each keyword goes to the
    group (a dataclass of `groups`) with a field of its name; None for the
    two method dicts counts as empty.

    Raises:
        TypeError: a keyword is no field of any group.
    """
    fields = {f.name: group for group in groups
              for f in dataclasses.fields(group)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise TypeError(f"{caller} got unexpected keyword(s) {unknown}; it takes "
                        f"{sorted(fields)}.")
    grouped: dict[type, dict[str, Any]] = {group: {} for group in groups}
    for name, value in options.items():
        if name.startswith("method_") and value is None:
            continue
        grouped[fields[name]][name] = value
    return {group: group(**values) for group, values in grouped.items()}
