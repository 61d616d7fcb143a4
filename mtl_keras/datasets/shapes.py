"""Synthetic "shapes" images with three tasks: classification, segmentation, counting.

Each RGB image shows 1 to 4 random geometric shapes (circle, square, triangle) of
random size, position and colour on a noisy coloured background. The three tasks
share the same pixels but ask different questions, which makes the data set a small,
fast, offline stand-in for the classification + segmentation + regression mixes
(NYUv2, Cityscapes) that multi-task papers benchmark on:

- `cls`: the class of the largest shape (0 circle, 1 square, 2 triangle), int32 `()`.
- `seg`: a per-pixel class map, int32 `(H, W)`: 0 background, `1 + class` where a
  shape is drawn; shapes drawn later cover earlier ones.
- `count`: the number of shapes, float32 `(1,)`, uniform over 1..4.

Generation rules (they make every label well defined):

- The three kinds have the same area for the same size parameter `r`, drawn
  uniformly in `[0.1, 0.25] * image_size` (circle of radius `r`, square of side
  `r * sqrt(pi)`, apex-up equilateral triangle of area `pi * r**2`), so no class
  is "usually the largest"; the `cls` classes come out balanced.
- "Largest" compares the pixel counts of the full (unoccluded) shapes; images where
  the two largest shapes have the same pixel count are redrawn.
- Every shape lies fully inside the image and keeps at least half of its pixels
  visible after the later shapes are drawn (images that break this are redrawn),
  so `count` only counts shapes one can see.

Everything is vectorised numpy over the batch (coordinate grids, no per-pixel loop):
10,000 images of 32x32 take about 0.8 s on two shared CPU cores, and `load` keeps
the arrays in memory, so the input pipeline is never the bottleneck.

Splits: "train", "validation" and "test" (4096 / 1024 / 1024 images by default,
any size on request), drawn from disjoint random streams `(seed, split index)`.

Example:

```python
from mtl_keras.datasets import shapes

train = shapes.load("train", batch_size=64)            # (image, {task: label})
images, labels = shapes.load_numpy("test", num_examples=256)
labels["seg"].shape                                    # (256, 32, 32)
```
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

TASKS = ("cls", "seg", "count")
NUM_CLASSES = 3
NUM_SEG_CLASSES = 4
CLASS_NAMES = ("circle", "square", "triangle")
MIN_SHAPES = 1
MAX_SHAPES = 4

SPLITS = ("train", "validation", "test")
# Default number of examples per split; each split has its own random stream.
SPLIT_SIZES = {"train": 4096, "validation": 1024, "test": 1024}

_SPLIT_STREAMS = {"train": 0, "validation": 1, "test": 2}
_MIN_VISIBLE_FRACTION = 0.5
# Radius range as a fraction of the image side: 3.2 to 8 pixels at 32x32.
_MIN_RADIUS = 0.10
_MAX_RADIUS = 0.25
# Half extent of each kind's bounding box, in units of r (equal area pi * r**2).
_SQUARE_HALF_SIDE = math.sqrt(math.pi) / 2
_TRIANGLE_BASE = math.sqrt(4 * math.pi / math.sqrt(3))
_TRIANGLE_HEIGHT = _TRIANGLE_BASE * math.sqrt(3) / 2
_MAX_HALF_EXTENT = max(1.0, _SQUARE_HALF_SIDE, _TRIANGLE_BASE / 2, _TRIANGLE_HEIGHT / 2)
_NOISE_AMPLITUDE = 0.08  # uniform pixel noise in [-0.08, 0.08]


def sample_shape_params(
    rng: np.random.Generator,
    num_images: int,
    image_size: int,
    count: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Draws the random parameters of `num_images` images of `MAX_SHAPES` slots each.

    Args:
        rng: the numpy random generator to draw from.
        num_images: how many images.
        image_size: side of the square images, in pixels.
        count: optional int `(N,)`, the number of shapes of each image; drawn
            uniformly in `[MIN_SHAPES, MAX_SHAPES]` when omitted.

    Returns:
        A dict of arrays: `present` bool `(N, MAX_SHAPES)` (the first `count` slots
        are present), `kind` int `(N, MAX_SHAPES)`, `center` float `(N, MAX_SHAPES, 2)`
        in pixels as (row, column), `radius` float `(N, MAX_SHAPES)`, `color` float
        `(N, MAX_SHAPES, 3)` and `background` float `(N, 3)`.
    """
    slots = (num_images, MAX_SHAPES)
    if count is None:
        count = rng.integers(MIN_SHAPES, MAX_SHAPES + 1, size=num_images)
    radius = rng.uniform(_MIN_RADIUS, _MAX_RADIUS, size=slots) * image_size
    margin = _MAX_HALF_EXTENT * radius[..., None]
    low, high = margin, image_size - 1 - margin
    center = low + rng.uniform(size=slots + (2,)) * (high - low)
    return {
        "present": np.arange(MAX_SHAPES) < count[:, None],
        "kind": rng.integers(0, NUM_CLASSES, size=slots),
        "center": center,
        "radius": radius,
        "color": rng.uniform(0.35, 1.0, size=slots + (3,)),
        "background": rng.uniform(0.0, 0.3, size=(num_images, 3)),
    }


