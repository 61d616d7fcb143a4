"""Which variables reach which task output: the shared parameters.

`MultiTaskModel` calls `shared_variables` when it is built without
`shared=`; `mtl_keras.architectures` re-exports these functions.
"""

from __future__ import annotations

import keras
import numpy as np

from mtl_keras import engine


def variables_by_task(model: keras.Model) -> dict[str, list]:
    """`{output name: trainable variables its value depends on}`.

    On TensorFlow, found by differentiation (the engine's
    `Backend.variables_by_task`), so it looks inside layers: a
    gate of `MMoE` that feeds only task k's mixture reaches task k only. A
    variable reaches an output when the output's gradient with respect to it
    is connected (TensorFlow returns `None` otherwise); evaluated once, in
    inference mode, on a batch of two zero inputs. On other backends a
    gradient is never `None`, so a variable reaches an output when its layer
    is upstream of it in the functional graph (a whole layer at a time).

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
    reach = engine.get_backend().variables_by_task(model)
    return _variables_by_layer_graph(model) if reach is None else reach


def _variables_by_layer_graph(model: keras.Model) -> dict[str, list]:
    """The trainable variables of the layers upstream of each output."""
    outputs = _named_outputs(model, model.output)
    return {name: list(keras.Model(model.input, output).trainable_variables)
            for name, output in outputs.items()}


def _named_outputs(model: keras.Model, outputs) -> dict:
    if isinstance(outputs, dict):
        return outputs
    return dict(zip(model.output_names, keras.tree.flatten(outputs)))


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
