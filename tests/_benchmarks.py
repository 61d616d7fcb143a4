"""Loads a script of `benchmarks/` as a module, for the tests of that script."""

import importlib.util
import pathlib
import sys

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(stem: str):
    """`benchmarks/<stem>.py` as a fresh module named `<stem>_benchmark`."""
    spec = importlib.util.spec_from_file_location(
        f"{stem}_benchmark", BENCHMARKS / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
