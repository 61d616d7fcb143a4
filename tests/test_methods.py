"""The method registry: every method builds and trains, names resolve,
descriptions are its own, and errors name the fix."""

import ast
import pathlib

import keras
import numpy as np
import pytest

import mtl_keras
from mtl_keras import balancers, methods
from mtl_keras.model import MultiTaskModel

ALL = methods.all_methods()


def two_classifiers(seed=0):
    """A shared trunk and two 3-class heads, so both tasks log an accuracy."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,), name="x")
    shared = keras.layers.Dense(16, activation="tanh", name="trunk")(inputs)
    outputs = {
        task: keras.layers.Dense(3, activation="softmax", name=task)(shared)
        for task in ("a", "b")
    }
    return MultiTaskModel(inputs, outputs, shared=shared)


def test_the_registry_has_one_row_per_method():
    assert [m.name for m in ALL] == sorted({m.name for m in ALL})
    every_name = [name for m in ALL for name in m.names()]
    assert len(every_name) == len(set(every_name))  # no alias names two methods
    assert set(balancers.available()) <= set(methods.names())
    assert {"static", "mgda_ub", "dwa", "dtp", "lbtw", "schedule"} <= set(
        methods.names()
    )
    assert methods.get("ew") == methods.get("static")
    assert len({methods.get("ew"), methods.get("static"), methods.get("dwa")}) == 2
    assert methods.get("equal").aliases == ("ew", "equal")


@pytest.mark.parametrize("method", ALL, ids=lambda m: m.name)
def test_every_method_builds_and_trains_one_step(method):
    config = method.example(("a", "b")) if method.required else None
    parts = method.parts(config)
    assert method.kind in methods.KINDS
    if method.kind == "callback":
        assert parts.balancer is None and len(parts.callbacks) == 1
        assert isinstance(parts.callbacks[0], method.callback)
    else:
        assert parts.callbacks == () and isinstance(parts.balancer, method.balancer)
        assert parts.balancer.kind == (
            "loss" if method.kind == "static" else method.kind
        )
    model = two_classifiers()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
        metrics={"a": ["accuracy"], "b": ["accuracy"]},
        balancer=parts.balancer,
    )
    rng = np.random.RandomState(0)
    x = rng.randn(16, 8).astype("float32")
    y = {
        "a": x[:, :3].argmax(1).astype("int32"),
        "b": x[:, 3:6].argmax(1).astype("int32"),
    }
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(
        x, y, batch_size=16, epochs=1, verbose=0, callbacks=list(parts.callbacks)
    )
    assert np.isfinite(history.history["loss"]).all()
    moved = [
        not np.allclose(a, b.numpy()) for a, b in zip(before, model.trainable_weights)
    ]
    assert any(moved), f"{method.name}: one step changed no weight"


def test_presets_and_aliases_resolve_whatever_the_spelling():
    for method in ALL:
        for name in method.names():
            assert methods.get(name.upper().replace("_", "-")) == method
            assert methods.get(f"  {name} ") == method
    assert methods.get("MGDA-UB").parts().balancer.mode == "rep"
    assert methods.get("mgda").parts().balancer.mode == "params"
    assert isinstance(balancers.get("ew"), balancers.Static)
    assert balancers.get("mgda_ub", update_every=4).update_every == 4
    restored = balancers.get({"class_name": "mgda_ub", "config": {}})
    assert restored.mode == "rep"


def test_descriptions_are_distinct_and_mgda_ub_has_its_own():
    descriptions = [method.description for method in ALL]
    assert all(descriptions) and len(set(descriptions)) == len(descriptions)
    assert "representation" in methods.get("mgda_ub").description
    assert methods.get("mgda_ub").cost == "1 backward + K through heads"
    assert methods.get("pcgrad").cost == "K backward"
    assert methods.get("famo").cost == "1 backward + 1 forward"


def test_unknown_name_names_the_closest_and_every_valid_one():
    with pytest.raises(ValueError) as error:
        methods.get("upgard")
    message = str(error.value)
    assert "Did you mean 'upgrad'?" in message
    for name in methods.names(aliases=True):
        assert name in message
    with pytest.raises(ValueError, match="Unknown method 'zzz'. Valid names"):
        methods.get("zzz")


def test_a_callback_method_given_as_balancer_says_how_to_train_it():
    with pytest.raises(
        ValueError, match=r"callbacks=\[mtl_keras.callbacks.DynamicWeightAverage"
    ):
        balancers.get("dwa")
    model = two_classifiers()
    with pytest.raises(ValueError, match="callback method"):
        model.compile(loss="sparse_categorical_crossentropy", balancer="lbtw")


def test_a_method_that_needs_arguments_names_them():
    with pytest.raises(ValueError, match=r"'dtp' needs kpis: e.g. .*\{'kpis'"):
        methods.get("dtp").parts()
    assert methods.get("dtp").required == ("kpis",)
    assert methods.get("dwa").required == ()
    with pytest.raises(ValueError, match="'schedule' needs schedules"):
        mtl_keras.compare.check_methods(["ew", "schedule"])


def test_a_registered_balancer_class_is_a_method_by_itself():
    assert methods.get("nash-mtl").balancer is balancers.NashMTL
    assert (
        methods.get("nash_mtl").description
        == balancers.NashMTL.__doc__.strip().splitlines()[0]
    )


def _code_strings(path):
    """`(line, text)` of the string constants of a module's code: neither
    docstrings nor the names given to `@register(...)`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            skip.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "register":
            skip.update(id(arg) for arg in node.args)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
    ]


def test_no_module_but_the_registry_special_cases_a_method_name():
    names = set(methods.names(aliases=True))
    package = pathlib.Path(mtl_keras.__file__).parent
    named = [
        f"{path.relative_to(package)}:{line} {text!r}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "methods.py"
        for line, text in _code_strings(path)
        if text.strip().replace("-", "_") in names
    ]
    assert named == []
