"""`RunRecord`: one trained model, scored on the test data."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np

#: The method name of the single-task baselines in records and tables.
SINGLE_TASK = "single-task"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One trained model: a method with one seed, scored on the test split.

    Args:
        method: the method name, or `SINGLE_TASK`.
        seed: the training seed.
        tasks: the tasks of this model (one for a single-task baseline).
        metrics: `{task: headline test metric}`; empty when the run failed.
        seconds_per_epoch: mean wall time of the training epochs.
        error: `"ExceptionType: message"` when training failed, else None.
        wall_seconds: the whole run: building, training and scoring.
        epoch_seconds: the training time of every epoch (the first one
            includes tracing the step function), without the per-epoch
            scoring on the test split.
        history: `{"<task>_<metric>" | "val_<task>_<metric>": [per epoch]}`,
            the headline metric on the training batches and on the test
            split after every epoch (learning curves); empty when not kept.

    Example:

    ```python
    record = RunRecord("ew", 0, ("a", "b"), {"a": 0.9, "b": 0.1}, 1.5)
    line = record.to_json({"epochs": 2})
    assert RunRecord.from_json(line) == (record, {"epochs": 2})
    ```
    """

    method: str
    seed: int
    tasks: tuple
    metrics: dict
    seconds_per_epoch: float
    error: str | None = None
    wall_seconds: float = float("nan")
    epoch_seconds: tuple = ()
    history: dict = dataclasses.field(default_factory=dict)

    def key(self) -> tuple:
        """`(method, seed, tasks)`: what identifies the run in a plan."""
        return (self.method, self.seed, tuple(self.tasks))

    def to_json(self, settings: dict) -> str:
        """One JSON line: the record's fields and the run `settings`."""
        return json.dumps({**dataclasses.asdict(self), "settings": settings})

    @classmethod
    def from_json(cls, line: str) -> tuple[RunRecord, dict]:
        """The record and settings of a line written by `to_json`."""
        fields = json.loads(line)
        settings = fields.pop("settings", {})
        fields["tasks"] = tuple(fields["tasks"])
        fields["epoch_seconds"] = tuple(fields.get("epoch_seconds", ()))
        return cls(**fields), settings


def steady_seconds(epoch_seconds: Sequence[float]) -> float:
    """Median epoch time without the first epoch (which traces the step
    function), or the only epoch's time."""
    times = list(epoch_seconds)
    if len(times) > 1:
        times = times[1:]
    return float(np.median(times)) if times else float("nan")
