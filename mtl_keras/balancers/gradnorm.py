"""GradNorm (Chen et al., 2018)."""

from __future__ import annotations

from typing import Any

from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers.base import GramianBalancer
from mtl_keras.balancers.registry import register
from mtl_keras.balancers.solvers import adam_update

# Weights are kept above this before renormalisation, so none turns negative.
_MIN_WEIGHT = 1e-3


def gradnorm_gradient(weights, gramian, loss_ratios, alpha: float):
    """Gradient in w of `Σ_i |G_i − Ḡ·r_i^α|` with the target held constant.

    `G_i = w_i·‖g_i‖` (the norm of the gradient of `w_i L_i`), Ḡ their mean,
    `r_i = L̃_i / mean(L̃)` the relative inverse training rates. With the
    target constant (as in the paper), `∂/∂w_i = sign(G_i − target_i)·‖g_i‖`.
    """
    norms = ops.sqrt(ops.maximum(ops.diagonal(gramian), 0.0))
    grad_norms = weights * norms
    relative = loss_ratios / ops.maximum(ops.mean(loss_ratios), 1e-12)
    target = ops.mean(grad_norms) * ops.power(relative, alpha)
    return ops.sign(grad_norms - target) * norms


@register("gradnorm")
class GradNorm(GramianBalancer):
    """Learns task weights that equalise the tasks' training rates.

    Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss
    Balancing in Deep Multitask Networks", ICML 2018. Weights `w` (start 1)
    are non-trainable variables updated here, once per call:

    - `G_i = w_i·sqrt(M_ii)`, the gradient norm of the weighted task loss
      (over all shared variables, or the representation in `mode="rep"`;
      the paper uses the last shared layer);
    - `L̃_i = L_i / L_i(0)` with `L_i(0)` the first positive loss of task i
      seen (recorded in a weight), `r_i = L̃_i / mean(L̃)`;
    - `L_grad = Σ|G_i − mean(G)·r_i^α|`, the target held constant, so its
      gradient has the closed form of `gradnorm_gradient` (no second-order
      tape);
    - one Adam step (moments stored as weights) with `learning_rate`, then
      `w ← K·w / Σw`.

    Adam rather than SGD: `∂L_grad/∂w_i = ±‖g_i‖` scales with the model's
    gradient norms, which vary by orders of magnitude between models, while
    an Adam step is about `learning_rate` in weight units whatever that
    scale, which is what the usual `learning_rate = 0.025` assumes.

    The weights returned are the ones before this call's update: the step's
    loss uses them, the next step the updated ones.

    Args:
        alpha: The restoring-force strength α (1.5 on NYUv2, 0.12 on the
            paper's toy problem).
        learning_rate: Adam step size of the weights.
        mode: `"params"` or `"rep"`, see `GradientBalancer`.

    Example:

    ```python
    balancer = mtl_keras.balancers.GradNorm(alpha=1.5)
    balancer.balance([0.7, 2.1], [[1.0, 0.0], [0.0, 4.0]])  # [1.0, 1.0]
    ```
    """

    def __init__(
        self,
        alpha: float = 1.5,
        learning_rate: float = 0.025,
        mode: str = "params",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, name=name, **kwargs)
        self.alpha = float(alpha)
        self.learning_rate = float(learning_rate)

    def build_state(self, num_tasks: int) -> None:
        def state(name, initializer="zeros", shape=(num_tasks,)):
            return self.add_weight(
                shape=shape, initializer=initializer, trainable=False, name=name
            )

        self.task_weights = state("task_weights", "ones")
        self.initial_losses = state("initial_losses")
        self.has_initial_loss = state("has_initial_loss")
        self.first_moment = state("first_moment")
        self.second_moment = state("second_moment")
        self.step_counter = state("step", shape=())

    def _loss_ratios(self, task_losses):
        """`L_i / L_i(0)`, recording `L_i(0)` at the first positive loss."""
        has_initial = ops.convert_to_tensor(self.has_initial_loss)
        record = (has_initial == 0.0) & (task_losses > 0.0)
        initial = ops.where(
            record, task_losses, ops.convert_to_tensor(self.initial_losses))
        has_initial = ops.where(record, 1.0, has_initial)
        self.initial_losses.assign(initial)
        self.has_initial_loss.assign(has_initial)
        safe_initial = ops.where(has_initial > 0.0, initial, 1.0)
        return ops.where(has_initial > 0.0, task_losses / safe_initial, 1.0)

    def compute_weights(self, task_losses: Tensor, gramian: Tensor) -> Tensor:
        # A snapshot: the state is read from the stateless scope's mapping.
        weights = ops.copy(self.task_weights.value)
        gradient = gradnorm_gradient(
            weights, gramian, self._loss_ratios(task_losses), self.alpha
        )
        delta = adam_update(self, gradient)
        updated = ops.maximum(weights + delta, _MIN_WEIGHT)
        self.task_weights.assign(updated * weights.shape[0] / ops.sum(updated))
        return weights

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "learning_rate": self.learning_rate,
        }
