"""GradDrop (Chen et al., 2020): gradient sign dropout."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers.base import JacobianBalancer
from mtl_keras.balancers.registry import register


def sign_purity(jacobian):
    """`P = ½(1 + Σ_k g_k / Σ_k |g_k|)` per coordinate, in [0, 1].

    1 where every task's gradient is positive, 0 where every one is
    negative; 0.5 where the gradients vanish (1e-7 guards the division, as
    in LibMTL).
    """
    total = ops.sum(jacobian, axis=0)
    magnitude = ops.sum(ops.abs(jacobian), axis=0)
    return 0.5 * (1.0 + total / (magnitude + 1e-7))


def graddrop_mask(jacobian, purity, uniform):
    """1 where a task's gradient has the sign drawn for its coordinate.

    The positive sign is kept where `P > U`, the negative one where `P < U`,
    with `U ~ Uniform(0, 1)` per coordinate.
    """
    keep_positive = (purity > uniform)[None] & (jacobian > 0.0)
    keep_negative = (purity < uniform)[None] & (jacobian < 0.0)
    return ops.cast(keep_positive | keep_negative, jacobian.dtype)


@register("graddrop")
class GradDrop(JacobianBalancer):
    """Keeps, per coordinate, only the gradients of one randomly drawn sign.

    Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with
    Gradient Sign Dropout", NeurIPS 2020. Per coordinate of the task
    gradients, the sign purity `P = ½(1 + Σg/Σ|g|)` gives the probability of
    keeping the positive components (else the negative ones); the update is
    `Σ_k (leak_k + (1 − leak_k)·mask_k)·g_k`. The draws come from a
    `keras.random.SeedGenerator` whose state is a weight of this layer.

    GradDrop needs the Jacobian itself (a `JacobianBalancer`); the task
    heads keep weight 1. The paper computes the purity on activations,
    summing `g·sign(input)` over the batch; here it is computed per
    coordinate of whatever the model differentiates (shared parameters, or
    the flattened representation in `mode="rep"`), like torchjd's
    aggregator.

    Args:
        leak: Fraction of each gradient that always passes, a float or one
            per task (0 by default, as in LibMTL and torchjd).
        seed: Seed of the random draws (an int), or None.
        mode: `"params"` or `"rep"`, see `GradientBalancer`.

    Example:

    ```python
    balancer = mtl_keras.balancers.GradDrop(seed=0)
    update, head_weights = balancer.direction([1.0, 1.0], jacobian)
    ```
    """

    def __init__(
        self,
        leak: float | list[float] = 0.0,
        seed: int | None = None,
        mode: str = "params",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, name=name, **kwargs)
        self.leak = (
            float(leak) if isinstance(leak, (int, float)) else [float(x) for x in leak]
        )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def compute_direction(
        self, task_losses: Tensor, jacobian: Tensor
    ) -> tuple[Tensor, Tensor]:
        purity = sign_purity(jacobian)
        uniform = keras.random.uniform(ops.shape(purity), seed=self.seed_generator)
        mask = graddrop_mask(jacobian, purity, uniform)
        leak = ops.convert_to_tensor(self.leak, dtype=jacobian.dtype)
        leak = ops.reshape(leak, (-1, 1)) if len(leak.shape) else leak
        update = ops.sum((leak + (1.0 - leak) * mask) * jacobian, axis=0)
        return update, ops.ones_like(task_losses)

    def get_config(self) -> dict:
        return {**super().get_config(), "leak": self.leak, "seed": self.seed}
