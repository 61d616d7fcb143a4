"""Tests of `benchmarks/xla_cpu_conditional.py`: both programs compute the
same gradient, and a tiny run prints its table."""

import importlib.util
import re

import numpy as np
import pytest
from _benchmarks import load_benchmark

pytestmark = [pytest.mark.benchmark_script,
              pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                 reason="JAX not installed")]

conditional = load_benchmark("xla_cpu_conditional")


def test_the_conditional_program_computes_the_plain_gradient():
    inputs, programs = conditional.conv_gradient_programs(batch=4)
    plain, in_cond = (programs[name](*inputs)
                      for name in ("plain", "inside lax.cond"))
    for got, want in zip(in_cond, plain):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4,
                                   atol=1e-7)
    assert float(np.abs(np.asarray(plain[1])).max()) > 0.0


def test_tiny_run_prints_both_programs_and_their_ratio(capsys):
    conditional.main(["--batch", "4", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (plain|inside lax\.cond) \| ([\d.]+) \| (.+) \|$", out,
                      re.MULTILINE)
    assert [row[0] for row in rows] == ["plain", "inside lax.cond"]
    assert all("->" in row[2] for row in rows)
    assert re.search(r"inside lax\.cond / plain: [\d.]+x", out)
