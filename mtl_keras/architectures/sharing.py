"""Which variables reach which task output, found by differentiation."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def variables_by_task(model: keras.Model) -> dict[str, list]:
    """`{output name: trainable variables its value depends on}`.

    Unlike walking the layer graph, this looks inside layers: a gate of
    `MMoE` that feeds only task k's mixture is found to reach task k only.
    A variable reaches an output when the output's gradient with respect to
    it is connected (TensorFlow returns `None` otherwise); evaluated once, in
    inference mode, on a batch of two zero inputs.

    Args:
        model: a built functional model (e.g. a `MultiTaskModel`).

    Example:

    ```python
    inputs = keras.Input((4,), name="x")
    towers = mtl_keras.architectures.MMoE(num_tasks=2, num_experts=2)(inputs)
    model = keras.Model(inputs, {"a": towers[0], "b": towers[1]})
    reach = mtl_keras.architectures.variables_by_task(model)
    ```
    """
    inputs = keras.tree.map_structure(
        lambda t: tf.zeros((2, *t.shape[1:]), t.dtype), model.input)
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        outputs = model(inputs, training=False)
        if not isinstance(outputs, dict):
            outputs = dict(zip(model.output_names, keras.tree.flatten(outputs)))
        totals = {name: tf.reduce_sum(tf.cast(output, "float32"))
                  for name, output in outputs.items()}
    reach = {}
    for name, total in totals.items():
        grads = tape.gradient(total, variables)
        reach[name] = [v for v, g in zip(variables, grads) if g is not None]
    del tape
    return reach


def shared_variables(model: keras.Model) -> list:
    """The trainable variables that reach two or more outputs, in
    `model.trainable_variables` order (see `variables_by_task`)."""
    counts: dict[int, int] = {}
    for reached in variables_by_task(model).values():
        for variable in reached:
            counts[id(variable)] = counts.get(id(variable), 0) + 1
    return [v for v in model.trainable_variables if counts.get(id(v), 0) > 1]


def count_parameters(variables) -> int:
    """Total number of scalars in `variables`."""
    return int(sum(np.prod(v.shape) for v in variables))
