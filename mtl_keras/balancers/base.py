"""The two balancer contracts: `LossBalancer` and `GradientBalancer`.

Every method reduces to "a weight per task". A balancer is a small
`keras.layers.Layer` whose state (learned log-variances, EMAs, step counters,
random seeds) lives in Keras weights, so it saves with `.keras`, checkpoints,
and resumes with `keras.callbacks.BackupAndRestore`.

A balancer never touches the model, the tape or the optimizer: the
`MultiTaskModel` computes the (already task-weighted) task losses and, for
gradient balancers, the Gramian, and asks the balancer for weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
from keras import ops

from mtl_keras._typing import Tensor, TensorLike
from mtl_keras.balancers import solvers

# NOTE for everyone writing balancers: the public method is
# `balance(task_losses[, gramian])`, NOT `weights(...)`: `weights` is the
# Keras Layer property listing the layer's variables, and overriding it breaks
# saving and `model.losses`. Subclasses implement `compute_weights(...)`.


class Balancer(keras.layers.Layer):
    """Common base of all balancers.

    Subclasses create their state in `build_state(num_tasks)` and implement
    the weight computation of their contract. A balancer is built lazily, the
    first time it sees task losses, or explicitly by the model at compile time
    through `build_for_tasks(task_names)`.

    Attributes:
        task_names: The task names, in the model's order, once known.
    """

    #: "loss" or "gradient": which contract the class implements.
    kind: str = ""
    built: bool  # keras.layers.Layer's, declared for type checkers

    def __init__(self, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.task_names: list[str] | None = None
        self.num_tasks: int | None = None

    def build_for_tasks(self, task_names: Iterable[str]) -> None:
        """Binds the balancer to named tasks and creates its state."""
        task_names = list(task_names)
        if self.num_tasks is not None and self.num_tasks != len(task_names):
            raise ValueError(
                f"{type(self).__name__} was built for {self.num_tasks} tasks "
                f"but is now given {len(task_names)}: {task_names}. Use a new "
                "balancer instance for a model with different tasks."
            )
        self.task_names = task_names
        if not self.built:
            self.num_tasks = len(task_names)
            self.build_state(self.num_tasks)
            # Where files saved before `UpdateEvery` held its cache.
            self.legacy_state_index = len(self.weights)
            self.built = True

    def build(self, input_shape: Any = None) -> None:
        # Keras calls `build` with the shape of the first argument of `call`
        # (the task losses, shape (K,)) and when restoring a saved model.
        if not self.built and input_shape is not None:
            num_tasks = int(input_shape[0])
            self.build_for_tasks([f"task_{i}" for i in range(num_tasks)])
        self.built = True

    def add_weight(self, *args: Any, **kwargs: Any) -> keras.Variable:
        # Balancer state is computed from all-reduced inputs, so every
        # replica holds the same value: under tf.distribute, let the first
        # replica's assignment stand (the default aggregation refuses
        # assignments in replica context).
        if not kwargs.get("trainable", True):
            kwargs.setdefault("aggregation", "only_first_replica")
        return super().add_weight(*args, **kwargs)

    def build_state(self, num_tasks: int) -> None:
        """Creates the balancer's weights. Default: stateless."""
        del num_tasks

    def ensure_built(self, task_losses: Tensor) -> None:
        """Builds the balancer for `len(task_losses)` unnamed tasks, unless
        it is built (the engine calls it before a first step)."""
        if not self.built:
            num_tasks = int(task_losses.shape[0])
            self.build_for_tasks([f"task_{i}" for i in range(num_tasks)])

    def get_build_config(self) -> dict:
        if self.num_tasks is None:
            return {}
        return {"task_names": self.task_names}

    def build_from_config(self, config: dict) -> None:
        if config.get("task_names"):
            self.build_for_tasks(config["task_names"])

    def _state_variables(self) -> list:
        # Keras layers save only their own weights; a balancer's random
        # streams (RLW, PCGrad's order, GradDrop) must resume too, and
        # `variables` includes the seed generators' states.
        return list(self.variables)

    # ------------------------------------------------------- explicit state

    def state_variables(self) -> list:
        """The variables `get_state` reads: the method's non-trainable
        state."""
        return list(self.non_trainable_variables)

    def get_state(self) -> list:
        """The balancer's state: its non-trainable variables' values
        (EMAs, counters, random seeds)."""
        # A copy: on TensorFlow a variable converted to a tensor stays a
        # reference that later assignments would change.
        return [ops.copy(v.value) for v in self.state_variables()]

    def set_state(self, state: Sequence[Tensor]) -> None:
        """Assigns a state returned by `get_state` or a `stateless_*` call."""
        for variable, value in zip(self.state_variables(), state):
            variable.assign(value)

    def stateless_call_method(
        self, method: Callable[..., Any], state: Sequence[Tensor], *args: Any
    ) -> tuple[Any, list[Tensor]]:
        """`(method(*args), new_state)`, a pure function of `state` and args.

        The method reads the balancer's state from `state` (not from the
        variables) and its assignments come back as `new_state` instead of
        being written, so the computation can run inside a traced branch
        (`ops.cond`) or a stateless JAX step; the caller assigns the new
        state (`set_state`), as optax's `update(...) -> (updates, state)`.
        """
        variables = self.state_variables()
        mapping = list(zip(variables, state))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            outputs = method(*args)
        new_state = [scope.get_current_value(v) for v in variables]
        new_state = [old if new is None else ops.cast(new, old.dtype)
                     for old, new in zip(state, new_state)]
        return outputs, new_state

    def _call_and_assign(self, method, *args):
        outputs, new_state = self.stateless_call_method(
            method, self.get_state(), *args)
        self.set_state(new_state)
        return outputs

    def save_own_variables(self, store: Any) -> None:
        for i, variable in enumerate(self._state_variables()):
            store[f"{i}"] = variable

    def load_own_variables(self, store: Any) -> None:
        variables = self._state_variables()
        store = self._without_legacy_state(store, len(variables))
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects {len(variables)} "
                f"saved variables, the file holds {len(store.keys())}."
            )
        for i, variable in enumerate(variables):
            variable.assign(store[f"{i}"])

    def _without_legacy_state(self, store, num_variables: int):
        """The store as this balancer saves it (see `GradientBalancer`)."""
        del num_variables
        return store

    def get_config(self) -> dict:
        # Balancers are configured by their constructor arguments only; the
        # Layer's dtype/trainable settings are not part of their interface.
        return {"name": self.name}

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


