"""Mixed precision: loss scaling reaches the per-task gradients, the task
losses and the Gramian stay float32, and a step matches the float32 one."""

import contextlib
import functools

import keras
import numpy as np
import pytest
from _tiny import LOSSES, tiny_data, tiny_network

from mtl_keras.model import MultiTaskModel

# Loss scale of the float16 comparison: small enough that the backward pass
# does not overflow, large enough that ‖s·g‖² ≈ 1e7 would overflow float16
# (max 65504) if the Gramian were formed from the scaled gradients.
LOSS_SCALE = 2.0**12
# Largest |mixed − float32| update, relative to the largest float32 update
# component (measured: ≤ 5.1e-4 for float16, ≤ 1.3e-2 for bfloat16).
TOLERANCE = {"mixed_float16": 2e-3, "mixed_bfloat16": 3e-2}


@contextlib.contextmanager
def dtype_policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _build(policy, balancer, optimizer, cls=MultiTaskModel, **compile_kwargs):
    with dtype_policy(policy):
        model = tiny_network(cls)
        extra = {"balancer": balancer} if cls is MultiTaskModel else {}
        model.compile(optimizer=optimizer, loss=LOSSES, **compile_kwargs, **extra)
    return model


def _one_step(model, x, y):
    """The update of one full-batch step, and its logs."""
    before = [v.numpy().copy() for v in model.trainable_variables]
    logs = model.fit(x, y, epochs=1, batch_size=len(x), verbose=0).history
    after = [v.numpy() for v in model.trainable_variables]
    return [a - b for a, b in zip(after, before)], logs


@functools.cache
def _float32_step(balancer):
    # The reference, not the subject: eager keeps it cheap.
    model = _build("float32", balancer, keras.optimizers.SGD(0.1), run_eagerly=True)
    return _one_step(model, *tiny_data())


def _mixed_optimizer(policy):
    if policy == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.1), initial_scale=LOSS_SCALE
        )
    return keras.optimizers.SGD(0.1)  # bfloat16 needs no loss scaling


@pytest.mark.parametrize(
    "policy, balancer, jit_compile, jacobian",
    [
        ("mixed_float16", "uw", False, "loop"),
        ("mixed_float16", "pcgrad", False, "loop"),
        ("mixed_float16", "pcgrad", True, "loop"),
        ("mixed_float16", "pcgrad", False, "pfor"),  # the loss scale seeds pfor
        ("mixed_float16", "mgda_ub", False, "loop"),  # float16 representation
        ("mixed_bfloat16", "uw", False, "loop"),
        ("mixed_bfloat16", "pcgrad", False, "loop"),
        ("mixed_bfloat16", "mgda_ub", False, "loop"),
    ],
)
def test_mixed_step_is_close_to_the_float32_step(policy, balancer, jit_compile,
                                                 jacobian):
    model = _build(policy, balancer, _mixed_optimizer(policy),
                   jit_compile=jit_compile, jacobian=jacobian)
    update, logs = _one_step(model, *tiny_data())
    want_update, want_logs = _float32_step(balancer)
    scale = max(np.abs(u).max() for u in want_update)
    difference = max(np.abs(u - w).max() for u, w in zip(update, want_update))
    assert difference <= TOLERANCE[policy] * scale, (difference, scale)
    assert logs["skipped_steps"] == [0.0]
    if policy == "mixed_float16":
        # The step was applied at the scale it started with: no overflow.
        assert float(model.optimizer.dynamic_scale.numpy()) == LOSS_SCALE
    for task in ("a", "b"):
        np.testing.assert_allclose(
            logs[f"{task}_loss"], want_logs[f"{task}_loss"], rtol=TOLERANCE[policy]
        )
        if balancer in ("pcgrad", "mgda_ub"):
            # Norms of the unscaled gradients, from a finite float32 Gramian.
            np.testing.assert_allclose(
                logs[f"grad_norm_{task}"],
                want_logs[f"grad_norm_{task}"],
                rtol=TOLERANCE[policy],
            )


def test_task_losses_are_float32_under_mixed_float16():
    # Squared errors near 9e4 overflow float16 (max 65504), not float32.
    x, y = tiny_data()
    y = {**y, "b": y["b"] + 300.0}
    logs = {}
    for cls in (keras.Model, MultiTaskModel):
        model = _build("mixed_float16", None, keras.optimizers.SGD(1e-6), cls=cls)
        logs[cls] = model.fit(x, y, epochs=1, batch_size=64, verbose=0).history
    ours, keras_logs = logs[MultiTaskModel], logs[keras.Model]
    assert ours["skipped_steps"] == [0.0]
    assert 6e4 < ours["b_loss"][0] < 1e5
    np.testing.assert_allclose(ours["b_loss"], keras_logs["b_loss"], rtol=1e-5)
    np.testing.assert_allclose(ours["loss"], keras_logs["loss"], rtol=1e-5)


def test_overflowing_scaled_gradients_never_reach_the_balancer():
    """At the default scale 2¹⁵ these gradients overflow float16: the
    LossScaleOptimizer skips those steps and halves its scale, while the
    Gramian, the balancer's state and the weights stay finite."""
    x, y = tiny_data()
    y = {**y, "b": y["b"] + 300.0}
    # GradNorm: an infinite Gramian would turn its Adam moments NaN.
    model = _build("mixed_float16", "gradnorm", keras.optimizers.SGD(1e-5))
    before = [v.numpy().copy() for v in model.trainable_variables]
    logs = model.fit(x, y, epochs=2, batch_size=8, verbose=0).history
    assert float(model.optimizer.dynamic_scale.numpy()) < 2.0**15  # it overflowed
    assert 0 < int(model.optimizer.iterations.numpy()) < 16  # some steps applied
    assert logs["skipped_steps"] == [0.0, 0.0]  # the losses were finite
    for variable in [*model.weights, *model.balancer.weights]:
        assert np.isfinite(variable.numpy()).all(), variable.path
    for task in ("a", "b"):
        assert np.isfinite(logs[f"grad_norm_{task}"]).all()
    changed = [not np.array_equal(b, v.numpy())
               for b, v in zip(before, model.trainable_variables)]
    assert any(changed)
