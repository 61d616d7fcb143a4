"""MultiMNIST images: digit pairs composed on a canvas (both protocols).

See `mtl_keras.datasets.multi_mnist` for the scheme of each protocol; that
module reads the MNIST files and serves the splits built here.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

IMAGE_SHAPE = (28, 28, 1)
CANVAS_SIZE = 36
MAX_SHIFT = 4
#: Where the reference loader puts the digits' top-left corners on the canvas.
SENER2018_CORNERS = ((0, 0), (6, 6))
#: MNIST pixel mean and standard deviation used by the reference transform.
SENER2018_NORMALIZATION = (0.1307, 0.3081)

_DIGIT_SIZE = 28
_RESIZE_CHUNK = 8192  # bounds the float32 canvases held at once



def make_canvas(
    left_digits: np.ndarray,
    right_digits: np.ndarray,
    left_corners: np.ndarray,
    right_corners: np.ndarray,
) -> np.ndarray:
    """Overlays digit pairs on 36x36 canvases, overlaps combined by maximum.

    Args:
        left_digits, right_digits: uint8 `(N, 28, 28)` digit images.
        left_corners, right_corners: int `(N, 2)`, each digit's top-left corner on
            the canvas as (row, column), in `[0, 8]`.

    Returns:
        uint8 `(N, 36, 36)` canvases.
    """
    canvas = np.zeros((len(left_digits), CANVAS_SIZE, CANVAS_SIZE), np.uint8)
    for digits, corners in ((left_digits, left_corners), (right_digits, right_corners)):
        for row, column in np.unique(corners, axis=0):
            index = np.flatnonzero(np.all(corners == (row, column), axis=1))
            rows = slice(row, row + _DIGIT_SIZE)
            columns = slice(column, column + _DIGIT_SIZE)
            window = (index, rows, columns)
            canvas[window] = np.maximum(canvas[window], digits[index])
    return canvas


def compose(
    left_digits: np.ndarray,
    right_digits: np.ndarray,
    left_corners: np.ndarray,
    right_corners: np.ndarray,
) -> np.ndarray:
    """MultiMNIST images from digit pairs: `make_canvas`, then an area resize to 28x28.

    Returns:
        float32 `(N, 28, 28, 1)` in [0, 1].
    """
    canvas = make_canvas(left_digits, right_digits, left_corners, right_corners)
    images = np.empty((len(canvas),) + IMAGE_SHAPE, np.float32)
    for start in range(0, len(canvas), _RESIZE_CHUNK):
        chunk = canvas[start : start + _RESIZE_CHUNK, ..., None]
        chunk = tf.convert_to_tensor(chunk, tf.float32) / 255.0
        resized = tf.image.resize(chunk, IMAGE_SHAPE[:2], method="area")
        images[start : start + _RESIZE_CHUNK] = np.clip(resized.numpy(), 0.0, 1.0)
    return images


def sample_corners(
    rng: np.random.Generator, num_examples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draws the digits' top-left corners on the canvas (see the module docstring).

    Returns:
        `(left_corners, right_corners)`, int `(N, 2)` each: left in [0, 4], right in
        [4, 8], never both at (4, 4).
    """
    left = rng.integers(0, MAX_SHIFT + 1, size=(num_examples, 2))
    right = rng.integers(MAX_SHIFT, 2 * MAX_SHIFT + 1, size=(num_examples, 2))
    clash = np.flatnonzero(np.all(left == right, axis=1))
    while clash.size:
        right[clash] = rng.integers(MAX_SHIFT, 2 * MAX_SHIFT + 1, size=(clash.size, 2))
        clash = clash[np.all(left[clash] == right[clash], axis=1)]
    return left, right


