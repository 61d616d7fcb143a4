"""MultiMNIST: two overlapping MNIST digits, one task per digit.

The two-task benchmark of Sener & Koltun, "Multi-Task Learning as Multi-Objective
Optimization" (NeurIPS 2018), built after the MultiMNIST of Sabour, Frosst & Hinton,
"Dynamic Routing Between Capsules" (NIPS 2017). Each example overlays two MNIST
digits, and the tasks are:

- `left`: the class (0-9) of the digit placed towards the top-left, int32 `()`.
- `right`: the class (0-9) of the digit placed towards the bottom-right, int32 `()`.

Construction (this module's exact scheme):

1. On a 36x36 canvas (28 + 2 * 4), the left digit's 28x28 image is placed with its
   top-left corner at `(row, column)`, each drawn uniformly from {0, ..., 4}, and the
   right digit's at `(row, column)` each drawn from {4, ..., 8}: every digit starts
   in its corner and is shifted by up to 4 pixels towards the centre on each axis.
   A draw that would put the two digits at exactly the same place (both corners at
   (4, 4), probability 1/625) is drawn again, so the two digits never coincide.
2. Where the digits overlap, the brighter pixel wins (pixel-wise maximum).
3. The canvas is resized to 28x28 with `tf.image.resize(..., method="area")`, an
   anti-aliased box filter (every output pixel averages the canvas area it covers),
   and scaled to float32 in [0, 1]: images are `(28, 28, 1)`.

The reference loader of Sener & Koltun places the digits at fixed corners (0, 0)
and (6, 6) and resizes with nearest-neighbour; here the positions are random, as in
Sabour et al., and the resize is a real area filter.

Protocols: the scheme above is the `"random_shift"` protocol (the default). The
`"sener2018"` protocol rebuilds the data of Sener & Koltun's reference loader
(`multi_task/loaders/multi_mnist_loader.py` of github.com/isl-org/
MultiObjectiveOptimization, `read_image_file`, lines 214-239, and
`multi_task/datasets.py`, lines 12-26):

1. The left digit's 28x28 image at the canvas corner (0, 0), the right digit's at
   (6, 6), on a 36x36 canvas; the overlap is their pixel-wise maximum.
2. The canvas is resized to 28x28 by nearest neighbour (PIL's rule: output pixel
   `i` takes canvas pixel `floor((i + 0.5) * 36 / 28)`), after `scipy.misc.imresize`'s
   byte rescaling (the canvas is stretched so that its brightest pixel is 255).
3. Pixels are scaled to [0, 1], then normalised with MNIST's mean 0.1307 and
   standard deviation 0.3081 (torchvision's `Normalize((0.1307,), (0.3081,))`).
4. Every image of a split is a left digit once; its right digit is drawn uniformly
   from the whole split (itself included, as `np.random.permutation(n)[:1]`).
5. Splits: `train` uses all 60,000 MNIST training images, `test` the 10,000 test
   images; there is no validation split (carve one from `train`).

Splits of the `"random_shift"` protocol (each left digit is every image of the
split in order; its right digit is another image of the same split, drawn at
random by seed):

| split | left digits | examples |
|---|---|---|
| `train` | the first 50,000 MNIST training images | 50,000 |
| `validation` | the last 10,000 MNIST training images | 10,000 |
| `test` | the 10,000 MNIST test images | 10,000 |

Data files: the four official MNIST files (`train-images-idx3-ubyte.gz`, ...), each
checked against its official md5 before use. They are looked for in `data_dir`, else
in the folder named by the environment variable `MTL_KERAS_MNIST_DIR`, else in
`~/.keras/datasets/mnist`. `download=True` fetches missing files from the official
address, with the Google Cloud Storage mirror as fallback.

Example:

```python
from mtl_keras.datasets import multi_mnist

train = multi_mnist.load("train", batch_size=256)      # (image, {"left", "right"})
images, labels = multi_mnist.load_numpy("test", num_examples=1000)
```
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import os
import pathlib
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mtl_keras.datasets.in_memory import in_memory_batches
from mtl_keras.datasets.multi_mnist_images import (
    CANVAS_SIZE,
    IMAGE_SHAPE,
    MAX_SHIFT,
    SENER2018_CORNERS,
    SENER2018_NORMALIZATION,
    build_sener2018_split,
    build_split,
    compose,
    make_canvas,
    nearest_resize,
    sample_corners,
    sener2018_images,
)

TASKS = ("left", "right")
PROTOCOLS = ("random_shift", "sener2018")
SENER2018_SPLIT_SIZES = {"train": 60_000, "test": 10_000}
NUM_CLASSES = 10
SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 50_000, "validation": 10_000, "test": 10_000}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# The md5s published with the official MNIST distribution.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_URLS = (
    "http://yann.lecun.com/exdb/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
ENV_VAR = "MTL_KERAS_MNIST_DIR"

_SPLIT_STREAMS = {"train": 0, "validation": 1, "test": 2}
_NUM_VALIDATION = 10_000
_IDX_UINT8 = 0x08
_DOWNLOAD_TIMEOUT_S = 60


class ChecksumError(ValueError):
    """A data file's md5 differs from the official one."""


