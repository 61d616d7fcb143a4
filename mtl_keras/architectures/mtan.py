"""`MTANAttention`: task attention of MTAN (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mtl_keras._typing import Tensor


@keras.saving.register_keras_serializable(package="mtl_keras")
class MTANAttention(keras.layers.Layer):
    """Task-specific soft-attention masks over shared features, the attention
    module of MTAN (Liu, Johns & Davison, "End-to-End Multi-Task Learning
    with Attention", CVPR 2019).

    For each task i, a mask computed from the shared features `p` (and, from
    the second module on, that task's attended features of the module below,
    `â_prev^(i)`, brought to `p`'s spatial size by the caller) selects
    features of `p` (eq. 1 of the paper):

        a^(i) = sigmoid(W2_i relu(W1_i [p ; â_prev^(i)])),   â^(i) = a^(i) ⊙ p.

    `W1_i`, `W2_i` act on the last axis: 1×1 convolutions on feature maps
    `(batch, H, W, C)`, dense layers on vectors `(batch, C)`. The paper adds
    batch normalisation after each; left out here so that a training step
    depends only on its batch (add it in the backbone if wanted). Output:
    the list `[â^(1), ..., â^(K)]`, each of `p`'s shape.

    Shared parameters: the backbone computing `p` reaches every task; task
    i's mask reaches only task i.

    Args:
        num_tasks: K.
        hidden_units: width of `W1` (default: `p`'s channels, as the paper's
            masks keep the channel count).
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    ```python
    image = keras.Input((16, 16, 3), name="image")
    p1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    first = mtl_keras.architectures.MTANAttention(num_tasks=2)(p1)
    p2 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(p1)
    second = mtl_keras.architectures.MTANAttention(num_tasks=2)(p2, first)
    ```
    """

    def __init__(self, num_tasks: int, hidden_units: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_tasks) < 1:
            raise ValueError(f"MTANAttention needs num_tasks >= 1, got {num_tasks}.")
        self.num_tasks = int(num_tasks)
        self.hidden_units = None if hidden_units is None else int(hidden_units)

    def build(self, features_shape: Any, previous_shape: Any = None) -> None:
        channels = int(features_shape[-1])
        mask_input = list(features_shape)
        if previous_shape is not None:
            if len(previous_shape) != self.num_tasks:
                raise ValueError(
                    f"MTANAttention '{self.name}': `previous` must hold one tensor "
                    f"per task ({self.num_tasks}), got {len(previous_shape)}.")
            mask_input[-1] = channels + int(previous_shape[0][-1])
        hidden = self.hidden_units or channels
        self.hidden_layers, self.mask_layers = [], []
        for task in range(self.num_tasks):
            first = keras.layers.Dense(hidden, activation="relu",
                                       name=f"hidden_{task}", dtype=self.dtype_policy)
            second = keras.layers.Dense(channels, activation="sigmoid",
                                        name=f"mask_{task}", dtype=self.dtype_policy)
            first.build(tuple(mask_input))
            second.build((*mask_input[:-1], hidden))
            self.hidden_layers.append(first)
            self.mask_layers.append(second)

    def masks(
        self, features: Tensor, previous: Tensor | None = None
    ) -> Tensor:
        """The attention masks `[a^(1), ..., a^(K)]`, values in (0, 1)."""
        masks = []
        for task in range(self.num_tasks):
            x = features
            if previous is not None:
                x = ops.concatenate([features, previous[task]], axis=-1)
            masks.append(self.mask_layers[task](self.hidden_layers[task](x)))
        return masks

    def call(
        self, features: Tensor, previous: Tensor | None = None
    ) -> Tensor:
        return [mask * features for mask in self.masks(features, previous)]

    def compute_output_shape(
        self, features_shape: Any, previous_shape: Any = None
    ) -> Any:
        return [tuple(features_shape)] * self.num_tasks

    def get_config(self) -> dict:
        return {**super().get_config(), "num_tasks": self.num_tasks,
                "hidden_units": self.hidden_units}
