"""The gradient engine: per-task gradients, balancing, the shared update.

`core` is backend-neutral (`keras.ops`); `tensorflow` (and `jax`) hold only
what differs per backend: how the task Jacobian is computed, how replicas
are reduced, how loss scaling enters. `MultiTaskModel.train_step` picks the
trainer of `keras.backend.backend()`; custom training loops and plain
`keras.Model`s call `balanced_gradients` directly.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import keras

from mtl_keras.engine.core import (
    BalancedGradients,
    TrainStep,
    diagnostic_names,
    diagnostics,
)

#: Backends with a trainer module in this package.
TRAINER_MODULES = {
    "tensorflow": "mtl_keras.engine.tensorflow",
    "jax": "mtl_keras.engine.jax",
}


def backend_module(backend: str | None = None) -> ModuleType:
    """The engine module of a Keras backend (default: the current one)."""
    backend = backend or keras.backend.backend()
    if backend not in TRAINER_MODULES:
        raise ValueError(
            f"mtl_keras has no gradient engine for the Keras backend "
            f"{backend!r}; supported: {', '.join(TRAINER_MODULES)}. Set "
            "KERAS_BACKEND before importing keras.")
    return importlib.import_module(TRAINER_MODULES[backend])


def get_trainer(model: keras.Model) -> Any:
    """The trainer of the current backend for a `MultiTaskModel`."""
    module = backend_module()
    trainer_class = {"tensorflow": "TensorFlowTrainer", "jax": "JaxTrainer"}[
        keras.backend.backend()]
    return getattr(module, trainer_class)(model)


def balanced_gradients(*args: Any, **kwargs: Any) -> BalancedGradients:
    """Balanced task gradients for a custom loop, on the current backend.

    See `mtl_keras.engine.tensorflow.balanced_gradients` (a tape, the task
    losses, the variables; `representation=` a tensor on the tape) and
    `mtl_keras.engine.jax.balanced_gradients` (functions of the values;
    `representation=` the trunk as a function) for the arguments and
    runnable examples.
    """
    return backend_module().balanced_gradients(*args, **kwargs)


__all__ = [
    "BalancedGradients",
    "TrainStep",
    "backend_module",
    "balanced_gradients",
    "diagnostic_names",
    "diagnostics",
    "get_trainer",
]
