"""Tests of the `sener2018` MultiMNIST protocol: data construction (checked by hand
on single pixels and on real digits), the reference LeNet's initialisation and
unscaled dropout, the in-memory pipeline, the learning-rate schedule, curves and
resuming after a run was killed while writing its line."""

import json
import math
import os
import pathlib

import keras
import numpy as np
import pytest
from _benchmarks import load_benchmark

from mtl_keras import architectures, compare
from mtl_keras.compare import SINGLE_TASK, RunRecord
from mtl_keras.datasets import multi_mnist
from mtl_keras.layers import UnscaledDropout

pytestmark = pytest.mark.benchmark_script

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
MNIST_DIR = pathlib.Path(
    os.environ.get(multi_mnist.ENV_VAR, REPO_ROOT.parent / "shared/data/mnist"))
needs_mnist = pytest.mark.skipif(
    not all((MNIST_DIR / name).is_file() for name in multi_mnist.MNIST_MD5),
    reason=f"no MNIST files in {MNIST_DIR}")
MEAN, STD = multi_mnist.SENER2018_NORMALIZATION


# --- Data construction ---------------------------------------------------------------


def test_nearest_resize_uses_the_pixel_centre_rule():
    canvas = np.arange(36 * 36).reshape(1, 36, 36)
    resized = multi_mnist.nearest_resize(canvas)
    # Output pixel i takes input floor((i + 0.5) * 36 / 28): 0, 1, 3, 4, 5, 7, ...
    expected = [0, 1, 3, 4, 5, 7, 8, 9, 10, 12, 13, 14, 16, 17, 18, 19, 21, 22,
                23, 25, 26, 27, 28, 30, 31, 32, 34, 35]
    assert resized.shape == (1, 28, 28)
    np.testing.assert_array_equal(resized[0, 0], expected)
    np.testing.assert_array_equal(resized[0, :, 0], np.array(expected) * 36)


def _one_pixel(row, column, value=255):
    digit = np.zeros((1, 28, 28), np.uint8)
    digit[0, row, column] = value
    return digit


def _pixel(images, row, column):
    return images[0, row, column, 0] * STD + MEAN


def test_sener2018_images_place_resize_and_normalise_by_hand():
    # Left pixel at digit (1, 3): canvas (1, 3) -> output (1, 2) (3 = floor(2.5*9/7)).
    # Right pixel at digit (0, 0): canvas (6, 6) -> not sampled (5 -> 7, 4 -> 5),
    # right pixel at digit (1, 1): canvas (7, 7) -> output (5, 5).
    left = _one_pixel(1, 3)
    images = multi_mnist.sener2018_images(left, _one_pixel(1, 1))
    assert images.shape == (1, 28, 28, 1) and images.dtype == np.float32
    assert _pixel(images, 1, 2) == pytest.approx(1.0)
    assert _pixel(images, 5, 5) == pytest.approx(1.0)
    background = np.delete(images.ravel(), [1 * 28 + 2, 5 * 28 + 5])
    np.testing.assert_allclose(background, -MEAN / STD, rtol=1e-6)
    unsampled = multi_mnist.sener2018_images(left, _one_pixel(0, 0))
    assert np.sum(unsampled * STD + MEAN > 0.5) == 1


def test_sener2018_images_overlap_is_the_maximum_then_stretched_to_255():
    # Both digits cover canvas (7, 7): left digit (7, 7), right digit (1, 1).
    images = multi_mnist.sener2018_images(_one_pixel(7, 7, 100),
                                          _one_pixel(1, 1, 50))
    # max(100, 50) = 100 is the brightest pixel: scipy's bytescale makes it 255.
    assert _pixel(images, 5, 5) == pytest.approx(1.0)
    dim = multi_mnist.sener2018_images(_one_pixel(7, 7, 100), _one_pixel(3, 3, 50))
    # 50 of a maximum of 100 -> floor(127.5 + 0.5) = 128.
    assert _pixel(dim, 7, 7) == pytest.approx(128 / 255, abs=1e-6)


def test_unknown_protocol_and_split_name_the_choices():
    with pytest.raises(ValueError, match="random_shift"):
        multi_mnist.load_numpy("train", protocol="sener")
    with pytest.raises(ValueError, match="Carve a validation set"):
        multi_mnist.load_numpy("validation", protocol="sener2018")


@needs_mnist
def test_sener2018_split_pairs_real_digits():
    mnist = multi_mnist.load_mnist(MNIST_DIR)
    images, labels = multi_mnist.load_numpy("test", MNIST_DIR, num_examples=50,
                                            protocol="sener2018")
    assert images.shape == (50, 28, 28, 1)
    np.testing.assert_array_equal(labels["left"], mnist["test_labels"][:50])
    # Recover each right digit's index from its label and image.
    for index in (0, 7):
        candidates = np.flatnonzero(mnist["test_labels"] == labels["right"][index])
        rebuilt = multi_mnist.sener2018_images(
            np.repeat(mnist["test_images"][index:index + 1], len(candidates), 0),
            mnist["test_images"][candidates])
        assert np.any(np.all(rebuilt == images[index], axis=(1, 2, 3)))
    again, _ = multi_mnist.load_numpy("test", MNIST_DIR, num_examples=10,
                                      protocol="sener2018")
    np.testing.assert_array_equal(again, images[:10])
    assert multi_mnist.SENER2018_SPLIT_SIZES == {"train": 60_000, "test": 10_000}