def build_split(
    digits: np.ndarray,
    labels: np.ndarray,
    seed: int | tuple = 0,
    num_examples: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Pairs every digit with another random digit of the same set and composes them.

    Digit `i` is the left digit of example `i`; its right digit is digit
    `(i + k) % n` with `k` drawn uniformly from 1..n-1, so never itself. All random
    draws are made for the full set, so the first `num_examples` examples do not
    depend on `num_examples`.

    Args:
        digits: uint8 `(n, 28, 28)` MNIST images.
        labels: their digit classes `(n,)`.
        seed: seed of the pairing and positions.
        num_examples: build only the first examples; all when None.

    Returns:
        `(images, {"left": ..., "right": ...})`: float32 `(N, 28, 28, 1)` and int32
        `(N,)` labels.
    """
    num_digits = len(digits)
    rng = np.random.default_rng(seed)
    partners = (
        np.arange(num_digits) + rng.integers(1, num_digits, num_digits)
    ) % num_digits
    left_corners, right_corners = sample_corners(rng, num_digits)
    count = num_digits if num_examples is None else min(int(num_examples), num_digits)
    left, right = np.arange(count), partners[:count]
    images = compose(
        digits[left], digits[right], left_corners[:count], right_corners[:count]
    )
    return images, {
        "left": labels[left].astype(np.int32),
        "right": labels[right].astype(np.int32),
    }


def nearest_resize(canvas: np.ndarray, size: int = IMAGE_SHAPE[0]) -> np.ndarray:
    """Nearest-neighbour resize of square images with PIL's pixel-centre rule.

    Output pixel `i` takes input pixel `floor((i + 0.5) * n / size)`, as
    `PIL.Image.resize(..., NEAREST)` (used by `scipy.misc.imresize`).

    Args:
        canvas: `(N, n, n)` images.
        size: the output side.

    Returns:
        `(N, size, size)` images of `canvas`'s dtype.
    """
    source = np.floor((np.arange(size) + 0.5) * canvas.shape[-1] / size).astype(int)
    return canvas[:, source][:, :, source]


def sener2018_images(left_digits: np.ndarray, right_digits: np.ndarray) -> np.ndarray:
    """MultiMNIST images of the `"sener2018"` protocol (see the module docstring).

    Args:
        left_digits, right_digits: uint8 `(N, 28, 28)` digit images.

    Returns:
        float32 `(N, 28, 28, 1)`, normalised with mean 0.1307 and std 0.3081.
    """
    count = len(left_digits)
    corners = [np.tile(corner, (count, 1)) for corner in SENER2018_CORNERS]
    canvas = make_canvas(left_digits, right_digits, *corners).astype(np.float32)
    brightest = canvas.reshape(count, -1).max(axis=1)[:, None, None]
    # scipy's bytescale: stretch to 0..255, round half up (the minimum is 0).
    canvas = np.floor(canvas * (255.0 / np.maximum(brightest, 1.0)) + 0.5)
    images = nearest_resize(canvas) / 255.0
    mean, std = SENER2018_NORMALIZATION
    return ((images - mean) / std).astype(np.float32)[..., None]


def build_sener2018_split(
    digits: np.ndarray,
    labels: np.ndarray,
    seed: int | tuple = 0,
    num_examples: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Pairs every digit with a uniformly drawn digit of the same set (itself
    included) and composes them as the reference loader does.

    Args:
        digits: uint8 `(n, 28, 28)` MNIST images.
        labels: their digit classes `(n,)`.
        seed: seed of the pairing.
        num_examples: build only the first examples; all when None.

    Returns:
        `(images, {"left": ..., "right": ...})`: float32 `(N, 28, 28, 1)` and int32
        `(N,)` labels.
    """
    num_digits = len(digits)
    partners = np.random.default_rng(seed).integers(0, num_digits, num_digits)
    count = num_digits if num_examples is None else min(int(num_examples), num_digits)
    left, right = np.arange(count), partners[:count]
    images = sener2018_images(digits[left], digits[right])
    return images, {
        "left": labels[left].astype(np.int32),
        "right": labels[right].astype(np.int32),
    }