def _kind_mask(
    shape_kind: int, dy: np.ndarray, dx: np.ndarray, r: np.ndarray
) -> np.ndarray:
    """Pixels inside shapes of one kind, from offsets to their centres."""
    if shape_kind == 0:
        return dy * dy + dx * dx <= r * r
    if shape_kind == 1:
        half_side = _SQUARE_HALF_SIDE * r
        return (np.abs(dy) <= half_side) & (np.abs(dx) <= half_side)
    # Triangle, apex up: from the apex (dy = -h/2) to the base (dy = +h/2), the
    # half width grows linearly from 0 to half the base.
    height = _TRIANGLE_HEIGHT * r
    depth = dy + height / 2
    half_width = (_TRIANGLE_BASE / 2) * r * depth / height
    return (depth >= 0) & (depth <= height) & (np.abs(dx) <= half_width)


def shape_masks(
    kind: np.ndarray, center: np.ndarray, radius: np.ndarray, image_size: int
) -> np.ndarray:
    """Rasterises one shape per image: bool `(N, image_size, image_size)`.

    A pixel belongs to a shape when its centre, at `(row + 0.5, column + 0.5)`, lies
    inside it.

    Args:
        kind: int `(N,)`, 0 circle, 1 square, 2 triangle (apex up).
        center: float `(N, 2)`, the shape's centre as (row, column) in pixels.
        radius: float `(N,)`, the size parameter: every kind has area `pi * r**2`.
        image_size: side of the square images, in pixels.
    """
    coords = np.arange(image_size, dtype=np.float32) + 0.5
    masks = np.zeros((len(kind), image_size, image_size), bool)
    for shape_kind in np.unique(kind):
        rows = np.flatnonzero(kind == shape_kind)
        dy = coords[None, :, None] - center[rows, 0, None, None].astype(np.float32)
        dx = coords[None, None, :] - center[rows, 1, None, None].astype(np.float32)
        r = radius[rows, None, None].astype(np.float32)
        masks[rows] = _kind_mask(int(shape_kind), dy, dx, r)
    return masks


