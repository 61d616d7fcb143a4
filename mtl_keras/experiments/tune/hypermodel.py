"""`MultiTaskHyperModel`: a `kt.HyperModel` that searches task weights and the
method, scored on all tasks at once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
import keras_tuner as kt

from mtl_keras import engine, methods
from mtl_keras.callbacks import MultiTaskScore
from mtl_keras.callbacks.multi_task_score import score_name
from mtl_keras.experiments.method_parts import method_parts
from mtl_keras.experiments.options import split_options
from mtl_keras.experiments.tune.options import CompileOptions
from mtl_keras.experiments.tune.space import (
    SearchSpace,
    balancer_space,
    grid_default,
    is_callback_method,
    simplex_weights,
)
from mtl_keras.model import MultiTaskModel
from mtl_keras.scores import metric_name
from mtl_keras.suites.parts import as_list, clone_metric


class MultiTaskHyperModel(kt.HyperModel):
    """A `kt.HyperModel` that searches task weights and the balancer.

    The user's `build_model(hp)` returns an uncompiled `MultiTaskModel` (and
    may declare its own hyperparameters); this class compiles it with the
    searched task weights and balancer, and trains it with a
    `MultiTaskScore` callback (first in the callback list, so that the
    tuner, `EarlyStopping` and `TensorBoard` all read the score) plus the
    callbacks of a callback method (`"dwa"`) when it is chosen. Callbacks
    are created inside `fit` for every trial and reach the model only
    through `self.model`, since KerasTuner deep-copies callbacks per trial.

    Search space (hyperparameter names in brackets), for tasks t₁ < … < t_K:

    - `weights="log_uniform"`: each task weight `w_t` log-uniform in
      `weight_range` (`weight_<task>`, default 1). The overall scale is
      free too, which an adaptive optimizer mostly ignores.
    - `weights="simplex"`: the scale is fixed. The first K−1 tasks get a
      ratio `r_t` log-uniform in `weight_range` to the last task
      (`weight_ratio_<task>`, default 1; `r_{t_K} = 1`), and
      `w = K · r / Σ r` — normalised exponentials of uniform draws, i.e. a
      point of the simplex scaled by K so that equal weights are all 1.
    - `weights=None`: every weight 1.
    - `balancers=[...]`: the method name (`balancer`), and under it each
      method's hyperparameters (`<method>_<argument>`, e.g.
      `dwa_temperature`, `gradnorm_alpha`, `cagrad_c`, `uw_form`,
      `famo_gamma`, `gradnorm_learning_rate`). `"dwa"` trains with static
      weights and the `DynamicWeightAverage` callback; since DWA writes the
      task weights itself, the weight hyperparameters are inactive when it
      is chosen.

    The objective is always lower-is-better: `kt.Objective("val_delta_m",
    "min")` with `references`, else `kt.Objective("val_geometric_mean_loss",
    "min")` (see `mtl_keras.scores`).

    Args:
        build_model: `build_model(hp) -> MultiTaskModel`, uncompiled.
        losses: `{task: loss}`, as for `MultiTaskModel.compile`. Its keys are
            the tasks.
        metrics: `{task: [metrics]}`, or a function returning such a dict
            (called once per trial; metric objects in a dict are cloned per
            trial).
        references: `{task: {metric: single_task_value}}` for Δm%, or
            `None` for the scale-free score.
        higher_is_better: Directions of the referenced metrics (see
            `mtl_keras.scores.delta_m`).
        seed: If set, `keras.utils.set_random_seed(seed)` runs before every
            build, so all trials start from the same initial weights.
        name: the hypermodel's name.
        **options: fields of `SearchSpace` (`weights`, `weight_range`,
            `weight_step`, `balancers`) and `CompileOptions` (`optimizer`,
            `learning_rate`, `compile_kwargs`).

    Example:

    ```python
    def build_model(hp):
        return mtl_keras.architectures.shapes_network(
            width=hp.Choice("width", [16, 32]))

    hypermodel = MultiTaskHyperModel(
        build_model, losses=mtl_keras.suites.shapes.LOSSES,
        metrics=mtl_keras.suites.shapes.metrics, weights="simplex",
        balancers=["static", "uw", "dwa"])
    tuner = kt.RandomSearch(hypermodel, objective=hypermodel.objective,
                            max_trials=10)
    tuner.search(train_ds, validation_data=val_ds, epochs=5)
    ```
    """

    def __init__(self, build_model: Callable, losses: Mapping,
                 metrics: Mapping | None = None,
                 references: Mapping | None = None,
                 higher_is_better: Mapping | None = None,
                 seed: int | None = None, name: str | None = None,
                 **options: Any) -> None:
        super().__init__(name=name)
        if not isinstance(losses, Mapping) or not losses:
            raise ValueError(f"`losses` must be a dict {{task: loss}}; got {losses!r}.")
        groups = split_options(
            options, (SearchSpace, CompileOptions), "MultiTaskHyperModel"
        )
        self.space = groups[SearchSpace].checked()
        self.compile_options = groups[CompileOptions]
        self.build_model = build_model
        self.losses = dict(losses)
        self.tasks = sorted(self.losses)
        self.metrics = metrics
        self.metric_names = _metric_names(self._fresh_metrics(), self.tasks)
        self.references = references
        self.higher_is_better = higher_is_better
        self._check_references()
        self.seed = seed

    @property
    def weights(self) -> str | None:
        """The weights mode (`SearchSpace.weights`)."""
        return self.space.weights

    @property
    def balancers(self) -> tuple[str, ...] | None:
        """The method names searched (`SearchSpace.balancers`)."""
        return self.space.balancers

    # ------------------------------------------------------------ objective

    @property
    def objective(self) -> kt.Objective:
        """The tuner objective: the `MultiTaskScore` value, minimised."""
        return kt.Objective(score_name(self.references is not None), "min")

    def log_names(self, model: keras.Model | None = None) -> set[str]:
        """The log names a trial's history will have.

        Without `model`, those this class knows of: the loss, the per-task
        losses and compiled metrics (and their `val_` forms), and the
        training-only extras of `MultiTaskModel.extra_log_names` (task
        weights, `skipped_steps`, `balanced_loss` and the gradient
        diagnostics of the balancers searched; no `val_` form), and the
        score. With a compiled `model` (from `build`), also the names of its
        own metric trackers.
        """
        names = {"loss"}
        for task in self.tasks:
            names.add(f"{task}_loss")
            names |= {f"{task}_{m}" for m in self.metric_names[task]}
        names |= {f"val_{n}" for n in names}
        extras = {f"{task}_weight" for task in self.tasks} | {"skipped_steps"}
        if self.balancers:
            extras.add("balanced_loss")
        if any(methods.get(b).kind == "gradient"
               for b in self.balancers or ()):
            extras |= set(engine.diagnostic_names(self.tasks))
        if model is not None:
            extras |= set(model.extra_log_names())
            own = {m.name for m in model.metrics} - {
                "compile_metrics", "task_losses", "task_weights",
                "gradient_diagnostics", *extras}
            names |= own | {f"val_{n}" for n in own}
        return names | extras | {self.objective.name}

    # ---------------------------------------------------------- search space

    def build(self, hp: kt.HyperParameters) -> MultiTaskModel:
        method = self._declare_method(hp)
        configs = self._declare_method_params(hp)
        task_weights = self._declare_weights(hp)
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        model = self.build_model(hp)
        self._check_model(model)
        balancer = None
        if method is not None:
            balancer = method_parts(method, configs.get(method)).balancer
        model.compile(
            optimizer=self._make_optimizer(hp),
            loss=dict(self.losses),
            loss_weights=task_weights,
            metrics=self._fresh_metrics(),
            balancer=balancer,
            **dict(self.compile_options.compile_kwargs or {}),
        )
        return model

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args: Any,
            **kwargs: Any) -> Any:
        """`model.fit` with the score (and the method's) callbacks put first."""
        callbacks = list(kwargs.pop("callbacks", None) or [])
        first = [MultiTaskScore(self.references, self.higher_is_better)]
        method = self._chosen_method(hp)
        if method is not None:
            config = self._method_config(hp, method)
            first = [*method_parts(method, config).callbacks, *first]
        return model.fit(*args, callbacks=first + callbacks, **kwargs)

    def task_weights_from_values(self, values: Mapping) -> dict[str, float] | None:
        """The task weights a trial trained with, from its hp values.

        `None` when a callback method (DWA) set them during training.
        """
        if self.balancers and is_callback_method(values.get("balancer")):
            return None
        if self.weights == "log_uniform":
            return {t: float(values[f"weight_{t}"]) for t in self.tasks}
        if self.weights == "simplex":
            ratios = [float(values[f"weight_ratio_{t}"]) for t in self.tasks[:-1]]
            return simplex_weights([*ratios, 1.0], self.tasks)
        return {t: 1.0 for t in self.tasks}

    def method_config(self, values: Mapping) -> dict:
        """The constructor arguments of the chosen method, from hp values."""
        method = values.get("balancer")
        return {
            argument: values[f"{method}_{argument}"]
            for argument in balancer_space(method)
            if f"{method}_{argument}" in values
        }

    def _method_config(self, hp, method: str) -> dict | None:
        config = {
            argument: hp.get(f"{method}_{argument}")
            for argument in balancer_space(method)
        }
        return config or None

    def _declare_method(self, hp) -> str | None:
        if not self.balancers:
            return None
        return hp.Choice("balancer", list(self.balancers))

    def _chosen_method(self, hp) -> str | None:
        return hp.get("balancer") if self.balancers else None

    def _declare_method_params(self, hp) -> dict[str, dict]:
        """Declares every method's hyperparameters, each in its own
        conditional scope (so the tuner sees them all), and returns their
        values `{method: config}` (inactive ones hold `None`)."""
        configs = {}
        for name in self.balancers or ():
            with hp.conditional_scope("balancer", [name]):
                configs[name] = {
                    argument: declare(hp, f"{name}_{argument}")
                    for argument, declare in balancer_space(name).items()
                }
        return configs

    def _declare_weights(self, hp) -> dict[str, float] | None:
        if self.weights is None:
            return None
        weighted = [b for b in self.balancers or () if not is_callback_method(b)]
        if self.balancers and not weighted:
            return None
        if self.balancers and len(weighted) < len(self.balancers):
            with hp.conditional_scope("balancer", weighted):
                return self._declare_weight_values(hp)
        return self._declare_weight_values(hp)

    def _declare_weight_values(self, hp) -> dict[str, float] | None:
        low, high = self.space.weight_range
        step = self.space.weight_step
        default = grid_default(low, high, step)

        def declare(name):
            return hp.Float(name, low, high, step=step, sampling="log", default=default)

        if self.weights == "log_uniform":
            values = {t: declare(f"weight_{t}") for t in self.tasks}
            if None in values.values():  # inactive: DWA sets the weights
                return None
            return values
        ratios = [declare(f"weight_ratio_{t}") for t in self.tasks[:-1]]
        if None in ratios:
            return None
        return simplex_weights([*ratios, 1.0], self.tasks)

    # ------------------------------------------------------------- helpers

    def _fresh_metrics(self):
        if self.metrics is None:
            return None
        metrics = self.metrics() if callable(self.metrics) else self.metrics
        if not isinstance(metrics, Mapping):
            raise ValueError(
                "`metrics` must be a dict {task: [metrics]} or a function "
                f"returning one; got {type(metrics).__name__}."
            )
        return {
            task: [clone_metric(m) for m in as_list(task_metrics)]
            for task, task_metrics in metrics.items()
        }

    def _make_optimizer(self, hp):
        optimizer = self.compile_options.optimizer
        if optimizer is None:
            return keras.optimizers.Adam(self.compile_options.learning_rate)
        if isinstance(optimizer, str):
            return keras.optimizers.get(optimizer)
        if isinstance(optimizer, keras.optimizers.Optimizer):
            return optimizer.__class__.from_config(optimizer.get_config())
        return optimizer(hp)

    def _check_model(self, model) -> None:
        if not isinstance(model, MultiTaskModel):
            raise ValueError(
                "build_model(hp) must return an uncompiled mtl_keras."
                f"MultiTaskModel; got {type(model).__name__}."
            )
        if sorted(model.task_names) != self.tasks:
            raise ValueError(
                f"build_model(hp) returned a model with tasks {model.task_names}, "
                f"but `losses` names {self.tasks}."
            )

    def _check_references(self) -> None:
        if self.references is None:
            return
        score = MultiTaskScore(self.references, self.higher_is_better)
        score.check_tasks(self.tasks)
        for task, task_refs in score.references.items():
            known = ["loss", *self.metric_names[task]]
            unknown = sorted(set(task_refs) - set(known))
            if unknown:
                raise ValueError(
                    f"references[{task!r}] scores {unknown}, but task {task!r} "
                    f"logs only {known}: add the metric to `metrics` or fix "
                    "the name."
                )


def _metric_names(metrics, tasks) -> dict[str, list[str]]:
    """The log names Keras gives each task's metrics (after `<task>_`)."""
    names = {task: [] for task in tasks}
    for task, task_metrics in (metrics or {}).items():
        if task not in names:
            raise ValueError(
                f"`metrics` names task {task!r}, which `losses` does not have "
                f"(tasks: {tasks})."
            )
        names[task] = [metric_name(m) for m in as_list(task_metrics)]
    return names
