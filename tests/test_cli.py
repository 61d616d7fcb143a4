"""The `mtl-keras` command answers quickly and says what it offers."""

import subprocess
import sys

import mtl_keras
import mtl_keras_cli
from mtl_keras import balancers


def test_help_and_version_do_not_import_tensorflow():
    code = ("import sys, mtl_keras_cli\n"
            "try:\n"
            "    mtl_keras_cli.main(['--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
            "assert 'mtl_keras' not in sys.modules, 'mtl_keras imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mtl-keras")
    assert result.stderr == ""


def test_version_is_the_package_version(capsys):
    try:
        mtl_keras_cli.main(["--version"])
    except SystemExit as stop:
        assert stop.code == 0
    assert capsys.readouterr().out.strip() == f"mtl-keras {mtl_keras.__version__}"


def test_balancers_lists_every_name_with_kind_and_cost(capsys):
    assert mtl_keras_cli.main(["balancers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {*balancers.available(), "dwa"}
    assert "loss" in rows["uw"] and "1 backward" in rows["uw"]
    assert "gradient" in rows["pcgrad"] and "K backward" in rows["pcgrad"]
    assert "K through heads" in rows["mgda_ub"]
    assert "1 forward" in rows["famo"]
    assert "DynamicWeightAverage" in rows["dwa"]
