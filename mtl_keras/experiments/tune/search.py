"""`search`: a KerasTuner search of task weights and methods."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import keras
import keras_tuner as kt

from mtl_keras import scores
from mtl_keras.experiments.options import split_options
from mtl_keras.experiments.tune.hypermodel import MultiTaskHyperModel
from mtl_keras.experiments.tune.options import CompileOptions, FitOptions, TunerOptions
from mtl_keras.experiments.tune.search_result import SearchResult
from mtl_keras.experiments.tune.space import SearchSpace

#: The tuners `search` knows, by name.
TUNERS = {
    "random": kt.RandomSearch,
    "grid": kt.GridSearch,
    "bayesian": kt.BayesianOptimization,
    "hyperband": kt.Hyperband,
}

_GROUPS = (SearchSpace, CompileOptions, TunerOptions, FitOptions)


def search(
    build_model: Callable,
    train_data: Any,
    validation_data: Any,
    losses: Mapping,
    metrics: Mapping | None = None,
    references: Mapping | None = None,
    higher_is_better: Mapping | None = None,
    objective: kt.Objective | str | None = None,
    seed: int | None = None,
    **options: Any,
) -> SearchResult:
    """Searches task weights and balancers with a KerasTuner tuner.

    Everything is checked before any training: the tuner name, the weights
    mode, the balancer names, that every task has a reference (Δm mode) and
    that the objective is a name the trials will log.

    Args:
        build_model: `build_model(hp) -> MultiTaskModel`, uncompiled.
        train_data: A `tf.data.Dataset` of `(x, {task: y})` batches, or a
            tuple `(x, y)` / `(x, y, sample_weight)` of arrays.
        validation_data: As for `keras.Model.fit`.
        losses: `{task: loss}`.
        metrics: `{task: [metrics]}` or a function returning it.
        references: Single-task values for Δm% (see `MultiTaskScore`), or
            `None` for the scale-free score.
        higher_is_better: Directions of the referenced metrics.
        objective: Override the objective: a `kt.Objective` or a log name
            (direction inferred for scores, losses and known metrics).
        seed: Seeds the tuner's sampling and every trial's initial weights.
        **options: fields of `SearchSpace` (`balancers`, `weights`,
            `weight_range`, `weight_step`: defaults to 10 for
            `tuner="grid"`), `CompileOptions` (`optimizer`, `learning_rate`,
            `compile_kwargs`), `TunerOptions` (`tuner`, `max_trials`,
            `directory`, `project_name`, `overwrite`, `tuner_kwargs`) and
            `FitOptions` (`epochs`, `callbacks`, `logdir`, `verbose`,
            `fit_kwargs`).

    Example:

    ```python
    result = mtl_keras.tuning.search(
        build_model, train_ds, val_ds, losses=losses, metrics=metrics,
        references={"cls": {"accuracy": 0.91}, "seg": {"miou": 0.62}},
        balancers=["static", "uw", "dwa", "cagrad"], weights="simplex",
        tuner="bayesian", max_trials=20, epochs=10, logdir="runs/tuning")
    print(result)
    ```
    """
    groups = split_options(options, _GROUPS, "search()")
    tuning, fitting = groups[TunerOptions], groups[FitOptions]
    tuner_class = _tuner_class(tuning.tuner)
    space = groups[SearchSpace]
    if space.weight_step is None and tuning.tuner == "grid":
        space = SearchSpace(space.weights, space.weight_range, 10.0, space.balancers)
    hypermodel = MultiTaskHyperModel(
        build_model, losses, metrics=metrics, references=references,
        higher_is_better=higher_is_better, seed=seed,
        **_fields(space), **_fields(groups[CompileOptions]))
    objective = _check_objective(objective, hypermodel, higher_is_better)
    search_tuner = _make_tuner(tuner_class, hypermodel, objective, seed, tuning,
                               fitting.epochs)
    callbacks = list(fitting.callbacks)
    if fitting.logdir is not None:
        callbacks.append(keras.callbacks.TensorBoard(fitting.logdir))
    search_tuner.search(
        *_fit_arrays(train_data), validation_data=validation_data,
        epochs=fitting.epochs, callbacks=callbacks, verbose=fitting.verbose,
        **dict(fitting.fit_kwargs or {}))
    return _result(search_tuner, hypermodel, objective)


def _fields(options) -> dict:
    return {name: getattr(options, name)
            for name in options.__dataclass_fields__}


def _make_tuner(tuner_class, hypermodel, objective, seed, tuning: TunerOptions,
                epochs: int):
    budget = ({"max_epochs": epochs} if tuning.tuner == "hyperband"
              else {"max_trials": tuning.max_trials})
    return tuner_class(
        hypermodel, objective=objective, seed=seed, directory=tuning.directory,
        project_name=tuning.project_name, overwrite=tuning.overwrite,
        **budget, **dict(tuning.tuner_kwargs or {}))


def _tuner_class(name: str):
    if name not in TUNERS:
        raise ValueError(f"Unknown tuner {name!r}: use one of {sorted(TUNERS)}.")
    return TUNERS[name]


def _check_objective(objective, hypermodel, higher_is_better) -> kt.Objective:
    if objective is None:
        return hypermodel.objective
    if not isinstance(objective, (str, kt.Objective)):
        raise ValueError(
            f"`objective` must be a kt.Objective or a log name; got {objective!r}."
        )
    name = objective if isinstance(objective, str) else objective.name
    produced = hypermodel.log_names()
    if name not in produced:
        # A tracker of the model itself? Build one (no training) to know.
        produced = hypermodel.log_names(hypermodel.build(kt.HyperParameters()))
    if name not in produced:
        raise ValueError(
            f"No callback logs the objective {name!r}: a trial logs "
            f"{sorted(produced)}."
        )
    if isinstance(objective, str):
        return kt.Objective(name, _direction(name, higher_is_better))
    return objective


def _direction(name: str, higher_is_better) -> str:
    """`"min"`/`"max"` for a log name: scores and losses are minimised;
    `<task>_<metric>` follows the metric's known direction."""
    metric = name.removeprefix("val_")
    if metric in ("delta_m", "geometric_mean_loss") or metric.endswith("loss"):
        return "min"
    parts = metric.split("_")
    for start in range(len(parts)):
        candidate = "_".join(parts[start:])
        if (isinstance(higher_is_better, dict) and candidate in higher_is_better
                or candidate in scores.DEFAULT_HIGHER_IS_BETTER):
            higher = scores.metric_direction("", candidate, higher_is_better)
            return "max" if higher else "min"
    raise ValueError(
        f"Cannot tell whether the objective {name!r} is to be minimised or "
        f"maximised: pass objective=kt.Objective({name!r}, 'min') (or 'max')."
    )