def check_update_every(value, owner: str = "UpdateEvery") -> int:
    """`value` if it is a whole number ≥ 1, else a `ValueError`.

    Args:
        value: How often a gradient balancer's weights are recomputed.
        owner: Who asks (named in the error).

    Example:

    ```python
    check_update_every(4)  # 4
    ```
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{owner}: update_every must be a whole number >= 1 (1 recomputes "
            f"the weights on every step), got {value!r}.")
    return value


class LossBalancer(Balancer):
    """A method that weights the task losses before one backward pass.

    Implement `compute_weights(task_losses) -> weights (K,)`; the weights may
    depend differentiably on the balancer's trainable variables (uncertainty
    weighting learns them through the total loss). `regularizer()` is added
    to the total loss.

    The model minimises the total from `combine(task_losses)`, by default
    `sum(weights * task_losses) + regularizer()`. A method whose objective is
    not a weighted sum (geometric mean, sum of logs) overrides `combine` and
    reports the weights that give the same gradient, which is what logs and
    TensorBoard show.

    Example:

    ```python
    balancer = mtl_keras.balancers.UncertaintyWeighting()
    total = balancer.total_loss(keras.ops.convert_to_tensor([0.7, 2.1]))
    ```
    """

    kind = "loss"

    #: Whether the model must call `update_after_step(losses_before,
    #: losses_after)` with the losses recomputed on the same batch after the
    #: optimizer step (FAMO).
    needs_post_step_losses: bool = False

    def balance(self, task_losses: TensorLike) -> Tensor:
        """Returns the task weights, shape (K,), for the given task losses."""
        task_losses = ops.convert_to_tensor(task_losses, dtype="float32")
        self.ensure_built(task_losses)
        return ops.cast(self.compute_weights(task_losses), "float32")

    def compute_weights(self, task_losses: Tensor) -> Tensor:
        raise NotImplementedError

    def regularizer(self) -> Tensor:
        """A term added to the total loss. Default: 0."""
        return ops.zeros((), dtype="float32")

    def combine(self, task_losses: TensorLike) -> tuple[Tensor, Tensor]:
        """Returns `(total, weights)`: the scalar the model minimises and the
        task weights behind it, computed once (RLW draws them at random)."""
        task_losses = ops.convert_to_tensor(task_losses, dtype="float32")
        weights = self.balance(task_losses)
        return ops.sum(weights * task_losses) + self.regularizer(), weights

    def total_loss(self, task_losses: TensorLike) -> tuple[Tensor, Tensor]:
        """The scalar the model minimises for these task losses."""
        return self.combine(task_losses)[0]

    def update_after_step(
        self, losses_before: Tensor, losses_after: Tensor
    ) -> None:
        """Hook for methods that learn from the step's effect (FAMO)."""
        del losses_before, losses_after

    def call(self, task_losses: TensorLike) -> Tensor:
        return self.balance(task_losses)


