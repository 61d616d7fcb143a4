"""`UpdateEvery`: a gradient balancer's weights recomputed every N steps.

An engine-owned wrapper around any gradient balancer, as optax's
`apply_every` wraps a transformation: the balancer keeps its method's maths
and its own state; the countdown and the cached weights live here.
`MultiTaskModel.compile(update_every=N)` creates one; a custom loop passes
`UpdateEvery(balancer, N)` to `balanced_gradients` as the balancer.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

from mtl_keras import balancers as balancers_lib
from mtl_keras.balancers.base import (
    GradientBalancer,
    JacobianBalancer,
    check_update_every,
)
from mtl_keras.engine.core import SharedStep, every_step


@keras.saving.register_keras_serializable(package="mtl_keras")
class UpdateEvery(keras.layers.Layer):
    """Recomputes a gradient balancer's weights every `every` steps only.

    On a refresh step the engine computes J (K backward passes) and runs
    the balancer; on the steps in between it runs one backward pass of
    `Σ w_k L_k` with the weights of the last refresh, which costs about as
    much as a plain `keras.Model` step. The trade-off: between refreshes
    the update is the weighted sum of the task gradients, not the method's
    own update (PCGrad's projections, GradDrop's sign masks, DB-MTL's
    normalised gradients apply on refresh steps only), and the weights
    react to the training `every` steps late. A refresh whose gradients
    were not finite is retried on the next step. Gradient diagnostics are
    averaged over refresh steps. `every=1` is the balancer itself, exactly.

    The cached weights and the countdown are Keras weights of this layer:
    they save with `.keras` files and resume with `BackupAndRestore`. The
    wrapped balancer is not tracked here: its owner (the model) saves it.

    Args:
        balancer: A gradient balancer (instance, name or config).
        every: Recompute the weights every this many steps (≥ 1).
        name: The layer name.

    Example:

    ```python
    model.compile(optimizer="adam", loss=losses, balancer="upgrad",
                  update_every=4)
    # In a custom loop:
    balancer = mtl_keras.engine.UpdateEvery("upgrad", every=4)
    result = mtl_keras.engine.balanced_gradients(
        tape, task_losses, shared, heads, balancer)
    ```
    """

    built: bool  # keras.layers.Layer's, declared for type checkers

    def __init__(
        self, balancer: Any, every: int = 1, name: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        balancer = balancers_lib.get(balancer)
        if not isinstance(balancer, GradientBalancer):
            raise ValueError(
                "update_every recomputes a gradient balancer's weights every N "
                f"steps; got {balancer!r}. A loss balancer costs one backward "
                "pass already."
            )
        # Untracked: the method's own state is saved by the balancer's owner.
        object.__setattr__(self, "balancer", balancer)
        self.every = check_update_every(every)
        self.cached_weights: Any = None
        self.steps_to_refresh: Any = None

    @property
    def mode(self) -> str:
        """The wrapped balancer's mode ("params" or "rep")."""
        return self.balancer.mode

    def build_for_tasks(self, task_names: Sequence[str]) -> None:
        """Builds the balancer and, with `every > 1`, the cache: the weights
        of the last refresh and the steps left until the next one."""
        self.balancer.build_for_tasks(task_names)
        if self.built:
            return
        if self.every > 1:
            num_tasks = len(self.balancer.task_names)
            self.cached_weights = self.add_weight(
                shape=(num_tasks,),
                initializer="ones",
                trainable=False,
                name="cached_weights",
                aggregation="only_first_replica",
            )
            self.steps_to_refresh = self.add_weight(
                shape=(),
                initializer="zeros",
                dtype="int32",
                trainable=False,
                name="steps_to_refresh",
                aggregation="only_first_replica",
            )
        self.built = True

    def build(self, input_shape: Any = None) -> None:
        self.built = True

    def ensure_built(self, task_losses: Any) -> None:
        """Builds the balancer (for unnamed tasks) and the cache."""
        self.balancer.ensure_built(task_losses)
        self.build_for_tasks(self.balancer.task_names)

    def state_variables(self) -> list:
        """The balancer's state and the cache: what a step may assign."""
        return list(self.balancer.non_trainable_variables) + list(
            self.non_trainable_variables
        )

    def step(self, refresh: Callable, reuse: Callable) -> SharedStep:
        """The shared step, with the weights recomputed every `every` steps.

        Args:
            refresh: `refresh(state) -> (SharedStep, new_state)`: J, the
                balancer and its update, as a pure function of the
                balancer's state.
            reuse: `reuse(weights) -> (update, finite_tasks)`: the shared
                update of `Σ w_k L_k` for the given weights (one backward
                pass).

        When the countdown is at zero the weights are refreshed; the new
        balancer state, the cached weights and the countdown are assigned
        after the conditional (a refresh whose gradients were not finite
        is retried on the next step). For a `GramianBalancer` the update
        is `wᵀJ = ∇ Σ w_k L_k`: the conditional yields only the weights and
        one backward pass outside it forms the update (K + 1 passes on a
        refresh step, 1 otherwise; a backward pass inside a conditional
        measured slower than outside). A `JacobianBalancer`'s own update
        needs J: the whole refresh or reuse runs in the conditional.
        """
        balancer = self.balancer
        if self.every == 1:
            return every_step(balancer, refresh)
        state = balancer.get_state()
        cached_weights = ops.convert_to_tensor(self.cached_weights)
        due = ops.equal(ops.convert_to_tensor(self.steps_to_refresh), 0)
        if isinstance(balancer, JacobianBalancer):
            step, new_state = _refresh_or_reuse(
                due, state, cached_weights, refresh, reuse
            )
        else:
            step, new_state = _weights_then_update(
                due, state, cached_weights, refresh, reuse
            )
        balancer.set_state(new_state)
        self.cached_weights.assign(
            ops.where(step.balanced, step.weights, cached_weights)
        )
        countdown = ops.convert_to_tensor(self.steps_to_refresh)
        failed_refresh = ops.logical_and(due, ops.logical_not(step.balanced))
        self.steps_to_refresh.assign(
            ops.where(failed_refresh, 0, ops.where(due, self.every - 1, countdown - 1))
        )
        return step

    def load_own_variables(self, store: Any) -> None:
        if not store.keys() and self.every > 1:
            # A file saved before `UpdateEvery` existed: the cache was saved
            # with the balancer, which hands it over on load.
            legacy = self.balancer.legacy_update_every_state
            if legacy is not None:
                self.cached_weights.assign(legacy[0])
                self.steps_to_refresh.assign(legacy[1])
            return
        super().load_own_variables(store)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "every": self.every,
            "balancer": keras.saving.serialize_keras_object(self.balancer),
        }

    @classmethod
    def from_config(cls, config: dict) -> UpdateEvery:
        config = dict(config)
        config["balancer"] = balancers_lib.get(config["balancer"])
        return cls(**config)


