"""Per-task losses with missing labels, as the `MultiTaskModel` computes them.

A label is *missing* for a sample (or a pixel) when it equals the sentinel
`MISSING_LABEL` (-1) for a sparse categorical loss, or is NaN for a float
label. Missing entries contribute nothing; the loss is the mean over the
present entries (Keras' `sum_over_batch_size` restricted to them), so with
every label present it equals what `keras.Model` computes, sample weights
included. A batch with no present label gives the task loss 0, never NaN.
A sample weight of 0 also removes a sample's contribution (it still counts
in the denominator, exactly as in Keras).
"""

from __future__ import annotations

import keras
from keras import ops

# The wrapper `keras.Model.compile` itself uses for string and function
# losses; not exported publicly, and reusing it keeps our losses identical.
from keras.src.losses.losses import LossFunctionWrapper

#: Sentinel marking a missing sparse class label (for sample, or pixel).
MISSING_LABEL = -1


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
        return LossFunctionWrapper(loss, name=name)
    raise ValueError(f"Task '{task}': {identifier!r} is not a loss.")


def is_sparse(loss: keras.losses.Loss) -> bool:
    """Whether the loss takes integer class labels (one fewer axis)."""
    name = getattr(loss, "fn", None)
    name = getattr(name, "__name__", "") or loss.name or type(loss).__name__
    return "sparse" in name.lower() or "Sparse" in type(loss).__name__


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
    if is_sparse(loss):
        expected = pred_shape[:-1]
        fits = _compatible(true_shape, expected) or _compatible(
            true_shape, expected + (1,)
        )
        hint = f"integer class ids of shape {_show(expected, batch)}"
    else:
        fits = _compatible(true_shape, pred_shape) or (
            pred_shape[-1:] == (1,) and _compatible(true_shape, pred_shape[:-1])
        )
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


def present_mask(y_true, sparse: bool):
    """True where the label is present (not the sentinel, not NaN)."""
    if "int" in str(y_true.dtype):
        return y_true >= 0 if sparse else ops.ones_like(y_true, dtype="bool")
    present = ops.logical_not(ops.isnan(y_true))
    if sparse:
        present = ops.logical_and(present, y_true >= 0)
    return present


def masked_task_loss(loss: keras.losses.Loss, y_true, y_pred, sample_weight=None):
    """The task's mean loss over its present labels (0 if there are none).

    Args:
        loss: A `keras.losses.Loss`; its unreduced `call` gives the values.
        y_true: Labels, with missing entries marked by the sentinel or NaN.
        y_pred: The task output.
        sample_weight: Optional per-sample (or per-element) weights.

    Returns:
        A float32 scalar.
    """
    sparse = is_sparse(loss)
    present = present_mask(y_true, sparse)
    safe_true = ops.where(present, y_true, ops.zeros_like(y_true))
    # As `Loss.__call__` does: under mixed precision the output is float16,
    # and the loss must still be computed in the loss dtype (float32).
    y_pred = ops.cast(y_pred, loss.dtype)
    values = ops.cast(loss.call(safe_true, y_pred), "float32")
    mask = ops.cast(_to_rank(present, len(values.shape), reduce=True), "float32")
    mask = ops.broadcast_to(mask, ops.shape(values))
    weighted = values * mask
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, "float32")
        weighted = weighted * _to_rank(sample_weight, len(values.shape), reduce=False)
    return ops.divide_no_nan(ops.sum(weighted), ops.sum(mask))


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
