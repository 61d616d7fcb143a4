"""Types: mypy passes over the package, and everything a public module
exports in `__all__` is annotated (every parameter and the return).

`py.typed` ships with the package (tests/test_release.py), so the
annotations reach users' type checkers; mypy's settings are in
pyproject.toml (`[tool.mypy]`: TensorFlow, Keras and JAX ship no usable
stubs, so their objects are `Any`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pathlib
import pkgutil
import subprocess
import sys

import pytest

import mtl_keras

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Public modules whose `__all__` is not fully annotated yet. Shrink it:
#: the test fails when a listed module is complete, so it cannot go stale.
NOT_YET_ANNOTATED: set[str] = set()


def public_modules() -> list[str]:
    """Every module of the package without a private path component that
    defines `__all__` (imported to find out)."""
    names = ["mtl_keras"]
    for info in pkgutil.walk_packages(mtl_keras.__path__, "mtl_keras."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return [name for name in names if hasattr(importlib.import_module(name), "__all__")]


def _missing(function, qualified: str, bound: bool) -> list[str]:
    """The parameters (and `return`) of `function` without an annotation."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    parameters = list(signature.parameters.values())
    if bound and parameters and parameters[0].name in ("self", "cls"):
        parameters = parameters[1:]
    missing = [
        f"{qualified}({p.name})"
        for p in parameters
        if p.annotation is inspect.Parameter.empty
    ]
    if signature.return_annotation is inspect.Signature.empty:
        missing.append(f"{qualified} -> return")
    return missing


def _own(function) -> bool:
    return getattr(function, "__module__", "").startswith("mtl_keras")


def unannotated(module_name: str) -> list[str]:
    """What `module_name`'s `__all__` exports without full annotations: its
    functions, and the public methods, properties and `__init__` that its
    classes define themselves (inherited Keras methods are Keras's)."""
    module = importlib.import_module(module_name)
    missing = []
    for name in module.__all__:
        exported = getattr(module, name)
        if inspect.isclass(exported):
            for attribute, value in vars(exported).items():
                if attribute.startswith("_") and attribute != "__init__":
                    continue
                bound = not isinstance(value, staticmethod)
                if isinstance(value, (classmethod, staticmethod)):
                    value = value.__func__
                if isinstance(value, property):
                    value = value.fget
                if inspect.isfunction(value) and _own(value):
                    missing += _missing(value, f"{name}.{attribute}", bound)
        elif inspect.isfunction(exported) and _own(exported):
            missing += _missing(exported, name, False)
    return missing


@pytest.mark.parametrize("module_name", public_modules())
def test_everything_exported_is_annotated(module_name):
    missing = unannotated(module_name)
    if module_name in NOT_YET_ANNOTATED:
        assert missing, f"{module_name} is complete: drop it from NOT_YET_ANNOTATED"
    else:
        assert missing == [], f"{module_name}: {len(missing)} missing: {missing}"


def test_the_allow_list_names_public_modules():
    assert NOT_YET_ANNOTATED <= set(public_modules())


def mypy_config() -> dict:
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["tool"]["mypy"]


def not_yet_type_clean(config: dict) -> set[str]:
    """The modules pyproject.toml lets mypy ignore the errors of."""
    return {
        module
        for override in config.get("overrides", [])
        if override.get("ignore_errors")
        for module in override["module"]
    }


def _ini(config: dict) -> str:
    """pyproject's mypy settings as a mypy.ini, without `ignore_errors`."""

    def value(v):
        return ", ".join(v) if isinstance(v, list) else str(v)

    lines = ["[mypy]"] + [
        f"{k} = {value(v)}" for k, v in config.items() if k != "overrides"
    ]
    for override in config.get("overrides", []):
        settings = {
            k: v for k, v in override.items() if k not in ("module", "ignore_errors")
        }
        if settings:
            lines.append(f"[mypy-{','.join(override['module'])}]")
            lines += [f"{k} = {value(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy not installed (pip install -e '.[test]')",
)
def test_mypy_passes_over_the_package(tmp_path):
    """mypy finds no error outside pyproject's shrinking `ignore_errors`
    list, and an error in each module of the list (else it must go)."""
    config = mypy_config()
    ini = tmp_path / "mypy.ini"
    ini.write_text(_ini(config), encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--config-file",
            str(ini),
            "mtl_keras",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    failing = {}
    for line in done.stdout.splitlines():
        path, _, rest = line.partition(":")
        if path.endswith(".py") and ": error:" in line:
            module = path.removesuffix(".py").removesuffix("/__init__")
            failing.setdefault(module.replace("/", "."), []).append(line)
    allowed = not_yet_type_clean(config)
    unexpected = {m: errors for m, errors in failing.items() if m not in allowed}
    assert unexpected == {}, "\n".join(e for es in unexpected.values() for e in es)
    clean = sorted(allowed - set(failing))
    assert clean == [], f"type-clean now, drop from pyproject.toml: {clean}"
