"""mtl_keras: multi-task learning for Keras 3.

Build one functional model with a shared trunk and named task heads
(`MultiTaskModel`), pick how the task losses are balanced
(`mtl_keras.balancers`, `mtl_keras.callbacks`), and train with `model.fit`.
"""

import importlib

from mtl_keras import balancers, callbacks
from mtl_keras.model import MultiTaskModel
from mtl_keras.task_losses import MISSING_LABEL
from mtl_keras.task_weights import TaskWeights

__version__ = "0.2.0"

# Imported on first use: they pull in TFDS / KerasTuner, which are slow to load.
_LAZY_SUBMODULES = (
    "architectures", "compare", "datasets", "demo", "export", "metrics", "tuning",
)


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"mtl_keras.{name}")
    raise AttributeError(f"module 'mtl_keras' has no attribute {name!r}")


__all__ = [
    "MISSING_LABEL",
    "MultiTaskModel",
    "TaskWeights",
    "balancers",
    "callbacks",
    *_LAZY_SUBMODULES,
]
