"""Keras callbacks for multi-task training."""

from mtl_keras.callbacks.dynamic_weight_average import DynamicWeightAverage

__all__ = ["DynamicWeightAverage"]
