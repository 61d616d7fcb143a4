"""The release artefacts: sdist and wheel build, pass `twine check`, install.

The wheel is installed alone (`--no-deps`, no index) into a fresh virtual
environment, and `mtl-keras demo` runs from that environment's `bin/`. Its
dependencies (TensorFlow, Keras, ...) are not installed again: a `.pth` file
in the new environment adds the site-packages of the interpreter running the
tests, *after* the environment's own. That works the same whether the suite
runs in a virtual environment, a conda environment or a system Python (a venv
built with `system_site_packages=True` would see only the base interpreter's
packages, not those of the environment the tests run in). A module or data
file missing from the package, or a broken entry point, fails here rather
than on a user's machine. No network: `python -m build --no-isolation` uses
the installed setuptools and wheel.
"""

from __future__ import annotations

import configparser
import email.parser
import importlib.util
import os
import pathlib
import re
import site
import subprocess
import sys
import venv
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# One worker runs this module: its module-scoped fixture is built once.
pytestmark = [
    pytest.mark.xdist_group("test_release"),
    pytest.mark.skipif(
        any(importlib.util.find_spec(name) is None for name in ("build", "twine")),
        reason='release tools not installed: pip install -e ".[test]"'),
]


def _version() -> str:
    text = (ROOT / "mtl_keras" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.MULTILINE).group(1)


def _py_modules() -> list[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config.get("options", "py_modules", fallback="").split()


def _run(command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("dist")
    # sdist first, then the wheel built from the unpacked sdist (build's
    # default), so a file the sdist leaves out is missing from the wheel too.
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
          str(ROOT)], timeout=300)
    return out


def test_sdist_and_wheel_carry_the_version_and_pass_twine(dist):
    version = _version()
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"mtl_keras-{version}-py3-none-any.whl"]
    assert [s.name for s in sdists] == [f"mtl_keras-{version}.tar.gz"]
    _run([sys.executable, "-m", "twine", "check", "--strict",
          *map(str, wheels + sdists)], timeout=120)

    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        info = f"mtl_keras-{version}.dist-info"
        metadata = email.parser.Parser().parsestr(
            wheel.read(f"{info}/METADATA").decode())
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert metadata["Version"] == version
    assert metadata["License"] == "Apache-2.0"
    assert any(name.endswith("LICENSE") for name in names), "no LICENSE in the wheel"
    assert re.search(r"^mtl-keras = \w+(\.\w+)*:main$", entry_points, re.MULTILINE)
    packaged = set(names)
    source = {path.relative_to(ROOT).as_posix()
              for path in (ROOT / "mtl_keras").rglob("*.py")}
    source |= {f"{module}.py" for module in _py_modules()}
    assert source - packaged == set(), "modules missing from the wheel"


def running_site_packages() -> list[str]:
    """The site-packages directories of the interpreter running the tests."""
    paths = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        paths.append(site.getusersitepackages())
    return [path for path in paths if os.path.isdir(path)]


def fresh_environment(env_dir: pathlib.Path) -> pathlib.Path:
    """A new virtual environment that sees the running interpreter's packages
    after its own; returns its site-packages directory."""
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    own = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
               timeout=60).stdout.strip()
    # `site.addsitedir` (not a bare path) so that the running environment's own
    # .pth files (namespace packages, editable installs) work there too; they
    # come after the new environment's site-packages on sys.path.
    lines = [f"import site; site.addsitedir({path!r})"
             for path in running_site_packages()]
    (pathlib.Path(own) / "_running_site_packages.pth").write_text(
        "\n".join(lines) + "\n", encoding="utf-8")
    return pathlib.Path(own)


def test_fresh_environment_sees_running_packages_after_its_own(tmp_path):
    own = fresh_environment(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    (own / "keras.py").write_text("SHADOW = True\n", encoding="utf-8")
    out = _run([python, "-c", "import keras, numpy, sys; print(keras.__file__); "
                "print(numpy.__file__); print(sys.prefix)"], cwd=tmp_path,
               timeout=60).stdout.split()
    assert pathlib.Path(out[0]) == own / "keras.py"  # its own first
    assert not pathlib.Path(out[1]).is_relative_to(tmp_path)  # then ours
    assert pathlib.Path(out[2]) == tmp_path / "venv"


def test_wheel_runs_the_demo_from_a_fresh_environment(dist, tmp_path):
    env_dir = tmp_path / "venv"
    fresh_environment(env_dir)
    python = env_dir / "bin" / "python"
    wheel = next(dist.glob("*.whl"))
    # The running pip installs into the new environment (`--python`, no pip of
    # its own to bootstrap). --ignore-installed: the copy of mtl_keras that the
    # running environment holds (CI's `pip install .`, an editable install) must
    # not satisfy the install.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install",
          "--no-deps", "--no-index", "--ignore-installed", "--quiet", str(wheel)],
         timeout=180)

    # Run outside the checkout so that nothing imports it from the cwd.
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
    where = _run([python, "-c", "import mtl_keras; print(mtl_keras.__file__, "
                  "mtl_keras.__version__)"], cwd=tmp_path, env=environment,
                 timeout=120).stdout.split()
    assert pathlib.Path(where[0]).is_relative_to(env_dir), (
        f"mtl_keras was imported from {where[0]}, not from the installed wheel")
    assert where[1] == _version()

    command = env_dir / "bin" / "mtl-keras"
    version = _run([command, "--version"], cwd=tmp_path, env=environment,
                   timeout=60).stdout
    assert _version() in version, version
    demo = _run([command, "demo", "--epochs", "1",
                 "--train-size", "128", "--batch-size", "64"],
                cwd=tmp_path, env=environment, timeout=300)
    assert "task" in demo.stdout and "cls" in demo.stdout, demo.stdout[-2000:]
