"""Dropout that zeroes units without rescaling the kept ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from mtl_keras._typing import Tensor


@keras.saving.register_keras_serializable(package="mtl_keras")
class UnscaledDropout(keras.layers.Layer):
    """Zeroes each unit with probability `rate` in training; never rescales.

    Unlike `keras.layers.Dropout`, the kept units are not divided by
    `1 - rate`, and inference returns the inputs unchanged: training sees
    activations about `1 - rate` times those of inference. This is how the
    reference MultiMNIST network of Sener & Koltun (2018) applies its dropout
    masks (`multi_task/models/multi_lenet.py` of
    github.com/isl-org/MultiObjectiveOptimization: a Bernoulli(0.5) mask
    multiplied in, lines 14-27 and 39-45), so reproducing their numbers needs it.

    Args:
        rate: probability of zeroing a unit, in [0, 1).
        noise_shape: shape of the mask, broadcast over the inputs; `None`
            entries take the input's size. `(1, 1, 1, channels)` drops whole
            feature maps with one mask for the whole batch, as the reference
            trunk does. None: one draw per unit.
        seed: seed of the masks.
        **kwargs: passed to `keras.layers.Layer`.

    Example:

    ```python
    layer = UnscaledDropout(0.5, noise_shape=(1, 1, 1, None))
    outputs = layer(keras.ops.ones((2, 4, 4, 3)), training=True)  # 0 or 1
    ```
    """

    def __init__(self, rate: float, noise_shape: Sequence[int | None] | None = None,
                 seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be in [0, 1), got {rate}.")
        self.rate = float(rate)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def _mask_shape(self, inputs):
        shape = keras.ops.shape(inputs)
        if self.noise_shape is None:
            return shape
        return tuple(shape[axis] if size is None else size
                     for axis, size in enumerate(self.noise_shape))

    def call(self, inputs: Tensor, training: bool = False) -> Tensor:
        if not training or self.rate == 0.0:
            return inputs
        draws = keras.random.uniform(self._mask_shape(inputs),
                                     seed=self.seed_generator)
        mask = keras.ops.cast(draws >= self.rate, inputs.dtype)
        return inputs * mask

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate,
                "noise_shape": self.noise_shape, "seed": self.seed}
