"""The TensorFlow engines' live memory (issue #24): the loop engine holds
each task's gradient once and forms `J Jᵀ` without a copy of J; the Gramian
engine never holds J.

Counted by TensorFlow's BFC CPU allocator (the peak of bytes in use over a
one-batch `fit` and a one-step `fit`), which TensorFlow only enables from
the environment before its import: each model trains in a subprocess,
through `benchmarks/engine_cost.py`'s live rows. Peak RSS would also count
the allocators' pools (see `docs/benchmarks/overhead.md`).
"""

import pytest
from _benchmarks import load_benchmark

pytestmark = pytest.mark.xdist_group("test_memory_floor")  # one fixture build

engine_cost = load_benchmark("engine_cost")

WIDTH, TASKS = 512, 8


@pytest.fixture(scope="module")
def live_rows():
    args = engine_cost.parse_args([
        "--backends", "tensorflow", "--tasks", str(TASKS), "--width", str(WIDTH),
        "--steps", "1", "--backbones", "", "--rows", "plain,loop,gramian",
        "--live-memory"])
    records = {}
    for spec in engine_cost.plan(args):
        if spec.get("live"):
            record = engine_cost.run_row(spec, timeout=600)
            assert "error" not in record, record["error"]
            records[spec["row"]] = record
    return records


def over_plain(records, row):
    """The row's live peak beyond plain Keras's, in |J| = K×P×4 bytes."""
    record = records[row]
    return (record["live_mb"] - records["plain"]["live_mb"]) / record["jacobian_mb"]


def test_loop_engine_holds_the_jacobian_once(live_rows):
    # 1.02 measured: J, one column chunk of it, nothing stacked whole.
    assert 0.9 < over_plain(live_rows, "loop") <= 1.1


def test_gramian_engine_never_holds_the_jacobian(live_rows):
    # 0.11 measured (K = 8, P = 787k): the per-layer pieces of J Jᵀ.
    assert over_plain(live_rows, "gramian") <= 0.25
