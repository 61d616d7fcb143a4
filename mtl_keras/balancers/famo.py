"""FAMO (Liu et al., 2023): fast adaptive multitask optimisation."""

from __future__ import annotations

from typing import Any

from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers.base import LossBalancer
from mtl_keras.balancers.registry import register
from mtl_keras.balancers.solvers import adam_update


@register("famo")
class FAMO(LossBalancer):
    """Balances the tasks' rates of log-loss decrease with learned logits.

    Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.
    With logits ξ (non-trainable weight, start 0), `z = softmax(ξ)` and the
    gaps `D_k = L_k − L*_k + ε`, the model minimises
    `c·Σ_k z_k log D_k`, `c = (Σ_k z_k / D_k)⁻¹` held constant; its gradient
    is that of `Σ_k w_k L_k` with the constant weights

        w_k = c · z_k / D_k,

    which is what `compute_weights` returns (gradient stopped) and what the
    default `total_loss` sums. After the optimizer step the model recomputes
    the losses on the same batch, in training mode as the reference does,
    and calls
    `update_after_step(losses_before, losses_after)`: with
    `δ_k = log D_k(before) − log D_k(after)`, the gradient of ξ is the
    softmax Jacobian applied to δ, `z ⊙ (δ − zᵀδ)`, plus the weight decay
    `γ·ξ`, and ξ takes one Adam step (moments stored as weights).

    Missing labels: a task with `L_k ≤ L*_k` (for instance a loss of 0 on a
    batch without its labels) would get `D_k = ε` and take all the weight;
    here it gets weight 0 and `δ_k = 0` instead. The pass after the step
    reuses the step's own dropout masks and changes no state (the
    reference draws new masks and updates batch norm twice), so δ measures
    the update alone. Otherwise the formulas are the reference's. Gradient
    clipping (the reference's `max_norm`) is the optimizer's job
    (`clipnorm`).

    Args:
        gamma: Weight decay γ of the logits (1e-3; the paper uses 1e-2 on
            Cityscapes).
        learning_rate: Adam step size of the logits (0.025).
        min_losses: Optional per-task lower bounds L* (default 0).
        epsilon: ε in `D_k` (1e-8).

    Example:

    ```python
    balancer = mtl_keras.balancers.FAMO()
    weights = balancer.balance([0.5, 2.0])        # [0.8, 0.2]
    balancer.update_after_step([0.5, 2.0], [0.4, 1.9])
    ```
    """

    needs_post_step_losses = True

    def __init__(
        self,
        gamma: float = 1e-3,
        learning_rate: float = 0.025,
        min_losses: list[float] | None = None,
        epsilon: float = 1e-8,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.gamma = float(gamma)
        self.learning_rate = float(learning_rate)
        self.min_losses = None if min_losses is None else [float(x) for x in min_losses]
        self.epsilon = float(epsilon)

    def build_state(self, num_tasks: int) -> None:
        if self.min_losses is not None and len(self.min_losses) != num_tasks:
            raise ValueError(
                f"FAMO: {len(self.min_losses)} min_losses for {num_tasks} tasks."
            )

        def state(name, shape=(num_tasks,)):
            return self.add_weight(
                shape=shape, initializer="zeros", trainable=False, name=name
            )

        self.logits = state("logits")
        self.first_moment = state("first_moment")
        self.second_moment = state("second_moment")
        self.step_counter = state("step", shape=())

    def _gaps(self, task_losses):
        """`(L − L*, active)`: the gap to the lower bound and where it is > 0."""
        task_losses = ops.convert_to_tensor(task_losses, dtype="float32")
        if self.min_losses is not None:
            task_losses = task_losses - ops.convert_to_tensor(self.min_losses)
        return task_losses, task_losses > 0.0

    def compute_weights(self, task_losses: Tensor) -> Tensor:
        gaps, active = self._gaps(ops.stop_gradient(task_losses))
        probabilities = ops.softmax(ops.convert_to_tensor(self.logits))
        ratios = ops.where(active, probabilities / (gaps + self.epsilon), 0.0)
        return ratios / ops.maximum(ops.sum(ratios), 1e-30)

    def update_after_step(
        self, losses_before: Tensor, losses_after: Tensor
    ) -> None:
        self.ensure_built(ops.convert_to_tensor(losses_before, dtype="float32"))
        before, active_before = self._gaps(losses_before)
        after, active_after = self._gaps(losses_after)
        valid = active_before & active_after
        # Clamped so that the discarded branch of `where` stays finite.
        log_before = ops.log(ops.maximum(before, 0.0) + self.epsilon)
        log_after = ops.log(ops.maximum(after, 0.0) + self.epsilon)
        improvement = ops.where(valid, log_before - log_after, 0.0)
        logits = ops.convert_to_tensor(self.logits)
        probabilities = ops.softmax(logits)
        gradient = probabilities * (improvement - ops.sum(probabilities * improvement))
        gradient = gradient + self.gamma * logits
        delta = adam_update(self, gradient)
        self.logits.assign(logits + delta)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "gamma": self.gamma,
            "learning_rate": self.learning_rate,
            "min_losses": self.min_losses,
            "epsilon": self.epsilon,
        }
