"""The model↔engine seam: declared public hooks only, one backend registry.

The engine (`mtl_keras/engine/*.py`) may use a model only through the
`EngineModel` protocol and reads no private member of anything but itself;
`mtl_keras/model.py` reaches the engine only through its public names.
Both registered backends satisfy the `Backend` protocol.
"""

import ast
import pathlib

import keras
import pytest
from _tiny import LOSSES, tiny_network

import mtl_keras
from mtl_keras import engine
from mtl_keras.engine import backend as backend_lib
from mtl_keras.engine import core

PACKAGE = pathlib.Path(mtl_keras.__file__).parent
ENGINE_FILES = sorted((PACKAGE / "engine").glob("*.py"))
MODEL_FILE = PACKAGE / "model.py"

#: NamedTuple's public API is spelled with an underscore.
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}


def _private(name: str) -> bool:
    return (
        name.startswith("_")
        and not name.startswith("__")
        and name not in NAMEDTUPLE_API
    )


def _engine_crossings(source: str) -> list[str]:
    """Private attributes the engine reads on anything but itself."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            )
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def _model_crossings(source: str) -> list[str]:
    """Private engine names the model reaches: `engine._x`, a trainer's
    `_x`, or `from mtl_keras.engine... import _x`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "mtl_keras.engine"
        ):
            found += [
                f"{node.lineno}: import {a.name}"
                for a in node.names
                if _private(a.name)
            ]
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = ast.unparse(node.value)
            if "engine" in base or "trainer" in base.lower():
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def _model_attributes_used_by_engine() -> set[str]:
    """Every `model.X` / `self.model.X` the engine files read."""
    used = set()
    for path in ENGINE_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            base = node.value
            if (isinstance(base, ast.Name) and base.id == "model") or (
                isinstance(base, ast.Attribute)
                and base.attr == "model"
                and isinstance(base.value, ast.Name)
                and base.value.id == "self"
            ):
                used.add(node.attr)
    return used


def _protocol_members(protocol) -> set[str]:
    members = set(getattr(protocol, "__annotations__", {}))
    members |= {name for name in vars(protocol) if not name.startswith("_")}
    return members


def test_the_checks_catch_a_crossing():
    assert _engine_crossings("model._balanced_total(w)\nself._ok = 1") == [
        "1: model._balanced_total"
    ]
    assert _engine_crossings("values._replace(a=1)") == []
    assert _model_crossings(
        "from mtl_keras.engine.core import _x\nengine.core._y\n"
        "self._trainer._z\nself._trainer.train_step()"
    ) == ["1: import _x", "2: engine.core._y", "3: self._trainer._z"]


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: p.name)
def test_the_engine_reads_no_private_member(path):
    assert _engine_crossings(path.read_text()) == []


def test_the_model_reaches_no_private_engine_name():
    assert _model_crossings(MODEL_FILE.read_text()) == []


def test_the_engine_uses_only_declared_model_hooks():
    declared = _protocol_members(backend_lib.EngineModel)
    undeclared = _model_attributes_used_by_engine() - declared
    assert not undeclared, f"engine reads undeclared model members {undeclared}"


def test_a_multitask_model_is_an_engine_model():
    model = tiny_network()
    model.compile(optimizer="sgd", loss=LOSSES, balancer="upgrad")
    assert isinstance(model, backend_lib.EngineModel)
    assert not isinstance(keras.Sequential(), backend_lib.EngineModel)


@pytest.mark.parametrize("name", backend_lib.BACKENDS)
def test_every_backend_satisfies_the_protocol(name):
    backend = engine.get_backend(name)
    assert isinstance(backend, backend_lib.Backend)
    assert backend.name == name
    trainer_class = backend.trainer
    for piece in _protocol_members(backend_lib.StepPieces):
        assert callable(getattr(trainer_class, piece)), piece


def test_one_registry_and_constants_defined_once():
    assert mtl_keras.SUPPORTED_BACKENDS is backend_lib.BACKENDS
    assert engine.get_backend() is engine.get_backend(keras.backend.backend())
    with pytest.raises(ValueError, match="no gradient engine.*'torch'"):
        engine.get_backend("torch")
    definitions = {"JACOBIAN_METHODS": [], "BACKENDS": []}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for target in targets:
                if isinstance(target, ast.Name) and target.id in definitions:
                    definitions[target.id].append(path.name)
    assert definitions == {
        "JACOBIAN_METHODS": ["backend.py"],
        "BACKENDS": ["backend.py"],
    }


#: Where the package may still ask which backend runs, and why: the
#: registry; the import-time check; a Keras workaround below the engine
#: (`_compat`, TensorFlow's MultiWorkerMirroredStrategy); the in-graph label
#: check (TensorFlow's Assert); the K×K solves below the engine (JAX's x64
#: mode in `balancers/solvers.py`).
BACKEND_QUESTIONS = {"engine/backend.py", "__init__.py", "_compat.py",
                     "task_losses.py", "balancers/solvers.py"}


def test_backend_ifs_sit_behind_the_registry():
    asking = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and ast.unparse(node.func) == "keras.backend.backend"
            ):
                asking.add(path.relative_to(PACKAGE).as_posix())
    assert asking <= BACKEND_QUESTIONS, asking - BACKEND_QUESTIONS


def test_unknown_jacobian_method_names_the_choices():
    model = tiny_network()
    with pytest.raises(ValueError, match="'loop', 'pfor' or 'gramian', got 'scan'"):
        model.compile(optimizer="sgd", loss=LOSSES, balancer="upgrad", jacobian="scan")


class _Recorder:
    """StepPieces that record the outline's calls."""

    def __init__(self, finite):
        self.calls, self.finite = [], finite

    def state_before(self, state):
        self.calls.append("state_before")
        return "before"

    def _step(self, name, state):
        self.calls.append(name)
        step = core.TrainStep(
            None,
            None,
            None,
            None,
            None,
            finite_tasks=keras.ops.convert_to_tensor([True, self.finite]),
        )
        return step, ["g"], "weighted", state + 1

    def loss_step(self, state, x, y, sample_weight):
        return self._step("loss_step", state)

    def gradient_step(self, state, x, y, sample_weight):
        return self._step("gradient_step", state)

    def apply_if_finite(self, state, finite, grads):
        self.calls.append(("apply", bool(finite), tuple(grads)))
        return state + 10

    def post_step_update(self, state, before, x, y, sample_weight, weighted, finite):
        self.calls.append(("post", before, weighted, bool(finite)))
        return state + 100


@pytest.mark.parametrize(
    "balancer, finite, calls, state",
    [
        ("upgrad", True, ["gradient_step", ("apply", True, ("g",))], 11),
        ("uw", False, ["loss_step", ("apply", False, ("g",))], 11),
        (
            "famo",
            True,
            [
                "state_before",
                "loss_step",
                ("apply", True, ("g",)),
                ("post", "before", "weighted", True),
            ],
            111,
        ),
    ],
)
def test_the_neutral_step_outline(balancer, finite, calls, state):
    pieces = _Recorder(finite)
    _, new_state = core.train_step(
        pieces, mtl_keras.balancers.get(balancer), 0, None, None, None
    )
    assert pieces.calls == calls
    assert new_state == state
