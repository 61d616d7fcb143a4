"""Tests of the synthetic shapes data set (`mtl_keras.datasets.shapes`)."""

import math
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtl_keras.datasets import shapes

# One worker runs this module: its module-scoped fixture is built once.
pytestmark = pytest.mark.xdist_group("test_shapes")


def _reference_masks(params, image_size):
    """Shape masks `(N, MAX_SHAPES, S, S)` by plain geometry, in float64.

    Independent of the module's formulas: the triangle is tested against its three
    vertices with half-plane (cross product) signs.
    """
    coords = np.arange(image_size) + 0.5
    py, px = np.meshgrid(coords, coords, indexing="ij")
    num_images = len(params["kind"])
    masks = np.zeros((num_images, shapes.MAX_SHAPES, image_size, image_size), bool)
    for n in range(num_images):
        for slot in range(shapes.MAX_SHAPES):
            if not params["present"][n, slot]:
                continue
            (cy, cx), r = params["center"][n, slot], params["radius"][n, slot]
            kind = params["kind"][n, slot]
            if kind == 0:
                inside = (py - cy) ** 2 + (px - cx) ** 2 <= r**2
            elif kind == 1:
                side = r * math.sqrt(math.pi)  # area pi r^2
                inside = np.maximum(abs(py - cy), abs(px - cx)) <= side / 2
            else:
                base = math.sqrt(4 * math.pi * r**2 / math.sqrt(3))
                height = base * math.sqrt(3) / 2  # base * height / 2 = pi r^2
                apex = (cy - height / 2, cx)
                left = (cy + height / 2, cx - base / 2)
                right = (cy + height / 2, cx + base / 2)
                inside = np.ones_like(py, bool)
                for (ay, ax), (by, bx) in ((apex, right), (right, left), (left, apex)):
                    cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
                    inside &= cross >= -1e-9
            masks[n, slot] = inside
    return masks


def _paint(masks, kind):
    """Seg map from reference masks, later slots on top."""
    seg = np.zeros(masks.shape[:1] + masks.shape[2:], np.int32)
    for slot in range(masks.shape[1]):
        seg = np.where(masks[:, slot], kind[:, slot, None, None] + 1, seg)
    return seg


@pytest.fixture(scope="module")
def drawn():
    """Valid images with their parameters, from the generator's own stream."""
    rng = np.random.default_rng(7)
    params = shapes.sample_shape_params(rng, 400, 32)
    rendered = shapes.render(params, 32)
    valid = shapes._is_valid(rendered["areas"], rendered["visible"])
    keep = np.flatnonzero(valid)[:40]
    params = {key: value[keep] for key, value in params.items()}
    return params, shapes.render(params, 32)


def test_load_numpy_shapes_dtypes_and_ranges():
    images, labels = shapes.load_numpy("validation", num_examples=300)
    assert images.shape == (300, 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels["cls"].shape == (300,) and labels["cls"].dtype == np.int32
    assert set(np.unique(labels["cls"])) == {0, 1, 2}
    assert labels["seg"].shape == (300, 32, 32) and labels["seg"].dtype == np.int32
    assert set(np.unique(labels["seg"])) == {0, 1, 2, 3}
    assert labels["count"].shape == (300, 1) and labels["count"].dtype == np.float32
    assert set(np.unique(labels["count"])) == {1.0, 2.0, 3.0, 4.0}


def test_default_split_sizes_and_other_image_size():
    images, _ = shapes.load_numpy("test")
    assert len(images) == shapes.SPLIT_SIZES["test"] == 1024
    images, labels = shapes.load_numpy("test", num_examples=8, image_size=48)
    assert images.shape == (8, 48, 48, 3) and labels["seg"].shape == (8, 48, 48)


def test_same_seed_same_arrays_other_seed_other_arrays():
    first = shapes.generate(64, 32, seed=(3, 0))
    again = shapes.generate(64, 32, seed=(3, 0))
    other = shapes.generate(64, 32, seed=(4, 0))
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["image"], other["image"])
    assert not np.array_equal(first["seg"], other["seg"])


