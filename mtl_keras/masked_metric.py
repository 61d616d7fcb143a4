"""`MaskedMetric`: a compiled metric that sees only a task's present labels."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mtl_keras._typing import Tensor
from mtl_keras.scores import metric_name
from mtl_keras.task_losses import class_id_shapes, element_mask, present_mask

_ACCURACY_NAMES = ("accuracy", "acc")


@keras.saving.register_keras_serializable(package="mtl_keras")
class MaskedMetric(keras.metrics.Metric):
    """Wraps a metric so that missing labels do not count.

    `MultiTaskModel.compile` wraps every metric of every task in one. Each
    update replaces missing labels (`MISSING_LABEL` in integer labels, NaN
    in float labels, see `mtl_keras.task_losses`) by a harmless value and
    gives them sample weight 0, per sample and per pixel for dense labels.
    A batch without any present label leaves the metric unchanged. User
    sample weights multiply the mask for `weighted_metrics`; plain `metrics`
    see the mask only, as in Keras.

    The wrapped metric is resolved on the first update, as `keras.Model`
    resolves it: `"accuracy"` becomes binary, sparse or categorical accuracy
    from the label and output shapes; other strings go through
    `keras.metrics.get`, and functions are wrapped in
    `keras.metrics.MeanMetricWrapper`.

    Args:
        metric: A metric identifier (string, function or
            `keras.metrics.Metric`).
        name: The metric name (default: the identifier, as Keras names it).

    Example:

    ```python
    metric = mtl_keras.MaskedMetric("mae")
    metric.update_state(np.array([[1.0], [np.nan]]), np.array([[1.5], [9.0]]))
    float(metric.result())  # 0.5: the NaN label is ignored
    ```
    """

    def __init__(self, metric: Any, name: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name=name or metric_name(metric), **kwargs)
        self.identifier = metric
        self.metric = metric if isinstance(metric, keras.metrics.Metric) else None

    def _wrapped(self, y_true, y_pred) -> keras.metrics.Metric:
        if self.metric is None:
            self.metric = _resolve(self.identifier, self.name, y_true, y_pred)
        return self.metric

    def update_state(self, y_true: Tensor, y_pred: Tensor,
                     sample_weight: Tensor | None = None) -> None:
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        metric = self._wrapped(y_true, y_pred)
        class_ids = class_id_shapes(y_true, y_pred)
        present = present_mask(y_true, class_ids)
        # A metric's values have one value per sample (per pixel for dense
        # outputs): the output's rank less its class / feature axis.
        rank = max(len(y_pred.shape) - 1, 1)
        mask = ops.cast(element_mask(y_true, present, class_ids, rank), "float32")
        if sample_weight is not None:
            weight = ops.cast(sample_weight, "float32")
            while len(weight.shape) > len(mask.shape) and weight.shape[-1] == 1:
                weight = ops.squeeze(weight, -1)
            while len(weight.shape) < len(mask.shape):
                weight = ops.expand_dims(weight, -1)
            mask = mask * weight
        if "int" in str(metric.dtype):  # e.g. MeanIoU counts in integers
            mask = ops.cast(mask, metric.dtype)
        safe_true = ops.where(present, y_true, ops.zeros_like(y_true))
        metric.update_state(safe_true, y_pred, sample_weight=mask)

    def result(self) -> Any:
        if self.metric is None:
            return ops.zeros((), "float32")
        return self.metric.result()

    def reset_state(self) -> None:
        if self.metric is not None:
            self.metric.reset_state()

    def get_config(self) -> dict:
        identifier = self.identifier
        if not isinstance(identifier, str):
            identifier = keras.saving.serialize_keras_object(identifier)
        return {"metric": identifier, "name": self.name}

    @classmethod
    def from_config(cls, config: dict) -> MaskedMetric:
        config = dict(config)
        if not isinstance(config["metric"], str):
            config["metric"] = keras.saving.deserialize_keras_object(
                config["metric"])
        return cls(**config)


def _resolve(identifier, name: str, y_true, y_pred) -> keras.metrics.Metric:
    """The metric object `keras.Model.compile` would build for `identifier`."""
    if isinstance(identifier, str) and identifier.lower() in _ACCURACY_NAMES:
        if y_pred.shape[-1] == 1:
            return keras.metrics.BinaryAccuracy(name=name)
        if class_id_shapes(y_true, y_pred):
            return keras.metrics.SparseCategoricalAccuracy(name=name)
        return keras.metrics.CategoricalAccuracy(name=name)
    metric = keras.metrics.get(identifier)
    if isinstance(metric, keras.metrics.Metric):
        return metric
    if isinstance(metric, type):
        return metric(name=name)
    return keras.metrics.MeanMetricWrapper(metric, name=name)
