"""`CGC`: Customized Gate Control (Tang et al., RecSys 2020)."""

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
class CGC(keras.layers.Layer):
    """Customized Gate Control, one extraction layer of PLE (Tang et al.,
    "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
    Model for Personalized Recommendations", RecSys 2020).

    Experts are split into a shared group `E^s` (m_s experts) and one group
    `E^k` per task (m_k experts). Task k mixes its own and the shared experts
    with its own gate, selecting on its input `x_k` (eqs. 2-4 of the paper):

        y^k(x) = g^k(x_k)ᵀ [E^k(x_k) ; E^s(x_s)],   g^k(x_k) = softmax(W_k x_k).

    With `shared_output=True` (PLE's lower levels) a shared gate also mixes
    every expert, `y^s = softmax(W_s x_s)ᵀ [E^1; ...; E^K; E^s]`, the shared
    input of the next level. Inputs: one tensor (`x_k = x_s = x`) or the
    list `[x_1, ..., x_K, x_s]` of the level below. Output: the list
    `[y^1, ..., y^K]` (then `y^s` with `shared_output`), each of shape
    `(..., expert_units[-1])`.

    Shared parameters: the shared experts reach every task; task k's experts
    and gate reach only task k (in a lower PLE level, task experts also feed
    the shared gate and so reach every task).

    Args:
        num_tasks: K.
        num_shared_experts: m_s.
        num_task_experts: m_k, the same for every task.
        expert_units: hidden layer sizes of each expert MLP (an int for one).
        activation: activation of the expert layers.
        gate: "softmax" (the paper's), "dselect_k", or a gate layer template.
        shared_output: also return the shared gate's mixture.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    ```python
    inputs = keras.Input((16,), name="x")
    towers = mtl_keras.architectures.CGC(num_tasks=2)(inputs)
    outputs = {name: keras.layers.Dense(1, name=name)(t)
               for name, t in zip(["ctr", "cvr"], towers)}
    model = mtl_keras.MultiTaskModel(inputs, outputs)
    ```
    """

    def __init__(self, num_tasks: int, num_shared_experts: int = 1,
                 num_task_experts: int = 1,
                 expert_units: int | Sequence[int] = (16,),
                 activation: str | Callable | None = "relu",
                 gate: str | dict | keras.layers.Layer = "softmax",
                 shared_output: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        counts = (int(num_tasks), int(num_shared_experts), int(num_task_experts))
        if min(counts) < 1:
            raise ValueError(
                "CGC needs num_tasks, num_shared_experts and num_task_experts >= 1, "
                f"got {counts}.")
        self.num_tasks, self.num_shared_experts, self.num_task_experts = counts
        self.expert_units = check_units("CGC", expert_units)
        self.activation = keras.activations.get(activation)
        self.gate = gate_spec("CGC", gate)
        self.shared_output = bool(shared_output)

        def group(count, name):
            return ExpertGroup(count, self.expert_units, self.activation, name=name,
                               dtype=self.dtype_policy)

        self.task_experts = [group(self.num_task_experts, f"task_experts_{k}")
                             for k in range(self.num_tasks)]
        self.shared_experts = group(self.num_shared_experts, "shared_experts")
        per_task = self.num_task_experts + self.num_shared_experts
        self.task_gates = [make_gate(self.gate, per_task, f"task_gate_{k}",
                                     self.dtype_policy) for k in range(self.num_tasks)]
        self.shared_gate = None
        if self.shared_output:
            every = self.num_tasks * self.num_task_experts + self.num_shared_experts
            self.shared_gate = make_gate(self.gate, every, "shared_gate",
                                         self.dtype_policy)

    def _check_count(self, count: int) -> None:
        if count != self.num_tasks + 1:
            raise ValueError(
                f"CGC '{self.name}' takes one tensor or a list of "
                f"{self.num_tasks + 1} (one per task, then the shared one), "
                f"got {count}.")

    def _split(self, inputs):
        if isinstance(inputs, (list, tuple)):
            self._check_count(len(inputs))
            return list(inputs[:-1]), inputs[-1]
        return [inputs] * self.num_tasks, inputs

    def build(self, input_shape: Any) -> None:
        if isinstance(input_shape, list) and isinstance(input_shape[0], (list, tuple)):
            self._check_count(len(input_shape))
            task_shapes, shared_shape = input_shape[:-1], input_shape[-1]
        else:
            task_shapes, shared_shape = [input_shape] * self.num_tasks, input_shape
        for experts, gate, shape in zip(self.task_experts, self.task_gates,
                                        task_shapes):
            experts.build(shape)
            gate.build(shape)
        self.shared_experts.build(shared_shape)
        if self.shared_gate is not None:
            self.shared_gate.build(shared_shape)

    def call(self, inputs: Any) -> Any:
        task_inputs, shared_input = self._split(inputs)
        shared = self.shared_experts(shared_input)
        own = [experts(x) for experts, x in zip(self.task_experts, task_inputs)]
        outputs = [
            mix(ops.concatenate([task, shared], axis=-2), gate(x))
            for task, gate, x in zip(own, self.task_gates, task_inputs)
        ]
        if self.shared_gate is not None:
            every = ops.concatenate([*own, shared], axis=-2)
            outputs.append(mix(every, self.shared_gate(shared_input)))
        return outputs

    def compute_output_shape(self, input_shape: Any) -> Any:
        if isinstance(input_shape, list) and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[-1]
        count = self.num_tasks + (1 if self.shared_output else 0)
        return [(*input_shape[:-1], self.expert_units[-1])] * count

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "num_shared_experts": self.num_shared_experts,
            "num_task_experts": self.num_task_experts,
            "expert_units": list(self.expert_units),
            "activation": keras.activations.serialize(self.activation),
            "gate": self.gate,
            "shared_output": self.shared_output,
        }
