"""GradVac (Wang et al., 2021): gradient vaccine, through the Gramian."""

from __future__ import annotations

from typing import Any

from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers.pcgrad import PCGrad
from mtl_keras.balancers.registry import register
from mtl_keras.balancers.solvers import normalize_gramian

_EPS = 1e-8


def vaccinate(gramian, orders, targets, beta: float):
    """GradVac's pairwise corrections, as coefficients on the raw gradients.

    For each task i and each other task j in `orders[i]`: with the current
    `g_i' = Σ c_i g` and `φ_ij = cos(g_i', g_j)`, if `φ_ij < φ̂_ij` then

        g_i' ← g_i' + ‖g_i'‖ (φ̂ sqrt(1 − φ²) − φ sqrt(1 − φ̂²))
                      / (‖g_j‖ sqrt(1 − φ̂²)) · g_j,

    which sets the cosine to the target φ̂_ij; and every visited pair updates
    its target `φ̂_ij ← (1 − β) φ̂_ij + β φ_ij` (the paper's EMA).

    Args:
        gramian: Tensor (K, K).
        orders: Integer tensor (K, K); row i is a permutation of the tasks.
        targets: Tensor (K, K), the EMA targets φ̂ before this step.
        beta: EMA rate.

    Returns:
        `(coefficients (K, K), new_targets (K, K))`.
    """
    gramian = normalize_gramian(gramian)
    num = gramian.shape[0]
    norms = ops.sqrt(ops.maximum(ops.diagonal(gramian), 0.0))
    rows = ops.arange(num)
    coefficients = ops.eye(num, dtype=gramian.dtype)
    new_targets = targets
    for position in range(num):
        others = orders[:, position]
        basis = ops.one_hot(others, num, dtype=gramian.dtype)
        products = ops.matmul(coefficients, gramian)
        inner = ops.sum(products * basis, axis=-1)
        own_norm = ops.sqrt(ops.maximum(ops.sum(products * coefficients, -1), 0.0))
        other_norm = ops.take(norms, others)
        cosine = ops.clip(inner / (own_norm * other_norm + _EPS), -1.0, 1.0)
        target = ops.sum(targets * basis, axis=-1)
        visited = (others != rows) & (own_norm > 1e-6) & (other_norm > 1e-6)
        sine = ops.sqrt(1.0 - cosine * cosine)
        target_sine = ops.sqrt(ops.maximum(1.0 - target * target, 0.0))
        step = (
            own_norm
            * (target * sine - cosine * target_sine)
            / (other_norm * target_sine + _EPS)
        )
        step = ops.where(visited & (cosine < target), step, 0.0)
        coefficients = coefficients + ops.expand_dims(step, -1) * basis
        moved = ops.where(visited, beta * (cosine - target), 0.0)
        new_targets = new_targets + ops.expand_dims(moved, -1) * basis
    return coefficients, new_targets


@register("gradvac")
class GradVac(PCGrad):
    """Gradient vaccine: raises pairwise gradient cosines to adaptive targets.

    Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021. A
    generalisation of PCGrad: instead of only removing conflicts (target
    cosine 0), each pair (i, j) has a target cosine φ̂_ij, an exponential
    moving average of the observed cosines, and `g_i` is corrected along
    `g_j` whenever their cosine falls below it (see `vaccinate`). The update
    is the sum of the corrected gradients; every one is a combination of
    the original gradients, so the Gramian suffices.

    This is the whole-model variant (LibMTL's `group_type=0`): one cosine
    per pair over all shared parameters. The layer-wise and matrix-wise
    variants of the paper are not implemented. The targets φ̂ (K×K, start 0)
    are a non-trainable weight. `beta = 0.01` as in the paper (torchjd
    too); LibMTL's default is 0.5. Every visited pair updates its EMA, as in
    the paper and in LibMTL since February 2024 (earlier LibMTL versions
    updated it only when a correction was applied, which let targets only
    decrease).

    GradVac generalises PCGrad (target 0 for every pair, no EMA), whose
    random order per task and step it reuses (`shuffle`, `seed`).

    Args:
        beta: EMA rate of the target cosines.
        shuffle: Random order per task and step (True) or index order.
        seed: Seed of the order (an int), or None.
        mode: `"params"` or `"rep"`, see `GradientBalancer`.

    Example:

    ```python
    balancer = mtl_keras.balancers.GradVac(beta=0.01, seed=0)
    weights = balancer.balance([1.0, 1.0], gramian)
    ```
    """

    def __init__(
        self,
        beta: float = 0.01,
        shuffle: bool = True,
        seed: int | None = None,
        mode: str = "params",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(shuffle=shuffle, seed=seed, mode=mode, name=name, **kwargs)
        self.beta = float(beta)

    def build_state(self, num_tasks: int) -> None:
        self.target_cosines = self.add_weight(
            shape=(num_tasks, num_tasks),
            initializer="zeros",
            trainable=False,
            name="target_cosines",
        )

    def compute_weights(self, task_losses: Tensor, gramian: Tensor) -> Tensor:
        coefficients, targets = vaccinate(
            gramian,
            self.task_orders(gramian.shape[0]),
            ops.convert_to_tensor(self.target_cosines),
            self.beta,
        )
        self.target_cosines.assign(targets)
        return ops.sum(coefficients, axis=0)

    def get_config(self) -> dict:
        return {**super().get_config(), "beta": self.beta}