# --- Reading the official files ----------------------------------------------------


def keras_home() -> pathlib.Path:
    """Keras' own folder: `$KERAS_HOME`, else `~/.keras`."""
    return pathlib.Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()


def default_data_dir() -> pathlib.Path:
    """The folder of the four MNIST IDX files used when `data_dir` is None.

    `$MTL_KERAS_MNIST_DIR` when set, else `<keras home>/datasets/mnist`
    (`download_mnist` puts the files there). `load_mnist` also reads the
    `mnist.npz` that `keras.datasets.mnist.load_data()` keeps in
    `<keras home>/datasets/` when that folder lacks the IDX files.
    """
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return pathlib.Path(from_env).expanduser()
    return keras_home() / "datasets" / "mnist"


def keras_mnist_npz() -> pathlib.Path:
    """Where `keras.datasets.mnist.load_data()` keeps `mnist.npz`."""
    return keras_home() / "datasets" / "mnist.npz"


#: sha256 of Keras' `mnist.npz` (the `file_hash` of keras.datasets.mnist).
KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"


def file_md5(path: str | os.PathLike) -> str:
    """Hex md5 of a file's bytes."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: str | os.PathLike) -> None:
    """Raises `ChecksumError` unless the file's md5 is the official one for its name."""
    path = pathlib.Path(path)
    expected = MNIST_MD5[path.name]
    actual = file_md5(path)
    if actual != expected:
        raise ChecksumError(
            f"MNIST file {path} is corrupted or not the official one: md5 {actual}, "
            f"expected {expected}. Delete it and fetch it again."
        )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file of unsigned bytes (gzipped or not) into a uint8 array.

    IDX layout: two zero bytes, a type byte (0x08 for uint8), a byte holding the
    number of dimensions, then each dimension as a big-endian int32, then the data.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zeros, dtype_code, ndim = data[:2], data[2], data[3]
    if zeros != b"\0\0" or dtype_code != _IDX_UINT8:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes.")
    shape = tuple(np.frombuffer(data, ">i4", count=ndim, offset=4))
    values = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if values.size != np.prod(shape):
        raise ValueError(f"{path}: header says {shape}, data has {values.size} bytes.")
    return values.reshape(shape)


def _missing_files_message(folder: pathlib.Path, missing: list[str]) -> str:
    return (
        f"MNIST files {missing} not found in {folder} (looked in `data_dir`, else "
        f"${ENV_VAR}, else {default_data_dir()} and then {keras_mnist_npz()}). "
        f"Put the four official files {sorted(MNIST_MD5)} there (from "
        f"{MNIST_URLS[0]} or {MNIST_URLS[1]}), point ${ENV_VAR} or `data_dir` at "
        "a folder that has them, run keras.datasets.mnist.load_data() once, or "
        "pass download=True."
    )


def _read_keras_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The arrays of Keras' `mnist.npz`, after checking its sha256."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != KERAS_MNIST_SHA256:
        raise ChecksumError(
            f"{path} is not Keras' mnist.npz: sha256 {digest}, expected "
            f"{KERAS_MNIST_SHA256}. Delete it and run "
            "keras.datasets.mnist.load_data() again."
        )
    with np.load(path, allow_pickle=False) as arrays:
        loaded = {"train_images": arrays["x_train"], "train_labels": arrays["y_train"],
                  "test_images": arrays["x_test"], "test_labels": arrays["y_test"]}
    for array in loaded.values():
        array.setflags(write=False)
    return loaded


