"""Type aliases of the public signatures.

Keras 3 has no public tensor type: `keras.ops` take and return the
backend's tensors (`tf.Tensor`, `jax.Array`), NumPy arrays and nested lists
of numbers alike. The aliases name what a parameter means; to a type
checker they are `Any`.
"""

from __future__ import annotations

from typing import Any, TypeAlias

#: A backend tensor (or anything `keras.ops.convert_to_tensor` takes).
Tensor: TypeAlias = Any
#: What `Tensor` parameters accept: a tensor, a NumPy array or nested lists.
TensorLike: TypeAlias = Any
