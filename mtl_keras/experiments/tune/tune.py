"""`tune` on a suite or your own parts, and `search_shapes` (`mtl-keras tune`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mtl_keras import suites
from mtl_keras.experiments.record import SINGLE_TASK
from mtl_keras.experiments.run import train_run
from mtl_keras.experiments.tune.search import search
from mtl_keras.experiments.tune.search_result import SearchResult
from mtl_keras.suites.suite import Suite


def tune(
    methods: Sequence[str],
    suite: Suite | None = None,
    *,
    build_model: Callable | None = None,
    train: Any = None,
    validation: Any = None,
    losses: Mapping | None = None,
    metrics: Mapping | None = None,
    headline: Mapping | None = None,
    references: Mapping | None = None,
    epochs: int = 10,
    seed: int = 0,
    **options: Any,
) -> SearchResult:
    """Searches the task weights and the methods' hyperparameters on your own
    model and data (the parts `mtl_keras.compare.compare` takes), scored by
    Δm% of the headline metrics on `validation`.

    Without `references`, one single-task model per task is trained first
    (`epochs` each, built with `build_model((task,))`) and its validation
    headline metric is the reference of Δm%; pass
    `references=compare_result.references()` to reuse a comparison's.

    Args:
        methods: the methods to choose among (balancers, `"dwa"`).
        suite: a `Suite` (its test data then score the trials); None with
            your parts.
        build_model: `build_model(tasks) -> MultiTaskModel`, uncompiled.
        train: a batched `tf.data.Dataset` of `(x, {task: y})`, or arrays.
        validation: the data trials are scored on, in the same forms (keep
            your test data for the end).
        losses: `{task: loss}`.
        metrics: `{task: [metrics]}`, or a function of the tasks.
        headline: `{task: metric or (metric, higher_is_better)}` overrides.
        references: `{task: {headline metric: single-task value}}`, or None
            to train the single-task models.
        epochs: epochs of every trial (and single-task model).
        seed: seeds the tuner, every trial's initial weights and the
            single-task models.
        **options: `batch_size` (of arrays, default 256) and the options of
            `search` (`weights` defaults to `"simplex"`, `max_trials`,
            `tuner`, `directory`, `learning_rate`, `verbose`, ...).

    Returns:
        A `SearchResult` with the `references` used.

    Example:

    ```python
    result = tune(["uw", "upgrad"], build_model=build, train=train_ds,
                  validation=val_ds, losses=losses, metrics=metrics,
                  max_trials=8, epochs=5)
    print(result.summary())
    ```
    """
    batch_size = int(options.pop("batch_size", 256))
    options.setdefault("weights", "simplex")
    if suite is None:
        suite = suites.from_parts(build_model, train, validation, losses,
                                  metrics, headline)
    if references is None:
        references = single_task_references(
            suite, epochs, seed, batch_size, options.get("learning_rate", 1e-3))
    directions = {task: {metric: higher}
                  for task, (metric, higher) in suite.headline.items()}
    result = search(
        lambda hp: suite.build_model(suite.tasks),
        suite.batches("train", suite.tasks, batch_size, shuffle=True, seed=seed),
        suite.batches("test", suite.tasks, batch_size),
        losses=suite.losses, metrics=lambda: suite.make_metrics(suite.tasks),
        references=references, higher_is_better=directions, seed=seed,
        balancers=list(methods), epochs=epochs, **options)
    return dataclasses.replace(result, references=dict(references))


def single_task_references(suite: Suite, epochs: int, seed: int = 0,
                           batch_size: int = 256,
                           learning_rate: float = 1e-3) -> dict:
    """`{task: {headline metric: value}}` of one single-task model per task,
    scored on the suite's test (here: validation) data.

    Raises:
        RuntimeError: a single-task model failed to train.
    """
    references = {}
    for task in suite.tasks:
        record = train_run(suite, SINGLE_TASK, seed, epochs, (task,), batch_size,
                           learning_rate)
        if record.error is not None:
            raise RuntimeError(f"The single-task model of {task!r} failed: "
                               f"{record.error}")
        references[task] = {suite.headline[task][0]: record.metrics[task]}
    return references


def search_shapes(
    tuner: str = "random",
    max_trials: int = 4,
    epochs: int = 2,
    balancers: Sequence[str] | None = None,
    weights: str | None = "log_uniform",
    train_size: int = 512,
    validation_size: int = 256,
    batch_size: int = 64,
    seed: int = 0,
    architectures: Sequence[str] | None = None,
    **options: Any,
) -> SearchResult:
    """`search` on the built-in shapes data (cls + seg + count), scale-free
    objective; the job behind `mtl-keras tune`. `architectures` (names from
    `mtl_keras.architectures.ARCHITECTURES`) makes the way the heads share
    the trunk a hyperparameter, "architecture"; default hard sharing.
    `options` go to `search` (`directory`, `project_name` (default
    "shapes"), `overwrite`, `logdir`, `verbose`, ...).

    Example:

    ```python
    result = search_shapes(max_trials=2, epochs=1, balancers=["static", "uw"])
    ```
    """
    from mtl_keras.datasets import shapes

    options.setdefault("project_name", "shapes")
    train = shapes.load("train", num_examples=train_size, seed=seed,
                        batch_size=batch_size)
    validation = shapes.load("validation", num_examples=validation_size, seed=seed,
                             batch_size=256)
    return search(
        shapes_builder(architectures), train, validation,
        losses=suites.shapes.LOSSES, metrics=suites.shapes.metrics, seed=seed,
        tuner=tuner, max_trials=max_trials, epochs=epochs, balancers=balancers,
        weights=weights, **options)


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
