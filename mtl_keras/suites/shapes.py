"""The shapes suite: synthetic images, tasks `cls` (accuracy), `seg` (mean
IoU) and `count` (MAE), and the shapes network of `mtl-keras demo`."""

from __future__ import annotations

import keras

from mtl_keras import architectures
from mtl_keras.datasets import shapes
from mtl_keras.suites.suite import Suite

#: The task losses of the shapes data.
LOSSES = {
    "cls": "sparse_categorical_crossentropy",
    "seg": "sparse_categorical_crossentropy",
    "count": "mse",
}

#: Per task: (log name of the headline metric, higher is better).
HEADLINE = {"cls": ("accuracy", True), "seg": ("miou", True),
            "count": ("mae", False)}

#: Test examples scored when `test_size` is None: the whole split.
DEFAULT_TEST_SIZE = 1024


def metrics(tasks=shapes.TASKS) -> dict:
    """Fresh metric objects for the shapes tasks (accuracy, mean IoU, MAE)."""
    available = {
        "cls": lambda: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        "seg": lambda: [keras.metrics.MeanIoU(
            num_classes=shapes.NUM_SEG_CLASSES, sparse_y_pred=False, name="miou")],
        "count": lambda: [keras.metrics.MeanAbsoluteError(name="mae")],
    }
    return {task: available[task]() for task in tasks}


def load(train_size: int | None = None, test_size: int | None = None,
         architecture: str = "hard") -> Suite:
    """The shapes suite; the data are drawn with seed 0.

    Args:
        train_size: the first training examples (default: all 4096).
        test_size: the first test examples (default: all 1024).
        architecture: how the heads share the trunk, one of
            `mtl_keras.architectures.ARCHITECTURES`.

    Example:

    ```python
    suite = mtl_keras.suites.shapes.load(train_size=256, test_size=64)
    ```
    """
    return Suite(
        name="shapes",
        tasks=tuple(sorted(shapes.TASKS)),
        headline=dict(HEADLINE),
        train=shapes.load_numpy("train", train_size),
        test=shapes.load_numpy("test", test_size or DEFAULT_TEST_SIZE),
        build_model=lambda tasks: architectures.shapes_network(
            tasks=tasks, architecture=architecture),
        losses=dict(LOSSES),
        make_metrics=metrics,
    )
