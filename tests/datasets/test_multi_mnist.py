"""Tests of MultiMNIST (`mtl_keras.datasets.multi_mnist`). No test touches the network:
the download test replaces the fetch function and makes `urlopen` fail loudly."""

import gzip
import os
import pathlib
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtl_keras.datasets import multi_mnist

# One worker runs this module: its module-scoped fixture is built once.
pytestmark = pytest.mark.xdist_group("test_multi_mnist")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _find_mnist_dir():
    candidates = [
        os.environ.get(multi_mnist.ENV_VAR),
        REPO_ROOT / "../shared/data/mnist",
    ]
    for candidate in candidates:
        if candidate and all(
            (pathlib.Path(candidate) / name).is_file() for name in multi_mnist.MNIST_MD5
        ):
            return pathlib.Path(candidate).resolve()
    return None


@pytest.fixture(scope="module")
def mnist_dir():
    folder = _find_mnist_dir()
    if folder is None:
        pytest.skip(
            f"MNIST files not found (set {multi_mnist.ENV_VAR} or provide "
            "../shared/data/mnist)"
        )
    return folder


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return multi_mnist.load_mnist(mnist_dir)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# --- Reading the files --------------------------------------------------------------


def test_read_idx_parses_a_handmade_file(tmp_path):
    values = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    header = bytes([0, 0, 0x08, 3]) + np.array([2, 2, 3], ">i4").tobytes()
    path = tmp_path / "tiny-idx3-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(header + values.tobytes())
    np.testing.assert_array_equal(multi_mnist.read_idx(path), values)

    raw = tmp_path / "tiny-idx3-ubyte"
    raw.write_bytes(header + values.tobytes())
    np.testing.assert_array_equal(multi_mnist.read_idx(raw), values)


@pytest.mark.parametrize(
    "payload",
    [
        bytes([0, 0, 0x0D, 1]) + np.array([2], ">i4").tobytes() + b"\0" * 8,  # floats
        bytes([0, 0, 0x08, 1]) + np.array([5], ">i4").tobytes() + b"\1\2",  # short
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, payload):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match="bad-idx1-ubyte"):
        multi_mnist.read_idx(path)


def test_load_mnist_reads_the_official_files(mnist):
    assert mnist["train_images"].shape == (60_000, 28, 28)
    assert mnist["train_labels"].shape == (60_000,)
    assert mnist["test_images"].shape == (10_000, 28, 28)
    assert mnist["test_labels"].shape == (10_000,)
    assert mnist["train_images"].dtype == np.uint8
    assert mnist["train_images"].max() == 255
    np.testing.assert_array_equal(np.unique(mnist["test_labels"]), np.arange(10))
    # Well-known first labels of the official files.
    np.testing.assert_array_equal(mnist["train_labels"][:5], [5, 0, 4, 1, 9])
    np.testing.assert_array_equal(mnist["test_labels"][:5], [7, 2, 1, 0, 4])


def test_md5_mismatch_names_the_file(mnist_dir, tmp_path):
    for name in multi_mnist.MNIST_MD5:
        shutil.copy(mnist_dir / name, tmp_path / name)
    corrupted = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    with pytest.raises(multi_mnist.ChecksumError, match="t10k-labels-idx1-ubyte.gz"):
        multi_mnist.load_mnist(tmp_path)


def test_missing_files_say_where_and_how(tmp_path, no_network):
    with pytest.raises(FileNotFoundError) as error:
        multi_mnist.load_numpy("test", data_dir=tmp_path, num_examples=4)
    message = str(error.value)
    assert str(tmp_path) in message
    assert "train-images-idx3-ubyte.gz" in message
    assert multi_mnist.ENV_VAR in message and "download=True" in message


def test_data_dir_defaults_to_the_environment_variable(
    tmp_path, monkeypatch, no_network
):
    monkeypatch.setenv(multi_mnist.ENV_VAR, str(tmp_path))
    assert multi_mnist.default_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        multi_mnist.load_numpy("test", num_examples=4)
    monkeypatch.delenv(multi_mnist.ENV_VAR)
    expected = pathlib.Path("~/.keras/datasets/mnist").expanduser()
    assert multi_mnist.default_data_dir() == expected


