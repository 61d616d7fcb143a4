"""The gradient engine: per-task gradients, balancing, the shared update.

`core` is backend-neutral (`keras.ops`), with the train step's outline;
`backend` declares the seam (`EngineModel`: the model hooks the engine
uses; `Backend`: what differs per backend) and holds the one registry of
backends (`get_backend`); `tensorflow` and `jax` hold only what differs
per backend: how the task Jacobian is computed, how replicas are reduced,
how loss scaling enters; `amortise` holds `UpdateEvery`, the wrapper that
recomputes a balancer's weights every N steps. `MultiTaskModel.train_step`
runs the trainer of `get_backend()`; custom training loops and plain
`keras.Model`s call `balanced_gradients` directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

from mtl_keras.engine.amortise import UpdateEvery
from mtl_keras.engine.backend import (
    BACKENDS,
    JACOBIAN_METHODS,
    Backend,
    EngineModel,
    get_backend,
)
from mtl_keras.engine.core import (
    BalancedGradients,
    TrainStep,
    diagnostic_names,
    diagnostics,
)


@overload
def balanced_gradients(tape: Any, task_losses: Any, shared_variables: list,
                       head_variables: list, balancer: Any, *,
                       representation: Any = None, regularization: Any = None,
                       loss_scale: Any = None,
                       jacobian: str = "loop") -> BalancedGradients: ...


@overload
def balanced_gradients(loss_fn: Callable, shared_values: list,
                       head_values: list, balancer: Any, *,
                       representation: Callable | None = None,
                       loss_scale: Any = None,
                       jacobian: str = "loop") -> BalancedGradients: ...


def balanced_gradients(*args: Any, **kwargs: Any) -> BalancedGradients:
    """Balanced task gradients for a custom loop, on the current backend.

    Two signatures, one per backend (both declared above with
    `typing.overload`): on TensorFlow
    `balanced_gradients(tape, task_losses, shared_variables, head_variables,
    balancer, *, representation=None, regularization=None, loss_scale=None,
    jacobian="loop")` (see `mtl_keras.engine.tensorflow.balanced_gradients`);
    on JAX `balanced_gradients(loss_fn, shared_values, head_values, balancer,
    *, representation=None, loss_scale=None, jacobian="loop")`, functions of
    the values (see `mtl_keras.engine.jax.balanced_gradients`). Both return
    `BalancedGradients`, with runnable examples in their docs.
    """
    return get_backend().balanced_gradients(*args, **kwargs)


__all__ = [
    "BACKENDS",
    "JACOBIAN_METHODS",
    "Backend",
    "BalancedGradients",
    "EngineModel",
    "TrainStep",
    "UpdateEvery",
    "balanced_gradients",
    "diagnostic_names",
    "diagnostics",
    "get_backend",
]
