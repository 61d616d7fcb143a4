"""Multi-task architectures: reference networks and Keras layers.

Reference networks for the built-in data sets (`mtl_keras.architectures.reference`):

- `shapes_network`: a small conv net for `mtl_keras.datasets.shapes`.
- `multi_mnist_lenet`: the LeNet-style network of Sener & Koltun (2018).

Multi-task layers, one per module, each serialisable (`.keras`) and built on
`keras.ops` only:

- `MMoE` (Ma et al., KDD 2018): shared experts, one gate per task.
- `CGC` and `PLE` (Tang et al., RecSys 2020): shared and task-specific
  experts, stacked extraction layers.
- `CrossStitch` (Misra et al., CVPR 2016) and `cross_stitch_columns`.
- `MTANAttention` (Liu, Johns & Davison, CVPR 2019): task attention masks
  over shared features.
- `SoftmaxGate` and `DSelectK` (Hazimeh et al., NeurIPS 2021): the gates of
  the mixture-of-experts layers (`gate=` argument).

`variables_by_task` / `shared_variables` tell which variables reach which
task output, looking inside layers.

Example:

```python
from mtl_keras import architectures
model = architectures.shapes_network(tasks=("cls", "seg"))
model.output_shape  # {"cls": (None, 3), "seg": (None, 32, 32, 4)}
```
"""

import keras

from mtl_keras.architectures.cgc import CGC
from mtl_keras.architectures.columns import cross_stitch_columns
from mtl_keras.architectures.cross_stitch import CrossStitch
from mtl_keras.architectures.dselect_k import DSelectK, smooth_step
from mtl_keras.architectures.mmoe import MMoE
from mtl_keras.architectures.mtan import MTANAttention
from mtl_keras.architectures.ple import PLE
from mtl_keras.architectures.reference import (  # noqa: F401 (used by tests)
    ARCHITECTURES,
    MULTI_MNIST_TASKS,
    _build_multi_mnist_lenet,
    _build_shapes,
    multi_mnist_lenet,
    shapes,
    shapes_network,
    task_features,
)
from mtl_keras.architectures.softmax_gate import SoftmaxGate
from mtl_keras.sharing import (
    count_parameters,
    shared_variables,
    variables_by_task,
)

LAYERS = tuple(sorted(
    (value for value in dict(globals()).values()
     if isinstance(value, type) and issubclass(value, keras.layers.Layer)),
    key=lambda cls: cls.__name__))
"""Every public layer class of this package, by name (the tests iterate
over them, so a new layer is tested without editing a list)."""

__all__ = [
    "ARCHITECTURES",
    "CGC",
    "LAYERS",
    "MMoE",
    "MTANAttention",
    "MULTI_MNIST_TASKS",
    "PLE",
    "CrossStitch",
    "DSelectK",
    "SoftmaxGate",
    "count_parameters",
    "cross_stitch_columns",
    "multi_mnist_lenet",
    "shapes_network",
    "shared_variables",
    "smooth_step",
    "task_features",
    "variables_by_task",
]
