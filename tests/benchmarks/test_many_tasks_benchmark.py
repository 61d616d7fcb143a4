"""Tests of `benchmarks/many_tasks.py`: its sizes by hand and a tiny run
(K = 2 and 9, one balancer) whose log-key counts show that
`compile(diagnostics="auto")` drops the pairwise cosines above 8 tasks."""

import re

import pytest
from _benchmarks import load_benchmark

pytestmark = pytest.mark.benchmark_script

many_tasks = load_benchmark("many_tasks")


def test_sizes_by_hand():
    # 512·2048 + 2048 + 2048·2048 + 2048 + 2048·1024 + 1024
    assert many_tasks.shared_parameter_count(2048) == 7_345_152
    small = many_tasks.shared_parameter_count(4, input_dim=3)
    assert small == 3 * 4 + 4 + 4 * 4 + 4 + 4 * 2 + 2
    assert many_tasks.jacobian_megabytes(32, 2048) == pytest.approx(940.18, abs=0.01)


def test_tiny_run_prints_one_row_per_method_and_linear_log_keys(capsys):
    many_tasks.main(["--tasks", "2,9", "--methods", "mgda", "--width", "8",
                     "--steps", "1", "--in-process"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split("|")[1:-1] for line in lines
            if re.match(r"\| \d+ \|", line)]
    keys = {(int(r[0]), r[1].strip()): int(r[8]) for r in rows}
    # plain: loss + one loss per output.
    assert keys[(2, "plain")] == 3 and keys[(9, "plain")] == 10
    # loss, balanced_loss, skipped_steps, per task loss/weight/grad_norm,
    # plus K(K-1)/2 cosines only up to 8 tasks.
    assert keys[(2, "mgda")] == 3 + 3 * 2 + 1
    assert keys[(9, "mgda")] == 3 + 3 * 9
    plain_ratios = [r[3].strip() for r in rows if r[1].strip() == "plain"]
    assert plain_ratios == ["1.00", "1.00"]


def test_one_row_per_method_and_engine(capsys):
    many_tasks.main(["--tasks", "3", "--methods", "mgda,mgda_ub", "--width", "8",
                     "--steps", "1", "--in-process", "--jacobian", "loop,gramian"])
    lines = capsys.readouterr().out.splitlines()
    methods = [line.split("|")[2].strip() for line in lines
               if re.match(r"\| \d+ \|", line)]
    # mgda_ub (mode="rep") takes J over the representation: one row.
    assert methods == ["plain", "mgda", "mgda (gramian)", "mgda_ub"]
