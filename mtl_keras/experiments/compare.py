"""The comparison experiment: every method and the single-task baselines,
seed by seed, on a suite or on your own model and data."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mtl_keras import methods as methods_lib
from mtl_keras import suites
from mtl_keras.experiments import markdown, run_log
from mtl_keras.experiments.method_parts import method_names
from mtl_keras.experiments.options import (
    Hooks,
    MethodOverrides,
    RunLog,
    SuiteOptions,
    TrainOptions,
    split_options,
)
from mtl_keras.experiments.record import SINGLE_TASK
from mtl_keras.experiments.result import CompareResult
from mtl_keras.experiments.run import train_run
from mtl_keras.suites.suite import Suite


def compare(
    methods: Sequence[str],
    suite: str | Suite | None = None,
    *,
    build_model: Callable | None = None,
    train: Any = None,
    test: Any = None,
    losses: Mapping | None = None,
    metrics: Mapping | None = None,
    headline: Mapping | None = None,
    seeds: int | Sequence[int] = 3,
    epochs: int = 10,
    **options: Any,
) -> CompareResult:
    """Trains every method and one single-task model per task, seed by seed,
    and scores them on the test data.

    Give either a built-in suite (`"shapes"`, `"multi_mnist"`, a `Suite`)
    or your own parts: `build_model`, `train`, `test`, `losses` and
    optionally `metrics` and `headline` (see `mtl_keras.suites.from_parts`).
    Runs go seed by seed (every configuration with seed 0, then seed 1,
    ...), so a comparison cut short still covers every method. The older
    order `compare(suite, methods, ...)` is accepted too.

    Args:
        methods: method names (`mtl_keras.methods.names()`: balancers
            and callback methods such as `"dwa"`); checked before anything
            trains.
        suite: a built-in suite's name or a `Suite`; None with your parts.
        build_model: `build_model(tasks) -> MultiTaskModel`, uncompiled.
        train: a batched `tf.data.Dataset` of `(x, {task: y})`, or arrays.
        test: the data every model is scored on, in the same forms.
        losses: `{task: loss}`.
        metrics: `{task: [metrics]}`, or a function of the tasks.
        headline: `{task: metric or (metric, higher_is_better)}` overrides.
        seeds: a number of seeds (0, 1, ...) or the seeds themselves.
        epochs: training epochs of every run.
        **options: fields of `TrainOptions` (`batch_size`, `learning_rate`,
            `curves`), `SuiteOptions` (`train_size`, `test_size`,
            `data_dir`, `architecture`, `protocol`), `RunLog` (`log_path`,
            `resume`, `extra_settings`), `Hooks` (`progress`, `on_record`,
            `before_run`) and `MethodOverrides` (`method_loss_weights`,
            `method_balancers`).

    Returns:
        A `CompareResult`: `to_markdown()`, `plot(path)`, `ranking()`.

    Example:

    ```python
    result = compare(["ew", "uw", "upgrad", "dwa"], build_model=build,
                     train=train_ds, test=test_ds, losses=losses,
                     metrics=metrics, seeds=1, epochs=2)
    print(result.to_markdown())
    ```
    """
    if isinstance(methods, (str, Suite)):  # the older order: (suite, methods)
        methods, suite = suite, methods
    groups = split_options(options)
    training = dataclasses.replace(groups[TrainOptions], epochs=int(epochs))
    overrides = groups[MethodOverrides]
    methods = _checked(methods, overrides)
    suite = _suite(
        suite,
        groups[SuiteOptions],
        dict(
            build_model=build_model,
            train=train,
            test=test,
            losses=losses,
            metrics=metrics,
            headline=headline,
        ),
    )
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    return run_plan(suite, methods, seeds, training, groups)


def run_plan(
    suite: Suite, methods: list, seeds: list, training: TrainOptions, groups: dict
) -> CompareResult:
    """Runs (or resumes) every `(method, seed, tasks)` of the comparison.

    Args:
        suite: the suite.
        methods: the checked method names.
        seeds: the seeds.
        training: how every run trains.
        groups: the other option groups (`split_options`).
    """
    log, hooks = groups[RunLog], groups[Hooks]
    overrides = groups[MethodOverrides]
    settings = run_settings(suite, training, groups[SuiteOptions], log)
    records = run_log.resumed(log.log_path, settings) if log.resume else []
    result = CompareResult(
        suite.name, suite.tasks, suite.headline, methods, records, settings
    )
    plan = _plan(suite.tasks, methods, seeds)
    done = {record.key() for record in records}
    for index, (method, seed, tasks) in enumerate(plan, start=1):
        if (method, seed, tasks) in done:
            continue
        if hooks.before_run is not None:
            hooks.before_run(method, seed)
        record = train_run(
            suite,
            method,
            seed,
            training.epochs,
            tasks,
            training.batch_size,
            training.learning_rate,
            overrides.method_loss_weights.get(method),
            training.curves,
            overrides.method_balancers.get(method),
        )
        records.append(record)
        run_log.append(log.log_path, record, settings)
        if hooks.progress is not None:
            hooks.progress(
                f"[{index}/{len(plan)}] " + markdown.describe(record, result)
            )
        if hooks.on_record is not None:
            hooks.on_record(result)
    return result


def available_methods() -> list[str]:
    """Every method name `compare` accepts (`mtl_keras.methods`, aliases
    included)."""
    return method_names()


def check_methods(methods: Sequence[str]) -> list[str]:
    """Returns the method names, raising before any training on an unknown one.

    Raises:
        ValueError: an unknown, repeated or missing name, a method that needs
            constructor arguments (DTP's `kpis`), or `SINGLE_TASK` (always
            run); the message names the closest valid name and all of them.
    """
    methods = [str(method).strip() for method in methods]
    if not methods:
        raise ValueError(
            f"No method given. Available methods: {', '.join(available_methods())}."
        )
    if SINGLE_TASK in methods:
        raise ValueError(f"{SINGLE_TASK!r} is always run; do not list it.")
    for name in methods:
        method = methods_lib.get(name)
        if method.required:
            raise ValueError(
                f"Method {name!r} needs {', '.join(method.required)}, which "
                "compare cannot choose for you: train it yourself with "
                f"mtl_keras.methods.get({method.name!r}).parts(...)."
            )
    duplicated = sorted({m for m in methods if methods.count(m) > 1})
    if duplicated:
        raise ValueError(f"Method(s) {duplicated} given more than once.")
    return methods


def run_settings(
    suite: Suite, training: TrainOptions, data: SuiteOptions, log: RunLog
) -> dict:
    """What every logged run of a comparison shares (checked on resume)."""
    settings = {
        "data": suite.name,
        "epochs": training.epochs,
        "batch_size": int(training.batch_size),
        "train_size": suite.size("train"),
        "test_size": suite.size("test"),
        "optimizer": f"Adam(learning_rate={training.learning_rate})",
    }
    if data.architecture != "hard":  # logs of hard sharing stay resumable
        settings["architecture"] = data.architecture
    if suite.protocol not in ("default", "random_shift"):
        settings["protocol"] = suite.protocol
    if suite.lr_decay is not None:
        settings["lr_decay"] = list(suite.lr_decay)
    settings.update(log.extra_settings or {})
    return settings


def _checked(methods, overrides: MethodOverrides) -> list[str]:
    if methods is None or isinstance(methods, str):
        raise ValueError(f"`methods` must be a list of method names; got {methods!r}.")
    named = {*overrides.method_loss_weights, *overrides.method_balancers}
    unnamed = [m for m in methods if m not in named]
    if unnamed or not methods:  # those with their own balancer need no name
        check_methods(unnamed)
    return [str(m).strip() for m in methods]


def _suite(suite, data: SuiteOptions, parts: dict) -> Suite:
    given = sorted(name for name, value in parts.items() if value is not None)
    if suite is not None and given:
        raise ValueError(
            f"Give either a suite or your own parts, not both "
            f"(suite={suite!r} and {given})."
        )
    if isinstance(suite, Suite):
        return suite
    if suite is not None:
        return suites.load(suite, **dataclasses.asdict(data))
    missing = [
        name
        for name in ("build_model", "train", "test", "losses")
        if parts[name] is None
    ]
    if missing:
        raise ValueError(
            f"compare() on your own data needs {missing} (or a "
            f"suite: one of {list(suites.SUITES)})."
        )
    return suites.from_parts(**parts)


def _plan(tasks, methods, seeds) -> list[tuple]:
    """`(method, seed, tasks)` of every run, seed by seed."""
    plan = []
    for seed in seeds:
        plan += [(SINGLE_TASK, seed, (task,)) for task in tasks]
        plan += [(method, seed, tuple(tasks)) for method in methods]
    return plan
