"""`cross_stitch_columns`: K task columns joined by cross-stitch units."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras

from mtl_keras._typing import Tensor
from mtl_keras.architectures.cross_stitch import CrossStitch


def cross_stitch_columns(
    inputs: Tensor,
    layer_factory: Callable[[int, str], keras.layers.Layer],
    tasks: Sequence[str],
    num_blocks: int,
    self_weight: float = 0.9,
    name: str = "cross_stitch",
) -> dict:
    """Builds one column per task and joins them with `CrossStitch` units.

    Column k is `block_0 -> ... -> block_{num_blocks-1}`, block i of task
    `t` being `layer_factory(i, t)` (a new layer each call: columns share no
    variables). A cross-stitch unit follows every block but the last, as
    Misra et al. (CVPR 2016) place them after pooling and fully connected
    layers; the last blocks are then each task's own.

    Args:
        inputs: the input tensor, fed to every column.
        layer_factory: `(block_index, task) -> Layer`, e.g. a `Dense` or a
            `keras.Sequential` of conv layers.
        tasks: the task names, one column each (at least two).
        num_blocks: blocks per column.
        self_weight: initial diagonal of every unit's α.
        name: prefix of the units' names (`{name}_{i}`).

    Returns:
        `{task: output tensor of its column}`.

    Example:

    ```python
    inputs = keras.Input((8,), name="x")
    columns = mtl_keras.architectures.cross_stitch_columns(
        inputs, lambda i, task: keras.layers.Dense(16, activation="relu",
                                                   name=f"{task}_dense{i}"),
        tasks=["a", "b"], num_blocks=2)
    outputs = {t: keras.layers.Dense(1, name=t)(x) for t, x in columns.items()}
    model = mtl_keras.MultiTaskModel(inputs, outputs)
    ```
    """
    tasks = list(tasks)
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise ValueError(f"cross_stitch_columns needs two or more distinct task "
                         f"names, got {tasks}.")
    if num_blocks < 1:
        raise ValueError(f"cross_stitch_columns needs num_blocks >= 1, got "
                         f"{num_blocks}.")
    columns = [inputs] * len(tasks)
    for block in range(num_blocks):
        columns = [layer_factory(block, task)(x) for task, x in zip(tasks, columns)]
        if block < num_blocks - 1:
            columns = CrossStitch(self_weight, name=f"{name}_{block}")(columns)
    return dict(zip(tasks, columns))
