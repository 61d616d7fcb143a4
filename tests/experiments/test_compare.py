"""Tests of `mtl_keras.compare` and `mtl-keras compare`."""

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from mtl_keras import balancers, compare, scores, suites
from mtl_keras.compare import SINGLE_TASK, CompareResult, RunRecord

# One worker runs this module: its module-scoped fixture is built once.
pytestmark = pytest.mark.xdist_group("test_compare")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
MNIST_DIR = pathlib.Path(
    os.environ.get("MTL_KERAS_MNIST_DIR", REPO_ROOT.parent / "shared/data/mnist"))
HAS_MNIST = (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason=f"no MNIST files in {MNIST_DIR}")

SHAPES_HEADLINE = {"cls": ("accuracy", True), "count": ("mae", False),
                   "seg": ("miou", True)}


def parse_table(markdown: str) -> dict:
    """`{method: {column: cell}}` from `CompareResult.to_markdown()`."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def table_mean(cell: str) -> float:
    return float(cell.split("±")[0])


def check_delta_m_from_table(result: CompareResult, table: dict) -> None:
    """Each row's Δm% equals `delta_m` of the table's own rounded means."""
    def means(row):
        values = {}
        for task in result.tasks:
            value = table_mean(row[result.metric_label(task)])
            percent = result.display_value(task, 1.0) == 100.0
            values[task] = value / 100.0 if percent else value
        return values

    references = means(table[SINGLE_TASK])
    directions = {task: higher for task, (_, higher) in result.headline.items()}
    for method, row in table.items():
        expected = scores.delta_m(means(row), references,
                                   higher_is_better=directions)
        # Means are printed to 4 significant places: allow their rounding.
        assert float(row["Δm% ↓"]) == pytest.approx(expected, abs=0.02), method


# --- Results from hand-made records (no training) ----------------------------------


def shapes_result(records, methods=("ew", "pcgrad")) -> CompareResult:
    return CompareResult("shapes", ("cls", "count", "seg"), SHAPES_HEADLINE,
                         list(methods), records, {"epochs": 1})


def single_task_records(seed, cls, count, seg):
    return [RunRecord(SINGLE_TASK, seed, ("cls",), {"cls": cls}, 1.0),
            RunRecord(SINGLE_TASK, seed, ("count",), {"count": count}, 2.0),
            RunRecord(SINGLE_TASK, seed, ("seg",), {"seg": seg}, 3.0)]


def test_summaries_hand_computed():
    records = [
        *single_task_records(0, cls=0.80, count=0.50, seg=0.60),
        *single_task_records(1, cls=0.90, count=0.30, seg=0.60),
        RunRecord("ew", 0, ("cls", "count", "seg"),
                  {"cls": 0.90, "count": 0.30, "seg": 0.66}, 4.0),
        RunRecord("ew", 1, ("cls", "count", "seg"),
                  {"cls": 0.80, "count": 0.50, "seg": 0.54}, 6.0),
        RunRecord("pcgrad", 0, ("cls", "count", "seg"),
                  {"cls": 0.935, "count": 0.36, "seg": 0.63}, 8.0),
    ]
    single, ew, pcgrad = shapes_result(records).summaries()
    assert single.method == SINGLE_TASK
    assert single.mean == pytest.approx({"cls": 0.85, "count": 0.40, "seg": 0.60})
    assert single.std == pytest.approx({"cls": 0.05, "count": 0.10, "seg": 0.0})
    assert single.delta_m == 0.0
    assert single.seconds_per_epoch == 2.0
    # ew: the same means as single-task, so Δm is 0.
    assert ew.mean == pytest.approx(single.mean)
    assert ew.std["seg"] == pytest.approx(0.06)
    assert ew.delta_m == pytest.approx(0.0, abs=1e-12)
    assert ew.seconds_per_epoch == 5.0
    assert ew.num_seeds == 2
    # pcgrad: cls +10 % (better), count -10 % (better), seg +5 % (better):
    # Δm = (-10 - 10 - 5) / 3.
    assert pcgrad.delta_m == pytest.approx(-25 / 3)
    assert pcgrad.num_seeds == 1


def test_failed_runs_are_reported_not_averaged():
    records = [
        *single_task_records(0, cls=0.8, count=0.5, seg=0.6),
        RunRecord("ew", 0, ("cls", "count", "seg"),
                  {"cls": 0.8, "count": 0.5, "seg": 0.6}, 4.0),
        RunRecord("pcgrad", 0, ("cls", "count", "seg"), {}, 1.0,
                  error="InvalidArgumentError: boom"),
    ]
    result = shapes_result(records)
    pcgrad = result.summaries()[2]
    assert pcgrad.num_seeds == 0
    assert math.isnan(pcgrad.delta_m)
    assert pcgrad.errors == ("seed 0: InvalidArgumentError: boom",)
    markdown = result.to_markdown()
    assert "- pcgrad, seed 0: InvalidArgumentError: boom" in markdown
    assert parse_table(markdown)["pcgrad"]["seeds"] == "0 (failed)"


def test_table_layout():
    records = [*single_task_records(0, cls=0.8, count=0.5, seg=0.6),
               RunRecord("ew", 0, ("cls", "count", "seg"),
                         {"cls": 0.8123, "count": 0.45678, "seg": 0.6}, 4.0)]
    table = parse_table(shapes_result(records, methods=["ew"]).to_markdown())
    assert list(table) == [SINGLE_TASK, "ew"]
    assert table["ew"]["cls accuracy (%)"] == "81.23 ± 0.00"
    assert table["ew"]["count mae"] == "0.4568 ± 0.0000"
    assert table["ew"]["seg miou (%)"] == "60.00 ± 0.00"
    assert table["ew"]["s/epoch"] == "4.0"
    # cls 1.5375 % better, count 8.644 % better, seg unchanged:
    # Δm = -(1.5375 + 8.644) / 3 = -3.394.
    assert table["ew"]["Δm% ↓"] == "-3.39"


def test_record_json_round_trip():
    record = RunRecord("nash-mtl", 2, ("left", "right"),
                       {"left": 0.5, "right": 0.25}, 3.5, None, 17.0)
    line = record.to_json({"epochs": 3})
    assert json.loads(line)["settings"] == {"epochs": 3}
    assert RunRecord.from_json(line) == (record, {"epochs": 3})


def test_plots_are_written(tmp_path):
    three = shapes_result([*single_task_records(0, cls=0.8, count=0.5, seg=0.6),
                           RunRecord("ew", 0, ("cls", "count", "seg"),
                                     {"cls": 0.7, "count": 0.4, "seg": 0.5}, 4.0)],
                          methods=["ew"])
    two = CompareResult(
        "multi_mnist", ("left", "right"),
        {"left": ("accuracy", True), "right": ("accuracy", True)}, ["ew"],
        [RunRecord(SINGLE_TASK, 0, ("left",), {"left": 0.9}, 1.0),
         RunRecord(SINGLE_TASK, 0, ("right",), {"right": 0.8}, 1.0),
         RunRecord("ew", 0, ("left", "right"), {"left": 0.85, "right": 0.82}, 1.0)],
        {"epochs": 1})
    for result, name in ((three, "bars.png"), (two, "scatter.png")):
        path = result.plot(tmp_path / "sub" / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- Method names -------------------------------------------------------------------


def test_unknown_method_fails_before_training(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("data loaded before the methods were checked")

    monkeypatch.setattr(suites, "load", no_loading)
    with pytest.raises(ValueError, match="Unknown method") as error:
        compare.compare("shapes", ["ew", "not-a-balancer"], seeds=1, epochs=1)
    message = str(error.value)
    assert "not-a-balancer" in message
    for name in ("dwa", "pcgrad", "mgda_ub", "upgrad"):
        assert name in message


@pytest.mark.parametrize("methods", [["ew", "ew"], [SINGLE_TASK], []])
def test_method_list_is_checked(methods):
    with pytest.raises(ValueError):
        compare.check_methods(methods)


def test_method_names_accept_dashes_and_case():
    names = ["MGDA-UB", "nash-mtl", "imtl_g", "DWA"]
    assert compare.check_methods(names) == names


def test_cli_rejects_unknown_method(capsys):
    from mtl_keras import cli

    code = cli.main(["compare", "--balancers", "ew,bogus", "--seeds", "1"])
    assert code == 2
    assert "bogus" in capsys.readouterr().err


# --- Real (tiny) comparisons ---------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    log = folder / "runs.jsonl"
    lines = []
    result = compare.compare("shapes", ["pcgrad", "dwa"], seeds=1, epochs=1,
                             train_size=256, test_size=64, batch_size=128,
                             log_path=log, progress=lines.append)
    return result, log, lines


def test_shapes_comparison(shapes_run, tmp_path):
    result, log, lines = shapes_run
    table = parse_table(result.to_markdown())
    assert list(table) == [SINGLE_TASK, "pcgrad", "dwa"]
    for row in result.summaries():
        assert row.errors == ()
        assert row.num_seeds == 1
        assert math.isfinite(row.delta_m)
        assert all(math.isfinite(value) for value in row.mean.values())
    check_delta_m_from_table(result, table)
    assert len(lines) == 5 and "pcgrad (cls,count,seg), seed 0" in lines[3]
    assert len(log.read_text().splitlines()) == 5
    path = result.plot(tmp_path / "shapes.png")
    assert path.stat().st_size > 0


def test_resume_skips_finished_runs(shapes_run):
    result, log, _ = shapes_run
    lines = []
    resumed = compare.compare("shapes", ["pcgrad", "dwa"], seeds=1, epochs=1,
                              train_size=256, test_size=64, batch_size=128,
                              log_path=log, resume=True, progress=lines.append)
    assert lines == []  # nothing trained again
    assert resumed.records == result.records
    assert resumed.to_markdown() == result.to_markdown()
    with pytest.raises(ValueError, match="same settings"):
        compare.compare("shapes", ["pcgrad", "dwa"], seeds=1, epochs=2,
                        train_size=256, test_size=64, batch_size=128,
                        log_path=log, resume=True, progress=None)


def test_runs_are_deterministic_by_seed():
    data = compare.load_data("shapes", train_size=64, test_size=64)
    first, again, other = (
        compare.train_run(data, "rlw", seed, epochs=1, tasks=("cls", "count"),
                          batch_size=32)
        for seed in (3, 3, 4))
    assert first.error is None
    assert first.metrics == again.metrics
    assert first.metrics != other.metrics


def test_method_balancers_train_a_configured_balancer_under_its_own_name():
    copy = "mgda-ub as a factory"
    result = compare.compare(
        "shapes", ["mgda_ub", copy], seeds=[3], epochs=1, train_size=64,
        test_size=64, batch_size=32, progress=None,
        method_balancers={copy: lambda: balancers.get("mgda_ub")})
    by_method = {r.method: r for r in result.records}
    assert by_method[copy].error is None
    assert by_method[copy].metrics == by_method["mgda_ub"].metrics


def test_training_error_is_recorded():
    data = compare.load_data("shapes", train_size=32, test_size=32)
    broken = dataclasses.replace(data, losses={
        "cls": "sparse_categorical_crossentropy", "seg": "no_such_loss",
        "count": "mse"})
    record = compare.train_run(broken, "ew", 0, epochs=1)
    assert record.metrics == {}
    assert record.error.startswith("ValueError") and "no_such_loss" in record.error


@needs_mnist
def test_multi_mnist_cli(tmp_path):
    out, plot = tmp_path / "table.md", tmp_path / "plot.png"
    command = [sys.executable, "-m", "mtl_keras.cli", "compare",
               "--data", "multi_mnist", "--balancers", "mgda-ub,dwa",
               "--seeds", "1", "--epochs", "1", "--train-size", "512",
               "--test-size", "256", "--data-dir", str(MNIST_DIR),
               "--out", str(out), "--plot", str(plot)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[4/4] dwa (left,right), seed 0:" in done.stdout
    table = parse_table(out.read_text())
    assert list(table) == [SINGLE_TASK, "mgda-ub", "dwa"]
    assert table[SINGLE_TASK]["Δm% ↓"] == "+0.00"
    for row in table.values():
        assert math.isfinite(float(row["Δm% ↓"]))
        assert row["seeds"] == "1"
    assert plot.stat().st_size > 0


# --- Your own model and data ----------------------------------------------------------


def build(tasks):
    """A MultiTaskModel with one head per given task (`a`: 3 classes, `b`:
    regression) on a shared dense trunk."""
    import keras

    import mtl_keras

    inputs = keras.Input((8,), name="x")
    shared = keras.layers.Dense(16, activation="tanh", name="trunk")(inputs)
    heads = {"a": lambda: keras.layers.Dense(3, activation="softmax", name="a"),
             "b": lambda: keras.layers.Dense(1, name="b")}
    return mtl_keras.MultiTaskModel(
        inputs, {task: heads[task]()(shared) for task in tasks})


def own_data(count, seed, missing=True):
    """`(x, {"a", "b"})` arrays; a quarter of `a`'s labels and of `b`'s
    values missing (MISSING_LABEL, NaN)."""
    import numpy as np

    import mtl_keras

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, 8)).astype("float32")
    labels = {"a": x[:, :3].argmax(axis=1).astype("int32"),
              "b": (2.0 * x[:, 3:4] + 0.5).astype("float32")}
    if missing:
        labels["a"][rng.random(count) < 0.25] = mtl_keras.MISSING_LABEL
        labels["b"][rng.random(count) < 0.25] = np.nan
    return x, labels


def test_compare_on_your_own_model_and_data(capsys):
    import keras
    import tensorflow as tf

    import mtl_keras

    train_ds = tf.data.Dataset.from_tensor_slices(own_data(96, 0)).batch(32)
    test_ds = tf.data.Dataset.from_tensor_slices(own_data(64, 1)).batch(32)
    losses = {"a": "sparse_categorical_crossentropy", "b": "mse"}
    metrics = {"a": ["accuracy"], "b": [keras.metrics.MeanAbsoluteError()]}

    result = mtl_keras.compare.compare(
        ["ew", "uw", "upgrad", "dwa"], build_model=build, train=train_ds, test=test_ds,
        losses=losses, metrics=metrics, seeds=1, epochs=2)
    print(result.to_markdown())

    table = parse_table(capsys.readouterr().out)
    assert list(table) == [SINGLE_TASK, "ew", "uw", "upgrad", "dwa"]
    # The headline of each task: its first metric with a known direction.
    assert result.headline == {"a": ("accuracy", True),
                               "b": ("mean_absolute_error", False)}
    assert "a accuracy (%)" in table["ew"] and "b mean_absolute_error" in table["ew"]
    for row in result.summaries():
        assert row.errors == () and row.num_seeds == 1, row
        assert all(math.isfinite(v) for v in row.mean.values()), row
    check_delta_m_from_table(result, table)
    assert table[SINGLE_TASK]["Δm% ↓"] in ("+0.00", "-0.00")
    # Single-task baselines were built with one task each.
    assert {r.tasks for r in result.records if r.method == SINGLE_TASK} == {
        ("a",), ("b",)}


def test_own_data_as_arrays_matches_the_same_batches_as_a_dataset():
    """Arrays are batched in memory in order (no shuffle when seeds match is
    not guaranteed), so compare the test scores of one untrained-identical
    setup: a dataset and arrays of the same test data give the same score."""
    import tensorflow as tf

    losses = {"a": "sparse_categorical_crossentropy", "b": "mse"}
    train = own_data(64, 0, missing=False)
    test = own_data(64, 1)
    as_arrays = suites.from_parts(build, train, test, losses,
                                  {"a": ["accuracy"], "b": ["mae"]})
    as_dataset = suites.from_parts(
        build, tf.data.Dataset.from_tensor_slices(train).batch(64),
        tf.data.Dataset.from_tensor_slices(test).batch(64), losses,
        {"a": ["accuracy"], "b": ["mae"]})
    # One batch of all 64 examples: shuffling does not change the full-batch
    # gradient, so one epoch from the same seed ends at the same weights.
    records = [compare.train_run(suite, "ew", 0, epochs=1, batch_size=64)
               for suite in (as_arrays, as_dataset)]
    assert records[0].error is None and records[1].error is None
    assert records[0].metrics == pytest.approx(records[1].metrics, rel=1e-5)
    assert as_arrays.size("train") == 64 and as_dataset.size("train") == 1


def test_headline_defaults_and_overrides():
    metrics = {"a": ["auc_like", "accuracy"], "b": ["mse", "mae"]}
    suite = suites.from_parts(build, own_data(8, 0), own_data(8, 1),
                              {"a": "sparse_categorical_crossentropy",
                               "b": "mse", "c": "mse"}, metrics)
    # First metric with a known direction; a task with none: its loss.
    assert suite.headline == {"a": ("accuracy", True), "b": ("mse", False),
                              "c": ("loss", False)}
    suite = suites.from_parts(build, own_data(8, 0), own_data(8, 1),
                              {"a": "sparse_categorical_crossentropy", "b": "mse"},
                              metrics, headline={"a": ("auc_like", True), "b": "mae"})
    assert suite.headline == {"a": ("auc_like", True), "b": ("mae", False)}
    with pytest.raises(ValueError, match="Unknown direction"):
        suites.from_parts(build, own_data(8, 0), own_data(8, 1),
                          {"a": "mse"}, headline={"a": "auc_like"})


def test_own_parts_are_checked_before_training():
    with pytest.raises(ValueError, match=r"needs \['test'\]"):
        compare.compare(["ew"], build_model=build, train=own_data(8, 0),
                        losses={"a": "mse"})
    with pytest.raises(ValueError, match="not both"):
        compare.compare(["ew"], "shapes", build_model=build)
    with pytest.raises(TypeError, match="no_such_option"):
        compare.compare(["ew"], "shapes", no_such_option=1)
    with pytest.raises(ValueError, match="Unknown method"):
        compare.compare(["bogus"], build_model=build, train=own_data(8, 0),
                        test=own_data(8, 1), losses={"a": "mse"})
