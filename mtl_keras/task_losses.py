"""Per-task losses with missing labels, as the `MultiTaskModel` computes them.

A label is *missing* for a sample (or a pixel) when it is the sentinel
`MISSING_LABEL` (-1) in integer labels, or NaN in float labels (for class ids
given as floats, -1.0 also marks a missing label). Missing entries contribute
nothing; the loss is the mean over the
present entries (Keras' `sum_over_batch_size` restricted to them), so with
every label present it equals what `keras.Model` computes, sample weights
included. A batch with no present label gives the task loss 0, never NaN.
A sample weight of 0 also removes a sample's contribution (it still counts
in the denominator, exactly as in Keras).
"""

from __future__ import annotations

import contextlib
import re

import keras
from keras import ops

#: Sentinel marking a missing integer label (for a sample, or a pixel).
MISSING_LABEL = -1


@keras.saving.register_keras_serializable(package="mtl_keras")
class FunctionLoss(keras.losses.Loss):
    """A loss function as a `keras.losses.Loss`, the way `compile` wraps one.

    Labels and outputs whose ranks differ by a trailing axis of size 1 are
    brought to the same rank first, as `keras.Model.compile` does, so a
    string or function loss gives the same values as in `keras.Model`.

    Args:
        fn: A function `fn(y_true, y_pred)` returning per-sample values.
        name: The loss name (default: the function's name).
    """

    def __init__(self, fn, name: str | None = None, **kwargs):
        super().__init__(name=name or getattr(fn, "__name__", None), **kwargs)
        self.fn = fn

    def call(self, y_true, y_pred):
        y_true, y_pred = _same_rank(y_true, y_pred)
        return self.fn(y_true, y_pred)

    def get_config(self) -> dict:
        return {**super().get_config(),
                "fn": keras.saving.serialize_keras_object(self.fn)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["fn"] = keras.saving.deserialize_keras_object(config["fn"])
        return cls(**config)


def _same_rank(y_true, y_pred):
    """Squeezes (or, for rank 1, expands) a trailing axis of size 1 so that
    labels and outputs have the same rank, as Keras' loss wrappers do."""
    true_rank, pred_rank = len(y_true.shape), len(y_pred.shape)
    if true_rank == pred_rank + 1 and y_true.shape[-1] == 1:
        if pred_rank == 1:
            y_pred = ops.expand_dims(y_pred, -1)
        else:
            y_true = ops.squeeze(y_true, -1)
    elif pred_rank == true_rank + 1 and y_pred.shape[-1] == 1:
        if true_rank == 1:
            y_true = ops.expand_dims(y_true, -1)
        else:
            y_pred = ops.squeeze(y_pred, -1)
    return y_true, y_pred


def to_loss(identifier, task: str) -> keras.losses.Loss:
    """Normalises a loss identifier to a `keras.losses.Loss` object.

    `keras.losses.get("mse")` returns a bare function without
    `sample_weight`; wrap it the way `keras.Model.compile` does.
    """
    if identifier is None:
        raise ValueError(
            f"Task '{task}' has no loss. Give every task a loss in "
            "`compile(loss={...})`."
        )
    try:
        loss = keras.losses.get(identifier)
    except ValueError as error:
        raise ValueError(f"Task '{task}': unknown loss {identifier!r}.") from error
    if isinstance(loss, keras.losses.Loss):
        return loss
    if callable(loss):
        name = identifier if isinstance(identifier, str) else loss.__name__
        return FunctionLoss(loss, name=name)
    raise ValueError(f"Task '{task}': {identifier!r} is not a loss.")


def takes_class_ids(loss: keras.losses.Loss) -> bool:
    """Whether the loss is one of Keras' losses over integer class ids.

    Decided from the loss class (or wrapped function), never from its name.
    For any other loss, `labels_are_class_ids` decides from the shapes.
    """
    return isinstance(loss, keras.losses.SparseCategoricalCrossentropy) or (
        isinstance(loss, FunctionLoss)
        and loss.fn is keras.losses.sparse_categorical_crossentropy
    )


def _is_keras_loss(loss: keras.losses.Loss) -> bool:
    """Whether the loss is one of Keras' own (class or wrapped function)."""
    origin = loss.fn if isinstance(loss, FunctionLoss) else type(loss)
    return getattr(origin, "__module__", "").split(".")[0] == "keras"


def labels_are_class_ids(loss, y_true, y_pred) -> bool:
    """Whether `y_true` holds class ids for the output `y_pred`.

    True for Keras' sparse losses, and for any loss (a user's own included)
    whose labels have one axis fewer than the output, or a trailing axis of
    1 against an output with several classes: the rule Keras itself uses to
    pick sparse accuracy.
    """
    if takes_class_ids(loss):
        return True
    return class_id_shapes(y_true, y_pred)


def class_id_shapes(y_true, y_pred) -> bool:
    """The shape rule of `labels_are_class_ids` (an output with one unit is
    binary or a regression, never a set of classes)."""
    true_rank, pred_rank = len(y_true.shape), len(y_pred.shape)
    if y_pred.shape[-1] in (None, 1):
        return False
    return true_rank < pred_rank or (
        true_rank == pred_rank and y_true.shape[-1] == 1)


def check_label_dtype(task: str, y_true) -> None:
    """Raises a `TypeError` naming the task for non-numeric labels."""
    if y_true is None:
        raise ValueError(
            f"Task '{task}': the labels are None. Give every task a label "
            "array; mark unlabelled samples with -1 (class labels) or NaN "
            "(float labels)."
        )
    if not hasattr(y_true, "dtype") or not hasattr(y_true, "shape"):
        raise TypeError(
            f"Task '{task}': labels must be an array or a tensor, got "
            f"{type(y_true).__name__}."
        )
    # The dtype's own name: `standardize_dtype` refuses numpy strings.
    dtype = getattr(y_true.dtype, "name", str(y_true.dtype))
    numeric = _is_float(dtype) or "int" in dtype or dtype == "bool"
    if not numeric or "complex" in dtype:
        raise TypeError(
            f"Task '{task}': labels have dtype {dtype}; a loss needs numeric "
            "labels (integer class ids, floats or booleans). Encode them as "
            "numbers in the dataset."
        )


def check_label_shape(task: str, loss, y_true, y_pred) -> None:
    """Raises a `ValueError` naming the task when labels cannot fit outputs."""
    if getattr(y_true.shape, "rank", 0) is None:  # a TensorShape of unknown rank
        # Keras retraces its step with relaxed shapes when a later call
        # feeds labels of another rank: nothing static is left to check.
        raise ValueError(
            f"Task '{task}': the labels' rank is unknown in the traced step. "
            "Keras relaxes the step's shapes when fit/evaluate is called again "
            "with labels of another rank than before. Keep the label ranks "
            "the same across calls, or rebuild the step with "
            "`model.make_train_function(force=True)` (and "
            "`make_test_function(force=True)` for evaluate)."
        )
    true_shape, pred_shape = tuple(y_true.shape), tuple(y_pred.shape)
    # Batch sizes are shown only when they are what differs.
    batch = "batch" if _compatible(true_shape[:1], pred_shape[:1]) else None
    if takes_class_ids(loss):
        expected = pred_shape[:-1]
        fits = _compatible(true_shape, expected) or _compatible(
            true_shape, expected + (1,)
        )
        hint = f"integer class ids of shape {_show(expected, batch)}"
    else:
        fits = _compatible(true_shape, pred_shape) or (
            pred_shape[-1:] == (1,) and _compatible(true_shape, pred_shape[:-1])
        )
        if not _is_keras_loss(loss):
            # A user's own loss may take class ids: one axis fewer, or a
            # trailing 1 (`labels_are_class_ids` then masks them as such).
            fits = fits or _compatible(true_shape, pred_shape[:-1]) or _compatible(
                true_shape, pred_shape[:-1] + (1,))
        hint = f"labels of shape {_show(pred_shape, batch)}"
    if not fits:
        raise ValueError(
            f"Task '{task}': labels have shape {_show(true_shape, batch)} but the "
            f"output has shape {_show(pred_shape, batch)}; loss '{loss.name}' "
            f"expects {hint}. "
            "Fix the dataset's label for this task (or the task's loss)."
        )


def check_sample_weight_shape(task: str, sample_weight, y_pred) -> None:
    """Raises a `ValueError` naming the task when sample weights cannot
    weigh the task's per-sample (or per-element) loss values."""
    weight_shape, pred_shape = tuple(sample_weight.shape), tuple(y_pred.shape)
    while len(weight_shape) > 1 and weight_shape[-1] == 1:
        weight_shape = weight_shape[:-1]
    if len(weight_shape) > len(pred_shape) or not _compatible(
        weight_shape, pred_shape[: len(weight_shape)]
    ):
        raise ValueError(
            f"Task '{task}': sample weights have shape {_show(weight_shape)} but "
            f"the output has shape {_show(pred_shape)}; give one weight per "
            f"sample, shape (batch,), or per loss element, shape "
            f"{_show(pred_shape[:-1])}."
        )


def _is_float(dtype: str) -> bool:
    return "float" in dtype


def _compatible(shape_a, shape_b) -> bool:
    if len(shape_a) != len(shape_b):
        return False
    return all(a is None or b is None or a == b for a, b in zip(shape_a, shape_b))


def _show(shape, batch: str | None = "batch") -> str:
    """`(batch, 5)`; with `batch=None` the first dimension as it is."""
    dims = [str(d) for d in shape]
    if dims and batch is not None:
        dims[0] = batch
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def present_mask(y_true, class_ids: bool):
    """True where the label is present: not `MISSING_LABEL` in integer
    labels, not NaN in float labels (nor -1.0 in float class ids)."""
    if "int" in str(y_true.dtype):
        return ops.not_equal(y_true, MISSING_LABEL)
    present = ops.logical_not(ops.isnan(y_true))
    if class_ids:
        present = ops.logical_and(present, ops.not_equal(y_true, MISSING_LABEL))
    return present


def invalid_class_ids(y_true, present, num_classes):
    """True where a present class id is outside `[0, num_classes)` or, for
    float labels, not a whole number."""
    y_true = ops.where(present, y_true, ops.zeros_like(y_true))
    invalid = ops.logical_or(y_true < 0, y_true >= num_classes)
    if "float" in str(y_true.dtype):
        invalid = ops.logical_or(invalid, ops.not_equal(y_true, ops.floor(y_true)))
    return ops.logical_and(present, invalid)


#: Marks the in-graph label check's message inside TensorFlow's error.
_LABEL_ERROR = ("<mtl_keras label error>", "</mtl_keras label error>")


def check_class_ids(task: str, loss, y_true, y_pred):
    """Returns the labels, checked: the step fails, naming the task, on a
    present class id outside `[0, num_classes)` or a float class id with a
    fractional part.

    An in-graph check (TensorFlow's `Assert`, a no-op under XLA) that runs
    before anything reads the returned labels; the model's `fit` /
    `evaluate` turn its error into a `ValueError` through `label_errors`.
    Other backends return the labels unchecked.
    """
    num_classes = y_pred.shape[-1]
    if (keras.backend.backend() != "tensorflow" or num_classes is None
            or not labels_are_class_ids(loss, y_true, y_pred)):
        return y_true
    import tensorflow as tf

    invalid = invalid_class_ids(y_true, present_mask(y_true, True), num_classes)
    # One False / 0 appended: an empty batch still has an element to show.
    flat_invalid = ops.concatenate(
        [ops.reshape(invalid, (-1,)), ops.zeros((1,), "bool")])
    flat_labels = ops.concatenate(
        [ops.reshape(y_true, (-1,)), ops.zeros((1,), y_true.dtype)])
    offending = ops.take(flat_labels, ops.argmax(ops.cast(flat_invalid, "int32")))
    check = tf.debugging.Assert(
        ops.logical_not(ops.any(flat_invalid)),
        [f"{_LABEL_ERROR[0]}Task '{task}': got class id", offending,
         f"but its labels must be whole numbers in [0, {num_classes}) (the "
         f"output has {num_classes} classes), or {MISSING_LABEL} "
         f"(MISSING_LABEL) for a missing label. Fix the dataset's labels for "
         f"this task.{_LABEL_ERROR[1]}"],
        summarize=1)
    with tf.control_dependencies([check]):
        return tf.identity(y_true)


@contextlib.contextmanager
def label_errors():
    """Turns the error of a failed `check_class_ids` into a `ValueError`."""
    try:
        yield
    except Exception as error:
        message = _label_message(str(error))
        if message is None:
            raise
        raise ValueError(message) from None


def _label_message(text: str) -> str | None:
    start, end = (text.find(mark) for mark in _LABEL_ERROR)
    if start < 0 or end < 0:
        return None
    message = text[start + len(_LABEL_ERROR[0]):end]
    # TensorFlow prints each part of the assertion's data in brackets, and
    # escapes quotes.
    message = re.sub(r"\]\s*\[", " ", message).strip(" []")
    return message.replace("\\'", "'")


def element_mask(y_true, present, class_ids: bool, rank: int):
    """The present mask at the rank of the per-element loss values.

    Class ids map one to one onto the values (a trailing axis of 1 is
    dropped); other labels are present where every entry of their last
    axis is, e.g. a row of regression targets.
    """
    if not class_ids and len(present.shape) > rank:
        present = ops.all(present, axis=-1)
    return _to_rank(present, rank, reduce=True)


def masked_task_loss(loss: keras.losses.Loss, y_true, y_pred, sample_weight=None,
                     count=None):
    """The task's mean loss over its present labels (0 if there are none).

    Args:
        loss: A `keras.losses.Loss`; its unreduced `call` gives the values.
        y_true: Labels, with missing entries marked by the sentinel or NaN.
        y_pred: The task output.
        sample_weight: Optional per-sample (or per-element) weights.
        count: Optional function of this batch's number of present entries
            returning the number to divide by. Replicas divide by the mean
            count of all replicas, so that their mean is the global batch's
            masked mean, as on one device.

    Returns:
        A float32 scalar.
    """
    class_ids = labels_are_class_ids(loss, y_true, y_pred)
    present = present_mask(y_true, class_ids)
    safe_true = ops.where(present, y_true, ops.zeros_like(y_true))
    # As `Loss.__call__` does: under mixed precision the output is float16,
    # and the loss must still be computed in the loss dtype (float32).
    y_pred = ops.cast(y_pred, loss.dtype)
    values = ops.cast(loss.call(safe_true, y_pred), "float32")
    mask = element_mask(y_true, present, class_ids, len(values.shape))
    mask = ops.broadcast_to(ops.cast(mask, "float32"), ops.shape(values))
    weighted = values * mask
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, "float32")
        weighted = weighted * _to_rank(sample_weight, len(values.shape), reduce=False)
    present_count = ops.sum(mask)
    if count is not None:
        present_count = count(present_count)
    return ops.divide_no_nan(ops.sum(weighted), present_count)


def _to_rank(tensor, rank: int, reduce: bool):
    """Brings a per-sample/per-element tensor to `rank` dimensions.

    Extra trailing axes are reduced with `all` (a value is present only if
    every label entry behind it is); missing trailing axes are added.
    """
    while len(tensor.shape) > rank:
        if reduce:
            tensor = ops.all(tensor, axis=-1)
        else:
            tensor = ops.squeeze(tensor, axis=-1)
    while len(tensor.shape) < rank:
        tensor = ops.expand_dims(tensor, -1)
    return tensor
