"""Nothing is lost: `.keras` round trips and BackupAndRestore resumes."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from _tiny import LOSSES, tiny_data, tiny_network

from mtl_keras.callbacks import DynamicWeightAverage


class _StopAt(keras.callbacks.Callback):
    """Simulates a crash at the end of an epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def _compiled(balancer):
    model = tiny_network()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=LOSSES,
        loss_weights={"a": 1.0, "b": 0.7},
        balancer=balancer,
    )
    return model


def test_keras_round_trip_in_a_fresh_process(tmp_path):
    x, y = tiny_data()
    model = _compiled("uw")
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    model.set_task_weights({"b": 0.25})
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "log_variances.npy", model.balancer.log_variances.numpy())
    np.save(tmp_path / "predictions.npy", model.predict(x, verbose=0)["a"])
    script = textwrap.dedent(f"""
        import keras, numpy as np
        import mtl_keras  # registers the classes
        model = keras.models.load_model({str(path)!r})
        assert type(model).__name__ == "MultiTaskModel", type(model)
        np.testing.assert_allclose(model.balancer.log_variances.numpy(),
                                   np.load({str(tmp_path / "log_variances.npy")!r}))
        assert model.get_task_weights() == {{"a": 1.0, "b": 0.25}}
        x = np.load({str(tmp_path / "x.npy")!r})
        np.testing.assert_allclose(model.predict(x, verbose=0)["a"],
                                   np.load({str(tmp_path / "predictions.npy")!r}),
                                   rtol=1e-6)
        shared = [v.path for v in model.shared_variables]
        assert shared == ["trunk/kernel", "trunk/bias"], shared
        print("OK", model.optimizer.iterations.numpy())
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK 12" in result.stdout


def test_loaded_model_continues_training(tmp_path):
    x, y = tiny_data()
    model = _compiled("uw")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.balancer.name == model.balancer.name
    history = loaded.fit(x, y, epochs=3, batch_size=16, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("balancer", ["uw", "rlw"])
def test_backup_and_restore_resumes_exactly(tmp_path, balancer):
    x, y = tiny_data()

    def run(callbacks):
        model = _compiled(balancer)
        model.fit(
            x,
            y,
            epochs=5,
            batch_size=16,
            shuffle=False,
            verbose=0,
            callbacks=[DynamicWeightAverage(), *callbacks],
        )
        return model

    uninterrupted = run([])
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        run([backup, _StopAt(2)])
    resumed = run([keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    assert int(resumed.optimizer.iterations.numpy()) == 20
    for ours, theirs in zip(resumed.weights, uninterrupted.weights):
        np.testing.assert_allclose(
            ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6, err_msg=ours.path
        )