class GradientBalancer(Balancer):
    """Common base of the two gradient contracts.

    The rows of J are the task gradients over the shared variables
    (`mode="params"`) or over the shared representation (`mode="rep"`,
    MGDA-UB style). Implement one of the two contracts:

    - `GramianBalancer`: task weights from the Gramian `J Jᵀ` (K×K); the
      shared update is `wᵀJ` (most methods).
    - `JacobianBalancer`: its own shared update from J itself (GradDrop,
      DB-MTL).

    Either way the engine (`mtl_keras.engine`) runs the balancer through
    `stateless_update(state, task_losses, jacobian, gramian) -> (update,
    weights, new_state)` and assigns the new state, so the balancer also
    runs inside a traced branch or a stateless (JAX) train step. The heads
    get the gradient of `sum(w * task_losses)`; weights are constants.

    To recompute the weights every N steps only, compile with
    `update_every=N` (`mtl_keras.engine.UpdateEvery` wraps the balancer);
    the balancer's own `update_every=N` is the deprecated spelling of it.

    Args:
        mode: "params" (gradients over the shared variables) or "rep"
            (gradients over the shared representation tensor, one extra
            backward pass instead of K over the trunk).
        update_every: Deprecated: use `compile(update_every=N)`.
    """

    kind = "gradient"

    def __init__(self, mode: str = "params", update_every: int = 1,
                 name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if mode not in ("params", "rep"):
            raise ValueError(
                f"{type(self).__name__}: mode must be 'params' or 'rep', got "
                f"{mode!r}."
            )
        self.mode = mode
        # Deprecated: read by `compile` and the engine, which wrap the
        # balancer in `mtl_keras.engine.UpdateEvery`.
        self.update_every = check_update_every(update_every, type(self).__name__)
        if self.update_every != 1:
            warnings.warn(
                f"{type(self).__name__}(update_every=N) is deprecated: use "
                "`model.compile(..., update_every=N)` (or "
                "`mtl_keras.engine.UpdateEvery(balancer, N)` in a custom loop).",
                DeprecationWarning, stacklevel=2)
        #: The cache of a file saved before `UpdateEvery` (see
        #: `_without_legacy_state`), handed over to it on load.
        self.legacy_update_every_state: tuple | None = None

    def _without_legacy_state(self, store, num_variables: int):
        # Files saved before `UpdateEvery` hold its cache (the cached
        # weights (K,) and the countdown ()) among the balancer's variables,
        # right after those of `build_state`.
        keys = len(store.keys())
        at = getattr(self, "legacy_state_index", None)
        if self.update_every == 1 or keys != num_variables + 2 or at is None:
            return store
        values = [store[f"{i}"] for i in range(keys)]
        self.legacy_update_every_state = (values[at], values[at + 1])
        kept = values[:at] + values[at + 2:]
        return {f"{i}": value for i, value in enumerate(kept)}

    def build_for_jacobian(self, num_params: int) -> None:
        """Called by the engine with P before the first step. Default: no-op."""
        del num_params

    def stateless_update(
        self, state: Sequence[Tensor], task_losses: Tensor, jacobian: Tensor,
        gramian: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """`(update (P,), weights (K,), new_state)`: a pure function."""
        raise NotImplementedError

    def update_direction(self, task_losses: TensorLike, jacobian: TensorLike) -> Tensor:
        """The shared update from an explicit Jacobian (eager, for tests)."""
        task_losses = ops.convert_to_tensor(task_losses, dtype="float32")
        jacobian = ops.convert_to_tensor(jacobian, dtype="float32")
        self.ensure_built(task_losses)
        self.build_for_jacobian(jacobian.shape[1])
        update, _, new_state = self.stateless_update(
            self.get_state(), task_losses, jacobian)
        self.set_state(new_state)
        return update

    def get_config(self) -> dict:
        config = {**super().get_config(), "mode": self.mode}
        if self.update_every != 1:  # the deprecated spelling, kept as given
            config["update_every"] = self.update_every
        return config


class GramianBalancer(GradientBalancer):
    """A gradient method whose weights depend on the Gramian `J Jᵀ` only.

    Implement `compute_weights(task_losses, gramian) -> weights (K,)`; it
    may read and `assign` the balancer's non-trainable state, which the
    base class turns into an explicit state in and out. `balance(task_losses,
    gramian)` is callable eagerly on plain arrays, so a method can be tested
    and compared with other libraries outside a model.

    Example:

    ```python
    balancer = mtl_keras.balancers.get("mgda")
    balancer.balance([1.0, 1.0], [[1.0, 0.0], [0.0, 4.0]])  # [0.8, 0.2]
    ```

    `compute_weights` runs in `solve_dtype` (a class attribute): None (the
    default) leaves the losses and the Gramian in float32; `"float64"` casts
    them to float64 and the weights back to float32, which the built-in
    methods that solve a K×K problem (eigendecomposition, inverse, linear
    system, QP) use, since in float32 they lose up to ~1e-4 (relative) of
    the weights on Gramians of condition number 1e3–1e4. On JAX float64 is
    enabled for that computation only (`solvers.float64_scope`). Where
    float64 is not available (TPUs), set `solve_dtype = "float32"` on the
    class or the instance.
    """

    #: The dtype `compute_weights` runs in (see above).
    solve_dtype: str | None = None

    def balance(self, task_losses: TensorLike, gramian: TensorLike) -> Tensor:
        """Returns the task weights, shape (K,), from losses and Gramian."""
        task_losses = ops.convert_to_tensor(task_losses, dtype="float32")
        gramian = ops.convert_to_tensor(gramian, dtype="float32")
        self.ensure_built(task_losses)
        return self._call_and_assign(self._weights, task_losses, gramian)

    def _weights(self, task_losses, gramian):
        weights = solvers.solve_in(
            self.solve_dtype, self.compute_weights, task_losses, gramian
        )
        return ops.cast(weights, "float32")

    def compute_weights(self, task_losses: Tensor, gramian: Tensor) -> Tensor:
        raise NotImplementedError

    def stateless_balance(
        self, state: Sequence[Tensor], task_losses: Tensor, gramian: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        """`(weights, new_state)`: the weights as a pure function of state."""
        return self.stateless_call_method(self._weights, state, task_losses, gramian)

    def stateless_update(
        self, state: Sequence[Tensor], task_losses: Tensor, jacobian: Tensor,
        gramian: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        if gramian is None:
            gramian = ops.matmul(jacobian, ops.transpose(jacobian))
        weights, new_state = self.stateless_balance(state, task_losses, gramian)
        return ops.matmul(weights[None, :], jacobian)[0], weights, new_state

    def call(self, task_losses: TensorLike, gramian: TensorLike) -> Tensor:
        return self.balance(task_losses, gramian)


class JacobianBalancer(GradientBalancer):
    """A gradient method that computes its own shared update from J itself.

    Implement `compute_direction(task_losses, jacobian) -> (update (P,),
    head_weights (K,))`: `update` replaces `wᵀJ` on the shared part,
    `head_weights` weight the heads' losses. State as for
    `GramianBalancer`.

    Example:

    ```python
    balancer = mtl_keras.balancers.GradDrop(seed=0)
    update, head_weights = balancer.direction([1.0, 1.0], [[1.0, -2.0],
                                                           [3.0, 1.0]])
    ```
    """

    def direction(
        self, task_losses: TensorLike, jacobian: TensorLike
    ) -> tuple[Tensor, Tensor]:
        """The shared update (P,) and head weights (K,), state assigned."""
        task_losses = ops.convert_to_tensor(task_losses, dtype="float32")
        jacobian = ops.convert_to_tensor(jacobian, dtype="float32")
        self.ensure_built(task_losses)
        self.build_for_jacobian(jacobian.shape[1])
        return self._call_and_assign(self._direction, task_losses, jacobian)

    def _direction(self, task_losses, jacobian):
        update, weights = self.compute_direction(task_losses, jacobian)
        return ops.cast(update, "float32"), ops.cast(weights, "float32")

    def compute_direction(
        self, task_losses: Tensor, jacobian: Tensor
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def stateless_update(
        self, state: Sequence[Tensor], task_losses: Tensor, jacobian: Tensor,
        gramian: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        del gramian
        (update, weights), new_state = self.stateless_call_method(
            self._direction, state, task_losses, jacobian)
        return update, weights, new_state

    def call(
        self, task_losses: TensorLike, jacobian: TensorLike
    ) -> tuple[Tensor, Tensor]:
        return self.direction(task_losses, jacobian)
