"""Where MultiMNIST finds MNIST: IDX folders, then Keras' own `mnist.npz`."""

import hashlib

import numpy as np
import pytest

from mtl_keras.datasets import multi_mnist


def _write_npz(path, seed=0):
    rng = np.random.RandomState(seed)
    arrays = {
        "x_train": rng.randint(0, 256, (6, 28, 28)).astype("uint8"),
        "y_train": rng.randint(0, 10, 6).astype("uint8"),
        "x_test": rng.randint(0, 256, (2, 28, 28)).astype("uint8"),
        "y_test": rng.randint(0, 10, 2).astype("uint8"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(multi_mnist.ENV_VAR, raising=False)
    return tmp_path / "keras"


def test_keras_mnist_npz_is_read_when_no_idx_files(keras_home, monkeypatch):
    arrays, digest = _write_npz(keras_home / "datasets" / "mnist.npz")
    monkeypatch.setattr(multi_mnist, "KERAS_MNIST_SHA256", digest)
    assert multi_mnist.default_data_dir() == keras_home / "datasets" / "mnist"
    loaded = multi_mnist.load_mnist()
    np.testing.assert_array_equal(loaded["train_images"], arrays["x_train"])
    np.testing.assert_array_equal(loaded["test_labels"], arrays["y_test"])


def test_a_foreign_mnist_npz_is_refused(keras_home):
    _write_npz(keras_home / "datasets" / "mnist.npz")
    with pytest.raises(multi_mnist.ChecksumError, match="not Keras' mnist.npz"):
        multi_mnist.load_mnist()


def test_the_error_names_every_place_looked(keras_home):
    with pytest.raises(FileNotFoundError) as error:
        multi_mnist.load_mnist()
    message = str(error.value)
    assert str(keras_home / "datasets" / "mnist") in message
    assert str(keras_home / "datasets" / "mnist.npz") in message
    assert multi_mnist.ENV_VAR in message


def test_an_explicit_folder_never_falls_back_to_the_npz(keras_home, tmp_path,
                                                        monkeypatch):
    _, digest = _write_npz(keras_home / "datasets" / "mnist.npz")
    monkeypatch.setattr(multi_mnist, "KERAS_MNIST_SHA256", digest)
    with pytest.raises(FileNotFoundError):
        multi_mnist.load_mnist(tmp_path / "elsewhere")
