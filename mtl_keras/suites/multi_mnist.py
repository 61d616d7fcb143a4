"""The MultiMNIST suite: tasks `left` and `right` (accuracy), the LeNet of
Sener & Koltun (NeurIPS 2018), under either data protocol of
`mtl_keras.datasets.multi_mnist`."""

from __future__ import annotations

import os

import keras

from mtl_keras import architectures
from mtl_keras.datasets import multi_mnist
from mtl_keras.suites.suite import Suite

#: Test examples scored when `test_size` is None: the whole split.
DEFAULT_TEST_SIZE = 10_000
#: The learning-rate schedule of Sener & Koltun's reference code.
SENER2018_LR_DECAY = (10, 0.85)


def metrics(tasks=multi_mnist.TASKS) -> dict:
    """Fresh accuracy metrics for the MultiMNIST tasks."""
    return {task: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
            for task in tasks}


def load(train_size: int | None = None, test_size: int | None = None,
         data_dir: str | os.PathLike | None = None, architecture: str = "hard",
         protocol: str | None = None) -> Suite:
    """The MultiMNIST suite; the data are drawn with seed 0.

    Args:
        train_size: the first training examples (default: the whole split).
        test_size: the first test examples (default: all 10,000).
        data_dir: the folder of the MNIST files (see
            `mtl_keras.datasets.multi_mnist`).
        architecture: how the heads share the trunk, one of
            `mtl_keras.architectures.ARCHITECTURES`.
        protocol: `"random_shift"` (the default: random-shift data,
            Keras-default LeNet, constant learning rate) or `"sener2018"`
            (the data, initialisation, dropout and learning-rate schedule of
            Sener & Koltun's reference code; 60,000 training examples).

    Example:

    ```python
    suite = mtl_keras.suites.multi_mnist.load(train_size=512, test_size=256)
    ```
    """
    protocol = protocol or "random_shift"
    reference = protocol == "sener2018"
    loss = "sparse_categorical_crossentropy"
    return Suite(
        name="multi_mnist",
        tasks=tuple(sorted(multi_mnist.TASKS)),
        headline={task: ("accuracy", True) for task in multi_mnist.TASKS},
        train=multi_mnist.load_numpy("train", data_dir, num_examples=train_size,
                                     protocol=protocol),
        test=multi_mnist.load_numpy("test", data_dir,
                                    num_examples=test_size or DEFAULT_TEST_SIZE,
                                    protocol=protocol),
        build_model=lambda tasks: architectures.multi_mnist_lenet(
            tasks=tasks, architecture=architecture, reference=reference),
        losses={task: loss for task in multi_mnist.TASKS},
        make_metrics=metrics,
        protocol=protocol,
        lr_decay=SENER2018_LR_DECAY if reference else None,
    )