# --- Reference network ------------------------------------------------------------


def test_unscaled_dropout_keeps_or_zeroes_without_rescaling():
    layer = UnscaledDropout(0.5, noise_shape=(1, 1, 1, None), seed=3)
    inputs = np.full((8, 4, 4, 64), 2.0, np.float32)
    outputs = keras.ops.convert_to_numpy(layer(inputs, training=True))
    assert set(np.unique(outputs)) <= {0.0, 2.0}
    # One channel mask for the whole batch and every position.
    np.testing.assert_array_equal(outputs, np.broadcast_to(outputs[:1, :1, :1],
                                                           outputs.shape))
    assert 0.2 < np.mean(outputs[0, 0, 0] == 2.0) < 0.8
    np.testing.assert_array_equal(layer(inputs), inputs)
    clone = UnscaledDropout.from_config(layer.get_config())
    assert (clone.rate, clone.noise_shape, clone.seed) == (0.5, (1, 1, 1, None), 3)
    with pytest.raises(ValueError, match="rate"):
        UnscaledDropout(1.0)


def test_reference_lenet_uses_torch_default_initialisation():
    keras.utils.set_random_seed(0)
    model = architectures.multi_mnist_lenet(reference=True)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable == 27_450
    for name, fan_in in (("trunk_conv1", 25), ("trunk_conv2", 250),
                         ("trunk_dense", 320), ("left_dense", 50), ("right", 50)):
        kernel, bias = (keras.ops.convert_to_numpy(v)
                        for v in model.get_layer(name).weights)
        bound = fan_in ** -0.5
        assert np.abs(kernel).max() <= bound
        assert np.abs(kernel).max() > 0.9 * bound  # uniform over the whole range
        assert np.abs(bias).max() <= bound and np.any(bias != 0)
    assert isinstance(model.get_layer("trunk_dropout"), UnscaledDropout)


# --- Pipeline, schedule, curves, resume ------------------------------------------


def test_in_memory_batches_cover_every_example_once_per_epoch():
    images = np.arange(10, dtype=np.float32).reshape(10, 1)
    labels = {"a": np.arange(10, dtype=np.int32)}
    batches = multi_mnist.in_memory_batches(images, labels, 4, seed=1)
    epochs = []
    for _ in range(2):
        seen = [(x.numpy().ravel(), y["a"].numpy()) for x, y in batches]
        assert [len(x) for x, _ in seen] == [4, 4, 2]
        order = np.concatenate([x for x, _ in seen])
        np.testing.assert_array_equal(np.concatenate([y for _, y in seen]), order)
        assert sorted(order) == list(range(10))
        epochs.append(order)
    assert not np.array_equal(*epochs)  # reshuffled every epoch
    ordered = multi_mnist.in_memory_batches(images, labels, 4, shuffle=False)
    np.testing.assert_array_equal(
        np.concatenate([x.numpy().ravel() for x, _ in ordered]), np.arange(10))


def test_learning_rate_decays_as_the_reference_schedule():
    data = compare.BenchmarkData("toy", ("a",), {}, (), (), None, {}, None,
                                 lr_decay=(10, 0.85))
    (callback,) = compare.learning_rate_callbacks(data, 1e-3)
    rates = [callback.schedule(epoch) for epoch in (0, 8, 9, 18, 19, 99)]
    np.testing.assert_allclose(
        rates, [1e-3, 1e-3, 8.5e-4, 8.5e-4, 1e-3 * 0.85 ** 2, 1e-3 * 0.85 ** 10])
    assert compare.learning_rate_callbacks(
        compare.load_data("shapes", 32, 32), 1e-3) == []


@needs_mnist
def test_sener2018_run_keeps_curves_and_static_weights():
    data = compare.load_data("multi_mnist", train_size=512, test_size=256,
                             data_dir=MNIST_DIR, protocol="sener2018")
    assert data.lr_decay == (10, 0.85) and data.protocol == "sener2018"
    record = compare.train_run(data, "tuned", 0, epochs=2, batch_size=128,
                               loss_weights={"left": 1.5, "right": 0.5},
                               curves=True)
    assert record.error is None, record.error
    assert len(record.epoch_seconds) == 2
    assert record.seconds_per_epoch == pytest.approx(record.epoch_seconds[1],
                                                     abs=1e-3)
    assert sorted(record.history) == ["left_accuracy", "right_accuracy",
                                      "val_left_accuracy", "val_right_accuracy"]
    assert all(len(values) == 2 for values in record.history.values())
    # The last test-curve point is the final score.
    assert record.history["val_left_accuracy"][-1] == pytest.approx(
        record.metrics["left"], abs=1e-4)
    clone, _ = RunRecord.from_json(record.to_json({}))
    assert clone == record


