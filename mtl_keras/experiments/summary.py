"""`MethodSummary`: one row of a comparison table."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class MethodSummary:
    """One table row: a method's test metrics over seeds.

    Args:
        method: the method name, or `SINGLE_TASK`.
        mean: `{task: mean headline metric}` over the seeds.
        std: `{task: population std}` over the seeds (0 for one seed).
        num_seeds: the seeds that finished.
        delta_m: Δm% of the means against the single-task means (0 for the
            single-task row).
        seconds_per_epoch: the mean of the runs' steady epoch times.
        errors: `"seed <s>: <error>"` of every failed run.
    """

    method: str
    mean: dict
    std: dict
    num_seeds: int
    delta_m: float
    seconds_per_epoch: float
    errors: tuple
