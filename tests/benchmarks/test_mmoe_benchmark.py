"""benchmarks/mmoe_synthetic.py: the paper's data construction and a tiny run."""


import numpy as np
import pytest
from _benchmarks import load_benchmark

pytestmark = pytest.mark.benchmark_script

benchmark = load_benchmark("mmoe_synthetic")


@pytest.mark.parametrize("correlation", [0.5, 0.9, 1.0])
def test_label_correlation_follows_the_weight_cosine(correlation):
    x, y = benchmark.make_data(correlation, 20000, seed=0)
    assert x.shape == (20000, benchmark.DIM)
    # The linear parts w_kᵀx have correlation exactly p in expectation.
    w1, *_ = np.linalg.lstsq(x, y["y1"][:, 0], rcond=None)
    w2, *_ = np.linalg.lstsq(x, y["y2"][:, 0], rcond=None)
    cosine = w1 @ w2 / np.linalg.norm(w1) / np.linalg.norm(w2)
    assert abs(cosine - correlation) < 0.05, cosine
    if correlation == 1.0:  # same function, independent noise of variance 0.01
        np.testing.assert_allclose(np.var(y["y1"] - y["y2"]), 0.02, rtol=0.1)


def test_tiny_run_writes_table_and_plot(tmp_path):
    benchmark.main(["--seeds", "1", "--epochs", "2", "--train-size", "256",
                    "--test-size", "64", "--models", "shared_bottom,mmoe",
                    "--out", str(tmp_path)])
    report = (tmp_path / "mmoe_synthetic.md").read_text()
    assert "| mmoe | 14818 |" in report and "| shared_bottom | 15010 |" in report
    assert "Command: `python benchmarks/mmoe_synthetic.py --seeds 1" in report
    assert (tmp_path / "mmoe_synthetic.png").stat().st_size > 0
    assert len((tmp_path / "mmoe_synthetic_runs.jsonl").read_text().splitlines()) == 6
