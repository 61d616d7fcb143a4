"""SavedModel export for serving, checked the way a server would load it.

The serving checks run in fresh processes (no `mtl_keras` imported there) and
through `saved_model_cli`, so they see only what is in the SavedModel.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from _tiny import LOSSES, tiny_data, tiny_network

import mtl_keras
from mtl_keras import cli, export

# One worker runs this module: its module-scoped fixture is built once.
pytestmark = pytest.mark.xdist_group("test_export")

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mtl_keras.__file__)))
SUBPROCESS_TIMEOUT_S = 300

SERVE_SCRIPT = """
import json, sys
import numpy as np, tensorflow as tf
path, input_name, x_path, out_path, info_path = sys.argv[1:]
loaded = tf.saved_model.load(path)
serve = loaded.signatures["serving_default"]
outputs = serve(**{input_name: tf.constant(np.load(x_path))})
np.savez(out_path, **{key: value.numpy() for key, value in outputs.items()})
with open(info_path, "w") as f:
    json.dump({"inputs": sorted(serve.structured_input_signature[1]),
               "signatures": sorted(loaded.signatures),
               "variables": sorted(v.name for v in loaded.variables)}, f)
"""

RESUME_SCRIPT = """
import json, sys
import keras, numpy as np
import mtl_keras
model_path, data_path, out_path = sys.argv[1:]
model = keras.models.load_model(model_path, safe_mode=True)
data = np.load(data_path)
x, y = data["x"], {"a": data["a"], "b": data["b"]}
state = {"balancer": type(model.balancer).__name__,
         "balancer_variables": [v.numpy().tolist() for v in model.balancer.variables],
         "iterations": int(model.optimizer.iterations.numpy())}
before = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
history = model.fit(x, y, epochs=5, batch_size=32, shuffle=False, verbose=0)
after = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
with open(out_path, "w") as f:
    json.dump({**state, "before": before, "after": after,
               "losses": history.history["loss"]}, f)
"""


def _run(args, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(
               [PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(args, capture_output=True, text=True, env=env,
                            timeout=SUBPROCESS_TIMEOUT_S, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _tool(name: str, module: str) -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", module]


def _trained_tiny(balancer="uw", epochs=2):
    x, y = tiny_data(64)
    model = tiny_network()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSSES,
                  balancer=balancer)
    model.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0)
    return model, x, y


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model trained with "uw", exported with `a` post-processed."""
    folder = tmp_path_factory.mktemp("export")
    model, x, _ = _trained_tiny()
    path = export.saved_model(model, folder / "saved", postprocess={"a": "classify"})
    np.save(folder / "x.npy", x)
    return model, path, folder, x


# ------------------------------------------------------------ serving


def test_fresh_process_serves_the_model_predictions(exported):
    model, path, folder, x = exported
    _run([sys.executable, "-c", SERVE_SCRIPT, path, "x", str(folder / "x.npy"),
          str(folder / "served.npz"), str(folder / "info.json")])
    served = np.load(folder / "served.npz")
    info = json.loads((folder / "info.json").read_text())
    predicted = model.predict(x, verbose=0)

    assert info["inputs"] == ["x"]
    assert {"serve", "serving_default"} <= set(info["signatures"])
    assert sorted(served) == ["a", "a_class_id", "a_probabilities", "b"]
    for task in ("a", "b"):
        np.testing.assert_allclose(served[task], predicted[task], atol=1e-5)
    np.testing.assert_array_equal(served["a_class_id"], predicted["a"].argmax(-1))
    # `a` ends in a softmax: its probabilities are passed through.
    np.testing.assert_allclose(served["a_probabilities"], predicted["a"], atol=1e-6)
    # Only the layers' weights: no task weight, balancer or optimizer variable.
    serving_names = sorted(f"{v.path}:0" for v in model.serving_model().variables)
    assert info["variables"] == serving_names
    assert len(serving_names) < len(model.variables)


def test_saved_model_cli_shows_the_signature(exported):
    _, path, _, _ = exported
    cli_tool = _tool("saved_model_cli", "tensorflow.python.tools.saved_model_cli")
    shown = _run([*cli_tool, "show", "--dir", path, "--all"]).stdout
    serving_default = shown.split("signature_def['serving_default']:")[1]
    for line in ("inputs['x'] tensor_info", "outputs['a'] tensor_info",
                 "outputs['b'] tensor_info", "outputs['a_class_id'] tensor_info",
                 "outputs['a_probabilities'] tensor_info"):
        assert line in serving_default


def test_saved_model_cli_runs_the_signature(exported):
    model, path, folder, x = exported
    cli_tool = _tool("saved_model_cli", "tensorflow.python.tools.saved_model_cli")
    outdir = folder / "cli_run"
    _run([*cli_tool, "run", "--dir", path, "--tag_set", "serve",
          "--signature_def", "serving_default",
          "--inputs", f"x={folder / 'x.npy'}", "--outdir", str(outdir)])
    predicted = model.predict(x, verbose=0)
    np.testing.assert_allclose(np.load(outdir / "b.npy"), predicted["b"], atol=1e-5)
    np.testing.assert_array_equal(np.load(outdir / "a_class_id.npy"),
                                  predicted["a"].argmax(-1))


