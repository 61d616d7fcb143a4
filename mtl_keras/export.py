"""Export a multi-task model as a TensorFlow SavedModel for serving.

The export holds the inference graph only: the task heads and the trunk,
without the task weights, the balancer or the optimizer. Its `serve` (alias
`serving_default`) signature takes the model inputs under their names and
returns a dict keyed by task, plus any post-processing outputs asked for.

Example:

```python
mtl_keras.export.saved_model(model, "export/1",
                             postprocess={"cls": "classify", "seg": "segment"})
serve = tf.saved_model.load("export/1").signatures["serving_default"]
outputs = serve(image=images)  # {"cls", "cls_class_id", "count", "seg",
                               #  "seg_class_map"}; a logit (linear) cls head
                               #  also gets "cls_probabilities"
```

Or from the command line: `mtl-keras export model.keras export/1
--postprocess cls=classify,seg=segment`.

On the JAX backend the same call works: `keras.export.ExportArchive` converts
the JAX functions with jax2tf (TensorFlow is installed with `mtl_keras`), and
the SavedModel serves the same outputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import keras
import tensorflow as tf
from keras import ops


def _activation(output_layer):
    """The activation function of the layer that produced a task output, or
    None when it is unknown (no such layer, or a layer without one)."""
    return getattr(output_layer, "activation", None)


def _classify(task: str, output, output_layer) -> Callable[..., dict]:
    """`<task>_class_id`, and `<task>_probabilities` for a logit head only."""
    activation = _activation(output_layer)
    logits = activation is keras.activations.linear
    units = output.shape[-1]
    if units == 1 and not (logits or activation is keras.activations.sigmoid):
        raise ValueError(
            f"postprocess 'classify' for task {task!r}: a one-unit output needs a "
            "sigmoid (a probability) or linear (a logit) activation, to know "
            "where its decision threshold lies."
        )
    if units is None or units < 1:
        raise ValueError(
            f"postprocess 'classify' for task {task!r} needs class scores on the "
            f"last axis; the output has shape {output.shape}."
        )

    def postprocess(scores):
        if units == 1:  # binary: one logit or one probability
            threshold = 0.0 if logits else 0.5
            class_id = ops.cast(ops.squeeze(scores, -1) > threshold, "int32")
            probabilities = ops.sigmoid(scores) if logits else None
        else:
            class_id = ops.argmax(scores, axis=-1)
            probabilities = ops.softmax(scores, axis=-1) if logits else None
        extra = {f"{task}_class_id": class_id}
        if probabilities is not None:
            extra[f"{task}_probabilities"] = probabilities
        return extra

    return postprocess


def _segment(task: str, output, output_layer) -> Callable[..., dict]:
    """`<task>_class_map`: the argmax class of every pixel."""
    if len(output.shape) < 3:
        raise ValueError(
            f"postprocess 'segment' for task {task!r} needs per-pixel class "
            "scores, shaped (batch, height, width, classes); the output has "
            f"shape {output.shape}. Use 'classify' for one label per example."
        )

    def postprocess(scores):
        return {f"{task}_class_map": ops.argmax(scores, axis=-1)}

    return postprocess


POSTPROCESSORS = {"classify": _classify, "segment": _segment}


def serving_model(model: keras.Model) -> keras.Model:
    """The inference graph of `model`: same inputs, task outputs, no training state.

    Args:
        model: A `mtl_keras.MultiTaskModel`, or a functional `keras.Model`
            whose outputs are a dict `{task: tensor}`.

    Returns:
        A plain functional `keras.Model` over the same layers.
    """
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} was never built, so it has no inputs to "
            "export. Build it from `keras.Input` (functional API), or call it "
            "on a batch before exporting."
        )
    try:
        inputs, outputs = model.input, model.output
    except AttributeError as error:
        raise ValueError(
            f"Model {model.name!r} is not a functional model, so its inference "
            "graph cannot be rebuilt. Export a model built as "
            "`keras.Model(inputs, {task: output})` or `mtl_keras.MultiTaskModel`."
        ) from error
    if not isinstance(outputs, dict):
        raise ValueError(
            f"The outputs of model {model.name!r} are not named: got a "
            f"{type(outputs).__name__}, not a dict. Serving outputs are keyed by "
            "task, so build the model with a dict of outputs, "
            "`keras.Model(inputs, {'cls': ..., 'seg': ...})`, or use "
            "`mtl_keras.MultiTaskModel`."
        )
    if hasattr(model, "serving_model"):
        return model.serving_model()
    return keras.Model(inputs, outputs, name=f"{model.name}_serving")


def input_signature(model: keras.Model) -> list:
    """`tf.TensorSpec`s of the model inputs, named after them."""

    def spec(tensor, name):
        return tf.TensorSpec(tensor.shape, tensor.dtype, name=name)

    inputs = model.input
    if isinstance(inputs, dict):
        return [{name: spec(tensor, name) for name, tensor in inputs.items()}]
    return [keras.tree.map_structure(lambda t: spec(t, t.name), inputs)]


def parse_postprocess(text: str | None) -> dict[str, str]:
    """Parses `"cls=classify,seg=segment"` into `{"cls": "classify", ...}`."""
    if not text:
        return {}
    postprocess = {}
    for item in text.split(","):
        task, sep, kind = item.partition("=")
        if not sep or not task.strip() or not kind.strip():
            raise ValueError(
                f"Could not read {item!r} in --postprocess {text!r}: write "
                "TASK=KIND pairs separated by commas, e.g. cls=classify,seg=segment."
            )
        postprocess[task.strip()] = kind.strip()
    return postprocess


def _postprocessors(model: keras.Model, postprocess) -> dict:
    """`{task: fn(scores) -> dict of extra outputs}`, checked against the model."""
    postprocess = dict(postprocess or {})
    outputs = model.output
    unknown_tasks = sorted(set(postprocess) - set(outputs))
    if unknown_tasks:
        raise ValueError(
            f"postprocess names task(s) {unknown_tasks}, but the model outputs "
            f"are {sorted(outputs)}."
        )
    functions = {}
    for task, kind in postprocess.items():
        if kind not in POSTPROCESSORS:
            raise ValueError(
                f"Unknown postprocess {kind!r} for task {task!r}; choose among "
                f"{sorted(POSTPROCESSORS)}."
            )
        output_layer = _producing_layer(model, outputs[task])
        functions[task] = POSTPROCESSORS[kind](task, outputs[task], output_layer)
    return functions


def _producing_layer(model: keras.Model, tensor):
    """The layer of `model` whose (only) output is `tensor`, or `None`."""
    for layer in model.layers:
        try:
            output = layer.output
        except (AttributeError, ValueError, RuntimeError):  # several calls
            continue
        if any(t is tensor for t in keras.tree.flatten(output)):
            return layer
    return None


def _check_output_names(model: keras.Model, functions: dict) -> None:
    names = list(model.output)
    for task, fn in functions.items():
        names += list(fn(model.output[task]))
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ValueError(
            f"The serving outputs would have duplicate names {clashes}: rename "
            "the task outputs or drop a postprocess."
        )


def saved_model(model: keras.Model, path, postprocess: dict | None = None) -> str:
    """Writes the inference graph of `model` as a SavedModel.

    The SavedModel has one signature, `serve`, also registered as
    `serving_default` (the one TF Serving and `saved_model_cli` use by
    default). It takes the model inputs by name and returns a dict with one
    entry per task, plus:

    - `postprocess={task: "classify"}`: `<task>_class_id`, the argmax of the
      last axis (of a one-unit output: 1 where it exceeds 0.5 after a
      sigmoid, or 0 for a logit, else 0). When the task's output layer has a
      linear activation (logits), also `<task>_probabilities`: the softmax
      of the logits (the sigmoid of a one-unit logit). A head that already
      outputs probabilities (a softmax or sigmoid activation, or any other
      activation) gets no `<task>_probabilities`: its own output is them.
    - `postprocess={task: "segment"}`: `<task>_class_map`, the argmax class of
      every pixel of a `(batch, height, width, classes)` output.

    Only the variables the inference graph reads are saved: no task weight,
    balancer state or optimizer slot.

    Args:
        model: A `mtl_keras.MultiTaskModel`, or a functional `keras.Model`
            with a dict of outputs `{task: tensor}`.
        path: The folder to write (created; an existing SavedModel there is
            overwritten).
        postprocess: An optional dict `{task: "classify" | "segment"}`.

    Returns:
        `path`, as a string.

    Example:

    ```python
    mtl_keras.export.saved_model(model, "export/1", postprocess={"cls": "classify"})
    serve = tf.saved_model.load("export/1").signatures["serving_default"]
    serve(image=images)["cls_class_id"]
    ```
    """
    serving = serving_model(model)
    functions = _postprocessors(serving, postprocess)
    _check_output_names(serving, functions)

    def serve(inputs):
        outputs = dict(serving(inputs, training=False))
        for task, fn in functions.items():
            outputs.update(fn(outputs[task]))
        return outputs

    archive = keras.export.ExportArchive()
    archive.track(serving)
    # The first endpoint is also written as `serving_default`.
    archive.add_endpoint("serve", serve, input_signature=input_signature(serving))
    path = os.fspath(path)
    archive.write_out(path, verbose=False)
    return path


def export_keras_file(model_path, path, postprocess: dict | None = None) -> str:
    """Loads a `.keras` file (safe mode on) and writes its SavedModel to `path`.

    Args:
        model_path: A model saved with `model.save("....keras")`.
        path: The SavedModel folder to write.
        postprocess: As for `saved_model`.

    Returns:
        `path`, as a string.
    """
    # No `custom_objects`: importing this module imported `mtl_keras`,
    # which registers its serializable classes.
    model = keras.models.load_model(model_path, safe_mode=True)
    return saved_model(model, path, postprocess=postprocess)
