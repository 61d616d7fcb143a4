"""DB-MTL (Lin et al., 2023): dual-balancing multi-task learning."""

from __future__ import annotations

from typing import Any

from keras import ops

from mtl_keras import _compat
from mtl_keras._typing import Tensor
from mtl_keras.balancers.base import JacobianBalancer
from mtl_keras.balancers.registry import register

_EPS = 1e-8


@register("db_mtl")
class DBMTL(JacobianBalancer):
    """Balances log-losses, then rescales every task to the largest gradient.

    Lin et al., "Dual-Balancing for Multi-Task Learning", 2023 (LibMTL's
    `DB_MTL`). Loss scale: each task minimises `log(L_k + ε)`, whose
    gradient is `g_k / (L_k + ε)`. Gradient magnitude: an exponential moving
    average of those gradients,

        m_k ← β_t m_k + (1 − β_t) g_k / (L_k + ε),   β_t = β / t^σ,

    (m starts at 0, as in the reference: no bias correction), and the shared
    update is `Σ_k (max_j ‖m_j‖ / ‖m_k‖)·m_k`: every task contributes with
    the norm of the largest. The heads get the log-loss gradient, i.e.
    weights `1/(L_k + ε)`.

    The EMA is a (K, P) non-trainable weight, P the number of shared
    gradient coordinates, created by `build_for_jacobian(P)` (the model calls
    it; otherwise it is created at the first `direction` call from the
    Jacobian's static shape). It needs `mode="params"`: representation
    gradients change with the batch, so an average over steps has no
    meaning (LibMTL refuses them too).

    Args:
        beta: EMA rate β (0.9).
        beta_sigma: Decay exponent σ of `β_t = β / t^σ` (0: constant β,
            LibMTL's default).
        mode: Must be `"params"`.

    Example:

    ```python
    balancer = mtl_keras.balancers.DBMTL()
    update, head_weights = balancer.direction(task_losses, jacobian)
    ```
    """

    def __init__(
        self,
        beta: float = 0.9,
        beta_sigma: float = 0.0,
        mode: str = "params",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, name=name, **kwargs)
        if mode != "params":
            raise ValueError(
                "DBMTL averages gradients over steps and needs mode='params'; "
                f"got mode={mode!r}."
            )
        self.beta = float(beta)
        self.beta_sigma = float(beta_sigma)
        self.num_params: int | None = None

    def build_state(self, num_tasks: int) -> None:
        self.step_counter = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="step"
        )

    def build_for_jacobian(self, num_params: int) -> None:
        """Creates the (K, P) gradient EMA; needs the number of tasks known."""
        num_params = int(num_params)
        if self.num_params is not None:
            if num_params != self.num_params:
                raise ValueError(
                    f"DBMTL was built for {self.num_params} shared gradient "
                    f"coordinates, now given {num_params}."
                )
            return
        if self.num_tasks is None:
            raise ValueError("DBMTL.build_for_jacobian needs the tasks first.")
        # Keras locks a layer's state once `build` has run; this weight can
        # only be sized once the model knows P.
        with _compat.unlocked_state(self):
            self.gradient_average = self.add_weight(
                shape=(self.num_tasks, num_params),
                initializer="zeros",
                trainable=False,
                name="gradient_average",
            )
        self.num_params = num_params

    def compute_direction(
        self, task_losses: Tensor, jacobian: Tensor
    ) -> tuple[Tensor, Tensor]:
        log_gradients = jacobian / (task_losses[:, None] + _EPS)
        step = ops.convert_to_tensor(self.step_counter) + 1.0
        rate = self.beta / ops.power(step, self.beta_sigma)
        previous = ops.convert_to_tensor(self.gradient_average)
        average = log_gradients + rate * (previous - log_gradients)
        self.gradient_average.assign(average)
        self.step_counter.assign(step)
        norms = ops.sqrt(ops.sum(average * average, axis=1))
        scales = ops.max(norms) / (norms + _EPS)
        update = ops.sum(scales[:, None] * average, axis=0)
        return update, 1.0 / (task_losses + _EPS)

    def get_build_config(self) -> dict:
        config = super().get_build_config()
        if self.num_params is not None:
            config["num_params"] = self.num_params
        return config

    def build_from_config(self, config: dict) -> None:
        super().build_from_config(config)
        if config.get("num_params"):
            self.build_for_jacobian(config["num_params"])

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "beta": self.beta,
            "beta_sigma": self.beta_sigma,
        }