def test_cli_exports_a_keras_file(tmp_path):
    model, x, _ = _trained_tiny()
    model.save(tmp_path / "model.keras")
    out_dir = tmp_path / "saved"
    result = _run([sys.executable, "-m", "mtl_keras.cli", "export",
                   str(tmp_path / "model.keras"), str(out_dir),
                   "--postprocess", "a=classify"])
    assert str(out_dir) in result.stdout
    serve = tf.saved_model.load(str(out_dir)).signatures["serving_default"]
    served = serve(x=tf.constant(x))
    predicted = model.predict(x, verbose=0)
    assert sorted(served) == ["a", "a_class_id", "a_probabilities", "b"]
    np.testing.assert_allclose(served["a"].numpy(), predicted["a"], atol=1e-5)
    np.testing.assert_allclose(served["b"].numpy(), predicted["b"], atol=1e-5)


def test_model_trained_with_a_balancer_resumes_in_a_fresh_process(tmp_path):
    model, x, y = _trained_tiny("uw")
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "data.npz", x=x, **y)
    saved_balancer = [v.numpy().tolist() for v in model.balancer.variables]
    saved_iterations = int(model.optimizer.iterations.numpy())

    _run([sys.executable, "-c", RESUME_SCRIPT, str(tmp_path / "model.keras"),
          str(tmp_path / "data.npz"), str(tmp_path / "resumed.json")])
    resumed = json.loads((tmp_path / "resumed.json").read_text())

    assert resumed["balancer"] == type(model.balancer).__name__
    np.testing.assert_allclose(resumed["balancer_variables"], saved_balancer)
    assert resumed["iterations"] == saved_iterations
    assert resumed["after"] < resumed["before"]
    # The same five epochs here, from the state that was saved.
    history = model.fit(x, y, epochs=5, batch_size=32, shuffle=False, verbose=0)
    np.testing.assert_allclose(resumed["losses"], history.history["loss"], rtol=1e-5)


# ------------------------------------------------------- post-processing


def _logits_and_segmentation_model():
    keras.utils.set_random_seed(0)
    image = keras.Input((4, 4, 2), name="image")
    features = keras.layers.Conv2D(6, 1, activation="tanh", name="trunk")(image)
    pooled = keras.layers.GlobalAveragePooling2D(name="cls_pool")(features)
    outputs = {
        "cls": keras.layers.Dense(5, name="cls")(pooled),  # logits
        "seg": keras.layers.Conv2D(3, 1, activation="softmax", name="seg")(features),
    }
    return keras.Model(image, outputs)


def test_classify_and_segment_outputs(tmp_path):
    model = _logits_and_segmentation_model()
    images = np.random.RandomState(0).randn(6, 4, 4, 2).astype("float32")
    path = export.saved_model(model, tmp_path / "saved",
                              postprocess={"cls": "classify", "seg": "segment"})
    serve = tf.saved_model.load(path).signatures["serving_default"]
    served = {k: v.numpy() for k, v in serve(image=tf.constant(images)).items()}
    predicted = model.predict(images, verbose=0)

    assert sorted(served) == ["cls", "cls_class_id", "cls_probabilities", "seg",
                              "seg_class_map"]
    logits = predicted["cls"].astype("float64")
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    np.testing.assert_allclose(served["cls_probabilities"], softmax, atol=1e-6)
    np.testing.assert_array_equal(served["cls_class_id"], logits.argmax(-1))
    assert served["seg_class_map"].shape == (6, 4, 4)
    np.testing.assert_array_equal(served["seg_class_map"], predicted["seg"].argmax(-1))
    np.testing.assert_allclose(served["seg"], predicted["seg"], atol=1e-5)


def test_parse_postprocess():
    assert export.parse_postprocess("cls=classify, seg=segment") == {
        "cls": "classify", "seg": "segment"}
    assert export.parse_postprocess("") == {}
    with pytest.raises(ValueError, match="TASK=KIND"):
        export.parse_postprocess("cls:classify")


def test_cli_refuses_a_malformed_postprocess(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", "model.keras", "out", "--postprocess", "cls"])
    assert exit_info.value.code == 2
    assert "TASK=KIND" in capsys.readouterr().err


# ---------------------------------------------------------- bad input


def test_unbuilt_model_is_refused(tmp_path):
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="never built"):
        export.saved_model(model, tmp_path / "saved")


def test_subclassed_model_is_refused(tmp_path):
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return {"a": self.dense(x)}

    model = Subclassed()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="not a functional model"):
        export.saved_model(model, tmp_path / "saved")


@pytest.mark.parametrize("as_list", [True, False])
def test_unnamed_outputs_are_refused(tmp_path, as_list):
    inputs = keras.Input((3,), name="x")
    outputs = [keras.layers.Dense(1)(inputs), keras.layers.Dense(2)(inputs)]
    model = keras.Model(inputs, outputs if as_list else outputs[0])
    with pytest.raises(ValueError, match="not named.*dict of outputs"):
        export.saved_model(model, tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize("postprocess, message", [
    ({"c": "classify"}, r"task\(s\) \['c'\]"),
    ({"a": "detect"}, "Unknown postprocess 'detect'"),
    ({"b": "classify"}, "one score per class"),
    ({"a": "segment"}, "per-pixel class scores"),
])
def test_bad_postprocess_is_refused(tmp_path, postprocess, message):
    with pytest.raises(ValueError, match=message):
        export.saved_model(tiny_network(), tmp_path / "saved", postprocess=postprocess)


def test_clashing_output_names_are_refused(tmp_path):
    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, {"a": keras.layers.Dense(2)(inputs),
                                 "a_class_id": keras.layers.Dense(1)(inputs)})
    with pytest.raises(ValueError, match=r"duplicate names \['a_class_id'\]"):
        export.saved_model(model, tmp_path / "saved", postprocess={"a": "classify"})
