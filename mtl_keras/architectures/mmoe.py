"""`MMoE`: Multi-gate Mixture-of-Experts (Ma et al., KDD 2018)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

from mtl_keras.architectures._experts import (
    ExpertGroup,
    check_units,
    gate_spec,
    make_gate,
    mix,
)


@keras.saving.register_keras_serializable(package="mtl_keras")
class MMoE(keras.layers.Layer):
    """Multi-gate Mixture-of-Experts (Ma et al., "Modeling Task Relationships
    in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018).

    E expert networks `f_i` are shared by all tasks; each task k has its own
    gate and gets its own mixture (eqs. 6-8 of the paper):

        f^k(x) = Σ_i g^k(x)_i f_i(x),    g^k(x) = softmax(W_gk x).

    The layer returns the list `[f^1(x), ..., f^K(x)]`, one tensor of shape
    `(..., expert_units[-1])` per task, on which the task towers are built.
    With `single_gate=True` every task gets the same mixture: the paper's
    OMoE baseline (one-gate MoE). Defaults: 8 single-layer ReLU experts, as
    in the paper's synthetic experiment; 16 units each is our choice.

    Shared parameters: the experts reach every task; gate k reaches only
    task k (with `single_gate`, the one gate reaches all).

    Args:
        num_tasks: K, the number of task outputs.
        num_experts: E.
        expert_units: hidden layer sizes of each expert MLP (an int for one).
        activation: activation of the expert layers.
        gate: "softmax" (the paper's), "dselect_k", or a gate layer such as
            `DSelectK(num_experts=8, k=2)` used as a template for every task.
        single_gate: one gate shared by all tasks (OMoE).
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    ```python
    inputs = keras.Input((100,), name="x")
    towers = mtl_keras.architectures.MMoE(num_tasks=2)(inputs)
    outputs = {f"task{k}": keras.layers.Dense(1, name=f"task{k}")(t)
               for k, t in enumerate(towers)}
    model = mtl_keras.MultiTaskModel(inputs, outputs)  # experts found shared
    ```
    """

    def __init__(self, num_tasks: int, num_experts: int = 8,
                 expert_units: int | Sequence[int] = (16,),
                 activation: str | Callable | None = "relu",
                 gate: str | dict | keras.layers.Layer = "softmax",
                 single_gate: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_tasks) < 1 or int(num_experts) < 1:
            raise ValueError(f"MMoE needs num_tasks >= 1 and num_experts >= 1, got "
                             f"{num_tasks} and {num_experts}.")
        self.num_tasks = int(num_tasks)
        self.num_experts = int(num_experts)
        self.expert_units = check_units("MMoE", expert_units)
        self.activation = keras.activations.get(activation)
        self.gate = gate_spec("MMoE", gate)
        self.single_gate = bool(single_gate)
        self.experts = ExpertGroup(self.num_experts, self.expert_units,
                                   self.activation, name="experts",
                                   dtype=self.dtype_policy)
        num_gates = 1 if self.single_gate else self.num_tasks
        self.gates = [make_gate(self.gate, self.num_experts, f"gate_{k}",
                                self.dtype_policy) for k in range(num_gates)]

    def build(self, input_shape: Any) -> None:
        self.experts.build(input_shape)
        for gate in self.gates:
            gate.build(input_shape)

    def call(self, inputs: Any) -> Any:
        expert_outputs = self.experts(inputs)
        mixtures = [mix(expert_outputs, gate(inputs)) for gate in self.gates]
        if self.single_gate:
            return [mixtures[0]] + [ops.copy(mixtures[0])
                                    for _ in range(self.num_tasks - 1)]
        return mixtures

    def compute_output_shape(self, input_shape: Any) -> Any:
        return [(*input_shape[:-1], self.expert_units[-1])] * self.num_tasks

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "num_experts": self.num_experts,
            "expert_units": list(self.expert_units),
            "activation": keras.activations.serialize(self.activation),
            "gate": self.gate,
            "single_gate": self.single_gate,
        }
