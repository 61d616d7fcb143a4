"""Tests of `mtl_keras.compare` and `mtl-keras compare`."""

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from mtl_keras import balancers, compare, metrics
from mtl_keras.compare import SINGLE_TASK, CompareResult, RunRecord

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
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
        expected = metrics.delta_m(means(row), references,
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

    monkeypatch.setattr(compare, "load_data", no_loading)
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
