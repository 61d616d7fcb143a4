"""Building blocks shared by the mixture-of-experts layers (private)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

from mtl_keras.architectures.dselect_k import DSelectK
from mtl_keras.architectures.softmax_gate import SoftmaxGate

_GATES = {"softmax": SoftmaxGate, "dselect_k": DSelectK}


class ExpertGroup(keras.layers.Layer):
    """E same-shaped MLP experts run as one batched computation.

    Maps `(..., d)` to `(..., E, units[-1])`: expert e is
    `x -> act(... act(x W_e1 + b_e1) ... W_eL + b_eL)`. Each layer's kernel
    is one `(E, d_in, d_out)` variable, so a group's variables belong to
    exactly the tasks its outputs reach.
    """

    def __init__(self, num_experts: int, units: Sequence[int],
                 activation: str | Callable | None = "relu",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_experts = int(num_experts)
        self.units = tuple(int(u) for u in units)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape: Any) -> None:
        self.kernels, self.biases = [], []
        fan_in = int(input_shape[-1])
        for index, fan_out in enumerate(self.units):
            # Glorot uniform for each expert as its own Dense layer (Keras'
            # GlorotUniform on a 3-D shape would count E in both fans).
            limit = (6.0 / (fan_in + fan_out)) ** 0.5
            self.kernels.append(self.add_weight(
                name=f"kernel_{index}", shape=(self.num_experts, fan_in, fan_out),
                initializer=keras.initializers.RandomUniform(-limit, limit)))
            self.biases.append(self.add_weight(
                name=f"bias_{index}", shape=(self.num_experts, fan_out),
                initializer="zeros"))
            fan_in = fan_out

    def call(self, inputs: Any) -> Any:
        # First layer as one matmul against the experts' kernels side by side
        # (much faster than a batched einsum on CPU).
        kernel = self.kernels[0]
        fan_in, fan_out = kernel.shape[1], kernel.shape[2]
        wide = ops.reshape(ops.transpose(kernel, (1, 0, 2)),
                           (fan_in, self.num_experts * fan_out))
        x = ops.matmul(inputs, wide)
        x = ops.reshape(x, (*ops.shape(x)[:-1], self.num_experts, fan_out))
        x = self.activation(x + self.biases[0])
        for kernel, bias in zip(self.kernels[1:], self.biases[1:]):
            x = self.activation(ops.einsum("...ei,eij->...ej", x, kernel) + bias)
        return x

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (*input_shape[:-1], self.num_experts, self.units[-1])


def check_units(owner: str, units) -> tuple[int, ...]:
    units = (units,) if isinstance(units, int) else tuple(units)
    if not units or any(int(u) < 1 for u in units):
        raise ValueError(
            f"{owner}: expert_units must be positive layer sizes such as (16,) "
            f"or 16, got {units!r}.")
    return tuple(int(u) for u in units)


def gate_spec(owner: str, gate):
    """A gate argument as a config: "softmax", "dselect_k", a gate layer
    (a template: its config is copied per task) or its serialised dict."""
    if isinstance(gate, str):
        if gate not in _GATES:
            raise ValueError(
                f"{owner}: unknown gate {gate!r}; use one of {sorted(_GATES)}, a "
                "gate layer such as DSelectK(num_experts=8, k=2), or its config.")
        return gate
    if isinstance(gate, keras.layers.Layer):
        return keras.saving.serialize_keras_object(gate)
    if isinstance(gate, dict) and "class_name" in gate:
        return gate
    raise TypeError(f"{owner}: gate must be a name, a gate layer or its config, "
                    f"got {type(gate).__name__}.")


def make_gate(spec, num_experts: int, name: str, dtype) -> keras.layers.Layer:
    """A fresh gate over `num_experts` experts from a `gate_spec`."""
    if isinstance(spec, str):
        return _GATES[spec](num_experts=num_experts, name=name, dtype=dtype)
    template = keras.saving.deserialize_keras_object(spec)
    config = {**template.get_config(), "num_experts": num_experts, "name": name,
              "dtype": dtype}
    if isinstance(template, DSelectK):
        config["k"] = min(config["k"], num_experts)
    return type(template).from_config(config)


def mix(expert_outputs, gate_weights):
    """`Σ_e g_e f_e`: `(..., E, u)` experts weighted by `(..., E)` gates."""
    return ops.einsum("...eu,...e->...u", expert_outputs, gate_weights)
