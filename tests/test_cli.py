"""The `mtl-keras` command answers quickly and says what it offers."""

import argparse
import importlib.util
import inspect
import os
import subprocess
import sys

import keras
import pytest

import mtl_keras
import mtl_keras_cli
from mtl_keras import methods


def test_help_and_version_do_not_import_tensorflow():
    code = (
        "import sys, mtl_keras_cli\n"
        "try:\n"
        "    mtl_keras_cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "assert 'mtl_keras' not in sys.modules, 'mtl_keras imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mtl-keras")
    assert result.stderr == ""


def test_version_is_the_package_version(capsys):
    try:
        mtl_keras_cli.main(["--version"])
    except SystemExit as stop:
        assert stop.code == 0
    assert capsys.readouterr().out.strip() == f"mtl-keras {mtl_keras.__version__}"


def test_methods_lists_one_row_per_method_with_its_aliases(capsys):
    assert mtl_keras_cli.main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == methods.names()  # no row for an alias
    assert rows["static"][1] == "ew,equal" and rows["static"][2] == "static"
    assert rows["uw"][1:3] == ["-", "loss"] and "1 backward" in " ".join(rows["uw"])
    assert "K backward" in " ".join(rows["pcgrad"])
    assert "K through heads" in " ".join(rows["mgda_ub"])
    assert "1 forward" in " ".join(rows["famo"])
    assert rows["dwa"][2] == "callback"
    for line in lines[1:]:  # each with its own description
        assert line.endswith("  " + methods.get(line.split()[0]).description)
    # `balancers` is the same command under its former name.
    assert mtl_keras_cli.main(["balancers"]) == 0
    assert capsys.readouterr().out.splitlines() == lines


def _subparsers(parser):
    action = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    return {name: sub for name, sub in action.choices.items()}


def test_every_help_shows_the_defaults():
    parser = mtl_keras_cli.build_parser()
    for name, sub in _subparsers(parser).items():
        text = sub.format_help()
        for action in sub._actions:
            if action.default is argparse.SUPPRESS or not action.option_strings:
                continue
            assert f"(default: {action.default})" in " ".join(text.split()), (
                name,
                action.dest,
            )
    help_text = " ".join(_subparsers(parser)["demo"].format_help().split())
    assert "--epochs EPOCHS training epochs (default: 8)" in help_text


def test_the_command_hides_tensorflow_start_up_noise():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = "import sys, mtl_keras_cli; sys.exit(mtl_keras_cli.main(['methods']))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "upgrad" in result.stdout
    for noise in ("oneDNN", "cuInit", "cudart", "absl", "cpu_feature_guard"):
        assert noise not in result.stderr, result.stderr
    # A user who sets the level sees what TensorFlow prints.
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"},
    )
    assert result.returncode == 0, result.stderr


def test_a_warning_is_printed_once_at_most():
    code = (
        "import warnings, mtl_keras_cli\n"
        "mtl_keras_cli._load_library()\n"
        "text = 'repeated' + '-warning'\n"
        "for _ in range(3):\n"
        "    warnings.warn(text)\n"
        "warnings.warn(text)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("repeated-warning") == 1, result.stderr


def test_compare_plot_without_matplotlib_fails_before_training(monkeypatch, capsys):
    find_spec = importlib.util.find_spec

    def no_matplotlib(name, *args, **kwargs):
        return None if name == "matplotlib" else find_spec(name, *args, **kwargs)

    def no_training(*args, **kwargs):
        raise AssertionError("compare trained")

    monkeypatch.setattr(importlib.util, "find_spec", no_matplotlib)
    monkeypatch.setattr(mtl_keras.compare, "compare", no_training)
    code = mtl_keras_cli.main(["compare", "--balancers", "ew", "--plot", "x.png"])
    assert code == 2
    error = capsys.readouterr().err
    assert "matplotlib" in error and "'.[plot]'" in error


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--save", "model.h5"], "needs a .keras file"),
        (["demo", "--balancer", "upgrd"], "Did you mean 'upgrad'"),
        (["compare", "--balancers", "ew", "--data", "mnist"], "built-in suites are"),
        (
            ["compare", "--balancers", "ew", "--architecture", "moe"],
            "Unknown architecture",
        ),
        (["tune", "--balancers", "static,nope"], "Unknown method 'nope'"),
        (["tune", "--balancers", "dtp"], "'dtp' needs kpis"),
        (["tune", "--tuner", "annealing"], "Unknown tuner 'annealing'"),
        (["tune", "--weights", "uniform"], "Unknown weights mode 'uniform'"),
        (["demo", "--balancer", "schedule"], "'schedule' needs schedules"),
    ],
)
def test_bad_arguments_fail_before_training(argv, message, capsys):
    assert mtl_keras_cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_demo_saves_a_keras_file(tmp_path, capsys):
    path = tmp_path / "model.keras"
    assert (
        mtl_keras_cli.main(
            [
                "demo",
                "--epochs",
                "1",
                "--train-size",
                "64",
                "--validation-size",
                "64",
                "--save",
                str(path),
            ]
        )
        == 0
    )
    assert f"Saved the model to {path}" in capsys.readouterr().out
    loaded = keras.models.load_model(path)
    assert sorted(loaded.output) == ["cls", "count", "seg"]


@pytest.mark.parametrize("flag, expected", [([], "auto"), (["--jit-compile"], True)])
def test_demo_compiles_like_keras_by_default(flag, expected, monkeypatch):
    # Keras' "auto": XLA on JAX (without it JAX runs the step op by op,
    # several times slower), plain graphs on TensorFlow without a GPU.
    from mtl_keras import demo

    assert inspect.signature(demo.train_shapes).parameters[
        "jit_compile"].default == "auto"
    seen = {}

    def train_shapes(**kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(demo, "train_shapes", train_shapes)
    with pytest.raises(SystemExit):
        mtl_keras_cli.main(["demo", *flag])
    assert seen["jit_compile"] == expected
