"""One run of an experiment: build, compile, train and score one model."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

import keras

from mtl_keras import balancers
from mtl_keras.experiments.method_parts import MethodParts, method_parts
from mtl_keras.experiments.record import SINGLE_TASK, RunRecord, steady_seconds
from mtl_keras.suites.suite import Suite

#: The batch size of scoring on test data given as arrays.
EVAL_BATCH = 1000


def train_run(
    data: Suite,
    method: str,
    seed: int,
    epochs: int,
    tasks: tuple | None = None,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    loss_weights: dict | None = None,
    curves: bool = False,
    make_balancer: Callable[[], balancers.Balancer] | None = None,
) -> RunRecord:
    """Trains one model and scores it on the test data.

    The optimiser is Adam(`learning_rate`), decayed by `data.lr_decay`; the
    seed sets the initial weights, the shuffling order and the balancer's
    random draws (`keras.utils.set_random_seed`). Arrays are held in memory
    as tensors and batched by `tf.gather` on shuffled indices
    (`mtl_keras.datasets.in_memory.in_memory_batches`). An exception raised
    while building, training or scoring is returned in `RunRecord.error`
    with the traceback's last line, so one failing method does not stop a
    comparison.

    Args:
        data: the suite (`mtl_keras.suites.load` or `from_parts`).
        method: a method name, `SINGLE_TASK`, or any name when
            `loss_weights` or `make_balancer` is given.
        seed: training seed.
        epochs: training epochs.
        tasks: the tasks to train (default: all of `data.tasks`).
        batch_size: training batch size of data given as arrays.
        learning_rate: Adam's (initial) learning rate.
        loss_weights: `{task: weight}` static task weights with no balancer.
        curves: also score the test data after every epoch and keep the
            per-epoch training and test metrics in `RunRecord.history`.
        make_balancer: builds the balancer to train with instead of the one
            `method` names (`method` is then only the record's name).

    Example:

    ```python
    suite = mtl_keras.suites.load("shapes", train_size=64, test_size=64)
    record = train_run(suite, "upgrad", seed=0, epochs=1)
    ```
    """
    tasks = tuple(tasks or data.tasks)
    timer = _EpochTimer()
    started = time.perf_counter()
    scores, history, error = {}, {}, None
    try:
        keras.utils.set_random_seed(seed)
        parts = _parts(method, loss_weights, make_balancer)
        model = _compiled(data, tasks, learning_rate, parts, loss_weights)
        scores, history = _fit_and_score(model, data, tasks, seed, epochs,
                                         batch_size, learning_rate, parts,
                                         timer, curves)
    except Exception as exception:  # noqa: BLE001 - recorded in the result
        error = traceback.format_exception_only(
            type(exception), exception)[-1].strip()
        scores, history = {}, {}
    return RunRecord(method, seed, tasks, scores, steady_seconds(timer.seconds),
                     error, time.perf_counter() - started,
                     tuple(round(t, 3) for t in timer.seconds), history)


def learning_rate_callbacks(data: Suite, learning_rate: float) -> list:
    """The callbacks that apply `data.lr_decay` to an initial learning rate."""
    if data.lr_decay is None:
        return []
    every, factor = data.lr_decay

    def schedule(epoch, current=None):
        # The reference decays at the start of epochs every-1, 2*every-1, ...
        return learning_rate * factor ** ((epoch + 1) // every)

    return [keras.callbacks.LearningRateScheduler(schedule)]


def _parts(method: str, loss_weights, make_balancer) -> MethodParts:
    if loss_weights is not None or method == SINGLE_TASK:
        return MethodParts(None)
    if make_balancer is not None:
        return MethodParts(make_balancer())
    return method_parts(method)


def _compiled(data: Suite, tasks: tuple, learning_rate: float,
              parts: MethodParts, loss_weights):
    model = data.build_model(tasks)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss={task: data.losses[task] for task in tasks},
        loss_weights=(None if loss_weights is None
                      else {task: float(loss_weights[task]) for task in tasks}),
        metrics=data.make_metrics(tasks) or None,
        balancer=parts.balancer,
    )
    return model


def _fit_and_score(model, data: Suite, tasks, seed, epochs, batch_size,
                   learning_rate, parts: MethodParts, timer, curves) -> tuple:
    train = data.batches("train", tasks, batch_size, shuffle=True, seed=seed)
    test = data.batches("test", tasks, EVAL_BATCH)
    fitted = model.fit(
        train, epochs=epochs, verbose=0,
        validation_data=test if curves else None, shuffle=False,
        callbacks=[*parts.callbacks, *learning_rate_callbacks(data, learning_rate),
                   timer])
    logs = model.evaluate(test, verbose=0, return_dict=True)
    scores = {task: float(logs[_log_key(logs, "", task, data.headline[task][0],
                                        tasks)])
              for task in tasks}
    history = {}
    if curves:
        for task in tasks:
            metric = data.headline[task][0]
            for prefix in ("", "val_"):
                key = _log_key(fitted.history, prefix, task, metric, tasks)
                history[f"{prefix}{task}_{metric}"] = [
                    round(float(v), 5) for v in fitted.history[key]]
    return scores, history


def _log_key(logs: dict, prefix: str, task: str, metric: str, tasks: tuple) -> str:
    """The key of a task's metric in `fit`/`evaluate` logs (one-output models
    drop the task prefix)."""
    key = f"{prefix}{task}_{metric}"
    if len(tasks) == 1 and key not in logs:
        return f"{prefix}{metric}"
    return key


class _EpochTimer(keras.callbacks.Callback):
    """The training time of every epoch, without the validation inside it."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()
        self._trained = None

    def on_test_begin(self, logs=None):
        # Validation runs inside the epoch: stop the clock at its start.
        if self._trained is None:
            self._trained = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = self._trained if self._trained is not None else time.perf_counter()
        self.seconds.append(end - self._started)
