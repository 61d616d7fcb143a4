"""`DSelectK`: the differentiable top-k gate of Hazimeh et al. (2021)."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from mtl_keras._typing import Tensor

_EPSILON = 1e-6


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """The cubic smooth-step of DSelect-k (Hazimeh et al., 2021, eq. 5).

    `S(t) = 0` for `t <= -gamma/2`, `1` for `t >= gamma/2`, and
    `-2/gamma³ t³ + 3/(2 gamma) t + 1/2` in between: continuously
    differentiable, and exactly 0 or 1 outside a band of width `gamma`.
    """
    cubic = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
    return ops.where(t <= -gamma / 2, ops.zeros_like(t),
                     ops.where(t >= gamma / 2, ops.ones_like(t), cubic))


@keras.saving.register_keras_serializable(package="mtl_keras")
class DSelectK(keras.layers.Layer):
    """The DSelect-k gate (Hazimeh et al., "DSelect-k: Differentiable
    Selection in the Mixture of Experts with Applications to Multi-Task
    Learning", NeurIPS 2021), per-example version.

    Each of `k` selectors picks one expert through `m = ceil(log2 E)`
    smooth binary digits: with `z_i = W_i x` (m values) and `b(j)` the binary
    code of expert j,

        r_i(x)_j = Π_l [b_l(j) S(z_il) + (1 − b_l(j)) (1 − S(z_il))],

    where S is the cubic `smooth_step` of width `gamma`. The gate mixes the
    selectors with `α = softmax(A x)` (k values): `q(x) = Σ_i α_i r_i(x)`,
    at most k experts non-zero once the smooth-steps saturate. Defaults follow
    the authors' code: `gamma = 1`, selector weights initialised uniform in
    `±gamma/100` (every digit starts at S ≈ 1/2, all experts equally weighted).
    When E is not a power of two, `r_i` covers the first E codes and is
    renormalised to sum to 1 (the authors instead penalise the unused codes).

    `entropy_regularization` λ > 0 adds `λ · mean_x Σ_i H(r_i(x))` to the
    model's losses, which pushes each selector to a single expert (the paper's
    regulariser; the authors tune λ, default here 0: off).

    Use it in place of the softmax gate: `MMoE(..., gate="dselect_k")` or
    `gate=DSelectK(num_experts=E, k=2)` (a template copied per task).

    Args:
        num_experts: E, the number of experts.
        k: the number of selectors, hence of non-zero weights at convergence.
        gamma: width of the smooth-step's transition band.
        entropy_regularization: λ of the entropy regulariser.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    ```python
    gate = mtl_keras.architectures.DSelectK(num_experts=8, k=2)
    weights = gate(keras.ops.ones((3, 16)))  # shape (3, 8), rows sum to 1
    ```
    """

    def __init__(self, num_experts: int, k: int = 2, gamma: float = 1.0,
                 entropy_regularization: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        num_experts, k = int(num_experts), int(k)
        if num_experts < 1 or not 1 <= k <= num_experts:
            raise ValueError(
                f"DSelectK needs 1 <= k <= num_experts, got k={k} and "
                f"num_experts={num_experts}.")
        if gamma <= 0 or entropy_regularization < 0:
            raise ValueError(
                f"DSelectK needs gamma > 0 and entropy_regularization >= 0, got "
                f"gamma={gamma}, entropy_regularization={entropy_regularization}.")
        self.num_experts = num_experts
        self.k = k
        self.gamma = float(gamma)
        self.entropy_regularization = float(entropy_regularization)
        self.num_digits = max(1, math.ceil(math.log2(num_experts)))
        codes = (np.arange(num_experts)[:, None] >> np.arange(self.num_digits)) & 1
        self._codes = codes.T.astype("float32")  # (m, E)
        small = keras.initializers.RandomUniform(-self.gamma / 100, self.gamma / 100)
        self.selector_logits = keras.layers.Dense(
            self.k * self.num_digits, kernel_initializer=small,
            name="selector_logits", dtype=self.dtype_policy)
        self.mixture_logits = keras.layers.Dense(
            self.k, name="mixture_logits", dtype=self.dtype_policy)

    def build(self, input_shape: Any) -> None:
        self.selector_logits.build(input_shape)
        self.mixture_logits.build(input_shape)

    def selectors(self, inputs: Tensor) -> Tensor:
        """`r_i(x)`: each selector's weights over the experts, `(..., k, E)`."""
        z = self.selector_logits(inputs)
        z = ops.reshape(z, (*ops.shape(z)[:-1], self.k, self.num_digits, 1))
        s = smooth_step(z, self.gamma)
        codes = ops.cast(self._codes, s.dtype)
        digits = codes * s + (1.0 - codes) * (1.0 - s)  # (..., k, m, E)
        r = ops.prod(digits, axis=-2)
        if self.num_experts != 2**self.num_digits:
            r = r / (ops.sum(r, axis=-1, keepdims=True) + _EPSILON)
        return r

    def call(self, inputs: Any) -> Any:
        r = self.selectors(inputs)
        alpha = ops.softmax(self.mixture_logits(inputs), axis=-1)
        if self.entropy_regularization > 0:
            entropy = -ops.sum(r * ops.log(r + _EPSILON), axis=(-2, -1))
            self.add_loss(self.entropy_regularization * ops.mean(entropy))
        return ops.sum(alpha[..., None] * r, axis=-2)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (*input_shape[:-1], self.num_experts)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_experts": self.num_experts,
            "k": self.k,
            "gamma": self.gamma,
            "entropy_regularization": self.entropy_regularization,
        }