def test_resume_drops_a_partial_last_line(tmp_path):
    settings = {"data": "toy"}
    done = RunRecord(SINGLE_TASK, 0, ("a",), {"a": 0.5}, 1.0, wall_seconds=2.0)
    log = tmp_path / "runs.jsonl"
    log.write_text(done.to_json(settings) + "\n" + '{"method": "ew", "se')
    assert compare._resumed(log, settings) == [done]
    assert log.read_text() == done.to_json(settings) + "\n"


def _benchmark():
    return load_benchmark("multi_mnist")


def _record(method, tasks, values, seed=0):
    """A finished run's record with `{task: value}` test metrics."""
    return RunRecord(method, seed, tasks, dict(zip(tasks, values)), 1.0)


def test_fidelity_gate_by_hand():
    bench = _benchmark()

    single = [_record(SINGLE_TASK, ("left",), [0.9710]),
              _record(SINGLE_TASK, ("right",), [0.9600])]
    met, lines = bench.gate_lines(single)
    assert met is None and "pending" in lines[1]
    met, _ = bench.gate_lines(single + [_record("ew", ("left", "right"),
                                               [0.9650, 0.9460])])
    assert met is True  # gaps -0.13, +0.10, +0.04, -0.39
    met, lines = bench.gate_lines(single + [_record("ew", ("left", "right"),
                                                   [0.9650, 0.9440])])
    assert met is False and "NOT within" in lines[1]  # right -0.59
    names = bench.all_methods()
    assert "mgda-ub" in names and names[-1] == "dwa"
    assert "static" not in names and "equal" not in names
    runs = single + [_record("pcgrad", ("left", "right"), [0.97, 0.95]),
                     _record("rlw", ("left", "right"), [0.96, 0.94]),
                     _record("ew", ("left", "right"), [0.99, 0.99])]
    assert bench.best_methods(runs, ("ew",), 1) == ["pcgrad"]
    assert math.isfinite(json.loads(json.dumps(bench.planned_runs(runs))))


def test_seeds_stage_plans_the_fixed_rows_and_the_two_best_and_splits_by_seed():
    bench = _benchmark()

    runs = [_record(SINGLE_TASK, ("left",), [0.97]),
            _record(SINGLE_TASK, ("right",), [0.96])]
    runs += [_record(method, ("left", "right"), [0.96 - k / 100, 0.95])
             for k, method in enumerate(["db-mtl", "imtl-l", "pcgrad", "ew"])]
    args = bench.parse_args(["--protocol", "sener2018", "--stage", "seeds"])
    assert bench.stage_plan(args, runs) == (
        ["ew", "tuned-static", "mgda-ub", "db-mtl", "imtl-l"], [0, 1, 2])
    args = bench.parse_args(["--protocol", "sener2018", "--stage", "seeds",
                             "--seed", "2"])
    assert bench.stage_plan(args, runs)[1] == [2]
    args = bench.parse_args(["--protocol", "sener2018", "--methods", "rlw",
                             "--seeds", "2"])
    assert bench.stage_plan(args, runs) == (["rlw"], [0, 1])


def test_paired_delta_m_compares_each_seed_with_its_own_single_task_runs():
    bench = _benchmark()

    runs = []
    for seed, single in ((0, 0.90), (1, 0.80)):
        runs += [_record(SINGLE_TASK, ("left",), [single], seed),
                 _record(SINGLE_TASK, ("right",), [single], seed)]
    # ew: 1 % behind on seed 0, 2 % behind on seed 1 (relative, both tasks).
    runs += [_record("ew", ("left", "right"), [0.891, 0.891], 0),
             _record("ew", ("left", "right"), [0.784, 0.784], 1),
             _record("tuned-static", ("left", "right"), [0.9, 0.9], 0),
             _record("tuned-static", ("left", "right"), [0.8, 0.8], 1),
             _record("pcgrad", ("left", "right"), [0.5, 0.5], 0)]  # one seed
    found = bench.paired_delta_m(runs)
    assert sorted(found) == ["ew", "tuned-static"]
    assert found["ew"] == pytest.approx({0: 1.0, 1: 2.0})
    assert found["tuned-static"] == pytest.approx({0: 0.0, 1: 0.0})
    table = bench.paired_table(runs).splitlines()
    assert table[2] == "| ew | +1.00 | +2.00 | +1.50 ± 0.50 | +1.50 ± 0.50 | – |"
    assert table[3] == ("| tuned-static | +0.00 | +0.00 | +0.00 ± 0.00 | – "
                        "| -1.50 ± 0.50 |")
