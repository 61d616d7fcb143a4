"""The few Keras internals `mtl_keras` relies on, each with its reason.

Everything else in the package uses the public Keras API. Each use below
names the Keras version it was checked against; `tests/test_compat.py` fails
if a new Keras changes what it relies on, and setup.cfg caps Keras at the
minor versions tested.
"""

from __future__ import annotations

import contextlib
from typing import Any

import keras
import tensorflow as tf

#: The Keras versions (major.minor) these workarounds were checked against.
CHECKED_KERAS = ("3.15",)


class DistributedBuildFix:
    """Builds a model under `MultiWorkerMirroredStrategy` from one replica's
    batch.

    Keras 3.15.1 builds a distributed model from its first batch reduced with
    `strategy.reduce("MEAN", ...)`, which fails under
    `MultiWorkerMirroredStrategy` ("unsupported type PerReplica") for a plain
    `keras.Model` too. Only shapes matter for the build, so build from the
    first local replica's batch instead. No public hook exists: this
    overrides the private `Trainer._maybe_symbolic_build(iterator,
    data_batch)` (checked against Keras 3.15.1).
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is None or keras.backend.backend() != "tensorflow":
            return super()._maybe_symbolic_build(iterator, data_batch)
        strategy = self.distribute_strategy
        if not isinstance(
                strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return super()._maybe_symbolic_build(iterator, data_batch)
        for _, _, batches in iterator:
            data_batch = keras.tree.map_structure(
                lambda value: strategy.experimental_local_results(value)[0]
                if isinstance(value, tf.distribute.DistributedValues) else value,
                next(batches),
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)


@contextlib.contextmanager
def unlocked_state(layer: keras.layers.Layer):
    """Lets a built layer create one more weight.

    Keras locks a layer's state tracker once the layer is built; DB-MTL
    sizes its (K, P) gradient average only when the model knows P, after
    the balancer is built. No public route: this unlocks the private
    `Layer._tracker` for the duration (checked against Keras 3.15.1).
    """
    tracker: Any = getattr(layer, "_tracker", None)
    was_locked = tracker is not None and tracker.locked
    if was_locked:
        tracker.unlock()
    try:
        yield
    finally:
        if was_locked:
            tracker.lock()


class JaxValuesGuard(keras.callbacks.Callback):
    """Gives the variables back their values after a failed JAX `fit` or
    `evaluate`.

    Keras' JAX trainer detaches every variable's value when a loop starts
    (`_purge_model_variables`, to save memory: the values travel in the
    stateless step's state) and reattaches them at the end of the epoch
    (`jax_state_sync`). A step that fails (a trace error, a label typo read
    in the step) leaves them detached: the model cannot be used again, not
    even to retry `fit`. This callback keeps references to the values from
    the start of the loop until its first step ends (when Keras donates
    them to the step); after a failure `restore()` reassigns them, or, past
    the first step, syncs the state Keras keeps of the last step (checked
    against Keras 3.15.1).
    """

    def __init__(self):
        super().__init__()
        self.values = None

    def _keep(self) -> None:
        model = self.model
        variables = [*model.trainable_variables, *model.non_trainable_variables,
                     *model.metrics_variables]
        if getattr(model, "optimizer", None) is not None:
            variables += model.optimizer.variables
        unique = {id(v): v for v in variables}
        self.values = [(v, v.value) for v in unique.values()]

    def on_train_begin(self, logs=None):
        self._keep()

    def on_test_begin(self, logs=None):
        self._keep()

    def on_epoch_begin(self, epoch, logs=None):
        self._keep()

    def on_train_batch_end(self, batch, logs=None):
        self.values = None

    def on_test_batch_end(self, batch, logs=None):
        self.values = None

    def restore(self, model) -> None:
        """Reattaches the values the failed loop detached."""
        if self.values is not None:
            for variable, value in self.values:
                variable.assign(value)
            self.values = None
        else:
            model.jax_state_sync()
