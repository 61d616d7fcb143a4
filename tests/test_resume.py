"""Stateful balancers resume exactly, with `BackupAndRestore` or `.keras`.

Each run uses a stateful balancer (GradNorm's initial losses and Adam
moments, FAMO's logits, Nash-MTL's cached weights with `update_every=3`)
together with `DynamicWeightAverage`, whose loss history must survive too.
The interruption falls after epoch 1 (step 8): DWA then needs the two epochs
already seen, and Nash-MTL is mid-cycle (8 mod 3 = 2), so the first resumed
step must reuse the cached weights.
"""

import functools

import keras
import numpy as np
import pytest
from _tiny import LOSSES, tiny_data, tiny_network

from mtl_keras.balancers import FAMO, GradNorm, NashMTL
from mtl_keras.callbacks import DynamicWeightAverage

EPOCHS = 4
STOP_AFTER = 1  # epoch index at whose end the first run is interrupted
BALANCERS = {
    "gradnorm": lambda: GradNorm(),
    "famo": lambda: FAMO(),
    "nash_mtl": lambda: NashMTL(),
}
UPDATE_EVERY = {"nash_mtl": 3}


class _Crash(keras.callbacks.Callback):
    """Raises at the end of an epoch, as a crash would."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == STOP_AFTER:
            raise RuntimeError("interrupted")


def _compiled(balancer, run_eagerly=False):
    model = tiny_network()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=LOSSES,
        loss_weights={"a": 1.0, "b": 0.7},
        balancer=BALANCERS[balancer](),
        update_every=UPDATE_EVERY.get(balancer),
        run_eagerly=run_eagerly,
    )
    return model


def _fit(model, callbacks=(), initial_epoch=0):
    x, y = tiny_data()
    return model.fit(
        x, y, epochs=EPOCHS, initial_epoch=initial_epoch, batch_size=16,
        shuffle=False, verbose=0,
        # DWA last: BackupAndRestore saves at the end of each epoch before
        # DWA's hooks run there, an order that once lost the epoch's losses.
        callbacks=[*callbacks, DynamicWeightAverage()],
    ).history


def _cheaper_eagerly(balancer) -> bool:
    """For runs that are not the subject: eager saves a trace, except for
    Nash-MTL, whose Newton loop costs more run op by op."""
    return balancer != "nash_mtl"


@functools.cache
def _uninterrupted(balancer):
    model = _compiled(balancer, run_eagerly=_cheaper_eagerly(balancer))
    history = _fit(model)
    return [v.numpy() for v in model.weights], history


def _interrupted(balancer, backup_dir):
    model = _compiled(balancer, run_eagerly=_cheaper_eagerly(balancer))
    backup = keras.callbacks.BackupAndRestore(str(backup_dir))
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(model, [backup, _Crash()])
    return model


def _assert_same_state(model, balancer):
    """Model, task weights (DWA history) and balancer state, in order."""
    want, _ = _uninterrupted(balancer)
    assert int(model.optimizer.iterations.numpy()) == 4 * EPOCHS
    assert len(model.weights) == len(want)
    for variable, value in zip(model.weights, want):
        np.testing.assert_allclose(
            variable.numpy(), value, rtol=1e-5, atol=1e-6, err_msg=variable.path
        )


@pytest.mark.parametrize("balancer", sorted(BALANCERS))
def test_resume_matches_an_uninterrupted_run(balancer, tmp_path):
    interrupted = _interrupted(balancer, tmp_path / "backup")
    # The DWA weights of the last epochs depend on the recorded history.
    _, want_history = _uninterrupted(balancer)
    assert len(set(want_history["a_weight"][2:])) > 1

    # 1. BackupAndRestore: a fresh model picks up at epoch 2.
    resumed = _compiled(balancer)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    history = _fit(resumed, [backup])
    assert len(history["loss"]) == EPOCHS - STOP_AFTER - 1
    _assert_same_state(resumed, balancer)
    np.testing.assert_allclose(
        history["a_weight"], want_history["a_weight"][STOP_AFTER + 1:], rtol=1e-5
    )

    # 2. `.keras`: save the interrupted model, load it, continue.
    path = tmp_path / "mid_training.keras"
    interrupted.save(path)
    loaded = keras.models.load_model(path)
    loaded.run_eagerly = False  # the compile config kept the interrupted run's
    _fit(loaded, initial_epoch=STOP_AFTER + 1)
    _assert_same_state(loaded, balancer)
