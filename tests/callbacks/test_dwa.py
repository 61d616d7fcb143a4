"""DynamicWeightAverage: weights recomputed from the logged epoch losses."""

import keras
import numpy as np
import pytest
from _tiny import LOSSES, tiny_data, tiny_network

from mtl_keras.callbacks import DynamicWeightAverage


def _softmax_weights(ratios, temperature):
    exp = np.exp(np.asarray(ratios) / temperature)
    return len(ratios) * exp / exp.sum()


@pytest.mark.parametrize("temperature", [2.0, 0.5])
def test_dwa_weights_follow_logged_losses(temperature):
    x, y = tiny_data(128)
    model = tiny_network()
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=LOSSES)
    history = model.fit(
        x,
        y,
        epochs=6,
        batch_size=32,
        verbose=0,
        callbacks=[DynamicWeightAverage(temperature)],
    ).history
    for epoch in range(6):
        weights = [history["a_weight"][epoch], history["b_weight"][epoch]]
        if epoch < 2:
            np.testing.assert_allclose(weights, [1.0, 1.0])
            continue
        ratios = [
            history[f"{t}_loss"][epoch - 1] / history[f"{t}_loss"][epoch - 2]
            for t in ("a", "b")
        ]
        np.testing.assert_allclose(
            weights, _softmax_weights(ratios, temperature), rtol=1e-5
        )
    assert history["a_weight"][2] != history["b_weight"][2]


def test_dwa_needs_a_multi_task_model():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(loss="mse")
    with pytest.raises(ValueError, match="MultiTaskModel"):
        model.fit(
            np.zeros((4, 2)),
            np.zeros((4, 1)),
            verbose=0,
            callbacks=[DynamicWeightAverage()],
        )


def test_dwa_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        DynamicWeightAverage(0.0)
