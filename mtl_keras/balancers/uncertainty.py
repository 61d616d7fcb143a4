"""Uncertainty weighting (Kendall, Gal & Cipolla, 2018)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.balancers.base import LossBalancer
from mtl_keras.balancers.registry import register

_FORMS = ("standard", "kendall_keras", "positive")


@register("uw")
class UncertaintyWeighting(LossBalancer):
    """Learns one homoscedastic uncertainty per task.

    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
    Losses for Scene Geometry and Semantics", CVPR 2018.

    With learnable `s_k = log σ_k²`, the objective depends on `form`:

    - `"standard"` (default, as in MTAN/LibMTL):
      `Σ_k 0.5·exp(−s_k)·L_k + 0.5·s_k`.
    - `"kendall_keras"` (the authors' Keras demo): `Σ_k exp(−s_k)·L_k + s_k`.
    - `"positive"` (a regulariser that stays positive), with learnable `c_k`:
      `Σ_k 0.5/c_k²·L_k + log(1 + c_k²)`; `c` starts at 1.

    The log-variances are trainable weights of this layer, so the model's
    optimizer learns them with the network and they are saved with it.

    Args:
        form: One of `"standard"`, `"kendall_keras"`, `"positive"`.
        initial_log_variance: Start value of `s` (MTAN/LibMTL use −0.5,
            torchjd 0). Ignored by `"positive"`, where `c` starts at 1.

    Example:

    ```python
    model.compile(optimizer="adam", loss=losses,
                  balancer=mtl_keras.balancers.UncertaintyWeighting())
    ```
    """

    def __init__(
        self,
        form: str = "standard",
        initial_log_variance: float = -0.5,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if form not in _FORMS:
            raise ValueError(
                f"UncertaintyWeighting: form must be one of {_FORMS}, got {form!r}."
            )
        self.form = form
        self.initial_log_variance = float(initial_log_variance)

    def build_state(self, num_tasks: int) -> None:
        initial = 1.0 if self.form == "positive" else self.initial_log_variance
        self.log_variances = self.add_weight(
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(initial),
            trainable=True,
            name="log_variances" if self.form != "positive" else "scales",
        )

    def compute_weights(self, task_losses: Tensor) -> Tensor:
        params = ops.cast(self.log_variances, "float32")
        if self.form == "standard":
            return 0.5 * ops.exp(-params)
        if self.form == "kendall_keras":
            return ops.exp(-params)
        return 0.5 / ops.square(params)

    def regularizer(self) -> Tensor:
        params = ops.cast(self.log_variances, "float32")
        if self.form == "standard":
            return 0.5 * ops.sum(params)
        if self.form == "kendall_keras":
            return ops.sum(params)
        return ops.sum(ops.log1p(ops.square(params)))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "form": self.form,
            "initial_log_variance": self.initial_log_variance,
        }