def test_download_falls_back_to_the_mirror_and_checks_md5(
    mnist_dir, tmp_path, monkeypatch, no_network
):
    requested = []

    def fake_fetch(url):
        requested.append(url)
        if url.startswith(multi_mnist.MNIST_URLS[0]):
            raise urllib.error.URLError("first address down")
        return (mnist_dir / url.rsplit("/", 1)[1]).read_bytes()

    monkeypatch.setattr(multi_mnist, "_fetch_url", fake_fetch)
    folder = multi_mnist.download_mnist(tmp_path / "mnist")
    assert sorted(p.name for p in folder.iterdir()) == sorted(multi_mnist.MNIST_MD5)
    assert len(requested) == 8  # each file: official address, then the mirror
    multi_mnist.load_mnist(folder)  # md5s verified

    monkeypatch.setattr(multi_mnist, "_fetch_url", lambda url: b"not mnist")
    with pytest.raises(OSError, match="md5") as error:
        multi_mnist.download_mnist(tmp_path / "other")
    assert multi_mnist.MNIST_URLS[1] in str(error.value)  # both addresses tried
    assert list((tmp_path / "other").iterdir()) == []


# --- Building the pairs -------------------------------------------------------------


def test_make_canvas_places_digits_and_keeps_the_brighter_pixel():
    left = np.full((1, 28, 28), 100, np.uint8)
    right = np.full((1, 28, 28), 200, np.uint8)
    right[0, :2, :2] = 50  # dimmer than the left digit under it
    canvas = multi_mnist.make_canvas(
        left, right, np.array([[1, 3]]), np.array([[6, 8]])
    )[0]
    assert canvas.shape == (36, 36)
    assert canvas[1, 3] == 100 and canvas[0, 3] == 0 and canvas[1, 2] == 0
    assert canvas[6, 8] == 100  # right's dim corner under the left digit
    assert canvas[8, 10] == 200  # overlap: the brighter right digit
    assert canvas[33, 35] == 200 and canvas[34, 35] == 0
    assert np.all(canvas[29:, :8] == 0)  # bottom-left: neither digit


def test_compose_resizes_with_an_area_filter():
    full = np.full((2, 28, 28), 255, np.uint8)
    corners = np.array([[4, 4], [0, 0]])
    others = np.array([[4, 8], [8, 8]])
    images = multi_mnist.compose(full, full, corners, others)
    assert images.shape == (2, 28, 28, 1) and images.dtype == np.float32
    canvas = multi_mnist.make_canvas(full, full, corners, others) / 255.0
    # An area filter keeps the mean brightness (the canvas is 36x36, output 28x28).
    np.testing.assert_allclose(
        images.mean(axis=(1, 2, 3)), canvas.mean(axis=(1, 2)), rtol=1e-5
    )
    assert images.max() == pytest.approx(1.0) and images.min() == 0.0


def test_left_digit_lies_top_left_of_the_right_digit(mnist):
    digits, labels = mnist["test_images"], mnist["test_labels"]
    one, zero = (
        digits[np.flatnonzero(labels == 1)[0]],
        digits[np.flatnonzero(labels == 0)[0]],
    )
    blank = np.zeros_like(one)
    left_corner, right_corner = np.array([[2, 1]]), np.array([[7, 8]])
    both = multi_mnist.compose(one[None], zero[None], left_corner, right_corner)[
        0, ..., 0
    ]
    left_only = multi_mnist.compose(one[None], blank[None], left_corner, right_corner)
    right_only = multi_mnist.compose(blank[None], zero[None], left_corner, right_corner)

    def centre_of_mass(image):
        rows, columns = np.indices(image.shape)
        return np.array([(rows * image).sum(), (columns * image).sum()]) / image.sum()

    left_centre = centre_of_mass(left_only[0, ..., 0])
    right_centre = centre_of_mass(right_only[0, ..., 0])
    assert np.all(left_centre < right_centre - 3)
    # Max-combination: the pair is at least as bright as each digit alone.
    assert np.all(both >= np.maximum(left_only, right_only)[0, ..., 0] - 1e-6)


def test_sample_corners_ranges_and_never_coincide():
    left, right = multi_mnist.sample_corners(np.random.default_rng(0), 20_000)
    assert left.min() == 0 and left.max() == 4
    assert right.min() == 4 and right.max() == 8
    assert not np.any(np.all(left == right, axis=1))
    assert np.any(left[:, 0] == right[:, 0])  # one axis may coincide


def test_build_split_pairs_each_digit_with_another_one():
    digits = np.zeros((30, 28, 28), np.uint8)
    ids = np.arange(30)  # labels as identities, to read the pairing back
    _, labels = multi_mnist.build_split(digits, ids, seed=3)
    np.testing.assert_array_equal(labels["left"], ids)
    assert np.all(labels["right"] != labels["left"])
    assert len(np.unique(labels["right"])) > 10
    _, again = multi_mnist.build_split(digits, ids, seed=3)
    _, other = multi_mnist.build_split(digits, ids, seed=4)
    np.testing.assert_array_equal(labels["right"], again["right"])
    assert not np.array_equal(labels["right"], other["right"])


