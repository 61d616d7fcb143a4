"""`Suite`: the spec of a multi-task benchmark (data, tasks, scoring, network)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import tensorflow as tf

from mtl_keras.datasets.in_memory import in_memory_batches


@dataclasses.dataclass(frozen=True)
class Suite:
    """A benchmark: its data, tasks, losses, metrics, headline metrics and
    reference network. The built-in suites (`mtl_keras.suites.load`) and a
    user's own parts (`mtl_keras.suites.from_parts`) are both suites, and
    `mtl_keras.compare.compare` runs either.

    Args:
        name: what tables and plots call it (`"shapes"`, `"multi_mnist"`).
        tasks: the task names, in the model's (sorted) order.
        headline: `{task: (metric log name, higher is better)}`: the metric
            each task is scored by (`"loss"`: the task loss).
        train: the training data: arrays `(inputs, {task: labels})`, batched
            in memory, or a batched `tf.data.Dataset` of such pairs.
        test: the test data, in the same forms.
        build_model: `tasks -> MultiTaskModel`, uncompiled, with one head per
            given task (single-task baselines are built with one task).
        losses: `{task: loss}`.
        make_metrics: `tasks -> {task: [fresh metric objects or names]}`.
        protocol: the name of the data protocol (e.g. `"sener2018"`).
        lr_decay: `(every, factor)`: the learning rate is multiplied by
            `factor` at the start of every `every`-th epoch (the reference
            schedule of Sener & Koltun: `(10, 0.85)`); None: constant.

    Example:

    ```python
    suite = mtl_keras.suites.load("shapes", train_size=256, test_size=64)
    print(suite.tasks, suite.headline["seg"])  # ('cls', 'count', 'seg') ('miou', True)
    ```
    """

    name: str
    tasks: tuple
    headline: dict
    train: tuple | tf.data.Dataset
    test: tuple | tf.data.Dataset
    build_model: Callable
    losses: dict
    make_metrics: Callable
    protocol: str = "default"
    lr_decay: tuple | None = None

    def batches(self, split: str, tasks: Sequence[str], batch_size: int,
                shuffle: bool = False, seed: int | None = None) -> tf.data.Dataset:
        """The `split` (`"train"` or `"test"`) as batches of `(x, {task: y})`
        for `tasks` only. Arrays are batched by `batch_size` (shuffled every
        epoch when `shuffle`); a `tf.data.Dataset` is used as batched."""
        data = self.train if split == "train" else self.test
        if isinstance(data, tf.data.Dataset):
            return select_tasks(data, tasks)
        inputs, labels = data[0], data[1]
        return in_memory_batches(inputs, {task: labels[task] for task in tasks},
                                 batch_size, shuffle=shuffle, seed=seed)

    def size(self, split: str) -> int | None:
        """The number of examples of arrays, of batches of a dataset with a
        known cardinality, else None."""
        data = self.train if split == "train" else self.test
        if isinstance(data, tf.data.Dataset):
            count = int(data.cardinality())
            return count if count >= 0 else None
        return len(tf.nest.flatten(data[0])[0])


def select_tasks(dataset: tf.data.Dataset, tasks: Sequence[str]) -> tf.data.Dataset:
    """`dataset` of `(x, {task: y}[, {task: w}])` with only `tasks`' labels
    (and sample weights)."""
    tasks = tuple(tasks)

    def keep(x, labels, *weights):
        kept = {task: labels[task] for task in tasks}
        if not weights:
            return x, kept
        (weight,) = weights
        if isinstance(weight, dict):
            weight = {task: weight[task] for task in tasks if task in weight}
        return x, kept, weight

    return dataset.map(keep)
