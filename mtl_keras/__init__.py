"""mtl_keras: multi-task learning for Keras 3.

Build one functional model with a shared trunk and named task heads
(`MultiTaskModel`), pick how the task losses are balanced
(`mtl_keras.methods` names them all: `mtl_keras.balancers`,
`mtl_keras.callbacks`), and train with `model.fit`.
"""

import importlib

import keras

# The Keras backends `mtl_keras` runs on (the engine's one registry).
from mtl_keras.engine.backend import BACKENDS as SUPPORTED_BACKENDS

if keras.backend.backend() not in SUPPORTED_BACKENDS:
    raise ImportError(
        f"mtl_keras runs on the Keras backend(s) {', '.join(SUPPORTED_BACKENDS)}; "
        f"this process uses '{keras.backend.backend()}' (KERAS_BACKEND). Set "
        "KERAS_BACKEND to one of them before importing keras."
    )

from mtl_keras import balancers, callbacks, engine, methods, progress  # noqa: E402
from mtl_keras.masked_metric import MaskedMetric  # noqa: E402
from mtl_keras.model import MultiTaskModel  # noqa: E402
from mtl_keras.task_losses import MISSING_LABEL  # noqa: E402
from mtl_keras.task_weights import TaskWeights  # noqa: E402

__version__ = "0.2.0"

# Imported on first use: they pull in TFDS / KerasTuner, which are slow to load.
_LAZY_SUBMODULES = (
    "architectures",
    "compare",
    "datasets",
    "demo",
    "export",
    "metrics",
    "scores",
    "tuning",
)


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"mtl_keras.{name}")
    raise AttributeError(f"module 'mtl_keras' has no attribute {name!r}")


__all__ = [
    "MISSING_LABEL",
    "SUPPORTED_BACKENDS",
    "MaskedMetric",
    "MultiTaskModel",
    "TaskWeights",
    "balancers",
    "callbacks",
    "engine",
    "methods",
    "progress",
    *_LAZY_SUBMODULES,
]
