"""A tiny two-task model and data for fast tests (dense, no randomness)."""

import keras
import numpy as np

from mtl_keras.model import MultiTaskModel

LOSSES = {"a": "sparse_categorical_crossentropy", "b": "mse"}


def tiny_network(cls=MultiTaskModel, seed=0, with_shared=True, regularized=False):
    """Dense trunk 8→16, a 3-class head `a` and a regression head `b`."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,), name="x")
    regularizer = keras.regularizers.L2(1e-3) if regularized else None
    shared = keras.layers.Dense(
        16, activation="tanh", name="trunk", kernel_regularizer=regularizer
    )(inputs)
    outputs = {
        "a": keras.layers.Dense(3, activation="softmax", name="a")(shared),
        "b": keras.layers.Dense(1, name="b")(shared),
    }
    if cls is MultiTaskModel:
        return MultiTaskModel(inputs, outputs, shared=shared if with_shared else None)
    return cls(inputs, outputs)


def tiny_data(n=64, seed=1):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 8).astype("float32")
    y = {
        "a": (x[:, :3].argmax(axis=1)).astype("int32"),
        "b": (x[:, 3:4] * 2.0 + 0.5).astype("float32"),
    }
    return x, y


def max_weight_difference(model_a, model_b) -> float:
    pairs = zip(model_a.trainable_weights, model_b.trainable_weights)
    return max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in pairs)