def test_splits_are_different_draws():
    train, _ = shapes.load_numpy("train", num_examples=32)
    validation, _ = shapes.load_numpy("validation", num_examples=32)
    test, _ = shapes.load_numpy("test", num_examples=32)
    assert not np.array_equal(train, validation)
    assert not np.array_equal(validation, test)


def test_cached_arrays_are_read_only():
    images, labels = shapes.load_numpy("validation", num_examples=16)
    with pytest.raises(ValueError):
        images[0, 0, 0, 0] = 0.5
    with pytest.raises(ValueError):
        labels["seg"][0, 0, 0] = 1


def test_seg_matches_an_independent_rasteriser(drawn):
    params, rendered = drawn
    expected = _paint(_reference_masks(params, 32), params["kind"])
    mismatched = np.sum(rendered["seg"] != expected, axis=(1, 2))
    # Only a pixel centre lying on a shape's edge may round the other way.
    assert mismatched.max() <= 2, mismatched


def test_cls_is_the_kind_of_the_largest_shape(drawn):
    params, rendered = drawn
    areas = _reference_masks(params, 32).sum(axis=(2, 3))
    ordered = np.sort(areas, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] >= 3  # beyond edge-pixel rounding
    assert clear.mean() > 0.8
    largest_kind = params["kind"][np.arange(len(areas)), np.argmax(areas, axis=1)]
    np.testing.assert_array_equal(rendered["cls"][clear], largest_kind[clear])


def test_single_shape_labels_agree_with_its_pixels():
    rng = np.random.default_rng(11)
    params = shapes.sample_shape_params(rng, 60, 32, count=np.ones(60, int))
    rendered = shapes.render(params, 32)
    assert np.all(rendered["count"] == 1.0)
    for seg, cls, area in zip(
        rendered["seg"], rendered["cls"], rendered["areas"][:, 0], strict=True
    ):
        assert set(np.unique(seg)) == {0, cls + 1}
        assert np.sum(seg == cls + 1) == area
    np.testing.assert_array_equal(rendered["visible"], rendered["areas"])


def test_unoccluded_images_class_pixels_hold_the_largest_shape():
    generated = shapes.generate(500, 32, seed=5)
    unoccluded = np.all(generated["visible"] == generated["areas"], axis=1)
    assert unoccluded.sum() > 50
    seg = generated["seg"][unoccluded]
    cls = generated["cls"][unoccluded]
    areas = generated["areas"][unoccluded]
    pixels_of_cls = np.sum(seg == (cls + 1)[:, None, None], axis=(1, 2))
    assert np.all(pixels_of_cls >= areas.max(axis=1))
    np.testing.assert_array_equal(np.sum(seg > 0, axis=(1, 2)), areas.sum(axis=1))


def test_count_is_the_number_of_visible_shapes():
    generated = shapes.generate(500, 32, seed=6)
    count = generated["count"][:, 0]
    np.testing.assert_array_equal(count, np.sum(generated["areas"] > 0, axis=1))
    present = generated["areas"] > 0
    assert np.all(generated["visible"][present] >= 0.5 * generated["areas"][present])
    # The number of shapes is drawn uniformly in 1..4 and kept through redraws.
    fractions = np.bincount(count.astype(int), minlength=5)[1:] / len(count)
    assert np.all(np.abs(fractions - 0.25) < 0.06), fractions


def test_largest_shape_is_unique_and_classes_are_balanced():
    generated = shapes.generate(900, 32, seed=8)
    ordered = np.sort(generated["areas"], axis=1)
    assert np.all(ordered[:, -1] > ordered[:, -2])
    fractions = np.bincount(generated["cls"], minlength=3) / 900
    assert np.all(np.abs(fractions - 1 / 3) < 0.06), fractions


