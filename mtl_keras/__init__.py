"""mtl_keras: multi-task learning for Keras 3."""

from mtl_keras import balancers

__version__ = "0.1.0"
