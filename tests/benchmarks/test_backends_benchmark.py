"""A tiny end-to-end run of `benchmarks/backends.py` (the per-step and
first-step table of the gradient engine, with `update_every` rows)."""

import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.benchmark_script

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_backends_benchmark_prints_a_row_per_method_and_update_every():
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "backends.py"),
         "--steps", "2", "--batch", "8", "--methods", "engine,mgda",
         "--jacobians", "loop", "--update-every", "1,2"],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [line for line in completed.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| method")]
    assert [row.split(" | ")[:3] for row in rows] == [
        ["| plain keras.Model", "-", "-"],
        ["| engine", "loop", "1"], ["| engine", "loop", "2"],
        ["| mgda", "loop", "1"], ["| mgda", "loop", "2"]]
    for row in rows:
        numbers = re.findall(r"\d+\.\d+", row)
        assert len(numbers) == 4 and all(float(n) > 0 for n in numbers), row
