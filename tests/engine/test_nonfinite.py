"""The non-finite loss policy: skip the step, count it, name the task.

A batch with a task loss that is not finite (a +inf label, a loss that
overflows float32, an input that turns the predictions NaN), or with finite
losses but a non-finite gradient (an infinite input), must leave every
weight, the optimizer and the balancer untouched, be counted in
`skipped_steps`, flag its tasks in `model.nonfinite_tasks`, and let training
continue: the run ends exactly where a run without that batch ends.
"""

import functools

import keras
import numpy as np
import pytest
from _tiny import LOSSES, tiny_data, tiny_network

from mtl_keras.callbacks import TerminateOnNonFiniteLoss

BATCH_SIZE = 16
BAD_BATCH = 1  # of the 4 batches of `tiny_data()`
BAD_ROWS = slice(BAD_BATCH * BATCH_SIZE, (BAD_BATCH + 1) * BATCH_SIZE)


def _poisoned(kind):
    """`tiny_data()` with one bad sample in batch `BAD_BATCH`, and the tasks
    whose loss that makes non-finite."""
    x, y = tiny_data()
    x, y = x.copy(), {task: labels.copy() for task, labels in y.items()}
    row = BAD_ROWS.start + 3
    if kind == "inf_label":  # NaN would mean "missing"; +inf is an error
        y["b"][row] = np.inf
        return x, y, [0.0, 1.0]
    if kind == "overflowing_loss":  # finite label, squared error > 3.4e38
        y["b"][row] = 3e19
        return x, y, [0.0, 1.0]
    if kind == "nan_input":  # the predictions turn NaN, both losses too
        x[row, 0] = np.nan
        return x, y, [1.0, 1.0]
    if kind == "inf_input":  # tanh(inf) = 1: finite losses, but the trunk's
        x[row, 0] = np.inf  # gradient is inf·0 = NaN, blamed on every task
        return x, y, [1.0, 1.0]
    raise ValueError(kind)


def _compiled(balancer, **compile_kwargs):
    model = tiny_network()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=LOSSES,
        balancer=balancer,
        **compile_kwargs,
    )
    return model


def _fit(model, x, y, **kwargs):
    return model.fit(
        x, y, epochs=2, batch_size=BATCH_SIZE, shuffle=False, verbose=0, **kwargs
    ).history


@functools.cache
def _without_bad_batch(balancer):
    """A run on the same data with the bad batch left out (eagerly: it is
    the reference, not the subject)."""
    x, y = tiny_data()
    keep = np.ones(len(x), bool)
    keep[BAD_ROWS] = False
    model = _compiled(balancer, run_eagerly=True)
    history = _fit(model, x[keep], {task: v[keep] for task, v in y.items()})
    return [v.numpy() for v in model.weights], history


@pytest.mark.parametrize(
    "balancer, jit_compile, kind",
    [
        ("uw", False, "inf_label"),
        ("uw", True, "inf_label"),
        ("gradnorm", False, "inf_label"),
        ("gradnorm", True, "inf_label"),
        ("gradnorm", False, "overflowing_loss"),
        ("uw", False, "nan_input"),
        ("uw", False, "inf_input"),
        ("gradnorm", False, "inf_input"),
    ],
)
def test_nonfinite_step_is_skipped_counted_and_training_continues(
    balancer, jit_compile, kind
):
    x, y, flagged = _poisoned(kind)
    model = _compiled(balancer, jit_compile=jit_compile)
    history = _fit(model, x, y)
    assert history["skipped_steps"] == [1.0, 1.0]  # once per epoch
    assert int(model.optimizer.iterations.numpy()) == 6  # 8 batches − 2 skipped
    np.testing.assert_array_equal(model.nonfinite_tasks.numpy(), flagged)
    for variable in [*model.weights, *model.optimizer.variables]:
        assert np.isfinite(variable.numpy()).all(), variable.path
    # Same weights (model, balancer, task weights) as without that batch.
    want_weights, want_history = _without_bad_batch(balancer)
    for variable, want in zip(model.weights, want_weights):
        if "nonfinite_tasks" not in variable.path:
            np.testing.assert_allclose(
                variable.numpy(), want, rtol=1e-5, atol=1e-6, err_msg=variable.path
            )
    # The skipped step does not enter the epoch means either.
    for name in ("loss", "a_loss", "b_loss", "a_weight", "b_weight"):
        np.testing.assert_allclose(history[name], want_history[name], rtol=1e-5)


def test_terminate_on_nonfinite_loss_names_the_task():
    x, y, _ = _poisoned("inf_label")
    model = _compiled("gradnorm")
    with pytest.raises(
        FloatingPointError, match=rf"Batch {BAD_BATCH}: the loss of task\(s\) \['b'\]"
    ):
        _fit(model, x, y, callbacks=[TerminateOnNonFiniteLoss()])
    assert int(model.optimizer.iterations.numpy()) == BAD_BATCH
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)


def test_terminate_without_raising_stops_training(capsys):
    x, y, _ = _poisoned("inf_input")
    model = _compiled("uw")
    history = _fit(
        model, x, y, callbacks=[TerminateOnNonFiniteLoss(raise_error=False)]
    )
    assert "the loss of task(s) ['a', 'b'] is not finite" in capsys.readouterr().out
    assert len(history["loss"]) == 1  # stopped in the first epoch
    assert int(model.optimizer.iterations.numpy()) == BAD_BATCH