def runner_variables(runner) -> list:
    """The non-trainable variables a step of `runner` may assign."""
    if isinstance(runner, UpdateEvery):
        return runner.state_variables()
    return list(runner.non_trainable_variables)


# Wrappers made for balancers given the deprecated `update_every=` kwarg in
# a custom loop: one per balancer, so that the countdown carries over.
_LEGACY_WRAPPERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def resolve(balancer) -> tuple:
    """`(method, runner)`: the gradient balancer and what the engine runs
    (an `UpdateEvery` around it, or the balancer itself).

    A balancer built with the deprecated `update_every=N` runs inside an
    `UpdateEvery(balancer, N)` kept for it.
    """
    if isinstance(balancer, UpdateEvery):
        return balancer.balancer, balancer
    balancer = balancers_lib.get(balancer)
    every = getattr(balancer, "update_every", 1)
    if not isinstance(balancer, GradientBalancer) or every == 1:
        return balancer, balancer
    runner = _LEGACY_WRAPPERS.get(balancer)
    if runner is None:
        runner = UpdateEvery(balancer, every)
        _LEGACY_WRAPPERS[balancer] = runner
    return balancer, runner


def wrap(balancer, update_every: int | None):
    """The `UpdateEvery` for `compile(balancer=..., update_every=...)`, or
    `None` when the balancer runs on every step.

    `update_every=None` reads the deprecated `update_every=` of a gradient
    balancer (1 if it has none).
    """
    legacy = getattr(balancer, "update_every", 1)
    if update_every is None:
        update_every = legacy
    update_every = check_update_every(update_every)
    if legacy not in (1, update_every):
        raise ValueError(
            f"compile(update_every={update_every}) and the balancer's "
            f"deprecated update_every={legacy} disagree: give compile's only."
        )
    if update_every == 1:
        return None
    if not isinstance(balancer, GradientBalancer):
        raise ValueError(
            f"update_every={update_every} recomputes a gradient balancer's "
            f"weights every N steps; the balancer is {balancer!r}. Drop "
            "update_every, or use a gradient balancer."
        )
    return UpdateEvery(balancer, update_every)


def _weights_then_update(due, state, cached_weights, refresh, reuse):
    num_tasks = cached_weights.shape[0]

    def refresh_weights():
        step, new_state = refresh(state)
        return (step.weights, step.gramian, step.finite_tasks, step.balanced), new_state

    def keep_weights():
        return (
            cached_weights,
            ops.zeros((num_tasks, num_tasks), "float32"),
            ops.ones((num_tasks,), "bool"),
            ops.zeros((), "bool"),
        ), state

    (weights, gramian, refresh_finite, balanced), new_state = ops.cond(
        due, refresh_weights, keep_weights
    )
    update, reuse_finite = reuse(weights)
    finite_tasks = ops.logical_and(refresh_finite, reuse_finite)
    return SharedStep(update, weights, gramian, finite_tasks, balanced), new_state


def _refresh_or_reuse(due, state, cached_weights, refresh, reuse):
    def reuse_cached():
        update, finite_tasks = reuse(cached_weights)
        no_gramian = ops.zeros((cached_weights.shape[0],) * 2, "float32")
        return SharedStep(
            update, cached_weights, no_gramian, finite_tasks, ops.zeros((), "bool")
        ), state

    step, new_state = ops.cond(due, lambda: refresh(state), reuse_cached)
    return SharedStep(*step), new_state
