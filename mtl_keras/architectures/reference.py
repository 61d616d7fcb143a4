"""Reference multi-task networks for the built-in data sets.

Each builder returns a `mtl_keras.MultiTaskModel` whose output layers are named
after the tasks and whose `shared` tensor is the trunk's output, so the trunk's
variables are exactly the shared parameters a gradient balancer works on. Layer
names say where a layer belongs: `trunk_*` for the shared trunk, `<task>_*` for a
task's head (the output layer itself is named `<task>`).

- `shapes_network`: a small conv net for `mtl_keras.datasets.shapes` (any subset
  of its `cls`, `seg` and `count` tasks).
- `multi_mnist_lenet`: the LeNet-style network Sener & Koltun (2018) use on
  MultiMNIST.

Example:

```python
from mtl_keras import architectures
model = architectures.shapes_network(tasks=("cls", "seg"))
model.output_shape  # {"cls": (None, 3), "seg": (None, 32, 32, 4)}
```
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from mtl_keras._typing import Tensor
from mtl_keras.architectures.mmoe import MMoE
from mtl_keras.architectures.mtan import MTANAttention
from mtl_keras.datasets import shapes
from mtl_keras.layers import UnscaledDropout
from mtl_keras.model import MultiTaskModel

MULTI_MNIST_TASKS = ("left", "right")
"""The MultiMNIST tasks: the class of the digit towards the top-left and of
the digit towards the bottom-right."""

ARCHITECTURES = ("hard", "mmoe", "mtan")
"""How the reference networks share their trunk's output between the heads:
"hard" (every head reads it), "mmoe" (an `MMoE` of 4 experts, one layer of
the trunk's width each, acting on the last axis: 1x1 convolutions on
feature maps) or "mtan" (an `MTANAttention` mask per task)."""


def task_features(
    shared: Tensor, tasks: Sequence[str], architecture: str = "hard"
) -> dict:
    """`{task: the tensor its head reads}` on top of the trunk's output.

    Args:
        shared: the trunk's output, `(batch, ..., channels)`.
        tasks: the task names.
        architecture: one of `ARCHITECTURES`.
    """
    tasks = tuple(tasks)
    if architecture == "hard":
        return {task: shared for task in tasks}
    if architecture == "mmoe":
        towers = MMoE(len(tasks), num_experts=4, expert_units=(shared.shape[-1],),
                      name="mmoe")(shared)
    elif architecture == "mtan":
        towers = MTANAttention(len(tasks), name="mtan")(shared)
    else:
        raise ValueError(f"Unknown architecture {architecture!r}; expected one "
                         f"of {ARCHITECTURES}.")
    return dict(zip(tasks, towers))


def _check_tasks(tasks: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    tasks = tuple(tasks)
    unknown = [task for task in tasks if task not in known]
    if not tasks or unknown or len(set(tasks)) != len(tasks):
        raise ValueError(
            f"tasks must be distinct names among {tuple(known)}, got {tasks}."
        )
    return tasks


def _shapes_trunk(inputs, width: int):
    """Three conv blocks, 32x32 -> 8x8 feature map of `4 * width` channels."""
    x = inputs
    for block, (filters, pool) in enumerate(
        ((width, True), (2 * width, True), (4 * width, False)), start=1
    ):
        x = layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"trunk_conv{block}"
        )(x)
        if pool:
            x = layers.MaxPooling2D(2, name=f"trunk_pool{block}")(x)
    return x


def _shapes_heads(features: dict, tasks: tuple[str, ...], width: int) -> dict:
    heads = {}
    if "cls" in tasks:
        x = layers.GlobalMaxPooling2D(name="cls_pool")(features["cls"])
        x = layers.Dense(64, activation="relu", name="cls_dense")(x)
        heads["cls"] = layers.Dense(
            shapes.NUM_CLASSES, activation="softmax", name="cls"
        )(x)
    if "seg" in tasks:
        # Two learned 2x upsamplings back to full resolution, then per-pixel classes.
        # A 4x4 kernel is a multiple of the stride: no checkerboard artefacts.
        x = layers.Conv2DTranspose(
            2 * width, 4, strides=2, padding="same", activation="relu", name="seg_up1"
        )(features["seg"])
        x = layers.Conv2DTranspose(
            width, 4, strides=2, padding="same", activation="relu", name="seg_up2"
        )(x)
        heads["seg"] = layers.Conv2D(
            shapes.NUM_SEG_CLASSES, 1, activation="softmax", name="seg"
        )(x)
    if "count" in tasks:
        x = layers.Conv2D(width, 3, strides=2, activation="relu", name="count_conv")(
            features["count"]
        )
        x = layers.Flatten(name="count_flatten")(x)
        x = layers.Dense(64, activation="relu", name="count_dense")(x)
        heads["count"] = layers.Dense(1, name="count")(x)
    return heads


def _build_shapes(image_size: int, tasks: Sequence[str], width: int,
                  architecture: str = "hard"):
    """Returns `(inputs, outputs, shared)` of `shapes_network`."""
    tasks = _check_tasks(tasks, shapes.TASKS)
    if image_size % 4:
        raise ValueError(f"image_size must be a multiple of 4, got {image_size}.")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    shared = _shapes_trunk(inputs, width)
    features = task_features(shared, tasks, architecture)
    return inputs, _shapes_heads(features, tasks, width), shared


def shapes_network(
    image_size: int = 32,
    tasks: Sequence[str] = shapes.TASKS,
    width: int = 16,
    name: str = "shapes_network",
    architecture: str = "hard",
) -> MultiTaskModel:
    """A small conv net for the synthetic shapes tasks.

    Trunk (shared): three 3x3 conv + ReLU blocks of `width`, `2 * width` and
    `4 * width` filters, the first two followed by 2x2 max pooling; the shared
    representation is its `(image_size / 4)`-square feature map. No batch
    normalisation, so a training step depends only on the batch and the weights.
    About 88k parameters with all three tasks at the default width; on the default
    4096 training images with Adam(1e-3) and batches of 64 it reaches a validation
    mean IoU of about 0.65 and `cls` accuracy 0.82 after 8 epochs (~100 s on two
    shared CPU cores).

    Heads:

    - `cls`: global max pooling (the largest shape is a local feature) -> dense 64
      ReLU -> 3-way softmax.
    - `seg`: two stride-2 transposed 4x4 convs (`2 * width`, `width` filters,
      ReLU) back to full resolution -> 1x1 conv, per-pixel 4-way softmax
      (background + 3 shapes).
    - `count`: stride-2 3x3 conv -> flatten (keeps where things are) -> dense 64
      ReLU -> linear `(1,)`.

    Args:
        image_size: side of the square RGB input, a multiple of 4.
        tasks: any non-empty subset of `shapes.TASKS`.
        width: number of filters of the first conv; the others scale with it.
        name: the model name.
        architecture: how the heads share the trunk's output, one of
            `ARCHITECTURES` ("hard": they all read it; "mmoe", "mtan": through
            an `MMoE` or `MTANAttention` layer). `shared` stays the trunk's
            output.

    Returns:
        A `MultiTaskModel` with input "image" and one output per task.

    Example:

    ```python
    model = shapes_network()
    model.compile(optimizer="adam",
                  loss={"cls": "sparse_categorical_crossentropy",
                        "seg": "sparse_categorical_crossentropy", "count": "mse"})
    model.fit(mtl_keras.datasets.shapes.load("train", batch_size=64), epochs=5)
    ```
    """
    inputs, outputs, shared = _build_shapes(image_size, tasks, width, architecture)
    return MultiTaskModel(inputs, outputs, shared=shared, name=name)


def _torch_uniform(fan_in: int) -> dict:
    """PyTorch's default initialisers of `Conv2d` and `Linear`: weights and biases
    uniform in +-1/sqrt(fan_in)."""
    bound = fan_in ** -0.5
    return {
        "kernel_initializer": keras.initializers.VarianceScaling(
            1.0 / 3.0, mode="fan_in", distribution="uniform"),
        "bias_initializer": keras.initializers.RandomUniform(-bound, bound),
    }


def _lenet_parts(reference: bool, dropout: float) -> tuple:
    """`(init(fan_in) -> kwargs, trunk dropout, head dropout(name))` of the LeNet."""
    if reference:
        return (
            _torch_uniform,
            UnscaledDropout(dropout, noise_shape=(1, 1, 1, None),
                            name="trunk_dropout"),
            lambda name: UnscaledDropout(dropout, name=name),
        )
    return (
        lambda fan_in: {},
        # Whole feature maps dropped, as torch's Dropout2d in the reference network.
        layers.SpatialDropout2D(dropout, name="trunk_dropout"),
        lambda name: layers.Dropout(dropout, name=name),
    )


def _build_multi_mnist_lenet(tasks: Sequence[str], dropout: float,
                             architecture: str = "hard", reference: bool = False):
    """Returns `(inputs, outputs, shared)` of `multi_mnist_lenet`."""
    tasks = _check_tasks(tasks, MULTI_MNIST_TASKS)
    init, trunk_dropout, head_dropout = _lenet_parts(reference, dropout)
    inputs = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(10, 5, name="trunk_conv1", **init(25))(inputs)
    x = layers.MaxPooling2D(2, name="trunk_pool1")(x)
    x = layers.ReLU(name="trunk_relu1")(x)
    x = layers.Conv2D(20, 5, name="trunk_conv2", **init(250))(x)
    x = trunk_dropout(x)
    x = layers.MaxPooling2D(2, name="trunk_pool2")(x)
    x = layers.ReLU(name="trunk_relu2")(x)
    x = layers.Flatten(name="trunk_flatten")(x)
    shared = layers.Dense(50, activation="relu", name="trunk_dense", **init(320))(x)
    outputs = {}
    features = task_features(shared, tasks, architecture)
    for task in tasks:
        x = layers.Dense(50, activation="relu", name=f"{task}_dense",
                         **init(50))(features[task])
        x = head_dropout(f"{task}_dropout")(x)
        outputs[task] = layers.Dense(10, activation="softmax", name=task,
                                     **init(50))(x)
    return inputs, outputs, shared


def multi_mnist_lenet(
    tasks: Sequence[str] = MULTI_MNIST_TASKS,
    dropout: float = 0.5,
    name: str = "multi_mnist_lenet",
    architecture: str = "hard",
    reference: bool = False,
) -> MultiTaskModel:
    """The MultiMNIST network of Sener & Koltun (2018), "Multi-Task Learning as
    Multi-Objective Optimization", after their reference implementation.

    Trunk (shared), on `(28, 28, 1)` images: conv 10 5x5 -> max pool 2 -> ReLU ->
    conv 20 5x5 -> spatial dropout -> max pool 2 -> ReLU -> flatten (320) ->
    dense 50 ReLU, the shared representation. Per task: dense 50 ReLU -> dropout ->
    dense 10 softmax. 27,450 parameters with both tasks.

    Args:
        tasks: any non-empty subset of `("left", "right")`.
        dropout: rate of both dropouts (0.5 as torch's default in the reference).
        name: the model name.
        architecture: one of `ARCHITECTURES` (see `shapes_network`).
        reference: build it exactly as the reference implementation
            (`multi_task/models/multi_lenet.py`): PyTorch's default initialisers
            (weights and biases uniform in +-1/sqrt(fan_in)), and dropout masks
            that do not rescale the kept units (`UnscaledDropout`), the trunk's
            one channel mask shared by the whole batch. False: Keras' defaults
            (Glorot weights, zero biases, rescaling dropout, a channel mask per
            example).

    Returns:
        A `MultiTaskModel` with input "image" and one 10-way output per task.

    Example:

    ```python
    model = multi_mnist_lenet()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  balancer="mgda")
    model.fit(mtl_keras.datasets.multi_mnist.load("train", batch_size=256))
    ```
    """
    inputs, outputs, shared = _build_multi_mnist_lenet(
        tasks, dropout, architecture, reference)
    return MultiTaskModel(inputs, outputs, shared=shared, name=name)
