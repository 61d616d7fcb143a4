"""The option groups of a search (besides `SearchSpace`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class CompileOptions:
    """How every trial's model is compiled.

    Args:
        optimizer: None (Adam with `learning_rate`), a name, an optimizer
            (cloned per trial), or a function `optimizer(hp)`.
        learning_rate: Adam's learning rate when `optimizer` is None.
        compile_kwargs: extra `compile` arguments (`jit_compile`, ...).
    """

    optimizer: object = None
    learning_rate: float = 1e-3
    compile_kwargs: Mapping | None = None


@dataclasses.dataclass(frozen=True)
class TunerOptions:
    """Which KerasTuner tuner, its budget and where it keeps the trials.

    Args:
        tuner: `"random"`, `"grid"`, `"bayesian"` or `"hyperband"`.
        max_trials: trials to run (Hyperband derives them from `epochs`;
            None for grid runs the whole grid).
        directory: where KerasTuner keeps the trials.
        project_name: the sub-folder of this search.
        overwrite: False resumes the search saved in `directory`.
        tuner_kwargs: extra tuner arguments (`executions_per_trial`, ...).
    """

    tuner: str = "random"
    max_trials: int | None = 10
    directory: str = "mtl_tuning"
    project_name: str = "search"
    overwrite: bool = False
    tuner_kwargs: Mapping | None = None


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """How every trial trains.

    Args:
        epochs: epochs per trial (Hyperband's `max_epochs`).
        callbacks: extra Keras callbacks (deep-copied for every trial).
        logdir: if given, a `keras.callbacks.TensorBoard` logs each trial to
            `logdir/<trial_id>/execution0`, hyperparameters in HParams.
        verbose: fit and tuner verbosity.
        fit_kwargs: extra `fit` arguments (`batch_size`, ...).
    """

    epochs: int = 10
    callbacks: Sequence = ()
    logdir: str | None = None
    verbose: int = 1
    fit_kwargs: Mapping | None = None
