"""What `mtl_keras._compat` relies on in Keras is still there.

Each check fails when a Keras release changes an internal the package
uses, so the cap in setup.cfg is raised only with these passing.
"""

import inspect

import keras

from mtl_keras import _compat


def test_keras_version_is_one_the_workarounds_were_checked_against():
    major_minor = ".".join(keras.__version__.split(".")[:2])
    assert major_minor in _compat.CHECKED_KERAS, (
        f"Keras {keras.__version__}: re-check mtl_keras/_compat.py and add "
        "the version to CHECKED_KERAS and to the cap in setup.cfg.")


def test_the_symbolic_build_hook_keeps_its_signature():
    hook = getattr(keras.Model, "_maybe_symbolic_build", None)
    assert hook is not None, "Keras no longer builds through _maybe_symbolic_build"
    parameters = list(inspect.signature(hook).parameters)
    assert parameters == ["self", "iterator", "data_batch"]
    assert hasattr(keras.Model, "_symbolic_build")


def test_a_built_layer_can_be_unlocked_for_one_more_weight():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    with _compat.unlocked_state(layer):
        extra = layer.add_weight(shape=(4,), initializer="zeros", name="extra")
    assert any(v is extra for v in layer.weights)
    try:
        layer.add_weight(shape=(1,), name="refused")
    except ValueError:
        pass
    else:
        raise AssertionError("the layer stayed unlocked")


def test_no_keras_internals_outside_the_compat_module():
    import pathlib
    import re

    package = pathlib.Path(_compat.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "_compat.py":
            continue
        text = path.read_text(encoding="utf-8")
        for pattern in (r"keras\.src", r"\._keras_history", r"\._inbound_nodes",
                        r"\._loss_tracker", r"\._seed_generators",
                        r"\._trainable_variables", r"\._train_writer",
                        r"\._tracker\b", r"_maybe_symbolic_build"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(package)}: {pattern}")
    assert offenders == []
