"""`in_memory_batches`: a fast `tf.data` pipeline over arrays held in memory."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf


def in_memory_batches(
    images: np.ndarray | Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    batch_size: int,
    shuffle: bool = True,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of arrays held in memory as tensors: a fast `tf.data` pipeline.

    The arrays become constant tensors once; each epoch shuffles only the example
    indices (no copy of the images into a shuffle buffer) and every batch is one
    `tf.gather`, inside the graph, prefetched. The last batch may be smaller.

    Args:
        images: `(N, ...)` inputs, or a dict of them (a model with several
            named inputs).
        labels: `{task: (N, ...)}` targets.
        batch_size: examples per batch.
        shuffle: reshuffle the order every epoch.
        seed: seed of the shuffling.

    Returns:
        A `tf.data.Dataset` of `(images, {task: labels})` batches.

    Example:

    ```python
    batches = in_memory_batches(images, {"left": left, "right": right}, 256)
    ```
    """
    images = tf.nest.map_structure(tf.constant, images)
    labels = {task: tf.constant(values) for task, values in labels.items()}
    count = int(tf.nest.flatten(images)[0].shape[0])
    order = tf.data.Dataset.range(count)
    if shuffle:
        order = order.shuffle(count, seed=seed, reshuffle_each_iteration=True)

    def gather(index):
        return (tf.nest.map_structure(lambda values: tf.gather(values, index), images),
                {task: tf.gather(values, index) for task, values in labels.items()})

    order = order.batch(batch_size)
    return order.map(gather, num_parallel_calls=1).prefetch(tf.data.AUTOTUNE)
