"""PCGrad (Yu et al., 2020), through the Gramian."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers.base import GramianBalancer
from mtl_keras.balancers.registry import register
from mtl_keras.balancers.solvers import normalize_gramian


def random_orders(num_tasks: int, seed_generator):
    """One random permutation of `range(num_tasks)` per row, shape (K, K)."""
    keys = keras.random.uniform((num_tasks, num_tasks), seed=seed_generator)
    return ops.argsort(keys, axis=-1)


def fixed_orders(num_tasks: int):
    """Every row visits the tasks in index order, shape (K, K)."""
    return ops.tile(ops.arange(num_tasks)[None], (num_tasks, 1))


def project_conflicting(gramian, orders):
    """Coefficients of PCGrad's projected gradients on the original ones.

    Row i of the result holds `c_i` with `g_i^PC = Σ_j c_ij g_j`: starting
    from `c_i = e_i`, for each task j in `orders[i]` (skipping i itself), if
    `g_i^PC · g_j < 0` then `g_i^PC ← g_i^PC − (g_i^PC · g_j / ‖g_j‖²) g_j`.
    Inner products come from the Gramian: `g_i^PC · g_j = (c_i M)_j`. The
    rows i are processed in parallel, which is what the sequential loop
    computes since each row only reads the original gradients.

    Args:
        gramian: Tensor (K, K).
        orders: Integer tensor (K, K); row i is a permutation of the tasks.

    Returns:
        Tensor (K, K) of coefficients.
    """
    gramian = normalize_gramian(gramian)
    num = gramian.shape[0]
    squared_norms = ops.diagonal(gramian)
    rows = ops.arange(num)
    coefficients = ops.eye(num, dtype=gramian.dtype)
    for position in range(num):
        others = orders[:, position]
        basis = ops.one_hot(others, num, dtype=gramian.dtype)
        inner = ops.sum(ops.matmul(coefficients, gramian) * basis, axis=-1)
        other_norm = ops.take(squared_norms, others)
        conflict = (inner < 0.0) & (others != rows) & (other_norm > 1e-12)
        step = ops.where(conflict, inner / ops.where(conflict, other_norm, 1.0), 0.0)
        coefficients = coefficients - ops.expand_dims(step, -1) * basis
    return coefficients


@register("pcgrad")
class PCGrad(GramianBalancer):
    """Projecting conflicting gradients, written on the Gramian.

    Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020. For
    each task i and each other task j, in a random order, a conflicting
    component is removed: if `g_i^PC · g_j < 0`,
    `g_i^PC ← g_i^PC − (g_i^PC · g_j / ‖g_j‖²) g_j` (always against the
    original `g_j`). The update is `Σ_i g_i^PC`. Every projected gradient is
    a linear combination of the original ones, so the method only needs the
    Gramian; the returned weights are the summed coefficients.

    About the order: the paper shuffles the other tasks for every i and
    every step (the official TF code's shuffle happens to be a no-op, the
    PyTorch ports shuffle). Here, with `shuffle=True` (default), each row i
    draws its own permutation every step from a `keras.random.SeedGenerator`
    whose state is a weight of this layer, so it is saved and restored and a
    run with a fixed `seed` is reproducible. `shuffle=False` visits the
    tasks in index order (deterministic, permutation-equivariant only up to
    that order).

    Args:
        shuffle: Random order per task and step (True) or index order.
        seed: Seed of the order (an int), or None for a random seed.
        mode: `"params"` or `"rep"`, see `GradientBalancer`.

    Example:

    ```python
    balancer = mtl_keras.balancers.PCGrad(seed=0)
    balancer.balance([1.0, 1.0], [[1.0, -0.5], [-0.5, 1.0]])  # [1.5, 1.5]
    ```
    """

    def __init__(
        self,
        shuffle: bool = True,
        seed: int | None = None,
        mode: str = "params",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, name=name, **kwargs)
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def task_orders(self, num_tasks: int) -> Tensor:
        """The visiting order of this step, one row per task."""
        if self.shuffle:
            return random_orders(num_tasks, self.seed_generator)
        return fixed_orders(num_tasks)

    def compute_weights(self, task_losses: Tensor, gramian: Tensor) -> Tensor:
        orders = self.task_orders(gramian.shape[0])
        return ops.sum(project_conflicting(gramian, orders), axis=0)

    def get_config(self) -> dict:
        return {**super().get_config(), "shuffle": self.shuffle, "seed": self.seed}
