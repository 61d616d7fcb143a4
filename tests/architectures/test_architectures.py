"""Tests of the reference networks (`mtl_keras.architectures`)."""

import keras
import numpy as np
import pytest

from mtl_keras import architectures
from mtl_keras.model import MultiTaskModel


def _layer_names(inputs, output) -> set:
    return {layer.name for layer in keras.Model(inputs, output).layers}


def _shapes_param_count(w: int, image_size: int = 32) -> dict:
    """Parameter counts by hand: 3x3 kernels, weights + biases."""
    bottom = image_size // 4  # two 2x2 poolings
    count_side = (bottom - 3) // 2 + 1  # valid 3x3 conv, stride 2
    trunk = (9 * 3 * w + w) + (9 * w * 2 * w + 2 * w) + (9 * 2 * w * 4 * w + 4 * w)
    return {
        "trunk": trunk,
        "cls": (4 * w * 64 + 64) + (64 * 3 + 3),
        "seg": (16 * 4 * w * 2 * w + 2 * w) + (16 * 2 * w * w + w) + (w * 4 + 4),
        "count": (9 * 4 * w * w + w) + (count_side**2 * w * 64 + 64) + (64 + 1),
    }


def _network_params(model) -> int:
    """Parameters of the layer graph (not the model's task weights)."""
    return keras.Model(model.inputs, model.outputs).count_params()


def _output_shapes(model) -> dict:
    return {
        name: tuple(model.get_layer(name).output.shape) for name in model.output_names
    }


def test_shapes_network_outputs():
    model = architectures.shapes_network()
    assert isinstance(model, MultiTaskModel)
    assert model.input_shape == (None, 32, 32, 3)
    assert _output_shapes(model) == {
        "cls": (None, 3),
        "seg": (None, 32, 32, 4),
        "count": (None, 1),
    }


def test_shapes_network_parameter_count_by_hand():
    for width in (8, 16):
        expected = _shapes_param_count(width)
        model = architectures.shapes_network(width=width)
        assert _network_params(model) == sum(expected.values())


def test_shapes_network_forward_pass():
    model = architectures.shapes_network(image_size=48, width=8)
    images = np.random.default_rng(0).uniform(size=(2, 48, 48, 3)).astype("float32")
    outputs = model(images)
    assert outputs["seg"].shape == (2, 48, 48, 4)
    np.testing.assert_allclose(np.sum(outputs["cls"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.sum(outputs["seg"], axis=-1), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(outputs["count"]))
    # No dropout or batch norm: training and inference agree.
    training = model(images, training=True)
    np.testing.assert_allclose(training["count"], outputs["count"], rtol=1e-6)


@pytest.mark.parametrize("tasks", [("seg",), ("count", "cls")])
def test_shapes_network_task_subsets(tasks):
    model = architectures.shapes_network(tasks=tasks, width=8)
    assert sorted(model.output_names) == sorted(tasks)
    unused = set(architectures.shapes.TASKS) - set(tasks)
    names = {layer.name for layer in model.layers}
    assert not any(name.startswith(task) for name in names for task in unused)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tasks": ("depth",)},
        {"tasks": ()},
        {"tasks": ("cls", "cls")},
        {"image_size": 30},
    ],
)
def test_shapes_network_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        architectures.shapes_network(**kwargs)


@pytest.mark.parametrize(
    "build, tasks",
    [
        (
            lambda: architectures._build_shapes(32, ("cls", "seg", "count"), 8),
            ("cls", "seg", "count"),
        ),
        (
            lambda: architectures._build_multi_mnist_lenet(("left", "right"), 0.5),
            ("left", "right"),
        ),
    ],
)
def test_shared_tensor_is_exactly_the_trunk(build, tasks):
    inputs, outputs, shared = build()
    trunk = _layer_names(inputs, shared)
    assert trunk == {"image"} | {n for n in trunk if n.startswith("trunk_")}
    assert len(trunk) > 3
    for task in tasks:
        head = _layer_names(inputs, outputs[task]) - trunk
        assert head and all(name.startswith(task) for name in head), head
    every_layer = {layer.name for layer in keras.Model(inputs, outputs).layers}
    owned = trunk.union(
        *({n for n in every_layer if n.startswith(task)} for task in tasks)
    )
    assert every_layer == owned


@pytest.mark.parametrize(
    "build", [architectures.multi_mnist_lenet, architectures.shapes_network]
)
def test_model_shared_variables_are_the_trunk_variables(build):
    model = build()
    trunk_variables = [
        v
        for layer in model.layers
        if layer.name.startswith("trunk_")
        for v in layer.trainable_variables
    ]
    assert {id(v) for v in model.shared_variables} == {id(v) for v in trunk_variables}


def test_multi_mnist_lenet_matches_the_paper_network():
    model = architectures.multi_mnist_lenet()
    assert isinstance(model, MultiTaskModel)
    assert model.input_shape == (None, 28, 28, 1)
    assert sorted(model.output_names) == ["left", "right"]
    # conv1 260 + conv2 5,020 + dense 16,050; each head 2,550 + 510.
    assert _network_params(model) == 27_450
    conv1, conv2 = model.get_layer("trunk_conv1"), model.get_layer("trunk_conv2")
    assert conv1.filters == 10 and conv1.kernel_size == (5, 5)
    assert conv2.filters == 20 and conv2.kernel_size == (5, 5)
    assert model.get_layer("trunk_flatten").output.shape == (None, 320)
    assert model.get_layer("trunk_dense").units == 50


def test_multi_mnist_lenet_forward_pass_and_dropout():
    model = architectures.multi_mnist_lenet(tasks=("left",))
    images = np.random.default_rng(1).uniform(size=(4, 28, 28, 1)).astype("float32")
    outputs = model(images)
    assert outputs["left"].shape == (4, 10)
    np.testing.assert_allclose(np.sum(outputs["left"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(model(images)["left"], outputs["left"])
    assert not np.allclose(model(images, training=True)["left"], outputs["left"])
    with pytest.raises(ValueError):
        architectures.multi_mnist_lenet(tasks=("top",))
