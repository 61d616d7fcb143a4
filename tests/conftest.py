"""Tests mirror the package tree (`tests/balancers/` for `mtl_keras/balancers/`,
...); what they share sits here in `tests/`: `_tiny.py` (a two-task model and
data), `_benchmarks.py` (loads a script of `benchmarks/`) and the `_*worker.py`
scripts that tests run in subprocesses. This puts `tests/` on `sys.path` for
the test modules in the subfolders."""

import pathlib
import sys

TESTS = str(pathlib.Path(__file__).parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