def _fetch_url(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        return response.read()


def download_mnist(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Downloads the MNIST files missing from `data_dir`, verifying their md5.

    Tries each address of `MNIST_URLS` in turn. Needs a network connection.

    Args:
        data_dir: where to put the files; defaults to `default_data_dir()`.

    Returns:
        The folder holding the four files.
    """
    folder = pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in MNIST_MD5:
        target = folder / name
        if not target.exists():
            _download_file(name, target)
    return folder


def _download_file(name: str, target: pathlib.Path) -> None:
    """Fetches one file from the first address that serves the right bytes."""
    errors = []
    for base_url in MNIST_URLS:
        try:
            payload = _fetch_url(base_url + name)
        except (urllib.error.URLError, OSError) as error:
            errors.append(f"{base_url + name}: {error}")
            continue
        actual = hashlib.md5(payload).hexdigest()
        if actual != MNIST_MD5[name]:
            errors.append(
                f"{base_url + name}: md5 {actual}, expected {MNIST_MD5[name]}"
            )
            continue
        # Write next to the target, then rename: never a half-written file.
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as handle:
            handle.write(payload)
        pathlib.Path(handle.name).replace(target)
        return
    raise OSError(f"Could not download {name}: " + "; ".join(errors))


@functools.lru_cache(maxsize=2)
def _read_verified(folder: str, stamps: tuple) -> dict[str, np.ndarray]:
    del stamps  # Only part of the cache key: a changed file is read again.
    arrays = {}
    for key, name in MNIST_FILES.items():
        path = pathlib.Path(folder) / name
        verify_md5(path)
        arrays[key] = read_idx(path)
        arrays[key].setflags(write=False)
    return arrays


def load_mnist(
    data_dir: str | os.PathLike | None = None, download: bool = False
) -> dict[str, np.ndarray]:
    """Reads the four official MNIST files, after checking their md5.

    Where it looks: `data_dir` when given; else `$MTL_KERAS_MNIST_DIR` when
    set; else `<keras home>/datasets/mnist/` (`~/.keras` unless
    `$KERAS_HOME` says otherwise) for the IDX files and, when they are not
    there, the `mnist.npz` that `keras.datasets.mnist.load_data()` keeps in
    `<keras home>/datasets/` (sha256-checked; the same images and labels).

    Args:
        data_dir: folder of the files; defaults to `default_data_dir()`.
        download: fetch missing files from the official address first.

    Returns:
        Read-only uint8 arrays `train_images` (60000, 28, 28), `train_labels`
        (60000,), `test_images` (10000, 28, 28), `test_labels` (10000,).

    Raises:
        FileNotFoundError: a file is missing and `download` is False.
        ChecksumError: a file's md5 is not the official one.
    """
    folder = pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir()
    if download:
        download_mnist(folder)
    missing = [name for name in MNIST_MD5 if not (folder / name).is_file()]
    if missing and not data_dir and not os.environ.get(ENV_VAR):
        if keras_mnist_npz().is_file():
            return _read_keras_npz(keras_mnist_npz())
    if missing:
        raise FileNotFoundError(_missing_files_message(folder, missing))
    stamps = tuple(
        (stat.st_size, stat.st_mtime_ns)
        for stat in ((folder / name).stat() for name in MNIST_FILES.values())
    )
    return _read_verified(str(folder.resolve()), stamps)


def _split_arrays(mnist: Mapping[str, np.ndarray], split: str) -> tuple:
    if split == "test":
        return mnist["test_images"], mnist["test_labels"]
    num_train = len(mnist["train_images"]) - _NUM_VALIDATION
    part = slice(0, num_train) if split == "train" else slice(num_train, None)
    return mnist["train_images"][part], mnist["train_labels"][part]


# --- Public loaders ----------------------------------------------------------------


def _check_split(split: str, protocol: str = "random_shift") -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; expected one of {PROTOCOLS}.")
    splits = SPLITS if protocol == "random_shift" else tuple(SENER2018_SPLIT_SIZES)
    if split not in splits:
        raise ValueError(
            f"Unknown split {split!r} for protocol {protocol!r}; expected one of "
            f"{splits}."
            + (" Carve a validation set from 'train'." if protocol == "sener2018"
               else "")
        )


def load_numpy(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    num_examples: int | None = None,
    download: bool = False,
    protocol: str = "random_shift",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Returns one MultiMNIST split as numpy arrays `(images, {"left", "right"})`.

    Args:
        split: "train" (50,000), "validation" (10,000) or "test" (10,000).
        data_dir: folder of the four official MNIST files; defaults to
            `$MTL_KERAS_MNIST_DIR`, else `~/.keras/datasets/mnist`.
        seed: seed of the pairing and digit positions; each split has its own
            stream, so splits never share an image.
        num_examples: only the first examples of the split (the same as the first
            examples of the full split).
        download: fetch missing files from the official address first.
        protocol: `"random_shift"` (splits train/validation/test, images in
            [0, 1]) or `"sener2018"` (splits train/test, normalised images);
            see the module docstring.

    Returns:
        float32 images `(N, 28, 28, 1)` and int32 labels `(N,)`.
    """
    _check_split(split, protocol)
    mnist = load_mnist(data_dir, download=download)
    if protocol == "sener2018":
        prefix = "test" if split == "test" else "train"
        return build_sener2018_split(
            mnist[f"{prefix}_images"], mnist[f"{prefix}_labels"],
            (seed, _SPLIT_STREAMS[split]), num_examples,
        )
    digits, labels = _split_arrays(mnist, split)
    return build_split(digits, labels, (seed, _SPLIT_STREAMS[split]), num_examples)


def load(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    num_examples: int | None = None,
    batch_size: int | None = None,
    download: bool = False,
    shuffle: bool | None = None,
    protocol: str = "random_shift",
) -> tf.data.Dataset:
    """Returns one MultiMNIST split as a `tf.data.Dataset` of `(image, labels)`.

    `labels` is `{"left": int32, "right": int32}`; see `load_numpy` for the
    arguments. `shuffle` reshuffles every epoch and defaults to True for "train".

    Example:

    ```python
    model.fit(multi_mnist.load("train", batch_size=256),
              validation_data=multi_mnist.load("validation", batch_size=1000))
    ```
    """
    images, labels = load_numpy(
        split, data_dir, seed, num_examples, download, protocol
    )
    shuffle = shuffle if shuffle is not None else split == "train"
    if batch_size is None:
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        if shuffle:
            dataset = dataset.shuffle(len(images), seed=seed)
        return dataset.prefetch(tf.data.AUTOTUNE)
    return in_memory_batches(images, labels, batch_size, shuffle, seed)


# --- TFDS builder ------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class MultiMnistConfig(tfds.core.BuilderConfig):
    """Options of the `MultiMnist` TFDS builder.

    Args:
        split_sizes: number of examples per split (the first ones, as with
            `num_examples`); all of `SPLIT_SIZES` by default.
        seed: seed of the pairing and digit positions.
    """

    split_sizes: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: dict(SPLIT_SIZES)
    )
    seed: int = 0


class MultiMnist(tfds.core.GeneratorBasedBuilder):
    """TFDS builder of MultiMNIST, reading the MNIST files from `manual_dir`.

    Writes the same examples, in the same order, as `load_numpy` with the config's
    seed.

    Example:

    ```python
    builder = MultiMnist(data_dir="/tmp/tfds")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="/data/mnist"))
    train = builder.as_dataset(split="train", as_supervised=True)
    ```
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [MultiMnistConfig(name="default", description="Full splits.")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Put the four official MNIST files ({", ".join(sorted(MNIST_MD5))}) in the
    manual folder (`manual_dir`). They are at {MNIST_URLS[0]}, mirrored at
    {MNIST_URLS[1]}; their md5 is checked.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="MultiMNIST: two overlapping digits, tasks left and right.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.float32),
                    "left": tfds.features.Tensor(shape=(), dtype=np.int32),
                    "right": tfds.features.Tensor(shape=(), dtype=np.int32),
                }
            ),
            supervised_keys=("image", {task: task for task in TASKS}),
            disable_shuffling=True,
            homepage="https://arxiv.org/abs/1810.04650",
        )

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        return {
            split: self._generate_examples(manual_dir, split, size)
            for split, size in self.builder_config.split_sizes.items()
        }

    def _generate_examples(self, manual_dir: str, split: str, num_examples: int):
        images, labels = load_numpy(
            split, manual_dir, self.builder_config.seed, num_examples
        )
        for index, image in enumerate(images):
            yield (
                index,
                {
                    "image": image,
                    "left": labels["left"][index],
                    "right": labels["right"][index],
                },
            )


__all__ = [
    "CANVAS_SIZE", "ENV_VAR", "IMAGE_SHAPE", "KERAS_MNIST_SHA256", "MAX_SHIFT",
    "MNIST_FILES", "MNIST_MD5", "MNIST_URLS", "NUM_CLASSES", "PROTOCOLS",
    "SENER2018_CORNERS", "SENER2018_NORMALIZATION", "SENER2018_SPLIT_SIZES",
    "SPLITS", "SPLIT_SIZES", "TASKS", "ChecksumError", "MultiMnist",
    "MultiMnistConfig", "build_sener2018_split", "build_split", "compose",
    "default_data_dir", "download_mnist", "file_md5", "in_memory_batches",
    "keras_home", "keras_mnist_npz", "load", "load_mnist", "load_numpy",
    "make_canvas", "nearest_resize", "read_idx", "sample_corners",
    "sener2018_images", "verify_md5",
]
