"""The seam between the model and the engine, and the one backend registry.

Two declared interfaces, checked by `tests/engine/test_seam.py`:

- `EngineModel`: everything the engine may read or call on a model
  (`MultiTaskModel` implements it with public members only).
- `Backend`: what differs per Keras backend (the trainer, the replica
  reduction, the custom-loop entry point). `get_backend(name)` returns the
  registered one; `BACKENDS` lists them, the only list in the package.

Every engine constant (`BACKENDS`, `JACOBIAN_METHODS`) is defined here once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import keras

#: The Keras backends with a gradient engine, and the module of each.
BACKEND_MODULES = {
    "tensorflow": "mtl_keras.engine.tensorflow",
    "jax": "mtl_keras.engine.jax",
}

BACKENDS = tuple(BACKEND_MODULES)
"""The Keras backends `mtl_keras` runs on (`mtl_keras.SUPPORTED_BACKENDS`)."""

JACOBIAN_METHODS = ("loop", "pfor", "gramian")
"""`compile(jacobian=...)`: "loop" (K backward passes), "pfor" (the
backward pass vectorised over the tasks: pfor on TF, `jax.vmap` on JAX) or
"gramian" (the Gramian engine: `J Jᵀ` from the layers' inputs and output
gradients, J never held; TensorFlow, `GramianBalancer`s only)."""


def check_jacobian_method(method: str, balancer: Any = None) -> str:
    """Returns `method` if it is one of `JACOBIAN_METHODS` and serves
    `balancer` on the current backend, else raises.

    Args:
        method: How a gradient balancer gets the per-task gradients.
        balancer: The compiled balancer, or `None` (not checked).

    Example:

    ```python
    check_jacobian_method("loop")  # "loop"
    ```
    """
    if method not in JACOBIAN_METHODS:
        *first, last = map(repr, JACOBIAN_METHODS)
        raise ValueError(
            f"jacobian must be {', '.join(first)} or {last}, got {method!r}.")
    if method == "gramian":
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                "jacobian='gramian' (the Gramian engine) is TensorFlow-only "
                f"for now; on {keras.backend.backend()} compile with "
                "jacobian='loop' or 'pfor'.")
        # Imported here: the engine modules import this one.
        from mtl_keras.balancers.base import JacobianBalancer
        from mtl_keras.engine.gramian import gramian_needs_loop_error

        if isinstance(balancer, JacobianBalancer):
            raise gramian_needs_loop_error(balancer)
    return method


@runtime_checkable
class EngineModel(Protocol):
    """What the engine may use on a model: the public hooks of the seam.

    The engine reads nothing else (no private member): a model that
    provides these trains through `mtl_keras.engine` on every backend.
    """

    task_names: list
    balancer: Any
    #: An `mtl_keras.engine.UpdateEvery` around `balancer`, or `None`.
    update_schedule: Any
    task_weights: Any
    # keras.Model's own public members the engine reads.
    optimizer: Any
    trainable_variables: list
    non_trainable_variables: list
    metrics_variables: list
    losses: list
    input: Any
    outputs: list
    layers: list
    distribute_strategy: Any

    def __call__(self, *args, **kwargs) -> Any:
        """The forward pass, as for any `keras.Model`."""

    @property
    def shared_variables(self) -> list:
        """The trainable variables shared by the tasks (J's columns)."""

    @property
    def head_variables(self) -> list:
        """The other trainable variables (heads, a learnable balancer)."""

    @property
    def shared_tensors(self) -> Any:
        """The shared representation tensor(s), or `None`."""

    @property
    def jacobian_method(self) -> str:
        """One of `JACOBIAN_METHODS`."""

    def representation_model(self) -> keras.Model:
        """A model over the same layers: `x -> [outputs, representation]`."""

    def compute_task_loss_list(
        self, y: Any, y_pred: Any, sample_weight: Any = None
    ) -> list:
        """The K unweighted task losses (scalars): the one task-loss hook."""

    def balanced_total(self, weighted_losses: Any) -> tuple:
        """`(total, balance)`: a loss balancer's objective and its weights."""

    def regularization_loss(self) -> Any:
        """The sum of the model's `losses` (float32 scalar)."""

    def record_train_step(self, x: Any, y: Any, sample_weight: Any, step: Any) -> dict:
        """The step's bookkeeping (trackers, diagnostics, metrics): logs."""

    def record_test_step(self, data: Any) -> dict:
        """One evaluation batch: its logs."""


@runtime_checkable
class StepPieces(Protocol):
    """The per-backend pieces of `mtl_keras.engine.core.train_step`.

    `state` is what the backend threads through a step (`None` when the
    variables are assigned in place). Each step piece returns
    `(TrainStep, grads in trainable_variables order, weighted task losses,
    state)`.
    """

    def state_before(self, state) -> Any:
        """What a post-step update starts from (read before the forward)."""

    def loss_step(self, state, x, y, sample_weight) -> tuple:
        """One backward pass of a loss balancer's objective."""

    def gradient_step(self, state, x, y, sample_weight) -> tuple:
        """Per-task gradients and a gradient balancer's update."""

    def apply_if_finite(self, state, finite, grads) -> Any:
        """Applies the gradients unless `finite` is false: the new state."""

    def post_step_update(
        self, state, before, x, y, sample_weight, weighted, finite
    ) -> Any:
        """A loss balancer's update after the step (FAMO): the new state."""


@runtime_checkable
class Backend(Protocol):
    """What differs per Keras backend, behind one interface.

    Attributes:
        name: The Keras backend name (`keras.backend.backend()`).
        balanced_gradients: The custom-loop entry point of the backend
            (a tape on TensorFlow, functions of values on JAX: see
            `mtl_keras.engine.tensorflow.balanced_gradients` and
            `mtl_keras.engine.jax.balanced_gradients`).
    """

    name: str
    balanced_gradients: Callable[..., Any]

    def trainer(self, model: EngineModel) -> StepPieces:
        """The train/test step of this backend for `model` (its
        `train_step` runs `mtl_keras.engine.core.train_step`)."""

    def replica_mean(self, value: Any) -> Any:
        """The mean of `value` over the replicas in sync."""

    def step_logs(self, model: Any, logs: dict) -> dict:
        """The step's logs in the form the backend's distribution reduces."""

    def values_guard(self) -> keras.callbacks.Callback | None:
        """A callback that restores the variables after a failed `fit` or
        `evaluate` (JAX detaches them), or `None` where none is needed."""

    def variables_by_task(self, network: keras.Model) -> dict | None:
        """`{output: variables reaching it}` found by differentiation, or
        `None` where gradients cannot tell (the caller uses the layer
        graph; see `mtl_keras.sharing.variables_by_task`)."""


def get_backend(name: str | None = None) -> Backend:
    """The registered engine of a Keras backend (default: the current one).

    Args:
        name: A Keras backend name, or `None` for `keras.backend.backend()`.

    Example:

    ```python
    backend = mtl_keras.engine.get_backend()
    backend.name  # "tensorflow"
    ```
    """
    name = name or keras.backend.backend()
    if name not in BACKEND_MODULES:
        raise ValueError(
            f"mtl_keras has no gradient engine for the Keras backend {name!r}; "
            f"supported: {', '.join(BACKENDS)}. Set KERAS_BACKEND before "
            "importing keras."
        )
    return importlib.import_module(BACKEND_MODULES[name]).BACKEND
