"""Tests of `benchmarks/engine_cost.py`: a tiny run (MLP of width 8, K = 2,
one step) renders one table with a row per engine and every column; a
second run of the same command adds no row (resume); rows another backend
cannot run are marked, rows not run yet make the table PARTIAL."""

import json
import re

import keras
import pytest
from _benchmarks import load_benchmark

pytestmark = pytest.mark.benchmark_script

engine_cost = load_benchmark("engine_cost")

TINY = ["--tasks", "2", "--width", "8", "--steps", "1", "--backbones", ""]
TINY += ["--notes", ""]
COLUMNS = [
    "backend", "net", "K", "\\|J\\| MB", "row", "first fit s", "× plain",
    "step ms", "× plain", "peak MB", "over plain MB", "× \\|J\\|",
]  # fmt: skip


LABELS = {label: name for name, (label, _, _) in engine_cost.ROWS.items()}


def cells(line):
    # Split on the pipes that are not escaped (the header's \|J\|).
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]


def table_rows(text):
    header, *rows = [line for line in text.splitlines() if line.startswith("| ")]
    return cells(header), [cells(row) for row in rows]


def log_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_run_renders_one_table_and_resumes(tmp_path):
    backend = keras.backend.backend()
    log, output = tmp_path / "runs.jsonl", tmp_path / "table.md"
    args = [*TINY, "--backends", backend, "--log", str(log), "--output", str(output)]
    args += ["--in-process"]
    engine_cost.main(args)
    header, rows = table_rows(output.read_text())
    first_rows = [line for line in output.read_text().splitlines()[1:]
                  if line.startswith("| ")][1:]  # fmt: skip
    assert header == COLUMNS
    assert [row[4] for row in rows] == [
        "plain keras.Model (loss_weights)",
        "UPGrad, loop engine",
        "UPGrad, Gramian engine",
        "MGDA-UB (rep mode)",
    ]
    # P = 512·8 + 8 + 8·8 + 8 + 8·4 + 4; |J| = 2·P·4 bytes.
    params = 512 * 8 + 8 + 8 * 8 + 8 + 8 * 4 + 4
    records = [r for r in log_lines(log) if r.get("kind") != "run"]
    assert len(records) == 3 + (backend == "tensorflow")
    assert {r["params"] for r in records} == {params}
    assert {r["jacobian_mb"] for r in records} == {2 * params * 4 / 1e6}
    by_row = {r["row"]: r for r in records}
    plain = by_row["plain"]
    for row in rows:
        assert row[:3] == [backend, "MLP w=8", "2"]
        if row[5] == "TensorFlow only":  # the Gramian engine off TensorFlow
            assert backend != "tensorflow" and row[4] == "UPGrad, Gramian engine"
            continue
        record = by_row[LABELS[row[4]]]
        assert float(row[5]) == pytest.approx(record["first_fit_s"], abs=0.05)
        assert float(row[7]) == pytest.approx(record["step_ms"], abs=0.5)
        ratio = record["first_fit_s"] / plain["first_fit_s"]
        assert row[6] == f"{ratio:.2f}"
        assert row[8] == f"{record['step_ms'] / plain['step_ms']:.2f}"
    assert rows[0][10:] == ["-", "-"]
    loop = by_row["loop"]
    assert rows[1][10] == f"{loop['peak_mb'] - plain['peak_mb']:.0f}"
    assert "PARTIAL" not in output.read_text()

    # Resume: the same command runs no row again, only logs the invocation.
    engine_cost.main(args)
    again = log_lines(log)
    assert [r for r in again if r.get("kind") != "run"] == records
    assert sum(r.get("kind") == "run" for r in again) == 2

    # Another command on the same log: its rows are PARTIAL, the logged
    # rows follow in its table.
    other = [arg if arg != "2" else "3" for arg in args if arg != "--in-process"]
    engine_cost.main([*other, "--render-only"])
    text = output.read_text()
    assert f"**PARTIAL: 0 of {len(records)} rows.**" in text
    _, rows = table_rows(text)
    assert [row[2] for row in rows] == ["3"] * 4 + ["2"] * len(records)
    logged = [cells(line)[5] for line in first_rows if "TensorFlow only" not in line]
    assert [row[5] for row in rows[4:]] == logged


def test_rows_not_run_are_partial_and_gramian_is_tensorflow_only(tmp_path):
    log, output = tmp_path / "runs.jsonl", tmp_path / "table.md"
    engine_cost.main([*TINY, "--backends", "jax", "--log", str(log),
                      "--output", str(output), "--render-only"])  # fmt: skip
    text = output.read_text()
    assert not log.exists()
    assert "**PARTIAL: 0 of 3 rows.**" in text
    assert "nice -n 5 python benchmarks/engine_cost.py --tasks 2" in text
    _, rows = table_rows(text)
    cells = {row[4]: row[5] for row in rows}
    assert cells == {
        "plain keras.Model (loss_weights)": "not run yet (PARTIAL)",
        "UPGrad, loop engine": "not run yet (PARTIAL)",
        "UPGrad, Gramian engine": "TensorFlow only",
        "MGDA-UB (rep mode)": "not run yet (PARTIAL)",
    }


def test_a_failed_row_is_retried_and_a_success_wins(tmp_path):
    log = tmp_path / "runs.jsonl"
    key = "tensorflow/mlp/8/K=2/plain/batch=64/steps=1"
    engine_cost.append(str(log), {"key": key, "error": "exit 1: boom"})
    rows, _ = engine_cost.read_log(str(log))
    assert rows[key]["error"] == "exit 1: boom"
    engine_cost.append(str(log), {"key": key, "first_fit_s": 1.0})
    engine_cost.append(str(log), {"key": key, "error": "timed out"})
    rows, _ = engine_cost.read_log(str(log))
    assert rows[key] == {"key": key, "first_fit_s": 1.0}

    # A failed row says so in the table and in the header.
    args = engine_cost.parse_args(
        [*TINY, "--backends", "tensorflow", "--rows", "plain"]
    )
    (spec,) = engine_cost.plan(args)
    assert engine_cost.row_key(spec) == key
    failed = {key: {"key": key, "error": "exit 1: a|b"}}
    text = engine_cost.render([spec], failed, "command")
    assert "**1 row(s) failed**" in text and "PARTIAL" not in text
    assert "| exit 1: a/b |" in text
