"""Layers used by the reference architectures."""

from mtl_keras.layers.unscaled_dropout import UnscaledDropout

__all__ = ["UnscaledDropout"]
