"""`VectorMean`: K running means, one log entry each, in a handful of ops."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mtl_keras")
class VectorMean(keras.metrics.Metric):
    """Weighted running means of the K entries of a vector, logged by name.

    Equivalent to K `keras.metrics.Mean` metrics updated with the same
    sample weight, but its update is a few vector ops whatever K, so the
    traced train step (and its trace time) does not grow by a dozen ops per
    logged value. `result()` is a dict `{name: mean}`, which Keras merges
    into the logs, so every entry keeps its own key.

    Args:
        entry_names: The log names of the K entries, in vector order.
        name: The metric's own name (not logged).
        dtype: The dtype of the accumulators.

    Example:

    ```python
    from mtl_keras.vector_mean import VectorMean

    means = VectorMean(["a_loss", "b_loss"])
    means.update_state([1.0, 4.0])
    means.update_state([3.0, 0.0], sample_weight=3.0)
    means.result()  # {"a_loss": 2.5, "b_loss": 1.0}
    ```
    """

    def __init__(self, entry_names, name: str = "vector_mean", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.entry_names = list(entry_names)
        self.total = self.add_variable(
            shape=(len(self.entry_names),), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values, sample_weight=None) -> None:
        """Adds `sample_weight · values` (K,) to the totals.

        Args:
            values: A (K,) tensor, entry k for the k-th name.
            sample_weight: One scalar weight for every entry (default 1).
        """
        values = ops.cast(ops.reshape(values, (-1,)), self.dtype)
        weight = (ops.ones((), self.dtype) if sample_weight is None
                  else ops.cast(sample_weight, self.dtype))
        self.total.assign_add(values * weight)
        self.count.assign_add(weight)

    def result(self) -> dict:
        means = ops.divide_no_nan(self.total, self.count)
        return {name: means[k] for k, name in enumerate(self.entry_names)}

    def get_config(self) -> dict:
        return {**super().get_config(), "entry_names": self.entry_names}
