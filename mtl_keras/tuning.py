"""KerasTuner search over task weights and balancers, scored on all tasks.

`MultiTaskHyperModel` wraps a user function `build_model(hp)` that returns
an uncompiled `MultiTaskModel` and adds to its search space:

- the task weights (`weights="log_uniform"`, `"simplex"` or `None`);
- the balancer, chosen by name among `balancers`, with each balancer's own
  hyperparameters (DWA temperature, GradNorm α, CAGrad c, UW form, FAMO γ,
  the learning rate of learned weights where the class takes one).

Every trial is scored by the combined validation objective of
`mtl_keras.callbacks.MultiTaskScore` (Δm% against single-task references, or
the scale-free geometric mean of the task losses), so any KerasTuner tuner
ranks trials on all tasks at once. `search` runs the whole thing and returns
a `SearchResult`.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence

import keras
import keras_tuner as kt

from mtl_keras import balancers as balancers_lib
from mtl_keras import engine
from mtl_keras import metrics as metrics_lib
from mtl_keras.balancers.base import GradientBalancer
from mtl_keras.callbacks import DynamicWeightAverage, MultiTaskScore
from mtl_keras.callbacks.multi_task_score import score_name
from mtl_keras.model import MultiTaskModel

#: The ways task weights can be searched.
WEIGHT_MODES = ("log_uniform", "simplex", None)

#: The tuners `search` knows, by name.
TUNERS = {
    "random": kt.RandomSearch,
    "grid": kt.GridSearch,
    "bayesian": kt.BayesianOptimization,
    "hyperband": kt.Hyperband,
}

#: Balancer names that are not registered balancers but epoch-level callbacks.
CALLBACK_BALANCERS = ("dwa",)

# Each balancer's own hyperparameters: {name: {constructor argument: declare}},
# where `declare(hp, hp_name)` declares it. A constructor that takes
# `learning_rate` (the learned weights' step size) gets it searched too.
_BALANCER_SPACE: dict[str, dict[str, Callable]] = {
    "dwa": {"temperature": lambda hp, name: hp.Float(
        name, 0.5, 5.0, sampling="log", default=2.0)},
    "gradnorm": {"alpha": lambda hp, name: hp.Float(name, 0.1, 3.0, default=1.5)},
    "cagrad": {"c": lambda hp, name: hp.Float(name, 0.1, 0.9, default=0.4)},
    "uw": {"form": lambda hp, name: hp.Choice(
        name, ["standard", "kendall_keras", "positive"])},
    "famo": {"gamma": lambda hp, name: hp.Float(
        name, 1e-4, 1e-2, sampling="log", default=1e-3)},
}


def _learning_rate_space(hp, name):
    return hp.Float(name, 1e-3, 1e-1, sampling="log", default=0.025)


class MultiTaskHyperModel(kt.HyperModel):
    """A `kt.HyperModel` that searches task weights and the balancer.

    The user's `build_model(hp)` returns an uncompiled `MultiTaskModel` (and
    may declare its own hyperparameters); this class compiles it with the
    searched task weights and balancer, and trains it with a
    `MultiTaskScore` callback (first in the callback list, so that the
    tuner, `EarlyStopping` and `TensorBoard` all read the score) plus a
    `DynamicWeightAverage` callback when `"dwa"` is chosen. Callbacks are
    created inside `fit` for every trial and reach the model only through
    `self.model`, since KerasTuner deep-copies callbacks per trial.

    Search space (hyperparameter names in brackets), for tasks t₁ < … < t_K:

    - `weights="log_uniform"`: each task weight `w_t` log-uniform in
      `weight_range` (`weight_<task>`, default 1). The overall scale is
      free too, which an adaptive optimizer mostly ignores.
    - `weights="simplex"`: the scale is fixed. The first K−1 tasks get a
      ratio `r_t` log-uniform in `weight_range` to the last task
      (`weight_ratio_<task>`, default 1; `r_{t_K} = 1`), and
      `w = K · r / Σ r` — normalised exponentials of uniform draws
      (`r = exp(u)`, u uniform in `log(weight_range)`), i.e. a point of
      the simplex scaled by K so that equal weights are all 1.
    - `weights=None`: every weight 1.
    - `balancers=[...]`: the balancer name (`balancer`), and under it each
      balancer's hyperparameters (`<balancer>_<argument>`, e.g.
      `dwa_temperature`, `gradnorm_alpha`, `cagrad_c`, `uw_form`,
      `famo_gamma`, `gradnorm_learning_rate`). `"dwa"` trains with static
      weights and the `DynamicWeightAverage` callback; since DWA writes the
      task weights itself, the weight hyperparameters are inactive when it
      is chosen.

    The objective is always lower-is-better: `kt.Objective("val_delta_m",
    "min")` with `references`, else `kt.Objective("val_geometric_mean_loss",
    "min")` (see `mtl_keras.metrics`).

    Args:
        build_model: `build_model(hp) -> MultiTaskModel`, uncompiled.
        losses: `{task: loss}`, as for `MultiTaskModel.compile`. Its keys are
            the tasks.
        metrics: `{task: [metrics]}`, or a function returning such a dict
            (called once per trial; metric objects in a dict are cloned per
            trial).
        optimizer: `None` (Adam with `learning_rate`), a name, an optimizer
            (cloned per trial), or a function `optimizer(hp)`.
        learning_rate: The Adam learning rate when `optimizer` is `None`.
        weights: `"log_uniform"`, `"simplex"` or `None` (see above).
        weight_range: `(low, high)` of the weights (or ratios), default
            `(1e-2, 1e2)`.
        weight_step: Multiplicative step of the weight grid (`10` gives
            0.01, 0.1, 1, 10, 100). `None`: continuous; `GridSearch` then
            takes KerasTuner's 10 evenly spaced values per weight.
        balancers: Balancer names to choose from (see
            `mtl_keras.balancers.available()`, plus `"dwa"`), or `None` to
            compile without a balancer.
        references: `{task: {metric: single_task_value}}` for Δm%, or
            `None` for the scale-free score.
        higher_is_better: Directions of the referenced metrics (see
            `mtl_keras.metrics.delta_m`).
        seed: If set, `keras.utils.set_random_seed(seed)` runs before every
            build, so all trials start from the same initial weights.
        compile_kwargs: Extra `compile` arguments (`jit_compile`, ...).

    Example:

    ```python
    def build_model(hp):
        return mtl_keras.architectures.shapes_network(
            width=hp.Choice("width", [16, 32]))

    hypermodel = MultiTaskHyperModel(
        build_model, losses=mtl_keras.demo.SHAPES_LOSSES,
        metrics=mtl_keras.demo.shapes_metrics, weights="simplex",
        balancers=["static", "uw", "dwa"])
    tuner = kt.RandomSearch(hypermodel, objective=hypermodel.objective,
                            max_trials=10)
    tuner.search(train_ds, validation_data=val_ds, epochs=5)
    ```
    """

    def __init__(
        self,
        build_model: Callable,
        losses: Mapping,
        metrics=None,
        optimizer=None,
        learning_rate: float = 1e-3,
        weights: str | None = "log_uniform",
        weight_range: tuple[float, float] = (1e-2, 1e2),
        weight_step: float | None = None,
        balancers: Sequence[str] | None = None,
        references: Mapping | None = None,
        higher_is_better=None,
        seed: int | None = None,
        compile_kwargs: Mapping | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        if not isinstance(losses, Mapping) or not losses:
            raise ValueError(
                f"`losses` must be a dict {{task: loss}}; got {losses!r}."
            )
        self.build_model = build_model
        self.losses = dict(losses)
        self.tasks = sorted(self.losses)
        self.metrics = metrics
        self.metric_names = _metric_names(self._fresh_metrics(), self.tasks)
        self.optimizer = optimizer
        self.learning_rate = float(learning_rate)
        self.weights = _check_weight_mode(weights)
        self.weight_range = _check_weight_range(weight_range)
        self.weight_step = weight_step
        self.balancers = _check_balancers(balancers)
        self.references = references
        self.higher_is_better = higher_is_better
        self._check_references()
        self.seed = seed
        self.compile_kwargs = dict(compile_kwargs or {})

    # ------------------------------------------------------------ objective

    @property
    def objective(self) -> kt.Objective:
        """The tuner objective: the `MultiTaskScore` value, minimised."""
        return kt.Objective(score_name(self.references is not None), "min")

    def log_names(self, model=None) -> set[str]:
        """The log names a trial's history will have.

        Without `model`, those this class knows of: the loss, the per-task
        losses, weights and compiled metrics (and their `val_` forms), the
        gradient diagnostics of gradient balancers, and the score. With a
        compiled `model` (from `build`), also the names of its own metric
        trackers.
        """
        per_task = set()
        for task in self.tasks:
            per_task |= {f"{task}_loss", f"{task}_weight"}
            per_task |= {f"{task}_{m}" for m in self.metric_names[task]}
        names = {"loss", *per_task}
        if any(_is_gradient_balancer(b) for b in self.balancers or ()):
            names |= set(engine.diagnostic_names(self.tasks))
        if model is not None:
            names |= {m.name for m in model.metrics} - {"compile_metrics"}
        return names | {f"val_{n}" for n in names} | {self.objective.name}

    # ---------------------------------------------------------- search space

    def build(self, hp: kt.HyperParameters) -> MultiTaskModel:
        balancer_name = self._declare_balancer(hp)
        balancer_configs = self._declare_balancer_params(hp)
        task_weights = self._declare_weights(hp)
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        model = self.build_model(hp)
        self._check_model(model)
        model.compile(
            optimizer=self._make_optimizer(hp),
            loss=dict(self.losses),
            loss_weights=task_weights,
            metrics=self._fresh_metrics(),
            balancer=_make_balancer(balancer_name, balancer_configs.get(balancer_name)),
            **self.compile_kwargs,
        )
        return model

    def fit(self, hp: kt.HyperParameters, model, *args, **kwargs):
        """`model.fit` with the score (and DWA) callbacks put first."""
        callbacks = list(kwargs.pop("callbacks", None) or [])
        first = [MultiTaskScore(self.references, self.higher_is_better)]
        if self._chosen_balancer(hp) == "dwa":
            first.insert(0, DynamicWeightAverage(hp.get("dwa_temperature")))
        return model.fit(*args, callbacks=first + callbacks, **kwargs)

    def task_weights_from_values(self, values: Mapping) -> dict[str, float] | None:
        """The task weights a trial trained with, from its hp values.

        `None` when DWA set them during training.
        """
        if self.balancers and values.get("balancer") in CALLBACK_BALANCERS:
            return None
        if self.weights == "log_uniform":
            return {t: float(values[f"weight_{t}"]) for t in self.tasks}
        if self.weights == "simplex":
            ratios = [float(values[f"weight_ratio_{t}"]) for t in self.tasks[:-1]]
            return simplex_weights([*ratios, 1.0], self.tasks)
        return {t: 1.0 for t in self.tasks}

    def _declare_balancer(self, hp) -> str | None:
        if not self.balancers:
            return None
        return hp.Choice("balancer", list(self.balancers))

    def _chosen_balancer(self, hp) -> str | None:
        return hp.get("balancer") if self.balancers else None

    def _declare_balancer_params(self, hp) -> dict[str, dict]:
        """Declares every balancer's hyperparameters, each in its own
        conditional scope (so the tuner sees them all), and returns their
        values `{balancer: config}` (inactive ones hold `None`)."""
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
        weighted = [b for b in self.balancers or () if b not in CALLBACK_BALANCERS]
        if self.balancers and not weighted:
            return None
        if self.balancers and len(weighted) < len(self.balancers):
            with hp.conditional_scope("balancer", weighted):
                return self._declare_weight_values(hp)
        return self._declare_weight_values(hp)

    def _declare_weight_values(self, hp) -> dict[str, float] | None:
        low, high = self.weight_range
        default = _grid_default(low, high, self.weight_step)

        def declare(name):
            return hp.Float(name, low, high, step=self.weight_step, sampling="log",
                            default=default)

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
        return {task: [_clone_metric(m) for m in _as_list(task_metrics)]
                for task, task_metrics in metrics.items()}

    def _make_optimizer(self, hp):
        if self.optimizer is None:
            return keras.optimizers.Adam(self.learning_rate)
        if isinstance(self.optimizer, str):
            return keras.optimizers.get(self.optimizer)
        if isinstance(self.optimizer, keras.optimizers.Optimizer):
            return self.optimizer.__class__.from_config(self.optimizer.get_config())
        return self.optimizer(hp)

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


def simplex_weights(ratios: Sequence[float], tasks: Sequence[str]) -> dict[str, float]:
    """`w = K · r / Σ r`: positive ratios to task weights that sum to K."""
    total = sum(ratios)
    return {t: len(tasks) * r / total for t, r in zip(tasks, ratios, strict=True)}


def balancer_space(name: str) -> dict[str, Callable]:
    """The searched constructor arguments of a balancer (or `"dwa"`).

    Returns `{argument: declare(hp, hp_name)}`; the argument names are
    checked against the class constructor.
    """
    space = dict(_BALANCER_SPACE.get(name, {}))
    if name in CALLBACK_BALANCERS:
        return space
    cls = type(balancers_lib.get(name))
    parameters = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(space) - set(parameters))
    if unknown:
        raise ValueError(
            f"The search space of balancer {name!r} names {unknown}, which "
            f"{cls.__name__} does not take (it takes {sorted(parameters)})."
        )
    if "learning_rate" in parameters:
        space["learning_rate"] = _learning_rate_space
    return space


@dataclasses.dataclass
class SearchResult:
    """What `search` returns.

    Attributes:
        objective: The objective name (`val_delta_m`, ...).
        best_score: The best trial's score: its best epoch's objective value
            (KerasTuner's convention).
        best_hyperparameters: The best trial's active hyperparameter values.
        best_task_weights: Its task weights, `{task: w}` (`None` if DWA set
            them during training).
        best_balancer: Its balancer name (`None` when none was searched).
        trials: One row per trial, in trial order: `trial`, `status`,
            `score` and the active hyperparameter values.
        direction: `"min"` (the scores) or `"max"` (an objective such as
            `val_cls_accuracy`).
        tuner: The KerasTuner tuner (`tuner.get_best_models()`, ...).
    """

    objective: str
    best_score: float
    best_hyperparameters: dict
    best_task_weights: dict | None
    best_balancer: str | None
    trials: list[dict]
    direction: str = "min"
    tuner: kt.Tuner | None = dataclasses.field(default=None, repr=False)

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


def search(
    build_model: Callable,
    train_data,
    validation_data,
    losses: Mapping,
    metrics=None,
    references: Mapping | None = None,
    higher_is_better=None,
    tuner: str = "random",
    max_trials: int = 10,
    epochs: int = 10,
    directory: str = "mtl_tuning",
    project_name: str = "search",
    seed: int | None = None,
    overwrite: bool = False,
    balancers: Sequence[str] | None = None,
    weights: str | None = "log_uniform",
    logdir: str | None = None,
    objective=None,
    optimizer=None,
    learning_rate: float = 1e-3,
    weight_range: tuple[float, float] = (1e-2, 1e2),
    weight_step: float | None = None,
    callbacks: Sequence = (),
    verbose: int = 1,
    compile_kwargs: Mapping | None = None,
    tuner_kwargs: Mapping | None = None,
    fit_kwargs: Mapping | None = None,
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
        tuner: `"random"`, `"grid"`, `"bayesian"` or `"hyperband"`.
        max_trials: Trials to run (not used by Hyperband, which derives them
            from `epochs` and its `factor`; `None` for grid runs the whole
            grid).
        epochs: Epochs per trial (Hyperband's `max_epochs`).
        directory: Where KerasTuner keeps the trials.
        project_name: The sub-folder of this search.
        seed: Seeds the tuner's sampling and every trial's initial weights.
        overwrite: `False` resumes the search saved in `directory`.
        balancers: Balancer names to choose from (plus `"dwa"`), or `None`.
        weights: `"log_uniform"`, `"simplex"` or `None` (see
            `MultiTaskHyperModel`).
        logdir: If given, a `keras.callbacks.TensorBoard` logs each trial to
            `logdir/<trial_id>/execution0`, with the hyperparameters in the
            HParams plugin (KerasTuner's own handling).
        objective: Override the objective: a `kt.Objective` or a log name
            (direction inferred for scores, losses and known metrics).
        optimizer: `None` (Adam), a name, an optimizer, or `optimizer(hp)`.
        learning_rate: The Adam learning rate when `optimizer` is `None`.
        weight_range: Range of the weights or ratios.
        weight_step: Multiplicative grid step of the weights; defaults to 10
            for `tuner="grid"`, else continuous.
        callbacks: Extra Keras callbacks (deep-copied for every trial).
        verbose: Fit and tuner verbosity.
        compile_kwargs: Extra `compile` arguments (`jit_compile`,
            `run_eagerly`, ...).
        tuner_kwargs: Extra tuner arguments (`executions_per_trial`,
            Hyperband's `factor`, ...).
        fit_kwargs: Extra `fit` arguments (`batch_size`, ...).

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
    tuner_class = _tuner_class(tuner)
    if weight_step is None and tuner == "grid":
        weight_step = 10.0
    hypermodel = MultiTaskHyperModel(
        build_model, losses, metrics=metrics, optimizer=optimizer,
        learning_rate=learning_rate, weights=weights, weight_range=weight_range,
        weight_step=weight_step, balancers=balancers, references=references,
        higher_is_better=higher_is_better, seed=seed, compile_kwargs=compile_kwargs,
    )
    objective = _check_objective(objective, hypermodel, higher_is_better)
    if tuner == "hyperband":
        budget = {"max_epochs": epochs}
    else:
        budget = {"max_trials": max_trials}
    search_tuner = tuner_class(
        hypermodel, objective=objective, seed=seed, directory=directory,
        project_name=project_name, overwrite=overwrite,
        **budget, **dict(tuner_kwargs or {}),
    )
    trial_callbacks = list(callbacks)
    if logdir is not None:
        trial_callbacks.append(keras.callbacks.TensorBoard(logdir))
    search_tuner.search(
        *_fit_arrays(train_data), validation_data=validation_data, epochs=epochs,
        callbacks=trial_callbacks, verbose=verbose, **dict(fit_kwargs or {}),
    )
    return _result(search_tuner, hypermodel, objective)


def search_shapes(
    tuner: str = "random",
    max_trials: int = 4,
    epochs: int = 2,
    balancers: Sequence[str] | None = None,
    weights: str | None = "log_uniform",
    directory: str = "mtl_tuning",
    project_name: str = "shapes",
    train_size: int = 512,
    validation_size: int = 256,
    batch_size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
    logdir: str | None = None,
    verbose: int = 1,
    architectures: Sequence[str] | None = None,
) -> SearchResult:
    """`search` on the built-in shapes data (cls + seg + count), scale-free
    objective; the job behind `mtl-keras tune`. `architectures` (names from
    `mtl_keras.architectures.ARCHITECTURES`) makes the way the heads share
    the trunk a hyperparameter, "architecture"; default hard sharing."""
    from mtl_keras import demo
    from mtl_keras.datasets import shapes

    train = shapes.load("train", num_examples=train_size, seed=seed,
                        batch_size=batch_size)
    validation = shapes.load("validation", num_examples=validation_size, seed=seed,
                             batch_size=256)
    return search(
        shapes_builder(architectures),
        train, validation, losses=demo.SHAPES_LOSSES, metrics=demo.shapes_metrics,
        tuner=tuner, max_trials=max_trials, epochs=epochs, directory=directory,
        project_name=project_name, seed=seed, overwrite=overwrite,
        balancers=balancers, weights=weights, logdir=logdir, verbose=verbose,
    )


def shapes_builder(architectures: Sequence[str] | None = None) -> Callable:
    """`build_model(hp)` of the shapes network; with several `architectures`
    the choice among them is the hyperparameter "architecture"."""
    from mtl_keras import architectures as architectures_lib

    names = list(architectures or ["hard"])
    unknown = [n for n in names if n not in architectures_lib.ARCHITECTURES]
    if unknown or not names:
        raise ValueError(f"Unknown architectures {unknown}; choose among "
                         f"{architectures_lib.ARCHITECTURES}.")

    def build_model(hp):
        name = names[0] if len(names) == 1 else hp.Choice("architecture", names)
        return architectures_lib.shapes_network(architecture=name)

    return build_model


# ---------------------------------------------------------------- checks


def _check_weight_mode(weights):
    if weights not in WEIGHT_MODES:
        raise ValueError(
            f"Unknown weights mode {weights!r}: use one of {WEIGHT_MODES}."
        )
    return weights


def _check_weight_range(weight_range) -> tuple[float, float]:
    low, high = (float(v) for v in weight_range)
    if not 0 < low < high:
        raise ValueError(
            f"weight_range must be (low, high) with 0 < low < high; got {weight_range}."
        )
    return low, high


def _check_balancers(names) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    known = [*CALLBACK_BALANCERS, *balancers_lib.available()]
    normalised = tuple(balancers_lib.normalise_name(n) for n in names)
    unknown = [n for n, short in zip(names, normalised, strict=True)
               if short not in known]
    if unknown:
        raise ValueError(
            f"Unknown balancer(s) {unknown} in balancers={list(names)}. Known: "
            f"{', '.join(known)}."
        )
    if not normalised:
        raise ValueError("`balancers` is empty: give at least one name, or None.")
    for name in normalised:
        balancer_space(name)
    return normalised


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
                or candidate in metrics_lib.DEFAULT_HIGHER_IS_BETTER):
            higher = metrics_lib.metric_direction("", candidate, higher_is_better)
            return "max" if higher else "min"
    raise ValueError(
        f"Cannot tell whether the objective {name!r} is to be minimised or "
        f"maximised: pass objective=kt.Objective({name!r}, 'min') (or 'max')."
    )


def _is_gradient_balancer(name: str) -> bool:
    if name in CALLBACK_BALANCERS:
        return False
    return isinstance(balancers_lib.get(name), GradientBalancer)


# --------------------------------------------------------------- helpers


def _make_balancer(name: str | None, config: dict | None):
    if name is None or name in CALLBACK_BALANCERS:
        return None
    if not config:
        return balancers_lib.get(name)
    return balancers_lib.get({"class_name": name, "config": config})


def _metric_names(metrics, tasks) -> dict[str, list[str]]:
    """The log names Keras gives each task's metrics (after `<task>_`)."""
    names = {task: [] for task in tasks}
    for task, task_metrics in (metrics or {}).items():
        if task not in names:
            raise ValueError(
                f"`metrics` names task {task!r}, which `losses` does not have "
                f"(tasks: {tasks})."
            )
        names[task] = [_metric_name(m) for m in _as_list(task_metrics)]
    return names


def _metric_name(metric) -> str:
    # Keras names a metric given as a string by that string, others by name.
    if isinstance(metric, str):
        return metric
    return getattr(metric, "name", None) or metric.__name__


def _clone_metric(metric):
    if isinstance(metric, keras.metrics.Metric):
        return metric.__class__.from_config(metric.get_config())
    return metric


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _grid_default(low: float, high: float, step: float | None) -> float:
    """1 (equal weights) if in range and on the grid; else the nearest."""
    if step is None:
        return 1.0 if low <= 1.0 <= high else math.sqrt(low * high)
    steps = round(math.log(1.0 / low) / math.log(step))
    top = math.floor(math.log(high / low) / math.log(step) + 1e-9)
    return low * step ** min(max(steps, 0), top)


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
    return SearchResult(
        objective=objective.name,
        best_score=float(best.score),
        best_hyperparameters=values,
        best_task_weights=hypermodel.task_weights_from_values(values),
        best_balancer=values.get("balancer") if hypermodel.balancers else None,
        trials=rows,
        direction=objective.direction,
        tuner=tuner,
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
