"""Fuzzed `compile` and `fit` inputs: every bad one gets a clear error from
our validation, naming the task (or the fix), never a failure deep in TF.

Label fuzzing runs eagerly on one compiled model: each example then costs a
forward pass, not a trace, and the checks see the same static shapes a
first trace sees. The graph-only case (shapes relaxed by a retrace) has its
own test.
"""

import re
from typing import NamedTuple

import keras
import numpy as np
import pytest
import tensorflow as tf
from _tiny import LOSSES, tiny_data, tiny_network
from hypothesis import given, settings
from hypothesis import strategies as st

# One worker runs this module: its module-scoped fixture is built once.
pytestmark = pytest.mark.xdist_group("test_fuzz_inputs")

TASKS = ("a", "b")
BATCH = 8
X, LABELS = tiny_data(BATCH)
#: Label shapes the tiny model accepts, per task.
VALID_SHAPES = {"a": [(BATCH,), (BATCH, 1)], "b": [(BATCH, 1), (BATCH,)]}
DTYPES = {"a": "int32", "b": "float32"}

# Task-like keys that are not tasks: odd characters, case, ints.
stray_names = st.one_of(
    st.text(alphabet="abcAB_ -/é0", max_size=4), st.integers(-2, 2)
).filter(lambda name: name not in TASKS)


class Case(NamedTuple):
    labels: object
    error: type
    pattern: str


def _names(keys) -> str:
    """A pattern for the list of `keys` in our messages, in any order."""
    reprs = "|".join(re.escape(repr(key)) for key in keys)
    return rf"\[(({reprs})(, )?){{{len(keys)}}}\]"


@st.composite
def renamed_labels(draw):
    kept = draw(st.lists(st.sampled_from(TASKS), unique=True, max_size=2))
    extra = draw(st.lists(stray_names, unique=True, max_size=2))
    if len(kept) == len(TASKS) and not extra:
        extra = ["c"]
    labels = {task: LABELS[task] for task in kept}
    labels.update({name: LABELS["b"] for name in extra})
    if extra:
        return Case(labels, ValueError, rf"`labels` .*unknown {_names(extra)}")
    missing = [task for task in TASKS if task not in kept]
    return Case(labels, ValueError, rf"no entry for task\(s\) {_names(missing)}")


@st.composite
def misshapen_labels(draw):
    task = draw(st.sampled_from(TASKS))
    batch = draw(st.sampled_from([BATCH, BATCH, 3]))
    trailing = draw(st.lists(st.integers(1, 4), max_size=3))
    shape = (batch, *trailing)
    if shape in VALID_SHAPES[task]:
        shape = (*shape, 2)
    labels = {**LABELS, task: np.zeros(shape, DTYPES[task])}
    # Messages say "batch" unless the batch size is what differs.
    shown = str(("batch" if batch == BATCH else batch, *shape[1:]))
    shown = re.escape(shown.replace("'", ""))
    return Case(labels, ValueError, rf"Task '{task}': labels have shape {shown}")


@st.composite
def non_numeric_labels(draw):
    task = draw(st.sampled_from(TASKS))
    kind = draw(st.sampled_from(
        ["str", "bytes", "complex64", "object", "tf_string", "list", "dict", "none"]
    ))
    values = LABELS[task]
    label, error, reason = {
        "str": (values.astype(str), TypeError, "labels have dtype str"),
        "bytes": (values.astype(bytes), TypeError, "labels have dtype bytes"),
        "complex64": (values.astype("complex64"), TypeError, "dtype complex64"),
        "object": (np.array([None] * BATCH), TypeError, "labels have dtype object"),
        "tf_string": (tf.constant(values.astype(str)), TypeError, "dtype string"),
        "list": (values.tolist(), TypeError, "must be an array or a tensor"),
        "dict": ({"nested": values}, TypeError, "must be an array or a tensor"),
        "none": (None, ValueError, "the labels are None"),
    }[kind]
    return Case({**LABELS, task: label}, error, rf"Task '{task}': .*{reason}")


def non_dict_labels():
    return st.sampled_from([
        Case(LABELS["b"], ValueError, "Labels must be a dict"),
        Case([LABELS["a"], LABELS["b"]], ValueError, "Labels must be a dict"),
        Case((LABELS["a"], LABELS["b"]), ValueError, "Labels must be a dict"),
    ])


@pytest.fixture(scope="module")
def eager_model():
    model = tiny_network()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSSES, run_eagerly=True)
    model.train_on_batch(X, LABELS)  # builds the optimizer
    return model


@settings(max_examples=40, deadline=None)
@given(case=st.one_of(
    renamed_labels(), misshapen_labels(), non_numeric_labels(), non_dict_labels()
))
def test_bad_labels_get_a_clear_error_from_our_checks(eager_model, case):
    before = [v.numpy().copy() for v in eager_model.weights]
    with pytest.raises(case.error, match=case.pattern) as raised:
        eager_model.train_on_batch(X, case.labels)
    assert not isinstance(raised.value, tf.errors.OpError)
    assert "mtl_keras" in str(raised.traceback[-1].path)  # raised by our code
    for variable, value in zip(eager_model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)


