"""Benchmark suites: what a comparison or a search runs on.

A suite (`Suite`) is a spec: its data, tasks, losses, metrics, each task's
headline metric and its direction, and a reference network. The built-in
ones are `shapes` and `multi_mnist` (`load(name, ...)`); `from_parts` makes
one of your own model builder, data, losses and metrics. The experiments
(`mtl_keras.compare`, `mtl_keras.tuning`) run on either.

Example:

```python
from mtl_keras import suites

suite = suites.load("shapes", train_size=256, test_size=64)
```
"""

from __future__ import annotations

import os

from mtl_keras import architectures
from mtl_keras.suites import multi_mnist, shapes
from mtl_keras.suites.parts import from_parts
from mtl_keras.suites.suite import Suite

SUITES = ("shapes", "multi_mnist")
"""The names of the built-in suites (`load(name)`)."""


def load(
    name: str,
    train_size: int | None = None,
    test_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    architecture: str = "hard",
    protocol: str | None = None,
) -> Suite:
    """A built-in suite by name. The data are drawn with seed 0 whatever the
    training seed, so every run sees the same examples.

    Args:
        name: `"shapes"` (cls accuracy, seg mIoU, count MAE; the shapes
            network of `mtl-keras demo`) or `"multi_mnist"` (left/right
            accuracy; the LeNet of Sener & Koltun).
        train_size: the first `train_size` training examples (default: 4096
            for shapes, all 50,000 for MultiMNIST).
        test_size: the first `test_size` test examples (default: the whole
            split, 1024 for shapes, 10,000 for MultiMNIST).
        data_dir: MultiMNIST only: the folder of the MNIST files.
        architecture: how the heads share the trunk, one of
            `mtl_keras.architectures.ARCHITECTURES` ("hard", "mmoe", "mtan").
        protocol: MultiMNIST only: `"random_shift"` or `"sener2018"` (see
            `mtl_keras.suites.multi_mnist.load`).

    Example:

    ```python
    suite = load("multi_mnist", train_size=512, protocol="sener2018")
    ```
    """
    if architecture not in architectures.ARCHITECTURES:
        raise ValueError(f"Unknown architecture {architecture!r}; expected one of "
                         f"{architectures.ARCHITECTURES}.")
    if name == "shapes":
        return shapes.load(train_size, test_size, architecture)
    if name == "multi_mnist":
        return multi_mnist.load(train_size, test_size, data_dir, architecture,
                                protocol)
    raise ValueError(f"Unknown data {name!r}; expected one of {list(SUITES)}.")


__all__ = ["SUITES", "Suite", "from_parts", "load"]
