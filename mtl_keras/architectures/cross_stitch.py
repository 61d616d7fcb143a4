"""`CrossStitch`: the cross-stitch unit (Misra et al., CVPR 2016)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="mtl_keras")
class CrossStitch(keras.layers.Layer):
    """A cross-stitch unit (Misra et al., "Cross-stitch Networks for
    Multi-task Learning", CVPR 2016).

    It mixes the activations of K task columns at the same depth with a
    learned K×K matrix α, at every position and channel (eq. 1 of the
    paper, for K tasks):

        x̃_i = Σ_j α_ij x_j.

    α is initialised as in the paper, with convex combinations: `α_ii =
    self_weight` (0.9, the paper's best-performing initialisation
    (α_S, α_D) = (0.9, 0.1)) and `α_ij = (1 − self_weight) / (K − 1)`.
    Input: a list of K tensors of one shape; output: the list of K mixed
    tensors. Use `cross_stitch_columns` to build the columns and insert the
    units.

    Shared parameters: α reaches every task.

    Args:
        self_weight: initial diagonal of α, in [0, 1].
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    ```python
    a, b = keras.Input((8,)), keras.Input((8,))
    mixed_a, mixed_b = mtl_keras.architectures.CrossStitch()([a, b])
    ```
    """

    def __init__(self, self_weight: float = 0.9, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= self_weight <= 1.0:
            raise ValueError(f"CrossStitch: self_weight must be in [0, 1], got "
                             f"{self_weight}.")
        self.self_weight = float(self_weight)

    def build(self, input_shape: Any) -> None:
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) < 2 or \
                not isinstance(input_shape[0], (list, tuple)):
            raise ValueError(f"CrossStitch '{self.name}' mixes a list of at least "
                             f"two task tensors, got input shape {input_shape}.")
        shapes = {tuple(shape[1:]) for shape in input_shape}
        if len(shapes) != 1:
            raise ValueError(f"CrossStitch '{self.name}': the task tensors must "
                             f"have one shape, got {list(input_shape)}.")
        num_tasks = len(input_shape)
        other = (1.0 - self.self_weight) / (num_tasks - 1)
        initial = np.full((num_tasks, num_tasks), other, "float32")
        np.fill_diagonal(initial, self.self_weight)
        self.alpha = self.add_weight(
            name="alpha", shape=(num_tasks, num_tasks),
            initializer=keras.initializers.Constant(initial))

    def call(self, inputs: Any) -> Any:
        stacked = ops.stack(inputs, axis=-1)  # (..., K)
        mixed = ops.einsum("...j,ij->...i", stacked, ops.cast(self.alpha,
                                                                stacked.dtype))
        return ops.unstack(mixed, num=len(inputs), axis=-1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return list(input_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "self_weight": self.self_weight}