def test_kinds_have_equal_area():
    size = 64
    params = {
        "present": np.array([[True, False, False, False]] * 3),
        "kind": np.array([[k, 0, 0, 0] for k in range(3)]),
        "center": np.broadcast_to([31.3, 32.7], (3, 4, 2)),
        "radius": np.full((3, 4), 20.0),
        "color": np.ones((3, 4, 3)),
        "background": np.zeros((3, 3)),
    }
    areas = shapes.render(params, size)["areas"][:, 0]
    # Pixel counts: the area up to a band of edge pixels (about 2% here).
    np.testing.assert_allclose(areas, math.pi * 20.0**2, rtol=0.04)


def test_background_fraction_is_sensible():
    _, labels = shapes.load_numpy("validation", num_examples=500)
    background = np.mean(labels["seg"] == 0, axis=(1, 2))
    assert np.all(background > 0.3) and np.all(background < 0.99)
    assert 0.65 < background.mean() < 0.92


def test_shapes_stand_out_from_the_background():
    images, labels = shapes.load_numpy("validation", num_examples=200)
    brightness = images.mean(axis=-1)
    foreground = brightness[labels["seg"] > 0].mean()
    background = brightness[labels["seg"] == 0].mean()
    assert foreground > background + 0.3


def test_generating_ten_thousand_images_is_fast():
    shapes.generate(100, 32, seed=0)  # warm up numpy
    start = time.perf_counter()
    shapes.generate(10_000, 32, seed=1)
    # Measured at 0.8 s on 2 shared cores; a per-pixel loop would take minutes.
    assert time.perf_counter() - start < 5.0


def test_load_yields_image_and_task_dict():
    dataset = shapes.load("validation", num_examples=40, batch_size=16)
    images, labels = next(iter(dataset))
    assert images.shape == (16, 32, 32, 3) and images.dtype == tf.float32
    assert labels["cls"].shape == (16,) and labels["cls"].dtype == tf.int32
    assert labels["seg"].shape == (16, 32, 32) and labels["seg"].dtype == tf.int32
    assert labels["count"].shape == (16, 1) and labels["count"].dtype == tf.float32
    assert sum(int(batch[0].shape[0]) for batch in dataset) == 40


def test_load_without_shuffle_keeps_the_numpy_order():
    images, labels = shapes.load_numpy("test", num_examples=20, tasks=("seg",))
    dataset = shapes.load("test", num_examples=20, batch_size=20, tasks=("seg",))
    batch_images, batch_labels = next(iter(dataset))
    assert set(batch_labels) == {"seg"}
    np.testing.assert_array_equal(batch_images.numpy(), images)
    np.testing.assert_array_equal(batch_labels["seg"].numpy(), labels["seg"])


def test_train_split_is_shuffled_by_default():
    images, _ = shapes.load_numpy("train", num_examples=64)
    batch, _ = next(iter(shapes.load("train", num_examples=64, batch_size=64)))
    assert not np.array_equal(batch.numpy(), images)
    # Same examples, other order.
    np.testing.assert_allclose(
        np.sort(batch.numpy().sum(axis=(1, 2, 3))),
        np.sort(images.sum(axis=(1, 2, 3))),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "kwargs", [{"split": "dev"}, {"tasks": ("depth",)}, {"tasks": ()}]
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        shapes.load_numpy(**kwargs)


def test_tfds_builder_writes_the_same_examples(tmp_path):
    config = shapes.ShapesConfig(
        name="tiny", image_size=16, split_sizes={"train": 6, "test": 3}, seed=2
    )
    builder = shapes.Shapes(data_dir=str(tmp_path), config=config)
    builder.download_and_prepare()
    assert builder.info.splits["train"].num_examples == 6
    assert builder.info.splits["test"].num_examples == 3

    dataset = builder.as_dataset(split="train", as_supervised=True)
    assert (
        dataset.element_spec
        == shapes.load("train", num_examples=6, image_size=16, seed=2).element_spec
    )
    images, labels = next(iter(tfds.as_numpy(dataset.batch(6))))
    expected_images, expected_labels = shapes.load_numpy("train", 6, 16, seed=2)
    np.testing.assert_array_equal(images, expected_images)
    for task in shapes.TASKS:
        np.testing.assert_array_equal(labels[task], expected_labels[task])