def _rasterise(
    params: Mapping[str, np.ndarray], image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paints the shapes in slot order.

    Returns:
        `top` int8 `(N, S, S)`, the shape seen at each pixel (0 background, 1 + slot
        otherwise); `areas` `(N, MAX_SHAPES)`, the pixel count of each full shape
        (0 for absent slots); `visible` `(N, MAX_SHAPES)`, its pixels left visible.
    """
    present, kind = params["present"], params["kind"]
    num_images = present.shape[0]
    top = np.zeros((num_images, image_size, image_size), np.int8)
    areas = np.zeros((num_images, MAX_SHAPES), np.int64)
    for slot in range(MAX_SHAPES):
        rows = np.flatnonzero(present[:, slot])
        mask = shape_masks(
            kind[rows, slot],
            params["center"][rows, slot],
            params["radius"][rows, slot],
            image_size,
        )
        areas[rows, slot] = mask.sum(axis=(1, 2))
        top[rows] = np.where(mask, np.int8(slot + 1), top[rows])
    visible = np.stack(
        [(top == slot + 1).sum(axis=(1, 2)) for slot in range(MAX_SHAPES)], 1
    )
    return top, areas, visible


def _compose(
    params: Mapping[str, np.ndarray],
    top: np.ndarray,
    areas: np.ndarray,
    visible: np.ndarray,
    noise: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Turns the painted slot map into images and labels (see `render`)."""
    present, kind = params["present"], params["kind"]
    num_images = present.shape[0]
    # Flat index into per-image lookup tables with MAX_SHAPES + 1 entries.
    lookup = np.arange(num_images)[:, None, None] * (MAX_SHAPES + 1) + top
    palette = np.concatenate([params["background"][:, None], params["color"]], axis=1)
    image = np.take(palette.reshape(-1, 3).astype(np.float32), lookup, axis=0)
    if noise is not None:
        image = np.clip(image + noise, 0.0, 1.0, out=image)
    seg_of_slot = np.concatenate([np.zeros((num_images, 1), int), kind + 1], axis=1)
    largest = np.argmax(areas, axis=1)
    return {
        "image": image,
        "seg": np.take(seg_of_slot.astype(np.int32).ravel(), lookup),
        "cls": kind[np.arange(num_images), largest].astype(np.int32),
        "count": present.sum(axis=1, keepdims=True).astype(np.float32),
        "areas": areas,
        "visible": visible,
    }


def render(
    params: Mapping[str, np.ndarray], image_size: int, noise: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Draws images and labels from `sample_shape_params` output.

    Slots are painted in order, so a later shape covers an earlier one.

    Args:
        params: the shapes' parameters, as returned by `sample_shape_params`.
        image_size: side of the square images, in pixels.
        noise: optional float32 `(N, S, S, 3)` added to the image before clipping
            to [0, 1]; without it the image holds the flat colours only.

    Returns:
        A dict with `image` float32 `(N, S, S, 3)` in [0, 1], `seg`, `cls`, `count`
        as documented in the module, plus `areas` int `(N, MAX_SHAPES)` (pixel count
        of each full shape, 0 for absent slots) and `visible` int `(N, MAX_SHAPES)`
        (its pixels left visible), which the generator uses to reject images.
    """
    return _compose(params, *_rasterise(params, image_size), noise)


def _is_valid(areas: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Images whose shapes stay half visible and whose largest shape is unique."""
    enough_visible = np.all(visible >= _MIN_VISIBLE_FRACTION * areas, axis=1)
    top_two = np.sort(areas, axis=1)[:, -2:]
    return enough_visible & (top_two[:, 1] > top_two[:, 0])


def generate(
    num_images: int, image_size: int = 32, seed: int | Sequence[int] = 0
) -> dict[str, np.ndarray]:
    """Generates `num_images` valid images and their labels, deterministically by seed.

    The number of shapes of each image is drawn first, uniformly in 1..4. Then the
    shapes are drawn in rounds: images that break the rules of the module docstring
    are drawn again (keeping their number of shapes) from the same random stream,
    until all are valid. The output depends only on `(num_images, image_size, seed)`.

    Args:
        num_images: how many images.
        image_size: side of the square images, in pixels (at least 16).
        seed: an int or a sequence of ints for `np.random.default_rng`.

    Returns:
        The dict of `render`, holding `num_images` valid images.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}.")
    rng = np.random.default_rng(seed)
    count = rng.integers(MIN_SHAPES, MAX_SHAPES + 1, size=num_images)
    kept = sample_shape_params(rng, num_images, image_size, count)
    kept["top"], kept["areas"], kept["visible"] = _rasterise(kept, image_size)
    pending = np.flatnonzero(~_is_valid(kept["areas"], kept["visible"]))
    while pending.size:
        params = sample_shape_params(rng, pending.size, image_size, count[pending])
        drawn = dict(
            zip(
                ("top", "areas", "visible"), _rasterise(params, image_size), strict=True
            )
        )
        valid = _is_valid(drawn["areas"], drawn["visible"])
        for key, value in {**params, **drawn}.items():
            kept[key][pending[valid]] = value[valid]
        pending = pending[~valid]
    top, areas, visible = (kept.pop(key) for key in ("top", "areas", "visible"))
    image_shape = (num_images, image_size, image_size, 3)
    noise = rng.random(image_shape, dtype=np.float32)
    noise = (2 * _NOISE_AMPLITUDE) * noise - _NOISE_AMPLITUDE
    return _compose(kept, top, areas, visible, noise)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    tasks = tuple(tasks)
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}.")
    return tasks


@functools.lru_cache(maxsize=8)
def _cached_split(
    split: str, num_examples: int, image_size: int, seed: int
) -> dict[str, np.ndarray]:
    drawn = generate(num_examples, image_size, seed=(seed, _SPLIT_STREAMS[split]))
    for array in drawn.values():
        array.setflags(write=False)
    return drawn


def load_numpy(
    split: str = "train",
    num_examples: int | None = None,
    image_size: int = 32,
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Returns one split as numpy arrays `(images, {task: labels})`.

    Each split draws from its own random stream (`(seed, split index)`), so splits
    never share images and the same arguments always give identical arrays. Arrays
    are cached in memory and returned read-only.

    Args:
        split: "train", "validation" or "test".
        num_examples: number of images; defaults to `SPLIT_SIZES[split]`
            (4096 / 1024 / 1024).
        image_size: side of the square images, in pixels (at least 16).
        seed: base seed of the data set.
        tasks: which labels to return, a subset of `TASKS`.

    Returns:
        `images` float32 `(N, S, S, 3)` in [0, 1], and a dict with `cls` int32
        `(N,)`, `seg` int32 `(N, S, S)`, `count` float32 `(N, 1)` for the tasks asked.
    """
    _check_split(split)
    tasks = _check_tasks(tasks)
    if num_examples is None:
        num_examples = SPLIT_SIZES[split]
    drawn = _cached_split(split, int(num_examples), int(image_size), int(seed))
    return drawn["image"], {task: drawn[task] for task in tasks}


def load(
    split: str = "train",
    num_examples: int | None = None,
    image_size: int = 32,
    seed: int = 0,
    batch_size: int | None = None,
    shuffle: bool | None = None,
    tasks: Sequence[str] = TASKS,
) -> tf.data.Dataset:
    """Returns one split as a `tf.data.Dataset` of `(image, {task: label})`.

    Args:
        split: "train", "validation" or "test".
        num_examples: number of images; defaults to `SPLIT_SIZES[split]`.
        image_size: side of the square images, in pixels (at least 16).
        seed: base seed of the data (and of the shuffling order).
        batch_size: batch the dataset when given (the last batch may be smaller).
        shuffle: reshuffle every epoch; defaults to True for "train" only.
        tasks: which labels to yield, a subset of `TASKS`.

    Example:

    ```python
    model.fit(shapes.load("train", batch_size=64),
              validation_data=shapes.load("validation", batch_size=256))
    ```
    """
    images, labels = load_numpy(split, num_examples, image_size, seed, tasks)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle if shuffle is not None else split == "train":
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if batch_size is not None:
        dataset = dataset.batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Size options of the `Shapes` TFDS builder.

    Args:
        image_size: side of the square images, in pixels.
        split_sizes: number of examples per split.
        seed: base seed of the data set.
    """

    image_size: int = 32
    split_sizes: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: dict(SPLIT_SIZES)
    )
    seed: int = 0


class Shapes(tfds.core.GeneratorBasedBuilder):
    """TFDS builder of the synthetic shapes data set; works offline.

    It writes the same arrays as `load_numpy` (same seeds, same splits), so
    `as_dataset(split=..., as_supervised=True)` yields `(image, {task: label})`
    batches that a dict-output model trains on directly.

    Example:

    ```python
    builder = Shapes(data_dir="/tmp/tfds")
    builder.download_and_prepare()
    train = builder.as_dataset(split="train", as_supervised=True)
    ```
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        ShapesConfig(name="default", description="32x32 images, 4096/1024/1024.")
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Synthetic shapes images: classification, segmentation and counting."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=(size, size, 3), dtype=np.float32
                    ),
                    "cls": tfds.features.Tensor(shape=(), dtype=np.int32),
                    "seg": tfds.features.Tensor(shape=(size, size), dtype=np.int32),
                    "count": tfds.features.Tensor(shape=(1,), dtype=np.float32),
                }
            ),
            supervised_keys=("image", {task: task for task in TASKS}),
            # Keep `load_numpy`'s order: example i of a split is image i.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {split: self._generate_examples(split) for split in self._split_sizes()}

    def _split_sizes(self) -> dict[str, int]:
        return dict(self.builder_config.split_sizes)

    def _generate_examples(self, split: str):
        config = self.builder_config
        images, labels = load_numpy(
            split, self._split_sizes()[split], config.image_size, config.seed
        )
        for index, image in enumerate(images):
            yield index, {"image": image, **{t: labels[t][index] for t in TASKS}}
