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
