"""`SoftmaxGate`: the mixture-of-experts gate of MMoE and PLE."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mtl_keras")
class SoftmaxGate(keras.layers.Layer):
    """The softmax gate of a mixture of experts: `g(x) = softmax(W x)`.

    This is the gate of MMoE (Ma et al., KDD 2018, eq. 6, no bias) and of the
    extraction layers of CGC/PLE (Tang et al., RecSys 2020, eq. 3). It maps
    the gate's input `x` (`(..., d)`) to mixture weights `(..., num_experts)`
    that are positive and sum to 1; `MMoE`, `CGC` and `PLE` build one per
    task (`gate="softmax"`, their default).

    Args:
        num_experts: E, the number of experts mixed.
        use_bias: whether `W x` has a bias (the papers have none).
        kernel_initializer: initializer of `W`.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    ```python
    gate = mtl_keras.architectures.SoftmaxGate(num_experts=4)
    weights = gate(keras.ops.ones((2, 8)))  # shape (2, 4), rows sum to 1
    ```
    """

    def __init__(self, num_experts: int, use_bias: bool = False,
                 kernel_initializer: Any = "glorot_uniform",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_experts) < 1:
            raise ValueError(f"SoftmaxGate needs num_experts >= 1, got {num_experts}.")
        self.num_experts = int(num_experts)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.logits = keras.layers.Dense(
            self.num_experts, use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer, name="logits",
            dtype=self.dtype_policy)

    def build(self, input_shape: Any) -> None:
        self.logits.build(input_shape)

    def call(self, inputs: Any) -> Any:
        return ops.softmax(self.logits(inputs), axis=-1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (*input_shape[:-1], self.num_experts)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_experts": self.num_experts,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
