"""`PLE`: Progressive Layered Extraction (Tang et al., RecSys 2020)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras

from mtl_keras.architectures._experts import check_units, gate_spec
from mtl_keras.architectures.cgc import CGC


@keras.saving.register_keras_serializable(package="mtl_keras")
class PLE(keras.layers.Layer):
    """Progressive Layered Extraction (Tang et al., "Progressive Layered
    Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
    Personalized Recommendations", RecSys 2020).

    A stack of `num_levels` extraction layers (`CGC`). Level j maps the
    task inputs `x_k^{j-1}` and the shared input `x_s^{j-1}` (all `x` at the
    first level) to (eq. 5 of the paper)

        x_k^j = g^{k,j}(x_k^{j-1})ᵀ [E^{k,j}; E^{s,j}],
        x_s^j = g^{s,j}(x_s^{j-1})ᵀ [E^{1,j}; ...; E^{K,j}; E^{s,j}],

    the shared gate existing in every level but the last, which is a plain
    CGC. Returns `[x_1^L, ..., x_K^L]`, one tensor per task tower.

    Shared parameters: every expert and the shared gates of the lower levels
    reach every task; a task's gates, and its last-level experts, reach only
    that task.

    Args:
        num_tasks: K.
        num_levels: L, the number of extraction layers (2 in the paper's
            main experiments).
        num_shared_experts: shared experts per level.
        num_task_experts: experts per task per level.
        expert_units: hidden layer sizes of each expert MLP (an int for one).
        activation: activation of the expert layers.
        gate: "softmax" (the paper's), "dselect_k", or a gate layer template.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    ```python
    inputs = keras.Input((16,), name="x")
    towers = mtl_keras.architectures.PLE(num_tasks=2, num_levels=2)(inputs)
    outputs = {name: keras.layers.Dense(1, name=name)(t)
               for name, t in zip(["ctr", "cvr"], towers)}
    model = mtl_keras.MultiTaskModel(inputs, outputs)
    ```
    """

    def __init__(self, num_tasks: int, num_levels: int = 2,
                 num_shared_experts: int = 1, num_task_experts: int = 1,
                 expert_units: int | Sequence[int] = (16,),
                 activation: str | Callable | None = "relu",
                 gate: str | dict | keras.layers.Layer = "softmax",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_levels) < 1:
            raise ValueError(f"PLE needs num_levels >= 1, got {num_levels}.")
        self.num_tasks = int(num_tasks)
        self.num_levels = int(num_levels)
        self.num_shared_experts = int(num_shared_experts)
        self.num_task_experts = int(num_task_experts)
        self.expert_units = check_units("PLE", expert_units)
        self.activation = keras.activations.get(activation)
        self.gate = gate_spec("PLE", gate)
        self.levels = [
            CGC(self.num_tasks, self.num_shared_experts, self.num_task_experts,
                self.expert_units, self.activation, self.gate,
                shared_output=level < self.num_levels - 1, name=f"level_{level}",
                dtype=self.dtype_policy)
            for level in range(self.num_levels)
        ]

    def build(self, input_shape: Any) -> None:
        shape = input_shape
        for level in self.levels:
            level.build(shape)
            shape = level.compute_output_shape(shape)

    def call(self, inputs: Any) -> Any:
        x = inputs
        for level in self.levels:
            x = level(x)
        return x

    def compute_output_shape(self, input_shape: Any) -> Any:
        return [(*input_shape[:-1], self.expert_units[-1])] * self.num_tasks

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "num_levels": self.num_levels,
            "num_shared_experts": self.num_shared_experts,
            "num_task_experts": self.num_task_experts,
            "expert_units": list(self.expert_units),
            "activation": keras.activations.serialize(self.activation),
            "gate": self.gate,
        }