# --- Public loaders ------------------------------------------------------------------


def test_load_numpy_shapes_dtypes_and_ranges(mnist_dir):
    images, labels = multi_mnist.load_numpy("test", mnist_dir, num_examples=64)
    assert images.shape == (64, 28, 28, 1) and images.dtype == np.float32
    assert images.min() == 0.0 and 0.9 < images.max() <= 1.0
    for task in multi_mnist.TASKS:
        assert labels[task].shape == (64,) and labels[task].dtype == np.int32
        assert labels[task].min() >= 0 and labels[task].max() <= 9


def test_left_labels_follow_the_split_layout(mnist_dir, mnist):
    _, test = multi_mnist.load_numpy("test", mnist_dir, num_examples=50)
    _, train = multi_mnist.load_numpy("train", mnist_dir, num_examples=50)
    _, validation = multi_mnist.load_numpy("validation", mnist_dir, num_examples=50)
    np.testing.assert_array_equal(test["left"], mnist["test_labels"][:50])
    np.testing.assert_array_equal(train["left"], mnist["train_labels"][:50])
    np.testing.assert_array_equal(
        validation["left"], mnist["train_labels"][50_000:50_050]
    )


def test_same_seed_same_data_and_prefix_of_the_full_split(mnist_dir):
    images, labels = multi_mnist.load_numpy("validation", mnist_dir, seed=1)
    assert len(images) == multi_mnist.SPLIT_SIZES["validation"] == 10_000
    head, head_labels = multi_mnist.load_numpy(
        "validation", mnist_dir, seed=1, num_examples=100
    )
    np.testing.assert_array_equal(head, images[:100])
    np.testing.assert_array_equal(head_labels["right"], labels["right"][:100])
    other, other_labels = multi_mnist.load_numpy(
        "validation", mnist_dir, seed=2, num_examples=100
    )
    assert not np.array_equal(other, head)
    assert not np.array_equal(other_labels["right"], head_labels["right"])
    # Right digits come from the same split: every class appears.
    np.testing.assert_array_equal(np.unique(labels["right"]), np.arange(10))


def test_load_yields_image_and_task_dict(mnist_dir):
    dataset = multi_mnist.load("test", mnist_dir, num_examples=20, batch_size=8)
    images, labels = next(iter(dataset))
    assert images.shape == (8, 28, 28, 1) and images.dtype == tf.float32
    assert set(labels) == {"left", "right"}
    assert labels["left"].dtype == tf.int32 and labels["left"].shape == (8,)
    assert sum(int(batch[0].shape[0]) for batch in dataset) == 20


def test_unknown_split_raises(mnist_dir):
    with pytest.raises(ValueError, match="split"):
        multi_mnist.load_numpy("dev", mnist_dir)


def test_tfds_builder_reads_the_manual_dir(mnist_dir, tmp_path):
    config = multi_mnist.MultiMnistConfig(
        name="tiny", split_sizes={"train": 5, "test": 3}, seed=4
    )
    builder = multi_mnist.MultiMnist(data_dir=str(tmp_path), config=config)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(mnist_dir))
    )
    assert builder.info.splits["test"].num_examples == 3
    dataset = builder.as_dataset(split="train", as_supervised=True)
    images, labels = next(iter(tfds.as_numpy(dataset.batch(5))))
    expected, expected_labels = multi_mnist.load_numpy(
        "train", mnist_dir, seed=4, num_examples=5
    )
    np.testing.assert_array_equal(images, expected)
    for task in multi_mnist.TASKS:
        np.testing.assert_array_equal(labels[task], expected_labels[task])


def test_in_memory_batches_gather_dict_inputs_with_their_labels():
    from mtl_keras.datasets.in_memory import in_memory_batches

    count = 10
    inputs = {"image": np.arange(count, dtype="float32")[:, None],
              "meta": -np.arange(count, dtype="float32")[:, None]}
    labels = {"left": np.arange(count), "right": 2 * np.arange(count)}
    seen = []
    for x, y in in_memory_batches(inputs, labels, 4, shuffle=True, seed=3):
        image = x["image"].numpy()[:, 0]
        np.testing.assert_array_equal(x["meta"].numpy()[:, 0], -image)
        np.testing.assert_array_equal(y["left"].numpy(), image)
        np.testing.assert_array_equal(y["right"].numpy(), 2 * image)
        seen += list(image)
    assert sorted(seen) == list(range(count))  # every example once
    assert seen != list(range(count))  # shuffled
