"""Tests of `benchmarks/vs_torchjd.py` without torch: the skip path, the
network size both sides check, and the table's speed-up arithmetic."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest
from _benchmarks import load_benchmark

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "benchmarks" / "vs_torchjd.py"


vs_torchjd = load_benchmark("vs_torchjd")


def test_without_torch_it_says_what_to_install_and_exits_0(tmp_path):
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed in this environment")
    out = tmp_path / "report.md"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    assert "skipped" in completed.stdout
    assert "torch" in completed.stdout
    assert 'pip install torch "torchjd[full]"' in completed.stdout
    assert not out.exists()


def test_missing_requirements_names_what_cannot_be_imported(monkeypatch):
    monkeypatch.setattr(vs_torchjd, "REQUIREMENTS", ("numpy", "no_such_package_xyz"))
    assert vs_torchjd.missing_requirements() == ["no_such_package_xyz"]


def test_parameter_formula_by_hand():
    conv1 = 1 * 10 * 5 * 5 + 10
    conv2 = 10 * 20 * 5 * 5 + 20
    trunk_dense = 320 * 50 + 50
    head = (50 * 50 + 50) + (50 * 10 + 10)
    assert vs_torchjd.lenet_parameter_count(0) == conv1 + conv2 + trunk_dense == 21330
    assert vs_torchjd.lenet_parameter_count(2) == 21330 + 2 * head == 27450


@pytest.mark.parametrize("key", ["plain", "upgrad"])
def test_mtl_keras_side_has_the_torch_reference_size(key):
    method = next(m for m in vs_torchjd.METHODS if m.key == key)
    model = vs_torchjd.keras_model(method)
    assert vs_torchjd.trainable_count(model) == vs_torchjd.lenet_parameter_count(
        len(vs_torchjd.TASKS))


def test_every_row_names_a_registered_mtl_keras_balancer():
    from mtl_keras import balancers

    for method in vs_torchjd.METHODS:
        if method.keras not in ("plain", "engine"):
            assert balancers.get(method.keras) is not None, method.key


def test_table_speed_up_and_goal_marks():
    plain, upgrad, mgda = (next(m for m in vs_torchjd.METHODS if m.key == key)
                           for key in ("plain", "upgrad", "mgda"))
    results = []
    for method, torchjd_s, keras_s in ((plain, 0.030, 0.020),
                                       (upgrad, 0.090, 0.040),
                                       (mgda, 0.060, 0.040)):
        result = vs_torchjd.Result(method)
        result.wall_s = {"torchjd": [torchjd_s] * 3, "mtl_keras": [keras_s] * 3}
        if method is not plain:  # the plain steps timed alongside
            result.plain_wall_s = {"torchjd": [0.030, 0.031, 0.029],
                                   "mtl_keras": [0.020, 0.021, 0.019]}
        results.append(result)
    rows = vs_torchjd.table(results).splitlines()
    assert rows[2] == "| plain single-loss step | 30.0 | 20.0 | 1.50× | 1.00 | 1.00 |"
    assert rows[3] == "| UPGrad | 90.0 | 40.0 | 2.25× ✓ | 3.00 | 2.00 |"
    assert rows[4] == "| MGDA | 60.0 | 40.0 | 1.50× ✗ | 2.00 | 2.00 |"


def test_a_run_replaces_only_its_own_thread_section_and_keeps_the_notes():
    first = vs_torchjd.merge_report("", "threads=1", "## 1 thread per library\n\nold")
    assert first.startswith("# Per-step time: torchjd vs mtl_keras")
    second = vs_torchjd.merge_report(first + "hand-written note\n", "threads=2",
                                     "## 2 threads per library\n\ntwo")
    third = vs_torchjd.merge_report(second, "threads=1",
                                    "## 1 thread per library\n\nnew")
    assert "old" not in third
    assert third.index("\nnew\n") < third.index("\ntwo\n") < third.index(
        vs_torchjd.NOTES_MARKER)
    assert third.endswith(vs_torchjd.NOTES_MARKER + "\nhand-written note\n")
    assert third.count("## 1 thread per library") == 1


def test_section_key_names_the_threads_and_the_wait_policy():
    assert vs_torchjd.section_key(2) == "threads=2"
    assert vs_torchjd.section_key(2, "PASSIVE") == "threads=2 OMP_WAIT_POLICY=PASSIVE"
    assert vs_torchjd.section_key(1, None, "autogram") == "threads=1 engine=autogram"