@settings(max_examples=10, deadline=None)
@given(task=st.sampled_from(TASKS), empty=st.booleans())
def test_empty_or_unlabelled_batches_change_nothing(eager_model, task, empty):
    before = [v.numpy().copy() for v in eager_model.weights]
    if empty:
        x, labels = X[:0], {t: v[:0] for t, v in LABELS.items()}
    else:  # every label of every task missing
        x = X
        labels = {"a": np.full(BATCH, -1, "int32"),
                  "b": np.full((BATCH, 1), np.nan, "float32")}
    logs = eager_model.train_on_batch(x, labels, return_dict=True)
    assert logs[f"{task}_loss"] == 0.0 and logs["skipped_steps"] == 0.0
    for variable, value in zip(eager_model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)


# ------------------------------------------------------------------ compile

weight_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 3),
    st.text(max_size=2),
    st.none(),
    st.lists(st.floats(0, 1), max_size=2),
)


def _usable_weight(value) -> bool:
    """Our rule: a number, finite once stored as float32, and ≥ 0."""
    return (
        isinstance(value, (int, float))
        and 0 <= value <= np.finfo("float32").max
    )


@pytest.fixture(scope="module")
def fresh_model():
    return tiny_network()


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(st.one_of(st.sampled_from(TASKS), stray_names), unique=True,
                  max_size=3),
    data=st.data(),
)
def test_loss_weights_are_checked_per_task(fresh_model, keys, data):
    loss_weights = {key: data.draw(weight_values) for key in keys}
    unknown = [key for key in keys if key not in TASKS]
    bad = [t for t in TASKS if t in keys and not _usable_weight(loss_weights[t])]
    if unknown:
        expected = (ValueError, rf"`loss_weights` .*unknown {_names(unknown)}")
    elif bad:
        expected = ((TypeError, ValueError), rf"weight of task '{bad[0]}'")
    else:
        fresh_model.compile(loss=LOSSES, loss_weights=loss_weights)
        assert fresh_model.get_task_weights() == {
            t: float(np.float32(loss_weights.get(t, 1.0))) for t in TASKS
        }
        return
    with pytest.raises(expected[0], match=expected[1]):
        fresh_model.compile(loss=LOSSES, loss_weights=loss_weights)


@settings(max_examples=20, deadline=None)
@given(
    loss_keys=st.lists(st.one_of(st.sampled_from(TASKS), stray_names),
                       unique=True, max_size=3),
    loss_value=st.sampled_from(["mse", "nope", 3, None]),
    metric_keys=st.lists(st.one_of(st.sampled_from(TASKS), stray_names),
                         unique=True, max_size=2),
)
def test_loss_and_metrics_dicts_are_checked_per_task(
    fresh_model, loss_keys, loss_value, metric_keys
):
    loss = {key: loss_value for key in loss_keys}
    metrics = {key: ["mae"] for key in metric_keys}
    if sorted(loss_keys, key=str) != sorted(TASKS):
        extra = [k for k in loss_keys if k not in TASKS]
        pattern = rf"`loss` .*unknown {_names(extra)}"
    elif loss_value != "mse":
        pattern = rf"Task '{TASKS[0]}'.*(unknown loss|has no loss)"
    elif any(key not in TASKS for key in metric_keys):
        extra = [k for k in metric_keys if k not in TASKS]
        pattern = rf"`metrics` .*unknown {_names(extra)}"
    else:
        fresh_model.compile(loss=loss, metrics=metrics)
        assert set(fresh_model.task_losses) == set(TASKS)
        return
    with pytest.raises(ValueError, match=pattern):
        fresh_model.compile(loss=loss, metrics=metrics)


@pytest.mark.parametrize(
    "bad, error, pattern",
    [({"class_name": "no_such_balancer"}, ValueError,
      "is not a balancer; give a method name"),
     (3, TypeError, "A balancer must be a Balancer instance")],
)
def test_unknown_balancer_config_is_refused(fresh_model, bad, error, pattern):
    with pytest.raises(error, match=pattern):
        fresh_model.compile(loss=LOSSES, balancer=bad)


def test_unknown_sample_weight_task_is_refused(eager_model):
    with pytest.raises(ValueError, match=r"`sample_weight` .*unknown \['c'\]"):
        eager_model.compute_task_losses(
            LABELS, eager_model(X), {"a": np.ones(BATCH), "c": np.ones(BATCH)}
        )
    with pytest.raises(ValueError, match=r"Task 'a': sample weights have shape"):
        eager_model.compute_task_losses(
            LABELS, eager_model(X), {"a": np.ones((BATCH, 5)), "b": np.ones(BATCH)}
        )


def test_set_task_weights_refuses_nan():
    model = tiny_network()
    model.compile(loss=LOSSES)
    with pytest.raises(ValueError, match=r"weight of task 'b' must be finite"):
        model.set_task_weights({"b": float("nan")})
    with pytest.raises(ValueError, match=r"weight of task 'a'"):
        model.set_task_weights([-1.0, 1.0])
    assert model.get_task_weights() == {"a": 1.0, "b": 1.0}


# -------------------------------------------------------------- graph mode


def test_label_rank_change_after_a_trace_names_the_task_and_the_fix():
    """Keras relaxes the traced step's shapes to unknown rank when a later
    `fit` feeds labels of another rank: nothing static is left to check."""
    x, y = tiny_data(16)
    model = tiny_network()
    model.compile(optimizer="sgd", loss=LOSSES)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    flat_b = {"a": y["a"], "b": y["b"][:, 0]}  # also valid, other rank
    with pytest.raises(ValueError, match=r"Task '[ab]'.*make_train_function"):
        model.fit(x, flat_b, batch_size=8, epochs=1, verbose=0)
    model.make_train_function(force=True)
    history = model.fit(x, flat_b, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(history["b_loss"]).all()