def _fit_arrays(train_data) -> tuple:
    """Positional `fit` arguments: a dataset, or arrays `(x, y[, w])`."""
    if isinstance(train_data, tuple):
        if len(train_data) not in (2, 3):
            raise ValueError(
                "train_data as a tuple must be (x, y) or (x, y, sample_weight); "
                f"got {len(train_data)} items."
            )
        return train_data
    return (train_data,)


def _result(tuner, hypermodel: MultiTaskHyperModel,
            objective: kt.Objective) -> SearchResult:
    trials = sorted(tuner.oracle.trials.values(), key=_trial_order)
    rows = [_trial_row(t) for t in trials]
    best_trials = tuner.oracle.get_best_trials(1)
    if not best_trials:
        raise RuntimeError(
            f"The search ran no successful trial ({len(rows)} trial(s): "
            f"{[r['status'] for r in rows]})."
        )
    best = best_trials[0]
    values = _active_values(best.hyperparameters)
    searched = bool(hypermodel.balancers)
    return SearchResult(
        objective=objective.name,
        best_score=float(best.score),
        best_hyperparameters=values,
        best_task_weights=hypermodel.task_weights_from_values(values),
        best_balancer=values.get("balancer") if searched else None,
        trials=rows,
        direction=objective.direction,
        tuner=tuner,
        best_method_config=hypermodel.method_config(values) if searched else {},
    )


def _trial_order(trial):
    trial_id = trial.trial_id
    return (0, int(trial_id), "") if trial_id.isdigit() else (1, 0, trial_id)


def _active_values(hp: kt.HyperParameters) -> dict:
    """The values of the active hyperparameters, plus the tuner's own
    (Hyperband's `tuner/epochs`, ...), which are values outside the space."""
    space = {h.name: h for h in hp.space}
    return {name: copy.copy(value) for name, value in hp.values.items()
            if name not in space or hp.is_active(space[name])}


def _trial_row(trial) -> dict:
    score = None if trial.score is None else float(trial.score)
    return {"trial": trial.trial_id, "status": trial.status, "score": score,
            **_active_values(trial.hyperparameters)}
