"""Tests of `benchmarks/overhead.py`: its derived labels, goals and report
logic, and a tiny end-to-end run of the command (K=2, two balancers)."""

import math
import re

import numpy as np
import pytest
from _benchmarks import load_benchmark

pytestmark = pytest.mark.benchmark_script

overhead = load_benchmark("overhead")


def test_goals_follow_the_issue():
    assert overhead.goal("loss", 5) == pytest.approx(1.05)
    assert overhead.goal("rep", 3) == pytest.approx(1.10)
    assert [overhead.goal("gradient", k) for k in (2, 3, 5)] == pytest.approx(
        [1.35, 1.70, 2.40])


def test_derived_labels_by_hand():
    seg = np.zeros((1, 4, 4), "int32")
    seg[0, 0, 0] = 1          # a circle pixel in the top-left quadrant
    seg[0, 2:, 2:] = 3        # a triangle filling the bottom-right quadrant
    labels = overhead.derived_labels(seg)
    np.testing.assert_array_equal(labels["kinds"], [[1.0, 0.0, 1.0]])
    np.testing.assert_allclose(labels["coverage"], [[0.25, 0.0, 0.0, 1.0]])


def test_five_task_network_matches_its_labels():
    tasks = overhead.TASK_SETS[5]
    images, labels = overhead.benchmark_batch(tasks, batch_size=4, image_size=16)
    inputs, outputs, shared = overhead.build_network(tasks, image_size=16, width=4)
    assert list(outputs) == list(tasks)
    for task in ("kinds", "coverage"):
        assert outputs[task].shape[1:] == labels[task].shape[1:]
    assert images.shape == (4, 16, 16, 3)
    assert shared.shape[1:3] == (4, 4)


def _result(ratios, kinds, num_tasks=2):
    return overhead.SettingResult(xla=False, num_tasks=num_tasks, baseline_ms=[10.0],
                                  ratios=ratios, goal_kinds=kinds)


def test_misses_and_what_bounds_them():
    engine = overhead.ENGINE
    result = _result(
        {"uw": [1.01], "mgda": [2.0], "pcgrad": [1.5], "upgrad": [1.3],
         engine: [1.4]},
        {"uw": "loss", "mgda": "gradient", "pcgrad": "gradient",
         "upgrad": "gradient", engine: None})
    assert result.misses() == ["mgda", "pcgrad"]
    mgda = overhead.bound_sentence("mgda", result)
    pcgrad = overhead.bound_sentence("pcgrad", result)
    # mgda: 0.6 above the engine's 1.4, which is 0.4 above the plain step.
    assert "Bounded by the balancer's own math" in mgda and "+0.60" in mgda
    assert "Bounded by the gradient engine" in pcgrad and "+0.10" in pcgrad


def test_loop_versus_pfor_verdict_counts():
    label = 'mgda (jacobian="pfor")'
    slower = _result({"mgda": [1.2], label: [1.5]},
                     {"mgda": "gradient", label: "gradient"})
    faster = _result({"mgda": [1.2], label: [1.0]},
                     {"mgda": "gradient", label: "gradient"}, num_tasks=3)
    pairs = overhead.pfor_pairs([slower, faster])
    assert [(loop, pfor) for _, loop, pfor in pairs] == [("mgda", label)] * 2
    verdict = overhead.jacobian_verdict([], pairs)
    assert "the loop was faster in 1 of 2 comparisons" in verdict


def test_tiny_run_writes_the_table(tmp_path):
    out = tmp_path / "overhead.md"
    out.write_text("old report\n<!-- notes -->\nhand-written notes\n")
    code = overhead.main([
        "--tasks", "2", "--balancers", "static", "mgda", "--pfor", "--xla", "off",
        "--steps", "3", "--rounds", "1", "--batch-size", "8", "--image-size", "16",
        "--width", "8", "--no-profile", "--out", str(out)])
    assert code == 0
    report = out.read_text()
    assert report.endswith("hand-written notes\n")
    assert "## Step time ratio, without XLA" in report
    assert "with XLA (" not in report
    baseline = re.search(r"\| \*plain keras\.Model \(ms/step\)\* \| \| ([\d.]+) \|",
                         report)
    assert baseline and float(baseline.group(1)) > 0
    for name in ("static", "mgda"):
        row = re.search(
            rf"^\| {name} \| [^|]+ \| ([\d.]+) ([✓✗]) <sub>CPU ([\d.]+)</sub> \|$",
            report, re.MULTILINE)
        assert row, f"no row for {name}"
        for ratio in (float(row.group(1)), float(row.group(3))):
            assert math.isfinite(ratio) and ratio > 0
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert len(rows) == 4  # header, baseline, two balancers: no profile rows
